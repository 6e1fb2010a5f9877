// Package pindir is the pin directory on the BPF filesystem: making sure it
// is on bpffs, its lock, the meta record that says what is pinned, and
// pinning a file in it.
//
// It is separate from the loader because everything here is about files
// and a lock, not about programs and hooks: `imdsguard status`, `detach`
// and the daemon all read the same directory, and the rules for it (meta
// written last and removed first, one daemon at a time) live in one place.
package pindir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Default is where the daemon pins its links, programs and maps, so the
// kernel keeps enforcing when the daemon is gone (crash, OOM kill,
// upgrade) and the next daemon can take them over.
const Default = "/sys/fs/bpf/imdsguard"

// Pin paths below the pin directory. MetaPin is written last and removed
// first: a directory without it is a takeover that did not finish, and the
// next daemon replaces whatever it finds there.
const (
	MetaPin    = "meta"
	MapsDir    = "maps"
	LinksDir   = "links"
	progsDir   = "progs"
	SkMsgPin   = progsDir + "/sk_msg"
	RetiredDir = "retired"
)

// EnsureBPFFS makes sure dir's parent is on a BPF filesystem. The usual
// place, /sys/fs/bpf, is mounted by systemd at boot; where nothing did, it
// is mounted here (the mount must reach the host for the pins to outlive
// this process, see docs).
func EnsureBPFFS(dir string) error {
	parent := filepath.Dir(filepath.Clean(dir))
	ok, err := isBPFFS(parent)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	if parent != filepath.Dir(Default) {
		return fmt.Errorf("%s is not on a BPF filesystem: mount one there (mount -t bpf bpf %s) or choose a pin directory under /sys/fs/bpf", parent, parent)
	}
	if err := unix.Mount("bpf", parent, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting the BPF filesystem on %s: %w", parent, err)
	}
	return nil
}

func isBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("checking the file system of %s: %w", path, err)
	}
	return st.Type == unix.BPF_FS_MAGIC, nil
}

// Pin pins an object at path with its pin method, replacing a stale pin of
// the same name (an earlier daemon's, or one a failed start left).
func Pin(path string, pin func(string) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale pin %s: %w", path, err)
	}
	if err := pin(path); err != nil {
		return fmt.Errorf("pinning %s: %w", path, err)
	}
	return nil
}

// RemovePins removes the pins a failed fresh start made (meta, maps, links
// and programs), so the next daemon finds the directory empty rather than
// an incomplete set it would have to replace.
func RemovePins(dir string) {
	for _, p := range []string{MetaPin, MapsDir, LinksDir, progsDir} {
		os.RemoveAll(filepath.Join(dir, p))
	}
}
