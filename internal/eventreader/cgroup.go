package eventreader

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// fileIDKernfs is the file handle type under which cgroupfs accepts a cgroup
// id (include/linux/exportfs.h, FILEID_KERNFS).
const fileIDKernfs = 0xfe

// maxLookedUp bounds the ids resolved by open_by_handle_at (those the
// watch did not report: no inotify, or out of watches); ids are never
// reused, so an entry never goes stale, but a node churning pods must not
// grow it forever.
const maxLookedUp = 8192

// maxRemembered bounds the removed cgroups kept for events read after the
// removal (a one-shot container's): the most recent ones.
const maxRemembered = 8192

// CgroupResolver turns kernel cgroup ids into cgroup v2 paths ("/kubepods/…").
type CgroupResolver struct {
	mount   string
	mountFD int

	mu sync.Mutex
	// live holds every cgroup the watch reported made and not removed,
	// however many there are: an id it lacks can be resolved only by
	// open_by_handle_at, which needs CAP_DAC_READ_SEARCH the daemon does
	// not ask for. byPath is its inverse (removals are reported by path).
	live   map[uint64]string
	byPath map[string]uint64
	// gone are removed cgroups, oldest first in goneOrder.
	gone      map[uint64]string
	goneOrder []uint64
	looked    map[uint64]string // resolved by lookup, at most maxLookedUp
	// resolve is lookup; a test stands in a daemon without the capability
	resolve func(id uint64) (string, error)
}

// NewCgroupResolver resolves ids within the cgroup v2 hierarchy at mount.
func NewCgroupResolver(mount string) (*CgroupResolver, error) {
	fd, err := unix.Open(mount, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening cgroup mount %s: %w", mount, err)
	}
	r := &CgroupResolver{mount: filepath.Clean(mount), mountFD: fd, live: map[uint64]string{}, byPath: map[string]uint64{},
		gone: map[uint64]string{}, looked: map[uint64]string{}}
	r.resolve = r.lookup
	return r, nil
}

// Path returns the path of the cgroup with the given id relative to the
// mount ("/" for the root), or "" when the cgroup no longer exists.
func (r *CgroupResolver) Path(id uint64) string {
	if p, ok := r.known(id); ok {
		return p
	}
	p, err := r.resolve(id)
	if err != nil {
		return ""
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.looked) >= maxLookedUp {
		clear(r.looked)
	}
	r.looked[id] = p
	return p
}

func (r *CgroupResolver) known(id uint64) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.live[id]; ok {
		return p, true
	}
	if p, ok := r.gone[id]; ok {
		return p, true
	}
	p, ok := r.looked[id]
	return p, ok
}

// store records a cgroup the watch saw made (or found in the tree).
func (r *CgroupResolver) store(id uint64, p string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.byPath[p]; ok && old != id {
		delete(r.live, old) // removed and made again: a new cgroup
	}
	r.live[id] = p
	r.byPath[p] = id
}

// forget moves the cgroup at path p, which the watch saw removed, to the
// removed ones: events read after the removal still name it.
func (r *CgroupResolver) forget(p string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.byPath[p]
	if !ok {
		return
	}
	delete(r.byPath, p)
	delete(r.live, id)
	r.gone[id] = p
	r.goneOrder = append(r.goneOrder, id)
	if len(r.goneOrder) > maxRemembered {
		delete(r.gone, r.goneOrder[0])
		r.goneOrder = slices.Delete(r.goneOrder, 0, 1)
	}
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
