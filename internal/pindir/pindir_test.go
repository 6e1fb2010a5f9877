package pindir

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/test/lab"
)

func TestMetaIsReplacedWhole(t *testing.T) {
	dir := lab.PrivateBPFFS(t)
	if m, err := ReadMeta(dir); m != nil || err != nil {
		t.Fatalf("meta in an empty directory: %+v, %v", m, err)
	}
	want := Meta{Layout: "abc", Version: "v1", PID: 42, Mode: "audit", PolicyHash: "0123", StartedAt: time.Unix(1, 0).UTC(), Generation: 1}
	for i := range 3 {
		want.PID = 42 + i
		if err := WriteMeta(dir, &want); err != nil {
			t.Fatal(err)
		}
		got, err := ReadMeta(dir)
		if err != nil || got == nil || *got != want {
			t.Fatalf("read back %+v, %v; want %+v", got, err, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != MetaPin {
		t.Errorf("pin directory holds %v, want only %s", entries, MetaPin)
	}
}

func TestPinDirLockNamesTheHolder(t *testing.T) {
	dir := lab.PrivateBPFFS(t)
	if err := WriteMeta(dir, &Meta{PID: 4242}); err != nil {
		t.Fatal(err)
	}
	first, err := TakeLock(context.Background(), dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if held, err := DaemonHolds(dir); err != nil || !held {
		t.Errorf("DaemonHolds while locked: %v, %v", held, err)
	}
	var told int
	start := time.Now()
	_, err = TakeLock(context.Background(), dir, 300*time.Millisecond, func(pid int) { told = pid })
	if err == nil || !strings.Contains(err.Error(), "(pid 4242)") || told != 4242 || time.Since(start) < 300*time.Millisecond {
		t.Errorf("second lock: %v, told %d after %v; want a wait, then an error naming pid 4242", err, told, time.Since(start))
	}
	first.Release()
	if held, _ := DaemonHolds(dir); held {
		t.Error("lock still held after release")
	}
	second, err := TakeLock(context.Background(), dir, 0, nil)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	second.Release()
}

func TestPinDirOutsideBPFFSIsNamed(t *testing.T) {
	lab.RequirePrivileged(t)
	dir := filepath.Join(t.TempDir(), "imdsguard")
	err := EnsureBPFFS(dir)
	if err == nil || !strings.Contains(err.Error(), "is not on a BPF filesystem") {
		t.Errorf("pin dir on %s: %v, want an error naming the missing BPF filesystem", filepath.Dir(dir), err)
	}
}

// A stale pin of the same name (an earlier daemon's map) is replaced, and
// what a failed fresh start pinned is removed, leaving what it never makes
// (retired socket maps).
func TestPinReplacesAndRemovePinsClears(t *testing.T) {
	dir := lab.PrivateBPFFS(t)
	path := filepath.Join(dir, MapsDir, "counters")
	var ids []ebpf.MapID
	for range 2 {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		info, _ := m.Info()
		id, _ := info.ID()
		ids = append(ids, id)
		if err := Pin(path, m.Pin); err != nil {
			t.Fatalf("pin %d: %v", len(ids), err)
		}
	}
	got, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := got.Info()
	got.Close()
	if id, _ := info.ID(); id != ids[1] {
		t.Errorf("pinned map is %d, want the second one (%d), not the stale %d", id, ids[1], ids[0])
	}
	if err := os.MkdirAll(filepath.Join(dir, RetiredDir, "1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WriteMeta(dir, &Meta{PID: 1}); err != nil {
		t.Fatal(err)
	}
	RemovePins(dir)
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != RetiredDir {
		t.Errorf("after RemovePins the directory holds %v, want only %s", entries, RetiredDir)
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
			parent := filepath.Dir(Default)
			// Hide whatever is there with an empty tmpfs, as on a host
			// where nothing mounted bpffs.
			if err := unix.Mount("tmpfs", parent, "tmpfs", 0, "size=1m"); err != nil {
				return fmt.Errorf("hiding %s: %w", parent, err)
			}
			if ok, _ := isBPFFS(parent); ok {
				return fmt.Errorf("%s is bpffs under a fresh tmpfs", parent)
			}
			if err := EnsureBPFFS(Default); err != nil {
				return err
			}
			if ok, err := isBPFFS(parent); !ok {
				return fmt.Errorf("after EnsureBPFFS, %s is not bpffs (%v)", parent, err)
			}
			return EnsureBPFFS(Default) // a second call finds it mounted
		}()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
