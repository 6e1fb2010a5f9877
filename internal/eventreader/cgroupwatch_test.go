package eventreader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// A cgroup made and removed again before its event is read (a one-shot
// container) is still named: the watch cached it when it was made. A
// plain directory tree stands in for the cgroup mount (ids are inode
// numbers in both).
func TestWatchNamesCgroupsGoneBeforeTheirEvent(t *testing.T) {
	mount := t.TempDir()
	r, err := NewCgroupResolver(mount)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := os.MkdirAll(filepath.Join(mount, "kubepods", "besteffort"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Watch(ctx, zap.NewNop())

	pod := filepath.Join(mount, "kubepods", "besteffort", "pod1")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		// made until the watch runs: a made-before-the-watch tree is read too
		if err := os.MkdirAll(filepath.Join(pod, "ctr"), 0o755); err != nil {
			t.Fatal(err)
		}
		id := inodeOf(t, filepath.Join(pod, "ctr"))
		time.Sleep(50 * time.Millisecond)
		if err := os.RemoveAll(pod); err != nil {
			t.Fatal(err)
		}
		if got := r.Path(id); got == "/kubepods/besteffort/pod1/ctr" {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("a removed cgroup's path: %q, want /kubepods/besteffort/pod1/ctr", got)
		}
	}
}

func inodeOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// A node with more cgroups than any cache bound keeps every one named: an
// id the watch did not report could only be opened by its handle, which
// needs CAP_DAC_READ_SEARCH, and the daemon does not ask for it.
func TestWatchNamesEveryCgroupOfABigTree(t *testing.T) {
	mount := t.TempDir()
	n := maxLookedUp + 100
	for i := range n {
		if err := os.Mkdir(filepath.Join(mount, fmt.Sprintf("c%05d", i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r, err := NewCgroupResolver(mount)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.resolve = func(uint64) (string, error) { return "", errors.New("open_by_handle_at: operation not permitted") }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Watch(ctx, zap.NewNop())

	last := inodeOf(t, filepath.Join(mount, fmt.Sprintf("c%05d", n-1)))
	for deadline := time.Now().Add(10 * time.Second); r.Path(last) == ""; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the watch never read the tree")
		}
	}
	missing := 0
	for i := range n {
		name := fmt.Sprintf("c%05d", i)
		if got := r.Path(inodeOf(t, filepath.Join(mount, name))); got != "/"+name {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d cgroups have no path", missing, n)
	}
}
