package suggest

import (
	"cmp"
	"fmt"
	"strings"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// The rule keys that answer the two grantable reasons.
const (
	grantV1    = "allowV1"
	grantNetns = "allowNonHostNetns"
)

// grantFor names the rule key that lifts a reason's refusal for one
// workload, or "" when no rule should: the other refusals are about what a
// request does (relayed, unparsable, a long token, too many of them), not
// about who sends it.
func grantFor(reason string) string {
	switch reason {
	case bpf.ReasonIMDSv1NoToken.String():
		return grantV1
	case bpf.ReasonNonHostNetns.String():
		return grantNetns
	}
	return ""
}

// tally sorts the audit events into groups (one per workload) and what is
// left out.
type tally struct {
	rules   []policy.Rule // the base policy's, in order
	groups  map[groupKey]*group
	left    map[leftKey]*leftItem
	already map[int]*span // events a base rule already grants, by rule
}

func newTally(rules []policy.Rule) *tally {
	return &tally{rules: rules, groups: map[groupKey]*group{}, left: map[leftKey]*leftItem{}, already: map[int]*span{}}
}

func (t *tally) add(r record) {
	if r.Action != bpf.ActionAudit.String() {
		return // allow needs nothing; deny is enforce mode's, counted in the header
	}
	if r.Kind == kindPacket {
		t.leave(r, orDefault(r.Reason, "routed_from_other_netns"), "packets from "+orDefault(r.Src, "an unknown address"), "")
		return
	}
	grant := grantFor(r.Reason)
	if grant == "" {
		t.leave(r, r.Reason, r.Cgroup, "")
		return
	}
	w, why := workloadFor(r)
	if why != "" {
		t.leave(r, r.Reason, r.Cgroup, why)
		return
	}
	hit := firstMatch(t.rules, whoOf(r))
	if hit >= 0 {
		rule := &t.rules[hit]
		if rule.Deny {
			t.leave(r, r.Reason, r.Cgroup, fmt.Sprintf("the policy's rule %q denies it, and suggest never overrides a deny", rule.Name))
			return
		}
		if grants(rule, grant) {
			s := t.already[hit]
			if s == nil {
				s = &span{}
				t.already[hit] = s
			}
			s.add(r)
			return
		}
	}
	k := t.keyFor(w, hit)
	g := t.groups[k]
	if g == nil {
		g = newGroup(w, k.amend)
		t.groups[k] = g
	}
	g.add(r, hit)
}

// groupKey tells groups apart: one per workload and the conditions its
// rule keeps from the base rule its events hit.
type groupKey struct {
	glob                      string
	namespace, pod, container string // the workload's names, for a pod matched by them
	comm                      string
	uid                       int64 // -1: no uid condition
	amend                     int   // the base rule to extend, or -1 for a new rule
}

// keyFor is the group of an event of the workload glob that base rule hit
// matched first (-1: none).
//
// When that rule is the workload's own (the same glob, perhaps narrowed by
// comm or uid), extending it in place changes nothing for anyone else.
// When it is a broader one, the new rule has to come before it, and takes
// its comm and uid conditions: the processes it matched still match, and
// the rule reaches no process of the workload that it did not.
func (t *tally) keyFor(w workload, hit int) groupKey {
	k := groupKey{glob: w.glob, namespace: w.namespace, pod: w.pod, container: w.container, uid: -1, amend: -1}
	if hit < 0 {
		return k
	}
	m := t.rules[hit].Match
	if sameWorkload(m, k.match()) {
		k.amend = hit
		return k
	}
	k.comm = m.Comm
	if m.UID != nil {
		k.uid = int64(*m.UID)
	}
	return k
}

// match is the new rule's match for the group.
func (k groupKey) match() policy.Match {
	m := policy.Match{Cgroup: k.glob, Namespace: k.namespace, Pod: k.pod, Container: k.container, Comm: k.comm}
	if k.uid >= 0 {
		u := uint32(k.uid)
		m.UID = &u
	}
	return m
}

// compareGroupKeys orders groups, and so the new rules placed at one spot.
// Of two pod globs in one namespace, the one with the longer literal start
// comes first: "web-admin-*-?????" before "web-*-?????", which also matches
// web-admin's pods and would take them first.
func compareGroupKeys(a, b groupKey) int {
	return cmp.Or(cmp.Compare(a.glob, b.glob), cmp.Compare(a.namespace, b.namespace),
		-cmp.Compare(len(literalStart(a.pod)), len(literalStart(b.pod))), cmp.Compare(a.pod, b.pod), cmp.Compare(a.container, b.container),
		cmp.Compare(a.comm, b.comm), cmp.Compare(a.uid, b.uid), cmp.Compare(a.amend, b.amend))
}

// literalStart is a glob's start before its first wildcard.
func literalStart(glob string) string {
	if i := strings.IndexAny(glob, `*?[\`); i >= 0 {
		return glob[:i]
	}
	return glob
}

// sameWorkload reports whether two matches have the same cgroup glob and
// name conditions: a rule with a's is this workload's own.
func sameWorkload(a, b policy.Match) bool {
	return a.Cgroup == b.Cgroup && a.Namespace == b.Namespace && a.Pod == b.Pod && a.Container == b.Container
}

func (t *tally) leave(r record, reason, cgroup, why string) {
	k := leftKey{reason, cgroup, why}
	it := t.left[k]
	if it == nil {
		it = &leftItem{procs: map[string]uint64{}, pods: map[string]bool{}}
		t.left[k] = it
	}
	it.span.add(r)
	if r.Comm != "" {
		addBounded(it.procs, process(r), r.counted())
	}
	if r.Pod != "" {
		it.pods[r.Namespace+"/"+r.Pod] = true
	}
}

// orDefault is s, or def when s is empty.
func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// firstMatch is the index of the first rule that matches the process, as
// the kernel picks it (first match wins), or -1. Rules by name are judged as
// the daemon judges them (policy.Rule.AppliesTo): by the names the events
// give the process's pod, and as unknown where they give none.
func firstMatch(rules []policy.Rule, p who) int {
	id := p.identity()
	for i := range rules {
		m := &rules[i].Match
		if !rules[i].AppliesTo(p.cgroup, id) {
			continue
		}
		if m.Comm != "" && m.Comm != p.comm {
			continue
		}
		if m.UID != nil && *m.UID != p.uid {
			continue
		}
		return i
	}
	return -1
}

// grants reports whether a rule grants the key a reason needs.
func grants(r *policy.Rule, grant string) bool {
	switch grant {
	case grantV1:
		return r.AllowV1
	case grantNetns:
		return r.AllowNonHostNetns
	}
	return false
}
