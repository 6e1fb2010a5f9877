package loader

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/test/lab"
)

func TestLayoutChangesWithAMapsShape(t *testing.T) {
	spec, err := bpf.LoadImdsguard()
	if err != nil {
		t.Fatal(err)
	}
	base := layoutOf(spec)
	if again, _ := bpf.LoadImdsguard(); layoutOf(again) != base {
		t.Fatal("layout of the same object differs between two reads")
	}
	spec.Maps[bpf.ImdsguardMapEvents].MaxEntries *= 2
	if layoutOf(spec) == base {
		t.Error("a bigger ring buffer did not change the layout")
	}
	spec, _ = bpf.LoadImdsguard()
	if shape := typeShape(spec.Maps[bpf.ImdsguardMapSockStates].Value, 0); !strings.Contains(shape, "passed@") {
		t.Errorf("sock_state shape %q does not list its members", shape)
	}
	for _, name := range sharedMaps(spec) {
		if strings.HasPrefix(name, ".") {
			t.Errorf("internal data section %s would be shared across daemons", name)
		}
	}
}

// privateBPFFS mounts a BPF filesystem for one test.
func privateBPFFS(t *testing.T) string {
	t.Helper()
	lab.RequirePrivileged(t)
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mounting bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	// the root of a BPF filesystem holds the kernel's own entries
	sub := filepath.Join(dir, "imdsguard")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	return sub
}

func TestMetaIsReplacedWhole(t *testing.T) {
	dir := privateBPFFS(t)
	if m, err := readMeta(dir); m != nil || err != nil {
		t.Fatalf("meta in an empty directory: %+v, %v", m, err)
	}
	want := Meta{Layout: "abc", Version: "v1", PID: 42, Mode: "audit", PolicyHash: "0123", StartedAt: time.Unix(1, 0).UTC(), Generation: 1}
	for i := range 3 {
		want.PID = 42 + i
		if err := writeMeta(dir, &want); err != nil {
			t.Fatal(err)
		}
		got, err := readMeta(dir)
		if err != nil || got == nil || *got != want {
			t.Fatalf("read back %+v, %v; want %+v", got, err, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != pinMeta {
		t.Errorf("pin directory holds %v, want only %s", entries, pinMeta)
	}
}

func TestPinDirLockNamesTheHolder(t *testing.T) {
	dir := privateBPFFS(t)
	if err := writeMeta(dir, &Meta{PID: 4242}); err != nil {
		t.Fatal(err)
	}
	first, err := lockPinDir(context.Background(), dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if held, err := daemonHolds(dir); err != nil || !held {
		t.Errorf("daemonHolds while locked: %v, %v", held, err)
	}
	var told int
	start := time.Now()
	_, err = lockPinDir(context.Background(), dir, 300*time.Millisecond, func(pid int) { told = pid })
	if err == nil || !strings.Contains(err.Error(), "(pid 4242)") || told != 4242 || time.Since(start) < 300*time.Millisecond {
		t.Errorf("second lock: %v, told %d after %v; want a wait, then an error naming pid 4242", err, told, time.Since(start))
	}
	first.release()
	if held, _ := daemonHolds(dir); held {
		t.Error("lock still held after release")
	}
	second, err := lockPinDir(context.Background(), dir, 0, nil)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	second.release()
}

func TestPinDirOutsideBPFFSIsNamed(t *testing.T) {
	lab.RequirePrivileged(t)
	dir := filepath.Join(t.TempDir(), "imdsguard")
	err := ensureBPFFS(dir)
	if err == nil || !strings.Contains(err.Error(), "is not on a BPF filesystem") {
		t.Errorf("pin dir on %s: %v, want an error naming the missing BPF filesystem", filepath.Dir(dir), err)
	}
}

func TestRemovingNothingIsNotAnError(t *testing.T) {
	dir := privateBPFFS(t)
	removed, err := RemovePinned(filepath.Join(dir, "imdsguard"), nil)
	if err != nil || len(removed) != 0 {
		t.Errorf("RemovePinned of a missing directory: %v, %v", removed, err)
	}
	st, err := ReadStatus(filepath.Join(dir, "imdsguard"))
	if err != nil || st.Pinned || st.Daemon.Running {
		t.Errorf("status of a missing directory: %+v, %v", st, err)
	}
}

// Where nothing mounted a BPF filesystem on /sys/fs/bpf, the daemon mounts
// one. Checked in a mount namespace of this test's own (on a thread that
// is thrown away afterwards), so the host's mounts are untouched.
func TestBPFFSIsMountedWhereMissing(t *testing.T) {
	lab.RequirePrivileged(t)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("unshare: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return fmt.Errorf("making mounts private: %w", err)
			}
			parent := filepath.Dir(DefaultPinDir)
			// Hide whatever is there with an empty tmpfs, as on a host
			// where nothing mounted bpffs.
			if err := unix.Mount("tmpfs", parent, "tmpfs", 0, "size=1m"); err != nil {
				return fmt.Errorf("hiding %s: %w", parent, err)
			}
			if ok, _ := isBPFFS(parent); ok {
				return fmt.Errorf("%s is bpffs under a fresh tmpfs", parent)
			}
			if err := ensureBPFFS(DefaultPinDir); err != nil {
				return err
			}
			if ok, err := isBPFFS(parent); !ok {
				return fmt.Errorf("after ensureBPFFS, %s is not bpffs (%v)", parent, err)
			}
			return ensureBPFFS(DefaultPinDir) // a second call finds it mounted
		}()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// Every map of the object is pinned and taken over: the list comes from
// the bindings, not from a hand-kept one that a new map could miss.
func TestEveryMapIsShared(t *testing.T) {
	spec, err := bpf.LoadImdsguard()
	if err != nil {
		t.Fatal(err)
	}
	var g Guard
	got := g.mapsByName()
	for _, name := range sharedMaps(spec) {
		if _, ok := got[name]; !ok {
			t.Errorf("map %s is not in mapsByName", name)
		}
	}
	if len(got) != len(sharedMaps(spec)) {
		t.Errorf("mapsByName has %d maps, the object %d", len(got), len(sharedMaps(spec)))
	}
}
