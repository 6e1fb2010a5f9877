package loader

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/internal/cgroupfs"
	"github.com/imdsguard/imdsguard/internal/netnsexec"
)

// AdoptConnections puts TCP connections to IMDS that were established before the
// guard attached under the sk_msg program, in every network namespace it
// can find, so a keep-alive connection opened earlier is no way around the
// rules. It runs after sockops is attached: any connection established
// since is already covered. It returns how many connections it adopted.
func (g *Guard) AdoptConnections() (uint64, error) {
	it, err := link.AttachIter(link.IterOptions{Program: g.objs.ImdsAdopt})
	if err != nil {
		return 0, fmt.Errorf("attaching socket iterator: %w", err)
	}
	defer it.Close()

	before, err := g.Counters()
	if err != nil {
		return 0, err
	}
	within, err := cgroupFilter(g.meta.Cgroup)
	if err != nil {
		return 0, err
	}
	for i, ns := range networkNamespaces(within) {
		err := netnsexec.Do(ns, func() error { return runIter(it) })
		if err == nil {
			continue
		}
		if i == 0 {
			// the daemon's own namespace: this must work
			return 0, fmt.Errorf("adopting connections in %s: %w", ns, err)
		}
		// Namespaces come and go while we walk them (a pod being torn
		// down has no connections left to adopt): report, carry on.
		// (EINVAL: a /run/netns entry half-way through deletion)
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.EINVAL) {
			g.log.Warn("adopting connections", zap.String("netns", ns), zap.Error(err))
		}
	}
	after, err := g.Counters()
	if err != nil {
		return 0, err
	}
	adopted := after.Adopted() - before.Adopted()
	if unguarded := after.Unguarded() - before.Unguarded(); unguarded > 0 {
		// Another sk_msg user (a second guard, a CNI's socket acceleration)
		// already owns them; they were opened before the guard and stay
		// outside it until they close.
		g.log.Warn("connections to IMDS opened before start could not be put under the request judge",
			zap.Uint64("connections", unguarded))
	}
	return adopted, nil
}

// runIter runs the iterator once over the calling thread's network namespace
// (the namespace is fixed when the iterator is opened).
func runIter(it *link.Iter) error {
	rd, err := it.Open()
	if err != nil {
		return fmt.Errorf("opening iterator: %w", err)
	}
	defer rd.Close()
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return fmt.Errorf("running iterator: %w", err)
	}
	return nil
}

// cgroupFilter returns nil when dir is the root of its hierarchy (every
// process is guarded), else a test for whether a pid's cgroup is dir or
// below it: connections of processes the guard does not cover are not its
// to adopt.
func cgroupFilter(dir string) (func(pid string) bool, error) {
	mount, err := cgroupfs.MountOf(dir)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, err
	}
	rel := strings.TrimPrefix(abs, mount)
	if rel == "" || rel == "/" {
		return nil, nil
	}
	return func(pid string) bool {
		data, err := os.ReadFile(filepath.Join("/proc", pid, "cgroup"))
		if err != nil {
			return false
		}
		for _, line := range strings.Split(string(data), "\n") {
			if p, ok := strings.CutPrefix(line, "0::"); ok {
				return p == rel || strings.HasPrefix(p, rel+"/")
			}
		}
		return false
	}, nil
}

// networkNamespaces lists one path per distinct network namespace: the
// daemon's own first, then those of the processes within (all when within
// is nil), and, when every process is guarded, those bind-mounted under
// /run/netns (named namespaces may hold no process).
func networkNamespaces(within func(pid string) bool) []string {
	seen := map[[2]uint64]bool{}
	var out []string
	add := func(p string) {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return
		}
		id := [2]uint64{st.Dev, st.Ino}
		if !seen[id] {
			seen[id] = true
			out = append(out, p)
		}
	}
	add("/proc/self/ns/net")
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range procs {
		if within == nil || within(filepath.Base(filepath.Dir(filepath.Dir(p)))) {
			add(p)
		}
	}
	if within != nil {
		return out
	}
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		named, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, p := range named {
			add(p)
		}
	}
	return out
}
