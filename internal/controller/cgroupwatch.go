package controller

import (
	"errors"
	"io/fs"
	"path/filepath"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/internal/cgroupfs"
)

// cgroupWatch reports every cgroup made or removed anywhere in the tree, so
// that a new cgroup gets its own rules (its grants above all: until then
// the kernel judges it by its ancestor's strict subtree list) in
// milliseconds, and the daemon reads only what changed instead of the whole
// tree. inotify does not recurse, so every cgroup directory is watched.
type cgroupWatch struct {
	w       *fsnotify.Watcher
	mount   string
	watched map[string]bool
	log     *zap.Logger
	warned  bool
	// incomplete says some cgroup could not be watched (e.g.
	// fs.inotify.max_user_watches): the tree is then read in full at every
	// tick, as nothing reports what is made below it.
	incomplete bool
	// seen is what the events reported since the last take; lost says
	// the kernel dropped events (queue overflow): read the tree in full.
	seen treeChanges
	lost bool
}

func newCgroupWatch(mount string, log *zap.Logger) (*cgroupWatch, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	return &cgroupWatch{w: w, mount: filepath.Clean(mount), watched: map[string]bool{}, log: log}, nil
}

// sync watches every cgroup of tree (paths relative to the mount) not
// watched yet, and forgets those gone (the kernel drops their watches).
func (c *cgroupWatch) sync(tree map[uint64]string) {
	present := make(map[string]bool, len(tree))
	c.incomplete = false
	for _, rel := range tree {
		dir := filepath.Join(c.mount, rel)
		present[dir] = true
		c.add(dir)
	}
	for dir := range c.watched {
		if !present[dir] {
			delete(c.watched, dir)
		}
	}
}

// add watches dir; false when it could not (gone, or out of watches).
func (c *cgroupWatch) add(dir string) bool {
	if c.watched[dir] {
		return true
	}
	if err := c.w.Add(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false // removed since it was read
		}
		c.incomplete = true
		if !c.warned {
			c.log.Warn("not watching every cgroup for new ones; new cgroups get their rules at the next rescan",
				zap.String("cgroup", dir), zap.Error(err))
			c.warned = true
		}
		return false
	}
	c.watched[dir] = true
	return true
}

// note records what ev says of the tree; true when it says something.
func (c *cgroupWatch) note(ev fsnotify.Event) bool {
	switch {
	case ev.Has(fsnotify.Create):
		c.seen.made = append(c.seen.made, ev.Name)
	case ev.Has(fsnotify.Remove):
		c.seen.gone = append(c.seen.gone, ev.Name)
	default:
		return false // a control file written
	}
	return true
}

// noteError records a watch error; a lost event means the tree must be
// read in full.
func (c *cgroupWatch) noteError(err error) {
	if errors.Is(err, fsnotify.ErrEventOverflow) {
		c.lost = true
	}
}

// take returns what the events reported since the last take, with what the
// directories made hold now (followed), and whether events were lost.
func (c *cgroupWatch) take() (ch treeChanges, made map[uint64]string, lost bool) {
	ch, lost = c.seen, c.lost
	c.seen, c.lost = treeChanges{}, false
	for _, dir := range ch.gone {
		// the kernel has dropped its watch
		delete(c.watched, dir)
	}
	made = map[uint64]string{}
	for _, dir := range ch.made {
		c.follow(dir, made)
	}
	return ch, made, lost
}

// follow watches the cgroup at dir and every one below it, and adds them to
// out. Each directory is watched before it is read, and reading is repeated
// until it finds nothing unwatched, so a cgroup made meanwhile is either
// read here or reported by an event.
func (c *cgroupWatch) follow(dir string, out map[uint64]string) {
	if !c.add(dir) {
		return
	}
	rel := relPath(c.mount, dir)
	for {
		sub, err := cgroupfs.ScanSubtree(c.mount, rel)
		if err != nil {
			return // removed since; its removal is reported too
		}
		added := false
		for id, path := range sub {
			out[id] = path
			d := filepath.Join(c.mount, path)
			if !c.watched[d] && c.add(d) {
				added = true
			}
		}
		if !added {
			return
		}
	}
}

func (c *cgroupWatch) close() { c.w.Close() }
