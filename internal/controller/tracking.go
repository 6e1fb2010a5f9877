package controller

import (
	"maps"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/internal/cgroupfs"
)

// A full scan of the tree reads every cgroup directory: some 100 ms of CPU
// on a node with 10 000 cgroups. The watch (cgroupWatch) reports every
// cgroup made and removed, so the daemon reads only what changed, and scans
// in full only as a safety net (FullRescan) and when the watch lost events
// or could not watch every cgroup. A cgroup the daemon missed is no hole:
// the kernel judges it by its nearest known ancestor's subtree list, as
// strictly as the policy could judge it; only its grants wait.

// DefaultFullRescan is how often the whole tree is read again while the
// watch reports every change.
const DefaultFullRescan = time.Minute

// treeChanges are the cgroup directories the watch saw made and removed
// since the last update (absolute paths).
type treeChanges struct {
	made, gone []string
}

// update brings the plan in step with what the watch saw, without reading
// the whole tree: the cgroups removed (ch.gone) are forgotten, those made
// (made: what the directories of ch.made hold, id -> path) are added, and
// those whose names were pending are asked again.
func (e *Controller) update(ch treeChanges, made map[uint64]string) error {
	e.mu.Lock()
	p, known, pending := e.plan, e.plan.tree, e.plan.pending
	e.mu.Unlock()
	if !p.Compiled.HasCgroupRules() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.recordRescanLocked()
		return nil
	}
	tree, fresh := known, map[uint64]string{}
	if len(ch.gone)+len(made) > 0 {
		tree, fresh = applyTreeChanges(e.opts.CgroupMount, known, ch.gone, made)
	}
	for id := range pending {
		if path, ok := tree[id]; ok {
			fresh[id] = path
		}
	}
	sc := &treeScan{tree: tree, ids: identifyAll(p.Compiled, fresh, p.names)}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.applyScanLocked(p, sc); err != nil {
		return err
	}
	e.recordRescanLocked()
	return nil
}

// applyTreeChanges is known with the removals of gone applied, checking
// that a directory no longer holds the same cgroup (a name removed and made
// again is a new cgroup), then the cgroups of made. fresh are the cgroups
// known did not have. (cgroup v2 refuses rename(2): a cgroup keeps its
// path for life.)
func applyTreeChanges(mount string, known map[uint64]string, gone []string, made map[uint64]string) (tree, fresh map[uint64]string) {
	tree = maps.Clone(known)
	fresh = map[uint64]string{}
	for _, dir := range gone {
		forgetBelow(mount, tree, relPath(mount, dir))
	}
	for id, path := range made {
		if _, ok := tree[id]; !ok {
			fresh[id] = path
		}
		tree[id] = path
	}
	return tree, fresh
}

// forgetBelow drops from tree the cgroups at rel and below it that are no
// longer there.
func forgetBelow(mount string, tree map[uint64]string, rel string) {
	for id, path := range tree {
		if path != rel && !strings.HasPrefix(path, rel+"/") {
			continue
		}
		if now, err := cgroupfs.ID(filepath.Join(mount, path)); err != nil || now != id {
			delete(tree, id)
		}
	}
}

func relPath(mount, dir string) string {
	rel := strings.TrimPrefix(filepath.Clean(dir), filepath.Clean(mount))
	if rel == "" {
		return "/"
	}
	return rel
}

// refresh is the tick's work while the watch reports every change: the
// cgroups whose names the runtime had not given are asked again, and the
// pods the table lets through are looked at again (a process may have
// joined an allowed cgroup).
func (e *Controller) refresh() error {
	e.mu.Lock()
	pending := len(e.plan.pending) > 0
	e.mu.Unlock()
	if pending {
		return e.update(treeChanges{}, nil)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.followPodsLocked()
	e.recordRescanLocked()
	return nil
}

// recordRescanLocked says the tree is known as of now, for /readyz and
// status.
func (e *Controller) recordRescanLocked() {
	now := time.Now()
	e.lastRescan.Store(now.UnixNano())
	if err := e.guard.RecordRescan(now); err != nil {
		e.log.Warn("recording the rescan in the pinned meta", zap.Error(err))
	}
}
