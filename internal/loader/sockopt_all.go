package loader

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/pindir"
)

// hookSetsockoptAll names the optional setsockopt guard on the LSM hook
// (bpf/sockopt_all.c) among the links and their pins.
const hookSetsockoptAll = "setsockopt_all"

// attachSetsockoptAll puts imds_setsockopt_all on
// security_socket_setsockopt, which also sees the 32-bit compat calls that
// the cgroup setsockopt hook misses. It is optional: a kernel without BTF
// or BPF trampolines, or one that refuses BPF tracing (lockdown, an LSM),
// keeps the cgroup hook alone, and the log says so. With pin, the new link
// is pinned over an earlier daemon's, which goes when its last descriptor
// closes (a replacing takeover pins it with the other new links instead).
// It does nothing if the link is there already.
func (g *Guard) attachSetsockoptAll(pin bool) {
	if g.links[hookSetsockoptAll] != nil {
		return
	}
	start := time.Now()
	l, err := g.loadSetsockoptAll()
	if err != nil {
		g.log.Warn("32-bit (compat) setsockopt calls are not guarded on this kernel: PACKET_QDISC_BYPASS and AF_XDP are refused to 64-bit callers only", zap.Error(err))
		return
	}
	g.links[hookSetsockoptAll] = l
	g.log.Info("setsockopt guard for 32-bit calls on security_socket_setsockopt", zap.Duration("took", time.Since(start)))
	if !pin || g.pinDir == "" {
		return
	}
	if err := pindir.Pin(filepath.Join(g.pinDir, pindir.LinksDir, hookSetsockoptAll), l.Pin); err != nil {
		g.log.Warn("the setsockopt guard for compat calls lasts only as long as this daemon", zap.Error(err))
	}
}

// loadSetsockoptAll loads the program on the guard's own config and
// counters, and attaches it.
func (g *Guard) loadSetsockoptAll() (link.Link, error) {
	spec, err := bpf.LoadSockoptAll()
	if err != nil {
		return nil, fmt.Errorf("reading the setsockopt guard's spec: %w", err)
	}
	replacements := map[string]*ebpf.Map{}
	for name, m := range g.mapsByName() {
		if _, ok := spec.Maps[name]; ok {
			replacements[name] = m
		}
	}
	var progs bpf.SockoptAllPrograms
	if err := spec.LoadAndAssign(&progs, loadOptions(replacements)); err != nil {
		return nil, fmt.Errorf("loading the setsockopt guard (fmod_ret/security_socket_setsockopt): %w", err)
	}
	defer progs.Close() // the link holds the program
	l, err := link.AttachTracing(link.TracingOptions{Program: progs.ImdsSetsockoptAll, AttachType: ebpf.AttachModifyReturn})
	if err != nil {
		return nil, fmt.Errorf("attaching the setsockopt guard to security_socket_setsockopt: %w", err)
	}
	return l, nil
}

// detachSetsockoptAll closes this daemon's link; with its pin gone (or
// never made) that detaches it.
func (g *Guard) detachSetsockoptAll() error {
	l := g.links[hookSetsockoptAll]
	if l == nil {
		return nil
	}
	delete(g.links, hookSetsockoptAll)
	start := time.Now()
	if err := detachLink(l); err != nil {
		return fmt.Errorf("detaching %s: %w", hookSetsockoptAll, err)
	}
	err := l.Close()
	g.log.Debug("setsockopt guard for 32-bit calls detached", zap.Duration("took", time.Since(start)))
	return err
}
