// Package cgroupfs finds and checks the cgroup v2 hierarchy.
package cgroupfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
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
	mounts, err := cgroup2Mounts()
	if err != nil {
		return "", err
	}
	if len(mounts) > 0 {
		return mounts[0].Point, nil
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted (imdsguard needs cgroup v2; mount it or pass --cgroup DIR)")
}

// MountOf returns the mount point of the cgroup2 file system holding dir:
// the root that cgroup paths in events and policy rules are relative to.
// In a container given the host's hierarchy (e.g. at /run/imdsguard/cgroup),
// that is the host's root, not the container's own /sys/fs/cgroup.
func MountOf(dir string) (string, error) {
	m, _, err := mountOf(dir)
	return m.Point, err
}

// Level returns the depth of the cgroup at dir in its hierarchy (0 for
// the root), as bpf_skb_ancestor_cgroup_id counts levels: the depth of the
// mount's own root plus that of dir below the mount point.
func Level(dir string) (int, error) {
	m, rel, err := mountOf(dir)
	if err != nil {
		return 0, err
	}
	if strings.HasPrefix(m.Root, "/..") {
		return 0, fmt.Errorf("%s: the cgroup mount at %s shows a cgroup outside this cgroup namespace (%s)", dir, m.Point, m.Root)
	}
	return depth(m.Root) + depth(rel), nil
}

// depth counts the components of a slash-separated path ("/", "." and ""
// have none).
func depth(p string) int {
	n := 0
	for _, part := range strings.Split(p, "/") {
		if part != "" && part != "." {
			n++
		}
	}
	return n
}

// mountOf finds the cgroup2 mount holding dir and dir's path below it.
func mountOf(dir string) (Mount, string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Mount{}, "", err
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return Mount{}, "", fmt.Errorf("%s: %w", dir, err)
	}
	mounts, err := cgroup2Mounts()
	if err != nil {
		return Mount{}, "", err
	}
	var best Mount
	for _, m := range mounts {
		if (abs == m.Point || strings.HasPrefix(abs, strings.TrimSuffix(m.Point, "/")+"/")) && len(m.Point) > len(best.Point) {
			best = m
		}
	}
	if best.Point == "" {
		return Mount{}, "", fmt.Errorf("%s is not under a cgroup v2 mount", dir)
	}
	rel, err := filepath.Rel(best.Point, abs)
	if err != nil {
		return Mount{}, "", err
	}
	return best, rel, nil
}

// Mount is one cgroup2 mount: its mount point, and the cgroup it shows
// there (its root within the hierarchy: "/" unless it is a bind mount of
// a subtree or seen from a cgroup namespace).
type Mount struct {
	Point string
	Root  string
}

// ParseMounts returns the cgroup2 mounts listed in a mountinfo file, in
// order.
func ParseMounts(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		// "id parent major:minor root mountpoint opts [optional…] - fstype source superopts"
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) >= 5 && len(rf) >= 1 && rf[0] == "cgroup2" {
			out = append(out, Mount{Point: unescapeMountinfo(lf[4]), Root: unescapeMountinfo(lf[3])})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	return out, nil
}

// cgroup2Mounts lists the cgroup2 mounts.
func cgroup2Mounts() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	defer f.Close()
	return ParseMounts(f)
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
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
