// Package cgroupfs finds and checks the cgroup v2 hierarchy.
package cgroupfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// V2Mount finds the cgroup v2 hierarchy: /sys/fs/cgroup on unified hosts,
// /sys/fs/cgroup/unified on hybrid ones, else any cgroup2 mount.
func V2Mount() (string, error) {
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if IsV2(p) == nil {
			return p, nil
		}
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("reading mountinfo: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		// "id parent major:minor root mountpoint opts … - fstype source superopts"
		left, right, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) >= 5 && len(rf) >= 1 && rf[0] == "cgroup2" {
			return lf[4], nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted (imdsguard needs cgroup v2; mount it or pass --cgroup DIR)")
}

// IsV2 reports whether dir is a directory on a cgroup2 filesystem.
func IsV2(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not a cgroup v2 directory", filepath.Clean(dir))
	}
	return nil
}

// ID returns the kernel's id of the cgroup at dir (its inode number on
// cgroup2), the value bpf_get_current_cgroup_id reports.
func ID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", dir, err)
	}
	return st.Ino, nil
}
