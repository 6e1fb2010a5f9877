package loader

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/bpf"
)

// DefaultPinDir is where the daemon pins its links, programs and maps, so
// the kernel keeps enforcing when the daemon is gone (crash, OOM kill,
// upgrade) and the next daemon can take them over.
const DefaultPinDir = "/sys/fs/bpf/imdsguard"

// abiVersion is part of the layout: bump it when the meaning of a map's
// contents changes without its shape changing (a flag bit reused, a counter
// slot moved), so a daemon never shares maps with programs that read them
// differently.
const abiVersion = 1

// Pin paths below the pin directory. meta is written last and removed
// first: a directory without it is a takeover that did not finish, and the
// next daemon replaces whatever it finds there.
const (
	pinMeta    = "meta"
	pinMaps    = "maps"
	pinLinks   = "links"
	pinSkMsg   = "progs/sk_msg"
	pinRetired = "retired"
)

// metaSize is the value size of the meta map. Its shape never changes, so
// every version of imdsguard can read every other version's meta.
const metaSize = 4096

// Meta describes the pinned enforcement; `imdsguard status` shows it.
type Meta struct {
	// Layout identifies the maps' shapes and meaning (see layoutOf); a
	// daemon reuses pinned maps only when its layout is the same.
	Layout  string `json:"layout"`
	Version string `json:"version"`
	// PID of the daemon that last took over; it may be gone.
	PID             int       `json:"pid"`
	Mode            string    `json:"mode"`
	PolicyHash      string    `json:"policy_hash"`
	PolicySource    string    `json:"policy_source"`
	PolicyLoadedAt  time.Time `json:"policy_loaded_at"`
	StartedAt       time.Time `json:"started_at"`
	Cgroup          string    `json:"cgroup"`
	CgroupID        uint64    `json:"cgroup_id"`
	HostNetnsCookie uint64    `json:"host_netns_cookie"`
	// HostNetns is the namespace path given to the daemon ("" for its
	// own): where its nftables table is.
	HostNetns  string `json:"host_netns,omitempty"`
	Generation uint32 `json:"generation"`
	// LastRescanAt is when the daemon last scanned the cgroup tree (new
	// cgroups get their rules then), written at most once a second.
	LastRescanAt time.Time `json:"last_rescan_at"`
}

// cgroupHooks drives attach, pin, takeover, detach and status, in attach
// order: the egress guard before the connect hooks that mark the sockets
// it checks, the setsockopt guard (which keeps packet sockets from sending
// past the uplink guard), then sockops, the connect hooks last.
//
// beside: in a replacing takeover the new program is attached next to the
// old one (each guards what its own programs set up) rather than switched
// in place.
var cgroupHooks = []struct {
	name   string
	attach ebpf.AttachType
	prog   func(*bpf.ImdsguardPrograms) *ebpf.Program
	beside bool
}{
	{"egress", ebpf.AttachCGroupInetEgress, func(p *bpf.ImdsguardPrograms) *ebpf.Program { return p.ImdsEgress }, true},
	{"setsockopt", ebpf.AttachCGroupSetsockopt, func(p *bpf.ImdsguardPrograms) *ebpf.Program { return p.ImdsSetsockopt }, true},
	{"sockops", ebpf.AttachCGroupSockOps, func(p *bpf.ImdsguardPrograms) *ebpf.Program { return p.ImdsSockops }, false},
	{"connect4", ebpf.AttachCGroupInet4Connect, func(p *bpf.ImdsguardPrograms) *ebpf.Program { return p.ImdsConnect4 }, false},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(p *bpf.ImdsguardPrograms) *ebpf.Program { return p.ImdsConnect6 }, false},
}

// sharedMaps are the maps pinned and shared across daemons: every map of
// the object but the internal data sections, which belong to one load.
func sharedMaps(spec *ebpf.CollectionSpec) []string {
	var names []string
	for name := range spec.Maps {
		if !strings.HasPrefix(name, ".") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// layoutOf hashes what two daemons must agree on to share maps: each map's
// type, sizes, flags and the member layout of its key and value types.
func layoutOf(spec *ebpf.CollectionSpec) string {
	h := sha256.New()
	fmt.Fprintf(h, "abi %d\n", abiVersion)
	for _, name := range sharedMaps(spec) {
		m := spec.Maps[name]
		fmt.Fprintf(h, "%s %s %d %d %d %#x %s %s\n", name, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, m.Flags,
			typeShape(m.Key, 0), typeShape(m.Value, 0))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// typeShape renders a BTF type's member names, offsets and sizes.
func typeShape(t btf.Type, depth int) string {
	if t == nil || depth > 8 {
		return "?"
	}
	t = btf.UnderlyingType(t)
	switch v := t.(type) {
	case *btf.Struct:
		return compositeShape("struct", v.Size, v.Members, depth)
	case *btf.Union:
		return compositeShape("union", v.Size, v.Members, depth)
	case *btf.Array:
		return fmt.Sprintf("[%d]%s", v.Nelems, typeShape(v.Type, depth+1))
	case *btf.Int:
		return fmt.Sprintf("int%d", v.Size*8)
	case *btf.Enum:
		return fmt.Sprintf("enum%d", v.Size*8)
	case *btf.Pointer:
		return "ptr"
	default:
		return fmt.Sprintf("%T", t)
	}
}

func compositeShape(kind string, size uint32, members []btf.Member, depth int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s%d{", kind, size)
	for _, m := range members {
		fmt.Fprintf(&b, "%s@%d:%s;", m.Name, m.Offset, typeShape(m.Type, depth+1))
	}
	b.WriteString("}")
	return b.String()
}

// ensureBPFFS makes sure dir's parent is on a BPF filesystem. The usual
// place, /sys/fs/bpf, is mounted by systemd at boot; where nothing did, it
// is mounted here (the mount must reach the host for the pins to outlive
// this process, see docs).
func ensureBPFFS(dir string) error {
	parent := filepath.Dir(filepath.Clean(dir))
	ok, err := isBPFFS(parent)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	if parent != filepath.Dir(DefaultPinDir) {
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

// pinLock is an exclusive flock on the pin directory, held for the
// daemon's lifetime: two daemons writing the same maps would undo each
// other's policy. The kernel drops it when the holder dies, however it dies.
type pinLock struct{ fd int }

func openPinDir(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening pin directory: %w", err)
	}
	return fd, nil
}

// lockPinDir takes the lock, waiting up to wait for a previous daemon (a
// pod being replaced, a unit being restarted) to let go, or until ctx ends
// (the daemon was told to stop meanwhile).
func lockPinDir(ctx context.Context, dir string, wait time.Duration, waiting func(holder int)) (*pinLock, error) {
	fd, err := openPinDir(dir)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	told := false
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &pinLock{fd: fd}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			unix.Close(fd)
			return nil, fmt.Errorf("locking pin directory %s: %w", dir, err)
		}
		holder := 0
		if m, _ := readMeta(dir); m != nil {
			holder = m.PID
		}
		if time.Now().After(deadline) {
			unix.Close(fd)
			return nil, fmt.Errorf("another imdsguard (pid %d) holds %s: stop it first", holder, dir)
		}
		if !told && waiting != nil {
			waiting(holder)
			told = true
		}
		select {
		case <-ctx.Done():
			unix.Close(fd)
			return nil, fmt.Errorf("stopped while waiting for the imdsguard (pid %d) that holds %s: %w", holder, dir, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (l *pinLock) release() {
	if l != nil && l.fd >= 0 {
		unix.Close(l.fd)
		l.fd = -1
	}
}

// daemonHolds reports whether a live daemon holds the pin directory's lock.
func daemonHolds(dir string) (bool, error) {
	fd, err := openPinDir(dir)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	err = unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("probing the lock on %s: %w", dir, err)
	}
	return false, nil
}

// readMeta returns the pinned meta, nil when there is none.
func readMeta(dir string) (*Meta, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinMeta), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening pinned meta: %w", err)
	}
	defer m.Close()
	buf := make([]byte, metaSize)
	if err := m.Lookup(uint32(0), &buf); err != nil {
		return nil, fmt.Errorf("reading pinned meta: %w", err)
	}
	var meta Meta
	if err := json.Unmarshal(bytes.TrimRight(buf, "\x00"), &meta); err != nil {
		return nil, fmt.Errorf("decoding pinned meta: %w", err)
	}
	return &meta, nil
}

// writeMeta pins meta, replacing any previous one. A fresh map is created
// and pinned under a temporary name, then renamed over the old pin, so a
// reader sees the old meta or the new one, never none.
func writeMeta(dir string, meta *Meta) error {
	data, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("encoding meta: %w", err)
	}
	if len(data) > metaSize {
		return fmt.Errorf("encoding meta: %d bytes, at most %d", len(data), metaSize)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "imdsguard_meta", Type: ebpf.Array, KeySize: 4, ValueSize: metaSize, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("creating meta map: %w", err)
	}
	defer m.Close()
	buf := make([]byte, metaSize)
	copy(buf, data)
	if err := m.Update(uint32(0), buf, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("writing meta: %w", err)
	}
	tmp := filepath.Join(dir, pinMeta+"_new") // bpffs refuses names with a dot
	_ = os.Remove(tmp)
	if err := m.Pin(tmp); err != nil {
		return fmt.Errorf("pinning meta: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, pinMeta)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("pinning meta: %w", err)
	}
	return nil
}

// pinnedState is what an earlier daemon left in the pin directory. Every
// field may be missing: a takeover can have been cut short at any step.
type pinnedState struct {
	meta  *Meta
	maps  map[string]*ebpf.Map
	links map[string]link.Link
	skMsg *ebpf.Program
}

func (s *pinnedState) empty() bool {
	return s.meta == nil && len(s.maps) == 0 && len(s.links) == 0 && s.skMsg == nil
}

func (s *pinnedState) close() {
	for _, m := range s.maps {
		m.Close()
	}
	for _, l := range s.links {
		l.Close()
	}
	if s.skMsg != nil {
		s.skMsg.Close()
	}
}

// openPinned opens what is pinned in dir. A pin it cannot open is an error:
// the caller must not guess what holds the hooks.
func openPinned(dir string) (*pinnedState, error) {
	s := &pinnedState{maps: map[string]*ebpf.Map{}, links: map[string]link.Link{}}
	var err error
	if s.meta, err = readMeta(dir); err != nil {
		return nil, err
	}
	fail := func(e error) (*pinnedState, error) {
		s.close()
		return nil, e
	}
	entries, err := os.ReadDir(filepath.Join(dir, pinMaps))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail(fmt.Errorf("listing pinned maps: %w", err))
	}
	for _, e := range entries {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinMaps, e.Name()), nil)
		if err != nil {
			return fail(fmt.Errorf("opening pinned map %s: %w", e.Name(), err))
		}
		s.maps[e.Name()] = m
	}
	entries, err = os.ReadDir(filepath.Join(dir, pinLinks))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail(fmt.Errorf("listing pinned links: %w", err))
	}
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, pinLinks, e.Name()), nil)
		if err != nil {
			return fail(fmt.Errorf("opening pinned link %s: %w", e.Name(), err))
		}
		s.links[e.Name()] = l
	}
	p, err := ebpf.LoadPinnedProgram(filepath.Join(dir, pinSkMsg), nil)
	switch {
	case err == nil:
		s.skMsg = p
	case !errors.Is(err, os.ErrNotExist):
		return fail(fmt.Errorf("opening pinned sk_msg program: %w", err))
	}
	return s, nil
}

// linkCgroup returns the cgroup id a pinned cgroup link is attached to.
func linkCgroup(l link.Link) (uint64, error) {
	info, err := l.Info()
	if err != nil {
		return 0, fmt.Errorf("reading link info: %w", err)
	}
	cg := info.Cgroup()
	if cg == nil {
		return 0, fmt.Errorf("link %d is not a cgroup link", info.ID)
	}
	return cg.CgroupId, nil
}

// pinObject pins obj at path, replacing a stale pin of the same name.
func pinObject(path string, pin func(string) error) error {
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
