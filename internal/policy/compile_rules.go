package policy

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/kernelpolicy"
)

// MaxRules is how many rules a policy may hold. The kernel's table
// (bpf.MaxRules per generation) keeps its last slot for kernelpolicy.OverflowRule.
const MaxRules = 1000

// A policy's rules and the overflow rule must fit the kernel's table.
const _ = uint(bpf.MaxRules - 1 - MaxRules)

// RulesPerCgroup is how many rules can apply to one cgroup: the rules
// whose cgroup glob matches it, and those without a cgroup condition, up
// to the first that matches unconditionally.
const RulesPerCgroup = bpf.RulesPerCgroup

// compileRules turns the rules into the kernel's rule table.
func compileRules(rules []Rule) ([]bpf.ImdsguardRule, error) {
	if len(rules) > MaxRules {
		return nil, fmt.Errorf("compiling rules: at most %d rules", MaxRules)
	}
	out := make([]bpf.ImdsguardRule, len(rules))
	for i, r := range rules {
		k := &out[i]
		if r.Deny {
			k.Flags |= bpf.RuleDeny
		}
		if r.AllowV1 {
			k.Flags |= bpf.RuleAllowV1
		}
		if r.AllowNonHostNetns {
			k.Flags |= bpf.RuleAllowNonHostNetns
		}
		k.CredReadsPerMin = uint32(r.CredentialReadsPerMinute)
		if r.Match.Comm != "" {
			if len(r.Match.Comm) > maxComm {
				return nil, fmt.Errorf("compiling rule %q: comm longer than %d bytes", r.Name, maxComm)
			}
			k.Flags |= bpf.RuleMatchComm
			var b [maxComm + 1]byte
			copy(b[:], r.Match.Comm)
			k.Comm[0] = binary.NativeEndian.Uint64(b[0:8])
			k.Comm[1] = binary.NativeEndian.Uint64(b[8:])
		}
		if r.Match.UID != nil {
			k.Flags |= bpf.RuleMatchUID
			k.Uid = *r.Match.UID
		}
	}
	return out, nil
}

// OverflowRuleName is what events name the overflow rule.
const OverflowRuleName = "(more than 16 rules could apply)"

// overflowList is the rule list of a cgroup with too many candidates.
var overflowList = []uint16{kernelpolicy.OverflowRule}

// Candidates is CandidatesOf with the identity the path alone gives
// (PathIdentity): a pod's container is taken to have unknown names.
func (c *Compiled) Candidates(path string) ([]uint16, error) {
	id := NotAPodContainer()
	if c.HasNameRules() {
		id = PathIdentity(path)
	}
	return c.CandidatesOf(path, id)
}

// CandidatesOf returns, in policy order, the indices of the rules a process
// in the cgroup at path (relative to the cgroup v2 mount, "/" for the root),
// whose workload is id, can match: those whose cgroup glob matches the path
// (or that have none) and whose name conditions hold (or that have none;
// see Rule.AppliesTo), up to and including the first one that matches every
// process of the cgroup (no comm or uid condition) — nothing after it can
// win.
//
// More than RulesPerCgroup candidates fail closed: the list returned is the
// overflow rule's (a deny), with an error that says why.
func (c *Compiled) CandidatesOf(path string, id Identity) ([]uint16, error) {
	segs, canonical := splitCgroupPath(path)
	var sc pathScratch
	out := c.candidates(func(i int, r *Rule) bool {
		// the names first: they are cheaper than the glob
		return r.namesApply(id) && sc.matches(&c.globs[i], segs, canonical)
	})
	return c.bounded(out, "cgroup ", path)
}

// SubtreeCandidates is the rule list of the cgroups below the one at path
// that the kernel has no entry for yet (made since the last scan): as strict
// as the policy could be for any of them. A rule whose glob matches every
// cgroup below path is kept, as it would be for each; one whose glob may
// match some of them, depending on their names, is kept only if it denies
// (taken to match) and left out otherwise (no grant before the policy has
// matched the name); one that can match none of them is left out. The names
// of the workload in a new cgroup are not known yet, so a rule with name
// conditions is kept only if it denies, as for an unknown Identity.
func (c *Compiled) SubtreeCandidates(path string) ([]uint16, error) {
	segs, canonical := splitCgroupPath(path)
	var sc pathScratch
	out := c.candidates(func(i int, r *Rule) bool {
		if !r.namesApply(Identity{}) {
			return false
		}
		switch sc.below(&c.globs[i], segs, canonical) {
		case belowAll:
			return true
		case belowSome:
			return r.Deny
		}
		return false
	})
	return c.bounded(out, "new cgroups under ", path)
}

// pathScratch holds the states CandidatesOf and SubtreeCandidates run
// their rules' globs with, one rule after the other.
type pathScratch struct{ s, tmp []uint64 }

// state runs g over segs: the state of the path and whether it has any
// position left; none for a path not in canonical form (segs, canonical
// are splitCgroupPath's), which no pattern matches.
func (sc *pathScratch) state(g *compiledGlob, segs []string, canonical bool) ([]uint64, bool) {
	if !canonical {
		return nil, false
	}
	if cap(sc.s) < g.words {
		sc.s, sc.tmp = make([]uint64, g.words), make([]uint64, g.words)
	}
	s := sc.s[:g.words]
	return s, g.state(s, sc.tmp[:g.words], segs)
}

// matches is MatchCgroup for a rule's glob ("": every cgroup).
func (sc *pathScratch) matches(g *compiledGlob, segs []string, canonical bool) bool {
	switch g.cond {
	case globNone:
		return true
	case globInvalid:
		return false
	}
	s, ok := sc.state(g, segs, canonical)
	return ok && g.matches(s)
}

// below is matchBelow for a rule's glob ("": every cgroup).
func (sc *pathScratch) below(g *compiledGlob, segs []string, canonical bool) below {
	switch g.cond {
	case globNone:
		return belowAll
	case globInvalid:
		return belowNone
	}
	s, ok := sc.state(g, segs, canonical)
	if !ok {
		return belowNone
	}
	return g.below(s)
}

// bounded fails a list of more than RulesPerCgroup rules closed; the error
// names the cgroups (what, then path: concatenated only on failure, as
// this runs for every cgroup of the tree).
func (c *Compiled) bounded(out []uint16, what, path string) ([]uint16, error) {
	if len(out) <= RulesPerCgroup {
		return out, nil
	}
	names := make([]string, len(out))
	for i, idx := range out {
		names[i] = c.rules[idx].Name
	}
	return overflowList, fmt.Errorf("%s%s: %d rules can apply (%v), at most %d: its processes are refused IMDS",
		what, path, len(out), names, RulesPerCgroup)
}

// DefaultCandidates is the rule list of every cgroup that no rule's cgroup
// glob matches: the rules without a cgroup condition, those with name
// conditions only if they deny (the cgroups the kernel gives this list are
// ones it has no entry for, whose names are not known).
func (c *Compiled) DefaultCandidates() ([]uint16, error) {
	out := c.candidates(func(_ int, r *Rule) bool { return r.Match.Cgroup == "" && r.namesApply(Identity{}) })
	if len(out) > RulesPerCgroup {
		return nil, fmt.Errorf("%d rules without a cgroup condition apply to every cgroup, at most %d", len(out), RulesPerCgroup)
	}
	return out, nil
}

// candidates lists, in policy order, the rules that applies accepts, up to
// and including the first without a comm or uid condition: it matches every
// process the list is for, so nothing after it can win.
func (c *Compiled) candidates(applies func(i int, r *Rule) bool) []uint16 {
	var out []uint16
	for i := range c.rules {
		r := &c.rules[i]
		if !applies(i, r) {
			continue
		}
		out = append(out, uint16(i))
		if r.Match.Comm == "" && r.Match.UID == nil {
			break
		}
	}
	return out
}

// NeedsEntry reports whether a cgroup's candidates differ from the default
// list, i.e. whether the kernel needs an entry for it.
func (c *Compiled) NeedsEntry(cands, defaults []uint16) bool {
	return !slices.Equal(cands, defaults)
}

// RuleName returns the name of rule i ("" when out of range).
func (c *Compiled) RuleName(i int) string {
	if i < 0 || i >= len(c.rules) {
		return ""
	}
	return c.rules[i].Name
}

// HasCgroupRules reports whether any rule has a cgroup or a name condition
// (and the cgroup tree must therefore be watched).
func (c *Compiled) HasCgroupRules() bool {
	for i := range c.rules {
		if m := &c.rules[i].Match; m.Cgroup != "" || m.HasNames() {
			return true
		}
	}
	return false
}

// HasNameRules reports whether any rule has a namespace, pod or container
// condition (and the container runtime must therefore be asked the names
// of the containers in the cgroup tree).
func (c *Compiled) HasNameRules() bool {
	for i := range c.rules {
		if c.rules[i].Match.HasNames() {
			return true
		}
	}
	return false
}

// GrantsByName reports whether any rule with name conditions grants
// something: what a node without the container runtime never gets.
func (c *Compiled) GrantsByName() bool {
	for i := range c.rules {
		if r := &c.rules[i]; r.Match.HasNames() && !r.Deny {
			return true
		}
	}
	return false
}

// AllowsNonHostNetns reports whether rule i grants allowNonHostNetns
// (false for an index out of range: the overflow rule denies).
func (c *Compiled) AllowsNonHostNetns(i uint16) bool {
	return int(i) < len(c.rules) && c.rules[i].AllowNonHostNetns && !c.rules[i].Deny
}
