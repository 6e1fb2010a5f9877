package lab

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// PrivateBPFFS mounts a BPF filesystem of the test's own (unmounted when
// it ends) and returns a directory in it: pins made there never meet a
// running daemon's. It calls RequirePrivileged first.
func PrivateBPFFS(t testing.TB) string {
	t.Helper()
	RequirePrivileged(t)
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
