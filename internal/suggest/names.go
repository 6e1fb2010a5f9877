package suggest

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/imdsguard/imdsguard/internal/policy"
)

// maxName is the longest rule name the policy accepts.
const maxName = 63

// nameRules gives each new rule a name the policy accepts (1 to 63 of
// a-z, 0-9 and "-", starting and ending with a letter or digit) that no base
// rule and no earlier suggestion has. Names come from what the operator
// knows the workload by: the pod's namespace and name, the container's name,
// the unit.
func nameRules(sugg []*suggestion, base []policy.Rule) {
	taken := map[string]bool{}
	for _, r := range base {
		taken[r.Name] = true
	}
	for _, s := range sugg {
		if s.amend >= 0 {
			continue
		}
		stem := nameStem(s.g)
		if c := s.rule.Match.Comm; c != "" {
			stem += "-" + c
		}
		if u := s.rule.Match.UID; u != nil {
			stem += fmt.Sprintf("-uid-%d", *u)
		}
		stem = sanitize(stem)
		name := stem
		for n := 2; taken[name]; n++ {
			suffix := fmt.Sprintf("-%d", n)
			name = strings.TrimRight(stem[:min(len(stem), maxName-len(suffix))], "-") + suffix
		}
		taken[name] = true
		s.rule.Name = name
	}
}

// nameStem is the raw material of a rule's name.
func nameStem(g *group) string {
	switch g.wl.kind {
	case workloadPod:
		if w := g.wl; w.namespace != "" {
			// the controller's name, which the pods' names share
			stem := w.namespace + "-" + w.name
			if !strings.Contains(w.name, w.container) {
				stem += "-" + w.container
			}
			return stem
		}
		if pods := slices.Sorted(maps.Keys(g.pods)); len(pods) == 1 {
			return strings.ReplaceAll(pods[0], "/", "-")
		}
		uid := g.wl.name
		if i := strings.LastIndex(uid, "pod"); i >= 0 {
			uid = uid[i+len("pod"):]
		}
		return "pod-" + uid[:min(8, len(uid))]
	case workloadContainer:
		if conts := slices.Sorted(maps.Keys(g.conts)); len(conts) == 1 {
			return conts[0]
		}
		seg := trimSlice(g.wl.name)
		id := seg[strings.LastIndexAny(seg, "-:")+1:]
		return "container-" + id[:min(12, len(id))]
	}
	return trimSlice(g.wl.name)
}

// trimSlice drops a systemd unit suffix.
func trimSlice(seg string) string {
	for _, suf := range []string{".service", ".scope", ".slice"} {
		if s, ok := strings.CutSuffix(seg, suf); ok {
			return s
		}
	}
	return seg
}

// sanitize turns s into a valid rule name: lower case, every run of other
// characters one "-", at most maxName bytes.
func sanitize(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	out := b.String()
	out = strings.TrimRight(out[:min(len(out), maxName)], "-")
	if out == "" {
		return "workload"
	}
	return out
}
