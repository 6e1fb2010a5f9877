package policy

import (
	"fmt"
	"strings"
	"testing"
)

// benchScale mirrors test/bench/policyscale_test.go (scalePolicy): n rules
// over cgroups /lab/w00000… under one parent, rule i allowing IMDSv1 in the
// cgroups whose index ends in i (/lab/w??123), so every cgroup gets a rule
// list of its own and no rule shadows another.
func benchScale(b *testing.B, rules, cgroups int) (*Policy, map[uint64]string) {
	b.Helper()
	var sb strings.Builder
	sb.WriteString("apiVersion: imdsguard.io/v1\nkind: Policy\nrules:\n")
	digits := len(fmt.Sprint(rules - 1))
	for i := range rules {
		glob := "/lab/w" + strings.Repeat("?", 5-digits) + fmt.Sprintf("%0*d", digits, i)
		fmt.Fprintf(&sb, "  - name: r%04d\n    match: {cgroup: %q}\n    allowV1: true\n", i, glob)
	}
	p, err := Parse([]byte(sb.String()), "policy.yaml")
	if err != nil {
		b.Fatal(err)
	}
	tree := map[uint64]string{1: "/", 2: "/lab"}
	for i := range cgroups {
		tree[uint64(10+i)] = fmt.Sprintf("/lab/w%05d", i)
	}
	return p, tree
}

func benchCompile(b *testing.B, p *Policy) *Compiled {
	b.Helper()
	c, err := p.Compile()
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkCompileTree1000x10000 is what MakePlan does with the tree API:
// compile the policy, then both lists of every cgroup in one walk.
func BenchmarkCompileTree1000x10000(b *testing.B) {
	p, tree := benchScale(b, 1000, 10000)
	b.ReportAllocs()
	for b.Loop() {
		lists := benchCompile(b, p).ListsForTree(tree, nil)
		if l := lists[10+123]; len(l.Own) != 1 || l.Own[0] != 123 || l.OwnErr != nil {
			b.Fatalf("/lab/w00123: %v %v, want [123]", l.Own, l.OwnErr)
		}
	}
}

// BenchmarkCandidatesPerPath1000x10000 is what the controller did before the
// tree API: both lists of every cgroup, one path at a time.
func BenchmarkCandidatesPerPath1000x10000(b *testing.B) {
	p, tree := benchScale(b, 1000, 10000)
	c := benchCompile(b, p)
	id := NotAPodContainer()
	b.ReportAllocs()
	for b.Loop() {
		for _, p := range tree {
			if _, err := c.CandidatesOf(p, id); err != nil {
				b.Fatal(err)
			}
			_, _ = c.SubtreeCandidates(p)
		}
	}
}
