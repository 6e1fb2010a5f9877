package loader

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/netnsexec"
)

// Adopt puts TCP connections to IMDS that were established before the
// guard attached under the sk_msg program, in every network namespace it
// can find, so a keep-alive connection opened earlier is no way around the
// rules. It runs after sockops is attached: any connection established
// since is already covered. It returns how many connections it adopted.
func (g *Guard) Adopt() (uint64, error) {
	it, err := link.AttachIter(link.IterOptions{Program: g.objs.ImdsAdopt})
	if err != nil {
		return 0, fmt.Errorf("attaching socket iterator: %w", err)
	}
	defer it.Close()

	before, err := g.Counters()
	if err != nil {
		return 0, err
	}
	for i, ns := range networkNamespaces() {
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
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ESRCH) {
			g.log.Warn("adopting connections", zap.String("netns", ns), zap.Error(err))
		}
	}
	after, err := g.Counters()
	if err != nil {
		return 0, err
	}
	adopted := after.slots[bpf.CounterAdopted] - before.slots[bpf.CounterAdopted]
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

// networkNamespaces lists one path per distinct network namespace: those of
// all processes, and those bind-mounted under /run/netns (named namespaces
// may hold no process).
func networkNamespaces() []string {
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
		add(p)
	}
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		named, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, p := range named {
			add(p)
		}
	}
	return out
}
