package loader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/kernelpolicy"
	"github.com/imdsguard/imdsguard/internal/pindir"
)

// takeOverPins takes over pins of the same layout: the new programs share the
// pinned maps, so per-socket state, counters, queued events and the policy
// in force carry over. sk_msg is replaced on the shared socket map, each
// pinned link is switched to its new program in place (one atomic
// operation per hook: at every instant each hook runs the old or the new
// program, both reading the same maps), and the new policy is put in force
// through the two-generation switch. If a step fails, the hooks are
// switched back and the earlier daemon's enforcement stays as it was.
func (g *Guard) takeOverPins(spec *ebpf.CollectionSpec, pol *kernelpolicy.Tables, cg CgroupRules, old *pinnedState) (err error) {
	replacements := map[string]*ebpf.Map{}
	for _, name := range sharedMaps(spec) {
		replacements[name] = old.maps[name]
	}
	if err := g.loadObjects(spec, replacements); err != nil {
		return err
	}
	var t switchback
	defer func() {
		if err != nil {
			t.undo()
			g.closeAll(false)
		}
		t.close()
	}()

	if err := g.objs.PolicyGen.Lookup(uint32(0), &g.gen); err != nil {
		return fmt.Errorf("reading the pinned policy generation: %w", err)
	}
	if err := g.attachSkMsg(); err != nil {
		return err
	}
	t.push(func() {
		g.skMsg = false
		if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: g.objs.ImdsSocks.FD(), Program: old.skMsg, Attach: ebpf.AttachSkMsgVerdict}); err != nil {
			g.log.Error("restoring the earlier sk_msg program", zap.Error(err))
		}
	})
	for _, h := range cgroupHooks {
		l := old.links[h.name]
		prev, err := linkProgram(l)
		if err != nil {
			return fmt.Errorf("taking over %s: %w", h.name, err)
		}
		if err := g.switchLink(h.name, l, prev, old, &t); err != nil {
			return err
		}
	}
	if err := g.Apply(pol, cg); err != nil {
		return err
	}
	// From here the new programs and policy are in force; the pins only
	// have to say so.
	if err := pindir.Pin(filepath.Join(g.pinDir, pindir.SkMsgPin), g.objs.ImdsMsg.Pin); err != nil {
		g.log.Warn("pinning sk_msg", zap.Error(err))
	}
	if err := g.writeMeta(); err != nil {
		g.log.Warn("recording the takeover", zap.Error(err))
	}
	return nil
}

// linkProgram opens the program a link runs.
func linkProgram(l link.Link) (*ebpf.Program, error) {
	info, err := l.Info()
	if err != nil {
		return nil, fmt.Errorf("reading link info: %w", err)
	}
	p, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return nil, fmt.Errorf("opening program %d: %w", info.Program, err)
	}
	return p, nil
}

// switchback is how to put the earlier daemon's programs back if a
// takeover fails half way: undo steps, last first, and the earlier
// programs they need, kept open until the takeover is over.
type switchback struct {
	steps []func()
	prevs []*ebpf.Program
}

func (t *switchback) push(step func()) { t.steps = append(t.steps, step) }

func (t *switchback) undo() {
	for i := len(t.steps) - 1; i >= 0; i-- {
		t.steps[i]()
	}
}

func (t *switchback) close() {
	for _, p := range t.prevs {
		p.Close()
	}
}

// switchLink switches the earlier daemon's pinned link of hook name from
// prev to this guard's program in place (one atomic operation: at every
// instant the hook runs one or the other), and records how to switch it
// back.
func (g *Guard) switchLink(name string, l link.Link, prev *ebpf.Program, old *pinnedState, t *switchback) error {
	t.prevs = append(t.prevs, prev)
	if err := l.Update(g.hookProgram(name)); err != nil {
		return fmt.Errorf("switching %s to the new program: %w", name, err)
	}
	g.links[name] = l
	delete(old.links, name)
	t.push(func() {
		if err := l.Update(prev); err != nil {
			g.log.Error("restoring the earlier program", zap.String("hook", name), zap.Error(err))
		}
		// back to the earlier daemon: not ours to detach
		delete(g.links, name)
		old.links[name] = l
	})
	return nil
}

// replace takes over pins of another layout, or an incomplete set: new
// maps and programs go in first, then the old ones are removed, in an
// order where every IMDS connection and request is judged by one version
// or the other throughout:
//
//  1. the new sk_msg on the new socket map;
//  2. the new egress guard next to the old one (each guards the sockets
//     its own connect hook marked), and the new setsockopt guard;
//  3. sockops, then connect4/6, switched in place where a pinned link is on
//     this cgroup, attached anew otherwise;
//  4. the old egress guard and any other old link removed;
//  5. the old socket map kept (under retired/) with its sk_msg program
//     until the connections in it have closed: they stay judged by the old
//     program and policy.
//
// Up to step 3 a failure puts everything back as it was.
func (g *Guard) replace(spec *ebpf.CollectionSpec, pol *kernelpolicy.Tables, cg CgroupRules, old *pinnedState) (err error) {
	if old.meta != nil {
		g.log.Info("replacing pinned enforcement of another layout",
			zap.String("pinned_layout", old.meta.Layout), zap.String("pinned_version", old.meta.Version),
			zap.String("layout", g.meta.Layout), zap.String("pin_dir", g.pinDir))
	} else {
		g.log.Info("replacing an incomplete set of pins", zap.String("pin_dir", g.pinDir))
	}
	if err := g.loadObjects(spec, nil); err != nil {
		return err
	}
	if err := g.writeFirstPolicy(pol, cg); err != nil {
		g.closeAll(false)
		return err
	}
	// From the first change on, the directory is not a complete set.
	if err := os.Remove(filepath.Join(g.pinDir, pindir.MetaPin)); err != nil && !errors.Is(err, os.ErrNotExist) {
		g.closeAll(false)
		return fmt.Errorf("removing pinned meta: %w", err)
	}
	var t switchback
	defer func() {
		defer t.close()
		if err == nil {
			return
		}
		t.undo()
		g.closeAll(true)
		if old.meta != nil {
			if merr := pindir.WriteMeta(g.pinDir, old.meta); merr != nil {
				g.log.Warn("restoring pinned meta", zap.Error(merr))
			}
		}
	}()
	reused, err := g.attachBesideOld(old, &t)
	if err != nil {
		return err
	}
	// beside the old one too, before that goes (pinned below with the rest)
	g.attachSetsockoptAll(false)
	// The new set is in force. Remove the old one; failures from here are
	// reported, not undone (undoing would open a gap).
	g.removeOld(old)
	g.pinReplacement(reused)
	return nil
}

// attachBesideOld is steps 1 to 3 of replace: the new sk_msg, egress and
// setsockopt guards beside the old ones, then sockops and the connect
// hooks switched in place where a pinned link is on this cgroup (reused
// names them), attached anew otherwise.
func (g *Guard) attachBesideOld(old *pinnedState, t *switchback) (reused map[string]bool, err error) {
	if err := g.attachSkMsg(); err != nil {
		return nil, err
	}
	for _, h := range cgroupHooks {
		if h.beside {
			if err := g.attachHook(h.name, h.attach); err != nil {
				return nil, err
			}
		}
	}
	reused = map[string]bool{}
	for _, h := range cgroupHooks {
		if h.beside {
			continue
		}
		name := h.name
		if l := old.links[name]; l != nil {
			if id, cerr := linkCgroup(l); cerr == nil && id == g.meta.CgroupID {
				if prev, perr := linkProgram(l); perr == nil {
					if err := g.switchLink(name, l, prev, old, t); err != nil {
						return nil, err
					}
					reused[name] = true
					continue
				}
			}
		}
		if err := g.attachHook(name, h.attach); err != nil {
			return nil, err
		}
	}
	return reused, nil
}

// removeOld is step 4 and 5 of replace: every old link goes, the old
// socket map is retired, the old pins are removed.
func (g *Guard) removeOld(old *pinnedState) {
	for name, l := range old.links {
		if err := detachLink(l); err != nil {
			g.log.Warn("detaching an old link", zap.String("link", name), zap.Error(err))
		}
		if err := os.Remove(filepath.Join(g.pinDir, pindir.LinksDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			g.log.Warn("removing an old link pin", zap.String("link", name), zap.Error(err))
		}
	}
	if err := g.retireSocketMap(old); err != nil {
		g.log.Warn("keeping the old socket map", zap.Error(err))
	}
	for _, stale := range []string{pindir.MapsDir, pindir.SkMsgPin} {
		if err := os.RemoveAll(filepath.Join(g.pinDir, stale)); err != nil {
			g.log.Warn("removing old pins", zap.String("path", stale), zap.Error(err))
		}
	}
}

// pinReplacement pins the new links (but the reused ones, whose pins
// stay), maps and sk_msg, then the meta that marks the set complete.
func (g *Guard) pinReplacement(reused map[string]bool) {
	for name, l := range g.links {
		if reused[name] {
			continue
		}
		if err := pindir.Pin(filepath.Join(g.pinDir, pindir.LinksDir, name), l.Pin); err != nil {
			g.log.Error("pinning a new link: it will not outlive this daemon", zap.String("link", name), zap.Error(err))
		}
	}
	for name, m := range g.mapsByName() {
		if err := pindir.Pin(filepath.Join(g.pinDir, pindir.MapsDir, name), m.Pin); err != nil {
			g.log.Error("pinning a new map", zap.String("map", name), zap.Error(err))
		}
	}
	if err := pindir.Pin(filepath.Join(g.pinDir, pindir.SkMsgPin), g.objs.ImdsMsg.Pin); err != nil {
		g.log.Error("pinning sk_msg", zap.Error(err))
	}
	if err := g.writeMeta(); err != nil {
		g.log.Error("recording the takeover", zap.Error(err))
	}
}

// retireSocketMap moves the old socket map and its sk_msg program under
// retired/, where they keep judging the connections opened before the
// takeover until those close (DrainRetired removes them then).
func (g *Guard) retireSocketMap(old *pinnedState) error {
	socks := old.maps[bpf.ImdsguardMapImdsSocks]
	if socks == nil {
		return nil
	}
	if empty, err := mapEmpty(socks); err == nil && empty {
		return nil
	}
	dir := filepath.Join(g.pinDir, pindir.RetiredDir, strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := socks.Pin(filepath.Join(dir, bpf.ImdsguardMapImdsSocks)); err != nil {
		return fmt.Errorf("pinning the old socket map: %w", err)
	}
	if old.skMsg != nil {
		if err := old.skMsg.Pin(filepath.Join(dir, "sk_msg")); err != nil {
			return fmt.Errorf("pinning the old sk_msg program: %w", err)
		}
	}
	g.log.Info("connections opened before the takeover stay judged by the previous programs until they close", zap.String("retired", dir))
	return nil
}

func mapEmpty(m *ebpf.Map) (bool, error) {
	var key uint64
	err := m.NextKey(nil, &key)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return true, nil
	}
	return false, err
}

// DrainRetired removes retired socket maps whose connections have all
// closed. It returns how many are left.
func (g *Guard) DrainRetired() int {
	if g.pinDir == "" {
		return 0
	}
	dirs, _ := filepath.Glob(filepath.Join(g.pinDir, pindir.RetiredDir, "*"))
	left := 0
	for _, dir := range dirs {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, bpf.ImdsguardMapImdsSocks), nil)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				os.RemoveAll(dir)
			}
			continue
		}
		empty, err := mapEmpty(m)
		m.Close()
		if err != nil || !empty {
			left++
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			g.log.Warn("removing a drained socket map", zap.String("path", dir), zap.Error(err))
			left++
			continue
		}
		g.log.Info("the last connection judged by the previous programs has closed", zap.String("retired", dir))
	}
	if left == 0 {
		os.Remove(filepath.Join(g.pinDir, pindir.RetiredDir))
	}
	return left
}

// RemovePinned detaches and removes everything pinned in dir: links,
// sk_msg attachments (current and retired), maps and meta. It refuses while
// a daemon holds the directory (it would keep enforcing through its own
// descriptors). It returns what it removed; nothing pinned is not an error.
func RemovePinned(dir string, log *zap.Logger) ([]string, error) {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	lock, err := pindir.TakeLock(context.Background(), dir, 0, nil)
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	return removePinned(dir, log)
}

func removePinned(dir string, log *zap.Logger) ([]string, error) {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	var removed []string
	var errs []error
	old, err := openPinned(dir)
	if err != nil {
		return nil, err
	}
	defer old.close()
	for _, h := range cgroupHooks {
		if l := old.links[h.name]; l != nil {
			if err := detachLink(l); err != nil {
				errs = append(errs, fmt.Errorf("detaching %s: %w", h.name, err))
				continue
			}
			removed = append(removed, "link "+h.name)
		}
	}
	for name, l := range old.links {
		if !isHook(name) {
			if err := detachLink(l); err != nil {
				errs = append(errs, fmt.Errorf("detaching %s: %w", name, err))
				continue
			}
			removed = append(removed, "link "+name)
		}
	}
	if socks := old.maps[bpf.ImdsguardMapImdsSocks]; socks != nil && old.skMsg != nil {
		if err := detachSkMsg(socks, old.skMsg); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		} else {
			removed = append(removed, "sk_msg")
		}
	}
	retired, _ := filepath.Glob(filepath.Join(dir, pindir.RetiredDir, "*"))
	for _, r := range retired {
		m, merr := ebpf.LoadPinnedMap(filepath.Join(r, bpf.ImdsguardMapImdsSocks), nil)
		p, perr := ebpf.LoadPinnedProgram(filepath.Join(r, "sk_msg"), nil)
		if merr == nil && perr == nil {
			if err := detachSkMsg(m, p); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, err)
			}
		}
		if m != nil {
			m.Close()
		}
		if p != nil {
			p.Close()
		}
		removed = append(removed, "retired socket map "+filepath.Base(r))
	}
	if len(old.maps) > 0 {
		removed = append(removed, fmt.Sprintf("%d maps", len(old.maps)))
	}
	if old.meta != nil {
		removed = append(removed, "meta")
	}
	if len(errs) > 0 {
		// Keep the pins of what could not be detached: they are the handle
		// to try again.
		return removed, errors.Join(errs...)
	}
	if err := os.RemoveAll(dir); err != nil {
		return removed, fmt.Errorf("removing %s: %w", dir, err)
	}
	removed = append(removed, "pin directory "+dir)
	log.Debug("removed pinned enforcement", zap.Strings("removed", removed))
	return removed, nil
}

func isHook(name string) bool {
	for _, h := range cgroupHooks {
		if h.name == name {
			return true
		}
	}
	return false
}
