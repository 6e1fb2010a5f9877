package cgroupfs

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
)

// Scan walks the cgroup v2 hierarchy at mount and returns every cgroup's
// id with its path relative to the mount ("/" for the root). Cgroups that
// disappear during the walk are skipped.
func Scan(mount string) (map[uint64]string, error) {
	mount = filepath.Clean(mount)
	out := map[uint64]string{}
	err := filepath.WalkDir(mount, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while we walked
			}
			if p == mount {
				return err
			}
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		id, err := ID(p)
		if err != nil {
			return nil
		}
		rel := strings.TrimPrefix(p, mount)
		if rel == "" {
			rel = "/"
		}
		out[id] = rel
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
