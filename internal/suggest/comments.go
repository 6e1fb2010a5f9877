package suggest

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// width is where comment text wraps.
const width = 100

// Most of each list a rule's comment shows.
const (
	maxProcs = 5
	maxPaths = 4
)

// ruleComment says what a rule is for: what was seen (count, first and
// last time, by reason), who (pod, containers, processes), what they asked
// for (paths), and what will make its glob stop matching.
func ruleComment(s *suggestion, verb string) []string {
	g := s.g
	var out []string
	add := func(text string) { out = append(out, wrap(text, "#   ", "#     ")...) }
	out = append(out, wrap(fmt.Sprintf("%s %s: %s", verb, workloadText(g), seenText(g.span)), "# ", "#     ")...)
	var reasons []string
	for _, r := range slices.Sorted(maps.Keys(g.reasons)) {
		reasons = append(reasons, fmt.Sprintf("%s %d (%s)", r, g.reasons[r].count, grantFor(r)))
	}
	add("refused in enforce mode: " + strings.Join(reasons, ", "))
	if conts := slices.Sorted(maps.Keys(g.conts)); len(conts) > 0 {
		add("containers: " + strings.Join(conts, ", "))
	}
	add("processes (events): " + top(g.procs, maxProcs))
	if len(g.paths) > 0 {
		add("paths (events): " + top(g.paths, maxPaths))
	}
	switch {
	case g.wl.namespace != "":
		add("the rule " + g.wl.note)
	case g.wl.note != "":
		add("the glob " + g.wl.note)
	}
	for _, n := range s.notes {
		add(n)
	}
	return out
}

// workloadText names a group's workload for its comment.
func workloadText(g *group) string {
	pods := slices.Sorted(maps.Keys(g.pods))
	switch {
	case g.wl.kind == workloadPod && len(pods) > 0:
		return "pod " + strings.Join(pods, ", ")
	case g.wl.kind == workloadUnit:
		return "unit " + g.wl.name
	}
	return g.wl.kind + " " + g.wl.glob
}

// seenText is "12 audit events, 2024-05-01T10:00:00Z to 2024-05-02T09:13:11Z".
func seenText(s span) string {
	if s.first.Equal(s.last) {
		return fmt.Sprintf("%s at %s", plural(s.count, "audit event"), stamp(s.first))
	}
	return fmt.Sprintf("%s, %s to %s", plural(s.count, "audit event"), stamp(s.first), stamp(s.last))
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func plural(n uint64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// top lists the n most frequent keys with their counts, most frequent
// first (ties by name), and how many more there are.
func top(m map[string]uint64, n int) string {
	keys := slices.SortedFunc(maps.Keys(m), func(a, b string) int {
		return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b))
	})
	var parts []string
	for _, k := range keys[:min(n, len(keys))] {
		label := k
		if label == "" {
			label = "(no name)"
		}
		parts = append(parts, fmt.Sprintf("%s %d", label, m[k]))
	}
	if len(keys) > n {
		parts = append(parts, fmt.Sprintf("and %d more", len(keys)-n))
	}
	return strings.Join(parts, ", ")
}

// wrap breaks text into comment lines of at most width columns (a longer
// word gets a line of its own), the first line starting with first, the
// others with cont.
func wrap(text, first, cont string) []string {
	var out []string
	line := first
	empty := true
	for _, w := range strings.Fields(text) {
		if !empty && len(line)+1+len(w) > width {
			out = append(out, line)
			line, empty = cont, true
		}
		if !empty {
			line += " "
		}
		line += w
		empty = false
	}
	return append(out, line)
}
