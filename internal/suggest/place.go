package suggest

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// suggestion is one rule for one workload: a new rule, or a base rule
// extended in place.
type suggestion struct {
	g    *group
	rule policy.Rule
	// pos is where a new rule goes: before the base policy's rule pos, or
	// at the end when pos is the number of base rules.
	pos int
	// amend is the base rule extended instead of adding one, or -1.
	amend int
	notes []string
}

// plan places a rule for each group, sorted by glob. The rules are first
// match wins, so where a rule goes decides what it changes:
//
//   - A workload whose events no base rule matched gets its rule at the
//     end. There it takes exactly the processes that no rule matched
//     before, and every base rule keeps its effect on every process.
//   - Events that a base rule with the workload's own glob matched first
//     (one that grants something else, or is narrowed by comm or uid) are
//     answered by extending that rule in place: it matches only processes
//     of this workload, and nothing moves.
//   - Events that another base rule matched first (a broader glob that
//     grants something else) need a rule before that one, or it never
//     applies. It goes right before the first such rule, carries what
//     those rules granted (so the workload loses nothing), and its comment
//     names any later deny rule it now comes before. A base rule with the
//     same glob after that point would be shadowed (check refuses that):
//     such a workload is left to the operator, in the left-out section.
func plan(t *tally) []*suggestion {
	var out []*suggestion
	for _, k := range slices.SortedFunc(maps.Keys(t.groups), compareGroupKeys) {
		g := t.groups[k]
		s := &suggestion{g: g, pos: len(t.rules), amend: g.amend}
		s.rule = policy.Rule{Match: k.match(),
			AllowV1: g.reasons[bpf.ReasonIMDSv1NoToken.String()] != nil, AllowNonHostNetns: g.reasons[bpf.ReasonNonHostNetns.String()] != nil}
		hits := slices.Sorted(maps.Keys(g.hits))
		if len(hits) > 0 {
			s.pos = hits[0]
		}
		if s.amend >= 0 {
			s.rule = extended(t.rules[s.amend], s.rule)
		} else if why := shadows(t.rules, s.pos, s.rule.Match); why != "" {
			t.leaveGroup(g, why)
			continue
		} else {
			s.carry(t.rules, hits)
			s.warnDenies(t.rules)
		}
		out = append(out, s)
	}
	return out
}

// extended is base with the grants of add added.
func extended(base, add policy.Rule) policy.Rule {
	base.AllowV1 = base.AllowV1 || add.AllowV1
	base.AllowNonHostNetns = base.AllowNonHostNetns || add.AllowNonHostNetns
	return base
}

// shadows says why a new rule with match m at pos cannot be: a base rule
// from pos on has the same glob (and names) and every condition of m, and
// the new rule would leave it nothing (check refuses a rule that can never
// match).
func shadows(rules []policy.Rule, pos int, m policy.Match) string {
	for j := pos; j < len(rules); j++ {
		if r := rules[j].Match; sameWorkload(r, m) && within(r, m) {
			return fmt.Sprintf("the policy's rule %q has the same cgroup glob %q%s: a rule for these processes before it would shadow it, and they do not reach it; extend or split that rule by hand", rules[j].Name, m.Cgroup, namesText(m))
		}
	}
	return ""
}

// namesText is " and names namespace …, pod …, container …" for a match
// with name conditions, else "".
func namesText(m policy.Match) string {
	if !m.HasNames() {
		return ""
	}
	m.Cgroup, m.Comm, m.UID = "", "", nil
	return " and names (" + matchText(m) + ")"
}

// within reports whether a match's comm and uid conditions include those
// of m: every process a matches in a cgroup, m matches too.
func within(a, m policy.Match) bool {
	if m.Comm != "" && a.Comm != m.Comm {
		return false
	}
	return m.UID == nil || a.UID != nil && *a.UID == *m.UID
}

// carry adds what the base rules the events hit granted, so that matching
// the new rule first takes nothing from the workload.
func (s *suggestion) carry(rules []policy.Rule, hits []int) {
	for _, h := range hits {
		r := &rules[h]
		s.rule.AllowV1 = s.rule.AllowV1 || r.AllowV1
		s.rule.AllowNonHostNetns = s.rule.AllowNonHostNetns || r.AllowNonHostNetns
		if r.CredentialReadsPerMinute > s.rule.CredentialReadsPerMinute {
			s.rule.CredentialReadsPerMinute = r.CredentialReadsPerMinute
		}
		s.notes = append(s.notes, fmt.Sprintf("it comes before the policy's rule %q, which matched these processes first, and keeps what that rule granted (%s)%s", r.Name, grantList(r), keptConditions(r.Match)))
	}
	if len(hits) > 1 && s.rule.CredentialReadsPerMinute != 0 {
		s.notes = append(s.notes, fmt.Sprintf("credentialReadsPerMinute %d is the largest of those rules' bounds", s.rule.CredentialReadsPerMinute))
	}
}

// warnDenies notes the base deny rules after the new rule that some
// process of the workload could reach: this rule now wins for those. A deny
// rule behind a base rule that already took every process of the
// workload's cgroups lost them before, and is not named.
func (s *suggestion) warnDenies(rules []policy.Rule) {
	for j := s.pos; j < len(rules); j++ {
		r := &rules[j]
		if within(s.rule.Match, r.Match) && s.matchesAll(r) {
			return // no process this rule matches gets past rule j
		}
		if r.Deny && s.matchesAny(r) {
			s.notes = append(s.notes, fmt.Sprintf("it comes before the policy's deny rule %q: processes of this workload that rule would deny (%s) get this rule instead", r.Name, matchText(r.Match)))
		}
	}
}

// matchesAny reports whether a rule's cgroup glob (and names) match a
// cgroup the group's events came from.
func (s *suggestion) matchesAny(r *policy.Rule) bool {
	for w := range s.g.seen {
		if r.AppliesTo(w.cgroup, w.identity()) {
			return true
		}
	}
	return false
}

// matchesAll reports whether a rule's cgroup glob (and names) match every
// cgroup the group's events came from.
func (s *suggestion) matchesAll(r *policy.Rule) bool {
	for w := range s.g.seen {
		if !r.AppliesTo(w.cgroup, w.identity()) {
			return false
		}
	}
	return true
}

// leaveGroup moves a group's events to the left-out section.
func (t *tally) leaveGroup(g *group, why string) {
	for reason, sp := range g.reasons {
		k := leftKey{reason, g.wl.glob, why}
		it := t.left[k]
		if it == nil {
			it = &leftItem{procs: map[string]uint64{}, pods: map[string]bool{}}
			t.left[k] = it
		}
		it.merge(*sp)
		for p, n := range g.procs {
			addBounded(it.procs, p, n)
		}
		maps.Copy(it.pods, g.pods)
	}
}

// keptConditions says which conditions a new rule took from the base rule
// it comes before.
func keptConditions(m policy.Match) string {
	m.Cgroup, m.Namespace, m.Pod, m.Container = "", "", "", ""
	if m.Comm == "" && m.UID == nil {
		return ""
	}
	return " and its conditions (" + matchText(m) + ")"
}

// grantList names what a rule grants ("allowV1, credentialReadsPerMinute 60").
func grantList(r *policy.Rule) string {
	var g []string
	if r.AllowV1 {
		g = append(g, grantV1)
	}
	if r.AllowNonHostNetns {
		g = append(g, grantNetns)
	}
	if r.CredentialReadsPerMinute != 0 {
		g = append(g, fmt.Sprintf("credentialReadsPerMinute %d", r.CredentialReadsPerMinute))
	}
	if len(g) == 0 {
		return "nothing"
	}
	return strings.Join(g, ", ")
}

// matchText describes a rule's match for a comment.
func matchText(m policy.Match) string {
	var c []string
	if m.Cgroup != "" {
		c = append(c, "cgroup "+m.Cgroup)
	}
	for _, n := range []struct{ key, v string }{{"namespace", m.Namespace}, {"pod", m.Pod}, {"container", m.Container}} {
		if n.v != "" {
			c = append(c, n.key+" "+n.v)
		}
	}
	if m.Comm != "" {
		c = append(c, "comm "+m.Comm)
	}
	if m.UID != nil {
		c = append(c, fmt.Sprintf("uid %d", *m.UID))
	}
	if len(c) == 0 {
		return "every process"
	}
	return strings.Join(c, ", ")
}
