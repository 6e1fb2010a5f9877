package suggest

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	"github.com/imdsguard/imdsguard/internal/policy"
)

// source names the output in the messages of its own checks.
const source = "the suggested policy"

// validate checks the output as imdsguard check does (parse, compile, the
// kernel's limits), then that it does what it is for: every process audit
// saw in a suggested rule's workload now first matches a rule that grants
// what it was refused for.
func validate(out []byte, sugg []*suggestion) error {
	pol, err := policy.Parse(out, source)
	if err != nil {
		return fmt.Errorf("checking the output %s: %w", bug, err)
	}
	compiled, err := pol.Compile()
	if err != nil {
		return fmt.Errorf("checking the output %s: %w", bug, err)
	}
	if _, err := compiled.DefaultCandidates(); err != nil {
		return fmt.Errorf("checking the output: %s: rules: %w", source, err)
	}
	for _, s := range sugg {
		for _, w := range slices.SortedFunc(maps.Keys(s.g.seen), compareWho) {
			if err := checkGranted(pol.Rules, w, s.g.seen[w]); err != nil {
				return fmt.Errorf("checking the output %s: %w", bug, err)
			}
		}
	}
	return nil
}

func checkGranted(rules []policy.Rule, w who, reasons map[string]bool) error {
	i := firstMatch(rules, w)
	for _, reason := range slices.Sorted(maps.Keys(reasons)) {
		if i < 0 || !grants(&rules[i], grantFor(reason)) {
			return fmt.Errorf("comm %q (uid %d) in %s, refused for %s, would still be refused", w.comm, w.uid, w.cgroup, reason)
		}
	}
	return nil
}

func compareWho(a, b who) int {
	return cmp.Or(cmp.Compare(a.cgroup, b.cgroup), cmp.Compare(a.comm, b.comm), cmp.Compare(a.uid, b.uid),
		cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.pod, b.pod), cmp.Compare(a.container, b.container))
}
