// Package controller keeps the policy in the kernel in step with the policy
// file and the cgroup tree: it compiles a policy against the cgroups that
// exist, puts it in force atomically, reloads it on SIGHUP or when the file
// changes (also a Kubernetes ConfigMap's symlink swap), and gives cgroups
// created later their rules within one rescan interval. For the rules that
// match pods by name it asks the container runtime (Runtime) the names of
// each pod's container, and asks again at every rescan until it has them:
// until then those rules judge the container as strictly as they can (see
// policy.Identity). It tells the nftables layer (internal/nftlayer) what
// the policy asks of the table, through the Table interface, and leaves the
// table itself to it.
package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/internal/cgroupfs"
	"github.com/imdsguard/imdsguard/internal/events"
	"github.com/imdsguard/imdsguard/internal/kernelpolicy"
	"github.com/imdsguard/imdsguard/internal/loader"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// Plan is a policy compiled for the cgroups that exist now.
type Plan struct {
	Policy   *policy.Policy
	Compiled *policy.Compiled
	Cgroups  loader.CgroupRules // every known cgroup's list, subtree lists that differ from the default, the default under {0, false}
	Hash     string
	tree     map[uint64]string
	defaults []uint16
	// names answers the rules by name (nil: no runtime, names unknown);
	// pending are the cgroups whose names it has not given yet, asked
	// again at every rescan. Both maps are replaced, never changed.
	names   Runtime
	pending map[uint64]bool
}

// MakePlan compiles pol and resolves its cgroup globs against the cgroup
// tree at mount, with no container runtime to name pods: rules by name
// judge every pod's container as one whose names are unknown.
func MakePlan(pol *policy.Policy, mount string) (*Plan, error) {
	return MakePlanWithNames(pol, mount, nil)
}

// MakePlanWithNames is MakePlan with the names of pods' containers from rt
// (nil: none), for the rules that match names.
func MakePlanWithNames(pol *policy.Policy, mount string, rt Runtime) (*Plan, error) {
	return makePlan(pol, rt, func() (map[uint64]string, error) { return cgroupfs.Scan(mount) })
}

// MakePlanForTree is MakePlanWithNames for a cgroup tree already read (id ->
// path, as cgroupfs.Scan gives it; not changed, and not to be changed
// afterwards): what a reload does with the tree the daemon follows.
func MakePlanForTree(pol *policy.Policy, tree map[uint64]string, rt Runtime) (*Plan, error) {
	return makePlan(pol, rt, func() (map[uint64]string, error) { return tree, nil })
}

func makePlan(pol *policy.Policy, rt Runtime, readTree func() (map[uint64]string, error)) (*Plan, error) {
	compiled, err := pol.Compile()
	if err != nil {
		return nil, err
	}
	defaults, err := compiled.DefaultCandidates()
	if err != nil {
		return nil, fmt.Errorf("compiling rules: %w", err)
	}
	p := &Plan{Policy: pol, Compiled: compiled, Cgroups: loader.CgroupRules{{}: defaults}, defaults: defaults, tree: map[uint64]string{},
		names: rt, pending: map[uint64]bool{}}
	if compiled.HasCgroupRules() {
		if p.tree, err = readTree(); err != nil {
			return nil, fmt.Errorf("reading the cgroup tree: %w", err)
		}
		ids := identifyAll(compiled, p.tree, rt)
		p.pending = ids.pending
		if err := p.addTree(ids); err != nil {
			return nil, err
		}
	}
	y, err := pol.YAML()
	if err != nil {
		return nil, fmt.Errorf("rendering policy: %w", err)
	}
	sum := sha256.Sum256(y)
	p.Hash = hex.EncodeToString(sum[:6])
	return p, nil
}

// addTree puts the rule lists of every cgroup of the plan's tree into the
// plan, matched in one walk of the tree (as addCgroup does for one). A
// policy that cannot say what a cgroup of today gets is refused; one made
// later fails closed (see applyScanLocked).
func (p *Plan) addTree(ids identities) error {
	lists := p.Compiled.ListsForTree(p.tree, func(id uint64) policy.Identity { return ids.of[id] })
	for id, l := range lists {
		if l.OwnErr != nil {
			return fmt.Errorf("compiling rules: %w", l.OwnErr)
		}
		p.Cgroups[loader.CgroupKey{ID: id}] = l.Own
		if p.Compiled.NeedsEntry(l.Subtree, p.defaults) {
			p.Cgroups[loader.CgroupKey{ID: id, Subtree: true}] = l.Subtree
		}
	}
	return nil
}

// addCgroup puts the rule lists of a known cgroup into set: its own, always
// (so the kernel never takes an ancestor's subtree list for it), and the one
// for the cgroups that will be made below it before the next scan, when it
// differs from the default. An error says the cgroup's own rules overflow:
// its list is then the overflow rule's, which refuses.
func (p *Plan) addCgroup(id uint64, path string, ident policy.Identity, set loader.CgroupRules) error {
	own, err := p.Compiled.CandidatesOf(path, ident)
	set[loader.CgroupKey{ID: id}] = own
	// an overflowing subtree list is the overflow rule's too: new
	// cgroups there are refused until the scan gives them their own
	sub, _ := p.Compiled.SubtreeCandidates(path)
	if p.Compiled.NeedsEntry(sub, p.defaults) {
		set[loader.CgroupKey{ID: id, Subtree: true}] = sub
	}
	return err
}

// Options configure a Controller.
type Options struct {
	PolicyPath   string        // "" for the embedded default (nothing to watch)
	ModeOverride string        // --mode: applied to every policy loaded
	Cloud        string        // what the policy's cloud: auto resolves to (detected at start)
	CgroupMount  string        // the cgroup v2 mount, for cgroup paths
	Rescan       time.Duration // how often the tree is looked after (see Controller.tick)
	FullRescan   time.Duration // how often it is read in full while watched (0: DefaultFullRescan)
	// Table is the nftables layer (nil: none, the eBPF layer alone).
	Table Table
	// Names names pods' containers for the rules that match names (nil:
	// no runtime; those rules then judge every pod's container as one
	// whose names are unknown).
	Names Runtime
}

// PolicySink receives reload results.
type PolicySink interface {
	EmitPolicy(*events.PolicyEvent)
}

// Controller owns the policy in force.
type Controller struct {
	guard *loader.Guard
	opts  Options
	log   *zap.Logger
	sink  PolicySink

	mu      sync.Mutex
	plan    *Plan
	names   [2][]string // rule names by generation, for events
	reloads map[string]uint64

	// when the cgroup tree was last scanned successfully (unix ns), read
	// without the lock by /readyz
	lastRescan atomic.Int64
	cgroups    *cgroupWatch // nil when inotify is not available; owned by Run
	// when Run last read the whole tree; owned by Run
	lastFullScan time.Time
}

// New takes over a guard loaded with plan.
func New(guard *loader.Guard, plan *Plan, opts Options, sink PolicySink, log *zap.Logger) *Controller {
	e := &Controller{guard: guard, opts: opts, log: log, sink: sink, plan: plan, reloads: map[string]uint64{}}
	e.names[guard.Generation()&1] = ruleNames(plan.Compiled)
	e.lastRescan.Store(time.Now().UnixNano()) // MakePlan scanned the tree
	// Watched from here, before the daemon says it enforces, so that no
	// cgroup made after that is missed until the next tick.
	cw, err := newCgroupWatch(opts.CgroupMount, log)
	if err != nil {
		log.Warn("not watching for new cgroups; they get their rules at the next rescan", zap.Error(err))
	} else {
		cw.sync(plan.tree)
		e.cgroups = cw
	}
	return e
}

// knownTree is the cgroup tree as of the last scan (id -> path); the map
// is replaced, never changed, by later scans.
func (e *Controller) knownTree() map[uint64]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.plan.tree
}

// LastRescan is when the cgroup tree was last scanned successfully: new
// cgroups get their rules only through rescans, so an old one means the
// daemon is stuck.
func (e *Controller) LastRescan() time.Time { return time.Unix(0, e.lastRescan.Load()) }

func ruleNames(c *policy.Compiled) []string {
	names := make([]string, len(c.Rules))
	for i := range names {
		names[i] = c.RuleName(i)
	}
	return names
}

// RuleName names rule idx of policy generation gen, for events.
func (e *Controller) RuleName(gen uint8, idx uint16) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	names := e.names[gen&1]
	if int(idx) < len(names) {
		return names[idx]
	}
	if idx == kernelpolicy.OverflowRule {
		return policy.OverflowRuleName
	}
	return ""
}

// Plan returns the plan in force.
func (e *Controller) Plan() *Plan {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.plan
}

// Reloads counts reload attempts by result: "loaded", "unchanged",
// "invalid" (the file did not validate), "failed" (the kernel refused it).
func (e *Controller) Reloads() map[string]uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]uint64, len(e.reloads))
	for k, v := range e.reloads {
		out[k] = v
	}
	return out
}

// Reload reads the policy file again and puts it in force. An invalid file,
// or one the kernel refuses, leaves the policy in force untouched; either
// way the result is logged, counted and reported as an event.
func (e *Controller) Reload(trigger string) error {
	pe := &events.PolicyEvent{Time: time.Now(), Source: e.opts.PolicyPath, Trigger: trigger}
	// Read and compile outside the lock: a slow file system cannot stop
	// rescans or a shutdown (and a FIFO or device fails the read at once).
	plan, perr := e.readPlan()
	e.mu.Lock()
	defer e.mu.Unlock()
	result, err := e.reloadLocked(pe, plan, perr)
	pe.Result = result
	e.reloads[result]++
	if err != nil {
		pe.Error = err.Error()
		e.log.Error("policy reload refused; the previous policy stays in force",
			zap.String("trigger", trigger), zap.String("result", result), zap.Error(err),
			zap.String("policy_hash", e.plan.Hash))
	} else if result == "loaded" {
		e.log.Info("policy reloaded", zap.String("trigger", trigger), zap.String("policy_hash", pe.Hash),
			zap.Int("rules", pe.Rules), zap.Uint32("generation", e.guard.Generation()))
	}
	if result != "unchanged" && e.sink != nil {
		e.sink.EmitPolicy(pe)
	}
	return err
}

// readPlan reads the policy file and compiles it for the cgroup tree: the
// one the daemon follows when the policy in force has it (reading 10 000
// cgroup directories again would cost more than the compile), else the
// one read now. A cgroup made meanwhile is given its rules by the next
// update or scan, which applies to the plan then in force.
func (e *Controller) readPlan() (*Plan, error) {
	pol, err := policy.LoadOrDefault(e.opts.PolicyPath, e.opts.ModeOverride, e.opts.Cloud)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	followed, tree := e.plan.Compiled.HasCgroupRules(), e.plan.tree
	e.mu.Unlock()
	if followed {
		return MakePlanForTree(pol, tree, e.opts.Names)
	}
	return MakePlanWithNames(pol, e.opts.CgroupMount, e.opts.Names)
}

func (e *Controller) reloadLocked(pe *events.PolicyEvent, plan *Plan, err error) (string, error) {
	if err != nil {
		return "invalid", err
	}
	pe.Hash, pe.Rules = plan.Hash, len(plan.Compiled.Rules)
	if plan.Hash == e.plan.Hash {
		return "unchanged", nil
	}
	if err := e.guard.Apply(&plan.Compiled.Tables, plan.Cgroups); err != nil {
		return "failed", err
	}
	if !reflect.DeepEqual(plan.Policy.Output, e.plan.Policy.Output) {
		e.log.Warn("the policy's output section changed: it takes effect at the next restart")
	}
	e.names[e.guard.Generation()&1] = ruleNames(plan.Compiled)
	e.plan = plan
	if plan.Compiled.HasNameRules() && e.opts.Names == nil {
		e.log.Warn(NoRuntimeWarning, zap.Bool("grants_by_name", plan.Compiled.GrantsByName()))
	}
	if err := e.guard.RecordPolicy(plan.Hash, plan.Policy.Mode, plan.Policy.Profile.Name); err != nil {
		e.log.Warn("recording the policy in the pinned meta (imdsguard status shows the previous one)", zap.Error(err))
	}
	if err := e.syncTableLocked(); err != nil {
		// The eBPF policy is in force; say loudly that the table is not.
		e.log.Error("nftables layer not updated", zap.Error(err))
	}
	return "loaded", nil
}

// Rescan gives cgroups created since the last scan their rules, and those
// whose names the container runtime has given since theirs, and forgets
// removed ones.
func (e *Controller) Rescan() error {
	e.mu.Lock()
	p, known, pending := e.plan, e.plan.tree, e.plan.pending
	e.mu.Unlock()
	var sc *treeScan
	if p.Compiled.HasCgroupRules() {
		// Outside the lock: reading the tree and asking the runtime take
		// time that events (RuleName) should not wait for.
		var err error
		if sc, err = scanTree(p, e.opts.CgroupMount, known, pending); err != nil {
			return err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if sc != nil {
		if err := e.applyScanLocked(p, sc); err != nil {
			return err
		}
	}
	e.recordRescanLocked()
	return nil
}

// treeScan is a look at the cgroup tree for a plan: the tree, and the names
// of its cgroups that are new or whose names were not known.
type treeScan struct {
	tree map[uint64]string
	ids  identities
}

func scanTree(p *Plan, mount string, known map[uint64]string, pending map[uint64]bool) (*treeScan, error) {
	tree, err := cgroupfs.Scan(mount)
	if err != nil {
		return nil, fmt.Errorf("reading the cgroup tree: %w", err)
	}
	ask := map[uint64]string{}
	for id, path := range tree {
		if _, ok := known[id]; !ok || pending[id] {
			ask[id] = path
		}
	}
	return &treeScan{tree: tree, ids: identifyAll(p.Compiled, ask, p.names)}, nil
}

// applyScanLocked puts what sc found into the kernel for plan p, if it is
// still the plan in force (a reload made its own scan).
func (e *Controller) applyScanLocked(p *Plan, sc *treeScan) error {
	if e.plan != p {
		return nil
	}
	ch := p.changes(sc, e.log)
	if err := e.guard.SetCgroupRules(ch.set, ch.remove); err != nil {
		return err
	}
	p.commit(sc, ch)
	if err := e.guard.ForgetCgroupConnections(ch.gone); err != nil {
		e.log.Warn("forgetting connection counts of removed cgroups", zap.Error(err))
	}
	if len(ch.set)+len(ch.remove) > 0 {
		e.log.Debug("cgroup rules updated", zap.Int("added", len(ch.set)), zap.Int("removed", len(ch.remove)))
	}
	e.followPodsLocked()
	return nil
}

// scanChanges is what a scan changes in the kernel's cgroup lists.
type scanChanges struct {
	set    loader.CgroupRules
	remove []loader.CgroupKey
	gone   []uint64 // cgroups removed
}

// changes lists what sc changes: the lists of the cgroups made since the
// last scan, and of those the runtime has named since, and the entries of
// the cgroups removed.
func (p *Plan) changes(sc *treeScan, log *zap.Logger) scanChanges {
	ch := scanChanges{set: loader.CgroupRules{}}
	for id, path := range sc.tree {
		_, known := p.tree[id]
		switch {
		case !known:
			if err := p.addCgroup(id, path, sc.ids.of[id], ch.set); err != nil {
				// Fails closed: its processes are refused. Say so.
				log.Error("cgroup refused IMDS: its rules do not fit the kernel's list", zap.String("cgroup", path), zap.Error(err))
			}
		case p.pending[id] && !sc.ids.pending[id]:
			p.renamed(id, path, sc.ids.of[id], ch.set, log)
		}
	}
	ch.remove, ch.gone = p.goneFrom(sc.tree)
	return ch
}

// commit records in the plan what the kernel holds once ch is written.
func (p *Plan) commit(sc *treeScan, ch scanChanges) {
	for k, c := range ch.set {
		p.Cgroups[k] = c
	}
	for _, k := range ch.remove {
		delete(p.Cgroups, k)
	}
	p.tree, p.pending = sc.tree, sc.ids.pending
}

// renamed gives a cgroup whose names the runtime has given since the last
// scan its own list anew: its rules by name apply now. Its subtree list is
// the same whatever its names (new cgroups' are unknown).
func (p *Plan) renamed(id uint64, path string, ident policy.Identity, set loader.CgroupRules, log *zap.Logger) {
	own, err := p.Compiled.CandidatesOf(path, ident)
	if err != nil {
		log.Error("cgroup refused IMDS: its rules do not fit the kernel's list", zap.String("cgroup", path), zap.Error(err))
	}
	if w := ident.Workload(); ident.Known() {
		log.Debug("cgroup named by the container runtime", zap.String("cgroup", path),
			zap.String("namespace", w.Namespace), zap.String("pod", w.Pod), zap.String("container", w.Container))
	}
	if k := (loader.CgroupKey{ID: id}); !slices.Equal(own, p.Cgroups[k]) {
		set[k] = own
	}
}

// goneFrom lists the entries of the cgroups of the plan's tree that tree no
// longer has, and their ids.
func (p *Plan) goneFrom(tree map[uint64]string) (remove []loader.CgroupKey, gone []uint64) {
	for id := range p.tree {
		if _, still := tree[id]; still {
			continue
		}
		gone = append(gone, id)
		for _, k := range []loader.CgroupKey{{ID: id}, {ID: id, Subtree: true}} {
			if _, had := p.Cgroups[k]; had {
				remove = append(remove, k)
			}
		}
	}
	return remove, gone
}

// Run follows the cgroup tree and reloads the policy on hup and on changes
// to the policy file, until ctx ends.
func (e *Controller) Run(ctx context.Context, hup <-chan os.Signal) {
	tick := time.NewTicker(e.opts.Rescan)
	defer tick.Stop()
	fileEvents, fileErrors, closeFiles := e.watchPolicyFile()
	defer closeFiles()
	var cgroupEvents <-chan fsnotify.Event
	var cgroupErrors <-chan error
	if cw := e.cgroups; cw != nil {
		defer cw.close()
		cgroupEvents, cgroupErrors = cw.w.Events, cw.w.Errors
	}
	// A cgroup made between the start's scan and its watches is read now.
	e.fullScan()
	var scanSoon, settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			e.Reload("SIGHUP")
		case <-fileEvents:
			// Changes come in bursts (write, chmod, rename): act once
			// they settle.
			settle = time.After(100 * time.Millisecond)
		case err := <-fileErrors:
			e.log.Warn("watching the policy file", zap.Error(err))
		case <-settle:
			settle = nil
			e.Reload("file change")
		case ev := <-cgroupEvents:
			// a burst (a pod's cgroups) is read once
			if e.cgroups.note(ev) && scanSoon == nil {
				scanSoon = time.After(5 * time.Millisecond)
			}
		case err := <-cgroupErrors:
			e.cgroups.noteError(err)
			e.log.Warn("watching the cgroup tree", zap.Error(err))
			if scanSoon == nil {
				scanSoon = time.After(5 * time.Millisecond)
			}
		case <-scanSoon:
			scanSoon = nil
			e.track()
		case <-tick.C:
			e.tick()
		}
	}
}

// watchPolicyFile watches the policy file's directory, not the file:
// editors replace files and Kubernetes swaps a ConfigMap's "..data"
// symlink. Nothing to watch for the embedded policy.
func (e *Controller) watchPolicyFile() (<-chan fsnotify.Event, <-chan error, func()) {
	if e.opts.PolicyPath == "" {
		return nil, nil, func() {}
	}
	w, err := fsnotify.NewWatcher()
	if err == nil {
		if err = w.Add(filepath.Dir(e.opts.PolicyPath)); err != nil {
			w.Close()
		}
	}
	if err != nil {
		e.log.Warn("not watching the policy file; reload with SIGHUP", zap.Error(err))
		return nil, nil, func() {}
	}
	return w.Events, w.Errors, func() { w.Close() }
}

// track applies what the watch reported: only what changed, unless events
// were lost.
func (e *Controller) track() {
	ch, made, lost := e.cgroups.take()
	if lost {
		e.fullScan()
		return
	}
	if err := e.update(ch, made); err != nil {
		e.log.Warn("updating cgroups", zap.Error(err))
	}
}

// tick reads the whole tree when nothing reports every change (no watch,
// or not every cgroup watched) and, as a safety net, every FullRescan;
// otherwise it only does what no event announces (see refresh).
func (e *Controller) tick() {
	cw := e.cgroups
	if cw == nil || cw.incomplete || time.Since(e.lastFullScan) >= e.fullRescanEvery() {
		e.fullScan()
		return
	}
	if err := e.refresh(); err != nil {
		e.log.Warn("updating cgroups", zap.Error(err))
	}
}

func (e *Controller) fullRescanEvery() time.Duration {
	if e.opts.FullRescan > 0 {
		return e.opts.FullRescan
	}
	return DefaultFullRescan
}

// fullScan reads the whole tree and watches what it found.
func (e *Controller) fullScan() {
	e.lastFullScan = time.Now()
	if err := e.Rescan(); err != nil {
		e.log.Warn("rescanning cgroups", zap.Error(err))
		return
	}
	if e.cgroups != nil {
		e.cgroups.sync(e.knownTree())
	}
}

// Audit reports whether the policy in force is in audit mode.
func (e *Controller) Audit() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.plan.Policy.Mode == policy.ModeAudit
}
