package eventreader

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// fileIDKernfs is the file handle type under which cgroupfs accepts a cgroup
// id (include/linux/exportfs.h, FILEID_KERNFS).
const fileIDKernfs = 0xfe

// maxCachedCgroups bounds the id -> path cache; ids are never reused, so an
// entry never goes stale, but a node churning pods must not grow it forever.
const maxCachedCgroups = 8192

// CgroupResolver turns kernel cgroup ids into cgroup v2 paths ("/kubepods/…").
type CgroupResolver struct {
	mount   string
	mountFD int

	mu    sync.Mutex
	cache map[uint64]string
}

// NewCgroupResolver resolves ids within the cgroup v2 hierarchy at mount.
func NewCgroupResolver(mount string) (*CgroupResolver, error) {
	fd, err := unix.Open(mount, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening cgroup mount %s: %w", mount, err)
	}
	return &CgroupResolver{mount: filepath.Clean(mount), mountFD: fd, cache: map[uint64]string{}}, nil
}

// Path returns the path of the cgroup with the given id relative to the
// mount ("/" for the root), or "" when the cgroup no longer exists.
func (r *CgroupResolver) Path(id uint64) string {
	r.mu.Lock()
	p, ok := r.cache[id]
	r.mu.Unlock()
	if ok {
		return p
	}
	p, err := r.lookup(id)
	if err != nil {
		return ""
	}
	r.store(id, p)
	return p
}

func (r *CgroupResolver) store(id uint64, p string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= maxCachedCgroups {
		clear(r.cache)
	}
	r.cache[id] = p
}

// lookup opens the cgroup by its id (cgroupfs exports ids as file handles)
// and reads back the path the kernel gives the open directory.
func (r *CgroupResolver) lookup(id uint64) (string, error) {
	handle := make([]byte, 8)
	binary.NativeEndian.PutUint64(handle, id)
	fd, err := unix.OpenByHandleAt(r.mountFD, unix.NewFileHandle(fileIDKernfs, handle), unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return "", fmt.Errorf("opening cgroup %d by handle: %w", id, err)
	}
	defer unix.Close(fd)
	abs, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", fmt.Errorf("reading cgroup %d path: %w", id, err)
	}
	// a cgroup removed while open reads back with this suffix
	abs = strings.TrimSuffix(abs, " (deleted)")
	rel, ok := strings.CutPrefix(abs, r.mount)
	if !ok {
		return "", fmt.Errorf("cgroup %d path %q is outside %s", id, abs, r.mount)
	}
	if rel == "" {
		rel = "/"
	}
	return rel, nil
}

// Close releases the mount descriptor.
func (r *CgroupResolver) Close() error { return unix.Close(r.mountFD) }
