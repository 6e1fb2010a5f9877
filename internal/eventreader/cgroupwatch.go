package eventreader

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Watch fills the cache with every cgroup below the mount and, until ctx
// ends, with each one made from then on, as it is made. A container that
// connects and exits at once (a one-shot job, or an attacker's) takes its
// cgroup with it before its event is read, and an id the kernel no longer
// has cannot be opened: its event would name no cgroup, container or pod.
// inotify does not recurse, so every cgroup directory is watched; without
// watches (fs.inotify.max_user_watches) ids are still looked up when read.
func (r *CgroupResolver) Watch(ctx context.Context, log *zap.Logger) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Warn("not watching for new cgroups: a short-lived container's events may name no cgroup", zap.Error(err))
		return
	}
	defer w.Close()
	warned := false
	warn := func(err error) {
		if !warned {
			log.Warn("not watching every cgroup: a short-lived container's events may name no cgroup", zap.Error(err))
			warned = true
		}
	}
	r.learnTree(w, r.mount, warn)
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-w.Events:
			switch {
			case ev.Has(fsnotify.Create):
				r.learnTree(w, ev.Name, warn)
			case ev.Has(fsnotify.Remove):
				r.forget(r.rel(ev.Name))
			}
		case err := <-w.Errors:
			warn(err)
		}
	}
}

// learnTree watches dir, then caches it and the cgroups below it: watched
// first, so that a child made meanwhile is either reported or read here.
func (r *CgroupResolver) learnTree(w *fsnotify.Watcher, dir string, warn func(error)) {
	if err := w.Add(dir); err != nil {
		if !os.IsNotExist(err) {
			warn(err)
		}
	}
	if !r.learn(dir) {
		return
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return // removed meanwhile
	}
	for _, e := range entries {
		if e.IsDir() {
			r.learnTree(w, filepath.Join(dir, e.Name()), warn)
		}
	}
}

// learn caches the id (the directory's inode number) and path of the
// cgroup at dir; false when it is no cgroup directory (any more).
func (r *CgroupResolver) learn(dir string) bool {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false
	}
	r.store(st.Ino, r.rel(dir))
	return true
}

// rel is dir relative to the mount ("/" for the mount itself).
func (r *CgroupResolver) rel(dir string) string {
	rel := strings.TrimPrefix(filepath.Clean(dir), r.mount)
	if rel == "" {
		return "/"
	}
	return rel
}
