package pindir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
)

// metaSize is the value size of the meta map. Its shape never changes, so
// every version of imdsguard can read every other version's meta.
const metaSize = 4096

// Meta describes the pinned enforcement; `imdsguard status` shows it.
type Meta struct {
	// Layout identifies the maps' shapes and meaning (the loader hashes
	// it from the object); a daemon reuses pinned maps only when its
	// layout is the same.
	Layout  string `json:"layout"`
	Version string `json:"version"`
	// PID of the daemon that last took over; it may be gone.
	PID  int    `json:"pid"`
	Mode string `json:"mode"`
	// Cloud is the cloud profile of the policy in force.
	Cloud           string    `json:"cloud,omitempty"`
	PolicyHash      string    `json:"policy_hash"`
	PolicySource    string    `json:"policy_source"`
	PolicyLoadedAt  time.Time `json:"policy_loaded_at"`
	StartedAt       time.Time `json:"started_at"`
	Cgroup          string    `json:"cgroup"`
	CgroupID        uint64    `json:"cgroup_id"`
	HostNetnsCookie uint64    `json:"host_netns_cookie"`
	// HostNetns is the namespace path given to the daemon ("" for its
	// own): where its nftables table is.
	HostNetns string `json:"host_netns,omitempty"`
	// HostNetnsInode is that namespace's nsfs inode (net:[N] in lsns),
	// and HostNetnsPath a path to it that outlives the daemon
	// (/proc/1/ns/net, /run/netns/NAME), "" when there is none: detach
	// and status, run from another namespace, find the table by them,
	// checking the cookie (internal/hostnetns).
	HostNetnsInode uint64 `json:"host_netns_inode,omitempty"`
	HostNetnsPath  string `json:"host_netns_path,omitempty"`
	Generation     uint32 `json:"generation"`
	// LastRescanAt is when the daemon last scanned the cgroup tree (new
	// cgroups get their rules then), written at most once a second.
	LastRescanAt time.Time `json:"last_rescan_at"`
}

// ReadMeta returns the pinned meta, nil when there is none.
func ReadMeta(dir string) (*Meta, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, MetaPin), &ebpf.LoadPinOptions{ReadOnly: true})
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

// WriteMeta pins meta, replacing any previous one. A fresh map is created
// and pinned under a temporary name, then renamed over the old pin, so a
// reader sees the old meta or the new one, never none.
func WriteMeta(dir string, meta *Meta) error {
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
	tmp := filepath.Join(dir, MetaPin+"_new") // bpffs refuses names with a dot
	_ = os.Remove(tmp)
	if err := m.Pin(tmp); err != nil {
		return fmt.Errorf("pinning meta: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, MetaPin)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("pinning meta: %w", err)
	}
	return nil
}
