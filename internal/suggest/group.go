package suggest

import (
	"fmt"
	"time"

	"github.com/imdsguard/imdsguard/internal/containerid"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// who is a process as the policy tells processes apart: its cgroup, comm
// and uid, and the names of its pod's container as its events give them.
type who struct {
	cgroup, comm              string
	uid                       uint32
	namespace, pod, container string
}

func whoOf(r record) who { return who{r.Cgroup, r.Comm, r.UID, r.Namespace, r.Pod, r.Container} }

// identity is what the daemon knows of the process's names: those of the
// events, if the cgroup is a pod's container cgroup itself (as
// policy.Identity has it); unknown (or no pod's) otherwise.
func (w who) identity() policy.Identity {
	if _, place := containerid.Locate(w.cgroup); place == containerid.PodContainer {
		return policy.Named(policy.Workload{Namespace: w.namespace, Pod: w.pod, Container: w.container})
	}
	return policy.PathIdentity(w.cgroup)
}

// span is when something was seen, and how often.
type span struct {
	count       uint64
	first, last time.Time
}

func (s *span) add(r record) { s.merge(span{r.counted(), r.Time, r.Time}) }

// merge adds another span's events.
func (s *span) merge(o span) {
	if o.count == 0 {
		return
	}
	if s.count == 0 || o.first.Before(s.first) {
		s.first = o.first
	}
	if s.count == 0 || o.last.After(s.last) {
		s.last = o.last
	}
	s.count += o.count
}

// group is the audit events of one workload that a rule would fix.
type group struct {
	span
	wl      workload
	reasons map[string]*span
	procs   map[string]uint64 // "comm (exe)"
	paths   map[string]uint64
	pods    map[string]bool // "namespace/pod"
	conts   map[string]bool // container names
	seen    map[who]map[string]bool
	// hits are the base policy's rules that matched these events first
	// (rules that grant something, but not what they needed).
	hits map[int]bool
	// amend is the base rule these events hit that has the workload's own
	// glob, to be extended in place; -1 for a new rule.
	amend int
}

func newGroup(w workload, amend int) *group {
	return &group{wl: w, amend: amend, reasons: map[string]*span{}, procs: map[string]uint64{}, paths: map[string]uint64{},
		pods: map[string]bool{}, conts: map[string]bool{}, seen: map[who]map[string]bool{}, hits: map[int]bool{}}
}

// maxDistinct bounds each set a group keeps for its comment: a workload
// asking for a million distinct paths must not hold them all.
const maxDistinct = 256

func (g *group) add(r record, hit int) {
	g.span.add(r)
	if g.reasons[r.Reason] == nil {
		g.reasons[r.Reason] = &span{}
	}
	g.reasons[r.Reason].add(r)
	addBounded(g.procs, process(r), r.counted())
	if r.Path != "" {
		addBounded(g.paths, r.Path, r.counted())
	}
	if r.Pod != "" {
		g.pods[r.Namespace+"/"+r.Pod] = true
	}
	if r.Container != "" {
		g.conts[r.Container] = true
	}
	k := whoOf(r)
	if g.seen[k] == nil {
		g.seen[k] = map[string]bool{}
	}
	g.seen[k][r.Reason] = true
	if hit >= 0 {
		g.hits[hit] = true
	}
}

func addBounded(m map[string]uint64, k string, n uint64) {
	if _, ok := m[k]; ok || len(m) < maxDistinct {
		m[k] += n
	}
}

func process(r record) string {
	if r.Exe != "" && r.Exe != r.Comm {
		return fmt.Sprintf("%s (%s)", r.Comm, r.Exe)
	}
	return r.Comm
}

// leftKey is one line of the "left out" section.
type leftKey struct{ reason, cgroup, why string }

// leftItem is what was left out under one leftKey.
type leftItem struct {
	span
	procs map[string]uint64
	pods  map[string]bool
}
