package policy

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/kernelpolicy"
)

func compileDoc(t *testing.T, doc string) *Compiled {
	t.Helper()
	p, err := Parse([]byte(doc), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Compile()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The list for cgroups not scanned yet keeps every rule that matches all of
// them and the denies that may match some; grants and other rules that only
// may match are left out, so a new cgroup is never judged more leniently
// than the policy could judge it by name.
func TestSubtreeCandidatesAreTheStrictest(t *testing.T) {
	c := compileDoc(t, `
rules:
  - name: special-ok        # may match: a grant, left out
    match: {cgroup: "/kubepods/*/special"}
    allowNonHostNetns: true
  - name: legacy-v1         # may match: a grant, left out
    match: {cgroup: "/kubepods/*/legacy", comm: "agent"}
    allowV1: true
  - name: no-bad            # may match: a deny, kept
    match: {cgroup: "/kubepods/**/bad-*", uid: 7}
    deny: true
  - name: pods-v1           # matches every cgroup below /kubepods/burstable: kept
    match: {cgroup: "/kubepods/burstable/**", comm: "x"}
    allowV1: true
  - name: ci                # no cgroup condition: kept
    match: {uid: 1001}
    deny: true
  - name: elsewhere         # matches nothing below: left out
    match: {cgroup: "/system.slice/**"}
    deny: true
`)
	for _, tt := range []struct {
		path string
		want []string
	}{
		{"/kubepods", []string{"no-bad", "ci"}},
		{"/kubepods/burstable", []string{"no-bad", "pods-v1", "ci"}},
		{"/system.slice", []string{"ci", "elsewhere"}},
	} {
		got, err := c.SubtreeCandidates(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, i := range got {
			names = append(names, c.RuleName(int(i)))
		}
		if !slices.Equal(names, tt.want) {
			t.Errorf("SubtreeCandidates(%s) = %v, want %v", tt.path, names, tt.want)
		}
	}
}

// A cgroup that more rules could apply to than the kernel's list holds is
// refused (the overflow rule, a deny), not judged by a shortened list.
func TestTooManyCandidatesFailClosed(t *testing.T) {
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range RulesPerCgroup + 1 {
		fmt.Fprintf(&b, "  - name: r%d\n    match: {cgroup: \"/jobs/**\", uid: %d}\n    allowV1: true\n", i, 1000+i)
	}
	c := compileDoc(t, b.String())
	for name, f := range map[string]func(string) ([]uint16, error){"Candidates": c.Candidates, "SubtreeCandidates": c.SubtreeCandidates} {
		got, err := f("/jobs/a")
		if err == nil || !strings.Contains(err.Error(), "17 rules can apply") {
			t.Errorf("%s: error %v, want one naming 17 rules", name, err)
		}
		if !slices.Equal(got, []uint16{kernelpolicy.OverflowRule}) {
			t.Errorf("%s: list %v, want the overflow rule's", name, got)
		}
	}
	if e := kernelpolicy.OverflowRuleEntry(); e.Flags != bpf.RuleDeny {
		t.Errorf("overflow rule %+v, want a deny", e)
	}
}

// The overflow rule's name states the kernel's list size, which comes from
// the C side: the two must not drift apart.
func TestOverflowRuleNameStatesTheListSize(t *testing.T) {
	if want := fmt.Sprintf("(more than %d rules could apply)", RulesPerCgroup); OverflowRuleName != want {
		t.Errorf("OverflowRuleName = %q, want %q", OverflowRuleName, want)
	}
}
