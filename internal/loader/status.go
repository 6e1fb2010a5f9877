package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/imdsguard/imdsguard/bpf"
)

// Status is what is pinned in a pin directory, read without the daemon.
type Status struct {
	PinDir string `json:"pin_dir"`
	// Pinned is false when the directory holds no enforcement at all.
	Pinned bool `json:"pinned"`
	// Complete: meta and every hook, map and program are pinned; false
	// after a takeover cut short (the next daemon replaces it; `detach`
	// removes it).
	Complete bool `json:"complete"`
	Daemon   struct {
		Running bool `json:"running"`
		PID     int  `json:"pid,omitempty"`
	} `json:"daemon"`
	Meta     *Meta        `json:"meta,omitempty"`
	Hooks    []HookStatus `json:"hooks"`
	Counters *CounterView `json:"counters,omitempty"`
	// RetiredSocketMaps are socket maps of an earlier layout still judging
	// connections opened before a takeover.
	RetiredSocketMaps int `json:"retired_socket_maps"`
}

// HookStatus is one attached hook.
type HookStatus struct {
	Hook      string `json:"hook"`
	Attached  bool   `json:"attached"`
	ProgramID uint32 `json:"program_id,omitempty"`
	Program   string `json:"program,omitempty"`
	CgroupID  uint64 `json:"cgroup_id,omitempty"`
	// RunCount and RunTimeNs are the kernel's statistics for the program;
	// zero unless kernel.bpf_stats_enabled is on.
	RunCount  uint64 `json:"run_count,omitempty"`
	RunTimeNs uint64 `json:"run_time_ns,omitempty"`
}

// CounterView renders the counters for people and scripts.
type CounterView struct {
	Verdicts         map[string]uint64 `json:"verdicts"`
	CredentialAccess map[string]uint64 `json:"credential_access"`
	EventsLost       uint64            `json:"events_lost"`
	Unguarded        uint64            `json:"unguarded_connections"`
	Adopted          uint64            `json:"adopted_connections"`
}

// View renders the non-zero counters by name ("request_deny_imdsv1_no_token").
func (c Counters) View() *CounterView {
	v := &CounterView{Verdicts: map[string]uint64{}, CredentialAccess: map[string]uint64{},
		EventsLost: c.EventsLost(), Unguarded: c.Unguarded(), Adopted: c.Adopted()}
	for _, vd := range c.Verdicts() {
		v.Verdicts[vd.Name()] = vd.Count
	}
	for a := bpf.ActionAllow; a <= bpf.ActionAudit; a++ {
		if n := c.CredentialAccess(a); n > 0 {
			v.CredentialAccess[a.String()] = n
		}
	}
	return v
}

// PinnedMapIDs are the ids of the maps pinned at dir (Guard.MapIDs of the
// guard that pinned them), none when nothing is pinned.
func PinnedMapIDs(dir string) ([]ebpf.MapID, error) {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	pinned, err := openPinned(dir)
	if err != nil {
		return nil, err
	}
	defer pinned.close()
	return mapIDs(pinned.maps), nil
}

// ReadStatus reads what is pinned in dir. It takes no lock and changes
// nothing, so it works beside a running daemon.
func ReadStatus(dir string) (*Status, error) {
	st := &Status{PinDir: dir, Hooks: []HookStatus{}}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return st, nil
	} else if err != nil {
		return nil, fmt.Errorf("reading %s: %w", dir, err)
	}
	running, err := daemonHolds(dir)
	if err != nil {
		return nil, err
	}
	st.Daemon.Running = running
	pinned, err := openPinned(dir)
	if err != nil {
		return nil, err
	}
	defer pinned.close()
	st.Pinned = !pinned.empty()
	st.Meta = pinned.meta
	if running && st.Meta != nil {
		st.Daemon.PID = st.Meta.PID
	}
	complete := pinned.meta != nil && pinned.skMsg != nil
	hs := HookStatus{Hook: "sk_msg", Attached: pinned.skMsg != nil && pinned.maps[bpf.ImdsguardMapImdsSocks] != nil}
	if pinned.skMsg != nil {
		describeProgram(&hs, pinned.skMsg)
	}
	st.Hooks = append(st.Hooks, hs)
	for _, h := range cgroupHooks {
		hs := HookStatus{Hook: h.name}
		if l := pinned.links[h.name]; l != nil {
			if info, err := l.Info(); err == nil {
				if cg := info.Cgroup(); cg != nil && cg.CgroupId != 0 {
					hs.Attached = true
					hs.CgroupID = cg.CgroupId
				}
				if p, err := ebpf.NewProgramFromID(info.Program); err == nil {
					describeProgram(&hs, p)
					p.Close()
				}
			}
		}
		complete = complete && hs.Attached
		st.Hooks = append(st.Hooks, hs)
	}
	// optional (sockopt_all.c): listed where it is, not needed for complete
	if l := pinned.links[hookSetsockoptAll]; l != nil {
		hs := HookStatus{Hook: hookSetsockoptAll, Attached: true}
		if p, err := linkProgram(l); err == nil {
			describeProgram(&hs, p)
			p.Close()
		}
		st.Hooks = append(st.Hooks, hs)
	}
	if m := pinned.maps[bpf.ImdsguardMapCounters]; m != nil {
		if c, err := ReadCounters(m); err == nil {
			st.Counters = c.View()
		}
	}
	retired, _ := filepath.Glob(filepath.Join(dir, pinRetired, "*"))
	st.RetiredSocketMaps = len(retired)
	st.Complete = complete
	return st, nil
}

func describeProgram(hs *HookStatus, p *ebpf.Program) {
	info, err := p.Info()
	if err != nil {
		return
	}
	if id, ok := info.ID(); ok {
		hs.ProgramID = uint32(id)
	}
	hs.Program = info.Name
	if stats, err := p.Stats(); err == nil {
		hs.RunCount = stats.RunCount
		hs.RunTimeNs = uint64(stats.Runtime)
	}
}
