// Package loader loads imdsguard's eBPF objects, writes the compiled policy
// into their maps, attaches the programs to a cgroup and detaches them.
//
// Attachment is all or nothing: if any step fails, everything attached so
// far is removed before the error is returned, so a failed start never
// leaves the host half-protected.
package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/cgroupfs"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// Options says where and how to attach.
type Options struct {
	// Cgroup is the cgroup v2 directory whose tree is guarded (the root of
	// the hierarchy in production, a child cgroup in tests).
	Cgroup string
	// HostNetnsCookie identifies the host's network namespace.
	HostNetnsCookie uint64
	// RingBufBytes overrides the event ring buffer size (a power of two,
	// multiple of the page size); 0 keeps the default of 256 KiB.
	RingBufBytes uint32
	// CgroupRules are the rule lists of the policy's cgroups (see
	// CgroupRules).
	CgroupRules CgroupRules
}

// Guard is a loaded and attached set of programs.
type Guard struct {
	objs       bpf.ImdsguardObjects
	links      []namedLink
	log        *zap.Logger
	hostCookie uint64
	gen        uint32 // generation in force
}

type namedLink struct {
	hook string
	link interface{ Close() error }
}

// skMsgAttachment is the sk_msg program's attachment to the socket map
// (a program attachment, not a bpf_link, on kernels before 6.10).
type skMsgAttachment struct {
	m    *ebpf.Map
	prog *ebpf.Program
}

func (a *skMsgAttachment) Close() error {
	return link.RawDetachProgram(link.RawDetachProgramOptions{
		Target:  a.m.FD(),
		Program: a.prog,
		Attach:  ebpf.AttachSkMsgVerdict,
	})
}

// Load loads the programs, writes the policy and attaches every hook.
func Load(pol *policy.Compiled, opts Options, log *zap.Logger) (g *Guard, err error) {
	if err := cgroupfs.IsV2(opts.Cgroup); err != nil {
		return nil, fmt.Errorf("checking cgroup: %w", err)
	}
	spec, err := bpf.LoadImdsguard()
	if err != nil {
		return nil, fmt.Errorf("loading BPF spec: %w", err)
	}
	if opts.RingBufBytes != 0 {
		spec.Maps[bpf.ImdsguardMapEvents].MaxEntries = opts.RingBufBytes
	}

	g = &Guard{log: log}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			log.Error("verifier rejected a program", zap.String("log", fmt.Sprintf("%+v", verr)))
		}
		return nil, fmt.Errorf("loading BPF objects: %w", err)
	}
	defer func() {
		if err != nil {
			g.Close()
			g = nil
		}
	}()

	g.hostCookie = opts.HostNetnsCookie
	if err := g.writePolicy(0, pol, opts.CgroupRules); err != nil {
		return nil, err
	}
	if err := g.objs.PolicyGen.Update(uint32(0), uint32(0), ebpf.UpdateAny); err != nil {
		return nil, fmt.Errorf("writing policy generation: %w", err)
	}

	// sk_msg first, so every socket sockops adds is judged from its first
	// write; the egress guard before the connect hooks that mark the
	// sockets it checks; then sockops; the connect hooks last.
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  g.objs.ImdsSocks.FD(),
		Program: g.objs.ImdsMsg,
		Attach:  ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return nil, fmt.Errorf("attaching sk_msg to the IMDS socket map: %w", err)
	}
	g.links = append(g.links, namedLink{"sk_msg", &skMsgAttachment{g.objs.ImdsSocks, g.objs.ImdsMsg}})

	hooks := []struct {
		name   string
		attach ebpf.AttachType
		prog   *ebpf.Program
	}{
		{"egress", ebpf.AttachCGroupInetEgress, g.objs.ImdsEgress},
		{"sockops", ebpf.AttachCGroupSockOps, g.objs.ImdsSockops},
		{"connect4", ebpf.AttachCGroupInet4Connect, g.objs.ImdsConnect4},
		{"connect6", ebpf.AttachCGroupInet6Connect, g.objs.ImdsConnect6},
	}
	for _, h := range hooks {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: opts.Cgroup, Attach: h.attach, Program: h.prog})
		if err != nil {
			return nil, fmt.Errorf("attaching %s to %s: %w", h.name, opts.Cgroup, err)
		}
		g.links = append(g.links, namedLink{h.name, l})
		log.Debug("attached", zap.String("hook", h.name), zap.String("cgroup", opts.Cgroup))
	}
	return g, nil
}

// Hooks names the attached hooks.
func (g *Guard) Hooks() []string {
	names := make([]string, 0, len(g.links))
	for _, l := range g.links {
		names = append(names, l.hook)
	}
	return names
}

// Events is the ring buffer the programs write events to.
func (g *Guard) Events() *ebpf.Map { return g.objs.Events }

// Counters reads the per-verdict counters.
func (g *Guard) Counters() (Counters, error) { return ReadCounters(g.objs.Counters) }

// Detach removes every hook; maps stay readable until Close.
func (g *Guard) Detach() error {
	var errs []error
	for i := len(g.links) - 1; i >= 0; i-- {
		if err := g.links[i].link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detaching %s: %w", g.links[i].hook, err))
		}
	}
	g.links = nil
	return errors.Join(errs...)
}

// Close detaches every hook and releases the programs and maps.
func (g *Guard) Close() error {
	errs := []error{g.Detach()}
	if err := g.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing BPF objects: %w", err))
	}
	return errors.Join(errs...)
}
