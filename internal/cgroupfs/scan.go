package cgroupfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Scan walks the cgroup v2 hierarchy at mount and returns every cgroup's
// id with its path relative to the mount ("/" for the root). Cgroups that
// disappear during the walk are skipped.
//
// It runs every rescan over trees of tens of thousands of cgroups, each
// directory holding some 50 control files, so it reads directory entries
// raw: the entry's type says which are cgroups and its inode number is the
// cgroup id, with no stat, sort or allocation per file.
func Scan(mount string) (map[uint64]string, error) {
	mount = filepath.Clean(mount)
	rootID, err := ID(mount)
	if err != nil {
		return nil, err
	}
	out := map[uint64]string{rootID: "/"}
	buf := make([]byte, 32<<10)
	if err := scanDir(mount, "", out, buf); err != nil {
		return nil, fmt.Errorf("reading %s: %w", mount, err)
	}
	return out, nil
}

// ScanSubtree returns the cgroup at rel (a path relative to mount, as Scan
// gives them) and every cgroup below it: what a cgroup made since the last
// look brought, read without walking the rest of the tree. A cgroup that is
// gone returns an error wrapping fs.ErrNotExist.
func ScanSubtree(mount, rel string) (map[uint64]string, error) {
	dir := filepath.Join(filepath.Clean(mount), rel)
	id, err := ID(dir)
	if err != nil {
		return nil, err
	}
	out := map[uint64]string{id: rel}
	if rel == "/" {
		rel = ""
	}
	if err := scanDir(dir, rel, out, make([]byte, 32<<10)); err != nil {
		return nil, fmt.Errorf("reading %s: %w", dir, err)
	}
	return out, nil
}

// scanDir adds the cgroups below dir (rel relative to the mount).
func scanDir(dir, rel string, out map[uint64]string, buf []byte) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	type child struct {
		name string
		ino  uint64
	}
	var children []child
	for {
		n, err := unix.Getdents(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			unix.Close(fd)
			return err
		}
		if n <= 0 {
			break
		}
		// struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; char name[]; }
		for off := 0; off+19 <= n; {
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			if reclen == 0 || off+reclen > n {
				break
			}
			if buf[off+18] == unix.DT_DIR {
				name := buf[off+19 : off+reclen]
				if i := indexNUL(name); i >= 0 {
					name = name[:i]
				}
				if s := string(name); s != "." && s != ".." {
					children = append(children, child{s, binary.NativeEndian.Uint64(buf[off:])})
				}
			}
			off += reclen
		}
	}
	unix.Close(fd)
	for _, c := range children {
		p := rel + "/" + c.name
		out[c.ino] = p
		// A cgroup removed while we walk goes with its subtree; the
		// next rescan sees the tree as it is then.
		_ = scanDir(filepath.Join(dir, c.name), p, out, buf)
	}
	return nil
}

func indexNUL(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}
