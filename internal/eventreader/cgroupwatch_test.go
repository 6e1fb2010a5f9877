package eventreader

import (
	"context"
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
