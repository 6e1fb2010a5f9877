package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/imdsguard/imdsguard/internal/pindir"
)

// pinnedState is what an earlier daemon left in the pin directory. Every
// field may be missing: a takeover can have been cut short at any step.
type pinnedState struct {
	meta  *pindir.Meta
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
	if s.meta, err = pindir.ReadMeta(dir); err != nil {
		return nil, err
	}
	fail := func(e error) (*pinnedState, error) {
		s.close()
		return nil, e
	}
	entries, err := os.ReadDir(filepath.Join(dir, pindir.MapsDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail(fmt.Errorf("listing pinned maps: %w", err))
	}
	for _, e := range entries {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, pindir.MapsDir, e.Name()), nil)
		if err != nil {
			return fail(fmt.Errorf("opening pinned map %s: %w", e.Name(), err))
		}
		s.maps[e.Name()] = m
	}
	entries, err = os.ReadDir(filepath.Join(dir, pindir.LinksDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail(fmt.Errorf("listing pinned links: %w", err))
	}
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, pindir.LinksDir, e.Name()), nil)
		if err != nil {
			return fail(fmt.Errorf("opening pinned link %s: %w", e.Name(), err))
		}
		s.links[e.Name()] = l
	}
	p, err := ebpf.LoadPinnedProgram(filepath.Join(dir, pindir.SkMsgPin), nil)
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
