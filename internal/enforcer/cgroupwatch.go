package enforcer

import (
	"errors"
	"io/fs"
	"path/filepath"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// cgroupWatch says when a cgroup is made anywhere in the tree, so that the
// daemon scans at once and a new cgroup gets its own rules (its grants
// above all: until then the kernel judges it by its ancestor's strict
// subtree list) in milliseconds rather than at the next periodic rescan.
// inotify does not recurse, so every cgroup directory is watched; those
// made since are added after each scan.
type cgroupWatch struct {
	w       *fsnotify.Watcher
	mount   string
	watched map[string]bool
	log     *zap.Logger
	warned  bool
}

func newCgroupWatch(mount string, log *zap.Logger) (*cgroupWatch, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	return &cgroupWatch{w: w, mount: mount, watched: map[string]bool{}, log: log}, nil
}

// sync watches every cgroup of tree (paths relative to the mount) not
// watched yet, and forgets those gone (the kernel drops their watches).
func (c *cgroupWatch) sync(tree map[uint64]string) {
	present := make(map[string]bool, len(tree))
	for _, rel := range tree {
		dir := filepath.Join(c.mount, rel)
		present[dir] = true
		if c.watched[dir] {
			continue
		}
		if err := c.w.Add(dir); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed since the scan
			}
			if !c.warned {
				// e.g. fs.inotify.max_user_watches: periodic rescans
				// still give new cgroups their rules, later
				c.log.Warn("not watching every cgroup for new ones; new cgroups get their rules at the next rescan",
					zap.String("cgroup", dir), zap.Error(err))
				c.warned = true
			}
			continue
		}
		c.watched[dir] = true
	}
	for dir := range c.watched {
		if !present[dir] {
			delete(c.watched, dir)
		}
	}
}

// made reports whether ev is a new directory: a cgroup.
func made(ev fsnotify.Event) bool { return ev.Has(fsnotify.Create) }

func (c *cgroupWatch) close() { c.w.Close() }
