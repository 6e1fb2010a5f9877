package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/counters"
	"github.com/imdsguard/imdsguard/internal/pindir"
)

// Status is what is pinned in a pin directory, read without the daemon
// (`imdsguard status` and `detach`). It is read here, not in pindir,
// because the hooks it lists come from the same table (cgroupHooks) that
// attach, pin and takeover use: a hook added there is shown without anyone
// listing it twice.
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
	Meta     *pindir.Meta   `json:"meta,omitempty"`
	Hooks    []HookStatus   `json:"hooks"`
	Counters *counters.View `json:"counters,omitempty"`
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
	running, err := pindir.DaemonHolds(dir)
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
		if c, err := counters.Read(m); err == nil {
			st.Counters = c.View()
		}
	}
	retired, _ := filepath.Glob(filepath.Join(dir, pindir.RetiredDir, "*"))
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
