// Package loader loads imdsguard's eBPF objects, writes the compiled policy
// into their maps, attaches the programs to a cgroup, pins them so the
// kernel keeps enforcing without the daemon, and takes over or removes what
// an earlier daemon pinned.
//
// Attachment is all or nothing: if any step fails, what this load changed
// is undone before the error is returned, so a failed start never leaves
// the host half-protected, and never loses the enforcement an earlier
// daemon left pinned.
//
// The pin directory's files, lock and meta record are internal/pindir's;
// reading the kernel's counters is internal/counters'. What stays here
// needs the loaded objects or the hook table (cgroupHooks), which drives
// attach, pin, takeover, detach and status alike.
package loader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/cgroupfs"
	"github.com/imdsguard/imdsguard/internal/counters"
	"github.com/imdsguard/imdsguard/internal/kernelpolicy"
	"github.com/imdsguard/imdsguard/internal/pindir"
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
	// PinDir is where links, programs and maps are pinned, and where an
	// earlier daemon's are taken over from; empty: nothing is pinned and
	// Close detaches everything.
	PinDir string
	// LockWait is how long to wait for another daemon holding PinDir.
	LockWait time.Duration
	// Meta is recorded with the pins for `imdsguard status`: the caller
	// fills Version, Mode, PolicyHash, PolicySource and HostNetns.
	Meta pindir.Meta
}

// Takeover says how a Load found the pin directory.
type Takeover string

const (
	// TakeoverNone: nothing was pinned; everything was attached afresh.
	TakeoverNone Takeover = "none"
	// TakeoverAdopted: the pinned maps were reused and every pinned link
	// switched to the new programs in place.
	TakeoverAdopted Takeover = "adopted"
	// TakeoverReplaced: the pins were of another layout (or incomplete):
	// new maps and programs were attached first, then the old ones removed.
	TakeoverReplaced Takeover = "replaced"
)

// Guard is a loaded and attached set of programs.
type Guard struct {
	objs       bpf.ImdsguardObjects
	links      map[string]link.Link // cgroup hooks by name
	skMsg      bool                 // sk_msg attached to objs.ImdsSocks
	log        *zap.Logger
	hostCookie uint64
	scopeLevel uint32 // level of the guarded cgroup in its hierarchy
	gen        uint32 // generation in force

	pinDir   string
	lock     *pindir.Lock
	released bool
	detached bool
	meta     pindir.Meta
	takeover Takeover
}

// Load loads the programs, writes the policy and attaches every hook,
// taking over what an earlier daemon pinned in opts.PinDir. ctx ends the
// wait for a daemon that holds the pin directory.
func Load(ctx context.Context, pol *kernelpolicy.Tables, opts Options, log *zap.Logger) (*Guard, error) {
	g, spec, err := newGuard(opts, log)
	if err != nil {
		return nil, err
	}
	if opts.PinDir == "" {
		if err := g.attachFresh(spec, pol, opts.CgroupRules); err != nil {
			g.closeAll(true)
			return nil, err
		}
	} else if err := g.loadPinned(ctx, spec, pol, opts); err != nil {
		return nil, err
	}
	g.attachSetsockoptAll(true)
	return g, nil
}

// newGuard checks the cgroup and reads the programs' spec; nothing is
// loaded yet.
func newGuard(opts Options, log *zap.Logger) (*Guard, *ebpf.CollectionSpec, error) {
	if err := cgroupfs.IsV2(opts.Cgroup); err != nil {
		return nil, nil, fmt.Errorf("checking cgroup: %w", err)
	}
	cgroupID, err := cgroupfs.ID(opts.Cgroup)
	if err != nil {
		return nil, nil, fmt.Errorf("checking cgroup: %w", err)
	}
	level, err := cgroupfs.Level(opts.Cgroup)
	if err != nil {
		return nil, nil, fmt.Errorf("checking cgroup: %w", err)
	}
	spec, err := bpf.LoadImdsguard()
	if err != nil {
		return nil, nil, fmt.Errorf("loading BPF spec: %w", err)
	}
	if opts.RingBufBytes != 0 {
		spec.Maps[bpf.ImdsguardMapEvents].MaxEntries = opts.RingBufBytes
	}
	g := &Guard{log: log, hostCookie: opts.HostNetnsCookie, scopeLevel: uint32(level), links: map[string]link.Link{}, pinDir: opts.PinDir, takeover: TakeoverNone}
	g.meta = opts.Meta
	g.meta.Layout = layoutOf(spec)
	g.meta.PID = os.Getpid()
	g.meta.StartedAt = time.Now().UTC()
	g.meta.PolicyLoadedAt = g.meta.StartedAt
	g.meta.Cgroup = opts.Cgroup
	g.meta.CgroupID = cgroupID
	g.meta.HostNetnsCookie = opts.HostNetnsCookie
	return g, spec, nil
}

// loadPinned takes the pin directory's lock and starts fresh, adopts the
// pins of this layout, or replaces those of another.
func (g *Guard) loadPinned(ctx context.Context, spec *ebpf.CollectionSpec, pol *kernelpolicy.Tables, opts Options) error {
	if err := pindir.EnsureBPFFS(opts.PinDir); err != nil {
		return err
	}
	if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
		return fmt.Errorf("creating pin directory: %w", err)
	}
	var err error
	g.lock, err = pindir.TakeLock(ctx, opts.PinDir, opts.LockWait, func(holder int) {
		g.log.Info("waiting for the imdsguard that holds the pin directory to exit", zap.String("pin_dir", opts.PinDir), zap.Int("pid", holder))
	})
	if err != nil {
		return err
	}
	old, err := openPinned(opts.PinDir)
	if err != nil {
		g.lock.Release()
		return fmt.Errorf("reading what is pinned in %s (run `imdsguard detach` to clear it): %w", opts.PinDir, err)
	}
	defer old.close()
	switch {
	case old.empty():
		err = g.attachFresh(spec, pol, opts.CgroupRules)
		if err == nil {
			err = g.pinAll()
		}
		if err != nil {
			g.closeAll(true)
			pindir.RemovePins(opts.PinDir)
		}
	case g.compatible(old, spec):
		g.takeover = TakeoverAdopted
		err = g.takeOverPins(spec, pol, opts.CgroupRules, old)
	default:
		g.takeover = TakeoverReplaced
		err = g.replace(spec, pol, opts.CgroupRules, old)
	}
	if err != nil {
		g.lock.Release()
	}
	return err
}

// compatible says whether old holds a complete set of pins of this layout
// on this cgroup, which can be switched to the new programs in place.
func (g *Guard) compatible(old *pinnedState, spec *ebpf.CollectionSpec) bool {
	if old.meta == nil || old.meta.Layout != g.meta.Layout || old.meta.CgroupID != g.meta.CgroupID || old.skMsg == nil {
		return false
	}
	for _, name := range sharedMaps(spec) {
		if old.maps[name] == nil {
			return false
		}
	}
	for _, h := range cgroupHooks {
		l := old.links[h.name]
		if l == nil {
			return false
		}
		if id, err := linkCgroup(l); err != nil || id != g.meta.CgroupID {
			return false
		}
	}
	return true
}

// loadOptions ask the verifier for its statistics and errors, not for its
// trace: without a log level the library loads a refused program again with
// the trace on, growing the buffer until the trace fits, and a program the
// verifier gives up on after a million instructions then takes minutes to
// fail (seen on 6.18.44) instead of one verification with a clear error.
func loadOptions(replacements map[string]*ebpf.Map) *ebpf.CollectionOptions {
	return &ebpf.CollectionOptions{
		MapReplacements: replacements,
		Programs:        ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
	}
}

// loadObjects loads the programs, with replacements for maps taken over.
func (g *Guard) loadObjects(spec *ebpf.CollectionSpec, replacements map[string]*ebpf.Map) error {
	err := spec.LoadAndAssign(&g.objs, loadOptions(replacements))
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			g.log.Error("verifier rejected a program", zap.String("log", fmt.Sprintf("%+v", verr)))
		}
		return fmt.Errorf("loading BPF objects: %w", err)
	}
	return nil
}

// hookProgram is the program of a cgroup hook.
func (g *Guard) hookProgram(name string) *ebpf.Program {
	for _, h := range cgroupHooks {
		if h.name == name {
			return h.prog(&g.objs.ImdsguardPrograms)
		}
	}
	panic("unknown hook " + name)
}

func (g *Guard) attachSkMsg() error {
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  g.objs.ImdsSocks.FD(),
		Program: g.objs.ImdsMsg,
		Attach:  ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return fmt.Errorf("attaching sk_msg to the IMDS socket map: %w", err)
	}
	g.skMsg = true
	return nil
}

func (g *Guard) attachHook(name string, attach ebpf.AttachType) error {
	l, err := link.AttachCgroup(link.CgroupOptions{Path: g.meta.Cgroup, Attach: attach, Program: g.hookProgram(name)})
	if err != nil {
		return fmt.Errorf("attaching %s to %s: %w", name, g.meta.Cgroup, err)
	}
	g.links[name] = l
	g.log.Debug("attached", zap.String("hook", name), zap.String("cgroup", g.meta.Cgroup))
	return nil
}

// attachFresh loads new maps and programs, writes the policy and attaches
// every hook. sk_msg first, so every socket sockops adds is judged from its
// first write; the egress guard before the connect hooks that mark the
// sockets it checks; then sockops; the connect hooks last.
func (g *Guard) attachFresh(spec *ebpf.CollectionSpec, pol *kernelpolicy.Tables, cg CgroupRules) error {
	if err := g.loadObjects(spec, nil); err != nil {
		return err
	}
	if err := g.writeFirstPolicy(pol, cg); err != nil {
		return err
	}
	if err := g.attachSkMsg(); err != nil {
		return err
	}
	for _, h := range cgroupHooks {
		if err := g.attachHook(h.name, h.attach); err != nil {
			return err
		}
	}
	return nil
}

// UplinkProgram is the program the uplink guard (internal/uplink) attaches
// to the devices packets leave the node by.
func (g *Guard) UplinkProgram() *ebpf.Program { return g.objs.ImdsUplink }

// MapIDs are the ids of the guard's maps: a program that uses one is this
// guard's (how detach tells its filters in pods from another guard's).
func (g *Guard) MapIDs() []ebpf.MapID { return mapIDs(g.mapsByName()) }

func mapIDs(maps map[string]*ebpf.Map) []ebpf.MapID {
	var out []ebpf.MapID
	for _, m := range maps {
		if info, err := m.Info(); err == nil {
			if id, ok := info.ID(); ok {
				out = append(out, id)
			}
		}
	}
	return out
}

func (g *Guard) writeFirstPolicy(pol *kernelpolicy.Tables, cg CgroupRules) error {
	if err := g.writePolicy(0, pol, cg); err != nil {
		return err
	}
	if err := g.objs.PolicyGen.Update(uint32(0), uint32(0), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("writing policy generation: %w", err)
	}
	g.gen = 0
	return g.syncPortSkip()
}

// pinAll pins every map, link and the sk_msg program, then the meta that
// marks the set complete.
func (g *Guard) pinAll() error {
	for name, m := range g.mapsByName() {
		if err := pindir.Pin(filepath.Join(g.pinDir, pindir.MapsDir, name), m.Pin); err != nil {
			return err
		}
	}
	for name, l := range g.links {
		if err := pindir.Pin(filepath.Join(g.pinDir, pindir.LinksDir, name), l.Pin); err != nil {
			return err
		}
	}
	if err := pindir.Pin(filepath.Join(g.pinDir, pindir.SkMsgPin), g.objs.ImdsMsg.Pin); err != nil {
		return err
	}
	return g.writeMeta()
}

func (g *Guard) writeMeta() error {
	g.meta.Generation = g.gen
	return pindir.WriteMeta(g.pinDir, &g.meta)
}

// mapsByName lists every map of the loaded objects by its name in the
// object, read from the bindings' struct tags: a map added to the C code is
// pinned and taken over without anyone listing it here.
func (g *Guard) mapsByName() map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	v := reflect.ValueOf(&g.objs.ImdsguardMaps).Elem()
	for i := range v.NumField() {
		if name := v.Type().Field(i).Tag.Get("ebpf"); name != "" {
			if m, ok := v.Field(i).Interface().(*ebpf.Map); ok {
				out[name] = m
			}
		}
	}
	return out
}

// Takeover says what Load found pinned and did with it.
func (g *Guard) Takeover() Takeover { return g.takeover }

// PinDir is where the guard is pinned ("" when it is not).
func (g *Guard) PinDir() string { return g.pinDir }

// Hooks names the attached hooks.
func (g *Guard) Hooks() []string {
	var names []string
	if g.skMsg {
		names = append(names, "sk_msg")
	}
	for _, h := range cgroupHooks {
		if g.links[h.name] != nil {
			names = append(names, h.name)
		}
	}
	return names
}

// Events is the ring buffer the programs write events to.
func (g *Guard) Events() *ebpf.Map { return g.objs.Events }

// Counters reads the per-verdict counters.
func (g *Guard) Counters() (counters.Totals, error) { return counters.Read(g.objs.Counters) }

// RecordPolicy notes a policy put in force in the pinned meta.
func (g *Guard) RecordPolicy(hash, mode, cloud string) error {
	g.meta.PolicyHash = hash
	g.meta.Mode = mode
	g.meta.Cloud = cloud
	g.meta.PolicyLoadedAt = time.Now().UTC()
	if g.pinDir == "" {
		return nil
	}
	return g.writeMeta()
}

// RecordRescan records a successful scan of the cgroup tree in the pinned
// meta, for `imdsguard status`; at most once a second, as rescans run
// twice a second.
func (g *Guard) RecordRescan(at time.Time) error {
	if g.pinDir == "" || at.Sub(g.meta.LastRescanAt) < time.Second {
		return nil
	}
	g.meta.LastRescanAt = at.UTC()
	return g.writeMeta()
}

// Release closes the guard's file descriptors and leaves the pinned
// enforcement in place, for the next daemon to take over (--on-exit keep).
// An unpinned guard is detached.
func (g *Guard) Release() error {
	if g.released {
		return nil
	}
	g.released = true
	err := g.closeAll(g.pinDir == "")
	g.lock.Release()
	return err
}

// Detach removes every hook and every pin (--on-exit detach). The maps
// stay open, so the counters and queued events can still be read, until
// Release.
func (g *Guard) Detach() error {
	if g.detached || g.released {
		return nil
	}
	g.detached = true
	err := g.detachHooks()
	if g.pinDir != "" {
		if _, rerr := removePinned(g.pinDir, g.log); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// Remove is Detach then Release.
func (g *Guard) Remove() error {
	return errors.Join(g.Detach(), g.Release())
}

// detachHooks detaches every hook, the connect hooks first.
func (g *Guard) detachHooks() error {
	var errs []error
	if err := g.detachSetsockoptAll(); err != nil {
		errs = append(errs, err)
	}
	for i := len(cgroupHooks) - 1; i >= 0; i-- {
		name := cgroupHooks[i].name
		if l := g.links[name]; l != nil {
			if err := detachLink(l); err != nil {
				errs = append(errs, fmt.Errorf("detaching %s: %w", name, err))
			}
		}
	}
	if g.skMsg {
		if err := detachSkMsg(g.objs.ImdsSocks, g.objs.ImdsMsg); err != nil {
			errs = append(errs, err)
		}
		g.skMsg = false
	}
	return errors.Join(errs...)
}

// closeAll closes every descriptor, detaching the hooks first if detach.
func (g *Guard) closeAll(detach bool) error {
	var errs []error
	if detach {
		errs = append(errs, g.detachHooks())
	}
	for name, l := range g.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing link %s: %w", name, err))
		}
	}
	g.links = map[string]link.Link{}
	if err := g.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing BPF objects: %w", err))
	}
	return errors.Join(errs...)
}

// detachLink detaches a link even if other descriptors or pins hold it.
func detachLink(l link.Link) error {
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	return nil
}

func detachSkMsg(m *ebpf.Map, prog *ebpf.Program) error {
	if m == nil || prog == nil {
		return nil
	}
	if err := link.RawDetachProgram(link.RawDetachProgramOptions{
		Target:  m.FD(),
		Program: prog,
		Attach:  ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return fmt.Errorf("detaching sk_msg: %w", err)
	}
	return nil
}
