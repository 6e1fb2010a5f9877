package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// randRules are random rules over the globs of randGlob: with and without a
// cgroup condition (some matching whole subtrees, for long lists), comm,
// uid and name conditions, denies and grants. When wide is a node with
// many children, about half of them stand on those children with globs
// whose anchors (see childIndex) repeat.
func randRules(r *rand.Rand, wide string) []Rule {
	shapes := []string{"X", "?X", "X*", "*X", "X?Y", "*X*", "X*Y", "??X", "X??", "X*?Y"}
	shapes = []string{shapes[r.IntN(len(shapes))], shapes[r.IntN(len(shapes))]} // few anchors, shared
	subtrees := []string{"/**", "/**/*", "/*/**", "/**/a*/**", "/a/**", "/**/**"}
	names := []string{"", "", "", "a*", "b", "*", "[ab]"}
	rules := make([]Rule, 1+r.IntN(40))
	if wide != "" {
		rules = make([]Rule, minIndexRules+r.IntN(60))
	}
	for i := range rules {
		m := Match{}
		switch r.IntN(4) {
		case 0: // no cgroup condition
		case 1:
			m.Cgroup = subtrees[r.IntN(len(subtrees))]
		default:
			m.Cgroup = randGlob(r)
			if m.Cgroup == "" {
				m.Cgroup = "/"
			}
		}
		if wide != "" && r.IntN(len(rules)) > i { // more of them first, before a rule ends the lists
			seg := strings.NewReplacer("X", nameParts[r.IntN(5)], "Y", nameParts[r.IntN(5)]).Replace(shapes[r.IntN(2)])
			m.Cgroup = wide + "/" + seg
		}
		if r.IntN(10) < 7 {
			m.Comm = "x"
		} else if r.IntN(2) == 0 {
			uid := uint32(r.IntN(3))
			m.UID = &uid
		}
		if r.IntN(5) == 0 {
			m.Namespace, m.Pod, m.Container = names[r.IntN(len(names))], names[r.IntN(len(names))], names[r.IntN(len(names))]
		}
		rules[i] = Rule{Name: fmt.Sprintf("r%d", i), Match: m, Deny: r.IntN(2) == 0}
	}
	return rules
}

// randTree is a random cgroup tree: most paths with their ancestors, some
// without, some shared by two ids, a few not in canonical form.
// wide is the node given many children ("" when none).
func randTree(r *rand.Rand) (tree map[uint64]string, wide string) {
	paths := []string{"/"}
	for range r.IntN(60) {
		parent := paths[r.IntN(len(paths))]
		if parent == "/" {
			parent = ""
		}
		paths = append(paths, parent+"/"+randSegment(r, nameParts))
	}
	if r.IntN(2) == 0 {
		// many siblings, for the index of the rules by their next segment
		// its path free of metacharacters, for the rules on its children
		wide = "/" + randSegment(r, nameParts[:6]) + "/" + randSegment(r, nameParts[:6])
		paths = append(paths, wide)
		for range minIndexChildren + r.IntN(60) {
			paths = append(paths, strings.TrimSuffix(wide, "/")+"/"+randSegment(r, nameParts))
		}
	}
	tree = map[uint64]string{}
	for _, p := range paths {
		if r.IntN(5) == 0 {
			continue
		}
		for range 1 + r.IntN(10)/9 {
			tree[r.Uint64()] = p
		}
	}
	if r.IntN(4) == 0 {
		tree[r.Uint64()] = randCgroupPath(r)
	}
	return tree, wide
}

func randIdentity(r *rand.Rand) Identity {
	switch r.IntN(4) {
	case 0:
		return NotAPodContainer()
	case 1:
		return Identity{}
	}
	n := []string{"a", "ab", "b", "c"}
	return Named(Workload{Namespace: n[r.IntN(4)], Pod: n[r.IntN(4)], Container: n[r.IntN(4)]})
}

// equivStats counts what a check went through, so the test can tell it
// covered overflows and name rules.
type equivStats struct{ cgroups, overflows, named, indexed int }

// checkTreeEquivalence holds ListsForTree to CandidatesOf and
// SubtreeCandidates on every cgroup of a random tree, and those to the
// same lists made with the reference matchers (Rule.AppliesTo, that is
// MatchCgroup, and matchBelow).
func checkTreeEquivalence(t *testing.T, r *rand.Rand, st *equivStats) {
	t.Helper()
	tree, wide := randTree(r)
	rules := randRules(r, wide)
	c := &Compiled{rules: rules, globs: compileGlobs(rules)}
	ids := map[uint64]Identity{}
	for id := range tree {
		ids[id] = randIdentity(r)
	}
	st.indexed += indexedNodes(c, tree)
	asked := map[uint64]int{}
	got := c.ListsForTree(tree, func(id uint64) Identity { asked[id]++; return ids[id] })
	if len(got) != len(tree) {
		t.Fatalf("ListsForTree gave %d cgroups, the tree has %d", len(got), len(tree))
	}
	for id, p := range tree {
		own, ownErr := c.CandidatesOf(p, ids[id])
		sub, subErr := c.SubtreeCandidates(p)
		l := got[id]
		if !slices.Equal(l.Own, own) || !sameError(l.OwnErr, ownErr) || !slices.Equal(l.Subtree, sub) || !sameError(l.SubtreeErr, subErr) {
			t.Fatalf("rules %+v, tree %v, cgroup %q (%+v):\nListsForTree %v %v / %v %v\nper path     %v %v / %v %v",
				rules, tree, p, ids[id], l.Own, l.OwnErr, l.Subtree, l.SubtreeErr, own, ownErr, sub, subErr)
		}
		refOwn, refOwnErr := c.bounded(c.candidates(func(_ int, r *Rule) bool { return r.AppliesTo(p, ids[id]) }), "cgroup ", p)
		refSub, refSubErr := c.bounded(c.candidates(func(_ int, r *Rule) bool { return refBelow(r, p) }), "new cgroups under ", p)
		if !slices.Equal(refOwn, own) || !sameError(refOwnErr, ownErr) || !slices.Equal(refSub, sub) || !sameError(refSubErr, subErr) {
			t.Fatalf("rules %+v, cgroup %q (%+v):\nper path  %v %v / %v %v\nreference %v %v / %v %v",
				rules, p, ids[id], own, ownErr, sub, subErr, refOwn, refOwnErr, refSub, refSubErr)
		}
		if asked[id] > 1 {
			t.Fatalf("ListsForTree asked the identity of %d %d times", id, asked[id])
		}
		st.cgroups++
		if ownErr != nil || subErr != nil {
			st.overflows++
		}
		if asked[id] > 0 {
			st.named++
		}
	}
}

// indexedNodes counts the nodes of tree whose children ListsForTree
// looks up in a childIndex.
func indexedNodes(c *Compiled, tree map[uint64]string) int {
	t := buildCgroupTree(tree)
	w := &treeWalk{c: c, t: t, info: ruleInfos(c.rules)}
	count := 0
	var walk func(n int32, lv *ruleLevel)
	walk = func(n int32, lv *ruleLevel) {
		idx := w.newChildIndex(lv, int(t.nodes[n].children))
		if idx != nil {
			count++
		}
		for ch := t.nodes[n].firstChild; ch >= 0; ch = t.nodes[ch].nextSibling {
			var next ruleLevel
			w.derive(lv, &next, t.nodes[ch].name, idx)
			walk(ch, &next)
		}
	}
	root := w.rootLevel()
	walk(0, &root)
	return count
}

// refBelow is SubtreeCandidates's test with matchBelow, the reference.
func refBelow(r *Rule, p string) bool {
	if !r.namesApply(Identity{}) {
		return false
	}
	if r.Match.Cgroup == "" {
		return true
	}
	switch matchBelow(r.Match.Cgroup, p) {
	case belowAll:
		return true
	case belowSome:
		return r.Deny
	}
	return false
}

func sameError(a, b error) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Error() == b.Error()
}

func TestListsForTreeIsPerPath(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var st equivStats
	for range 800 {
		checkTreeEquivalence(t, r, &st)
	}
	t.Logf("%d cgroups, %d with an overflow, %d asked their names, %d nodes' children indexed", st.cgroups, st.overflows, st.named, st.indexed)
	if st.overflows == 0 || st.named == 0 || st.indexed == 0 {
		t.Errorf("the random trees never overflowed (%d), asked a name (%d) or indexed children (%d)", st.overflows, st.named, st.indexed)
	}
}

func FuzzListsForTree(f *testing.F) {
	f.Add(uint64(1), uint64(2))
	f.Fuzz(func(t *testing.T, a, b uint64) {
		checkTreeEquivalence(t, rand.New(rand.NewPCG(a, b)), &equivStats{})
	})
}

// The lists of a cgroup below one whose rule matches every process of the
// subtree stop at that rule, and ident is asked nothing when no rule by
// name is left to apply.
func TestListsForTreeStopsAtARuleForEverything(t *testing.T) {
	c := compileDoc(t, `
rules:
  - name: first
    match: {cgroup: "/kubepods/**", comm: "x"}
    allowV1: true
  - name: all-pods
    match: {cgroup: "/kubepods/**"}
    deny: true
  - name: by-name
    match: {namespace: prod, pod: "web-*"}
    allowV1: true
`)
	tree := map[uint64]string{1: "/", 2: "/kubepods", 3: "/kubepods/a/b", 4: "/system.slice"}
	asked := map[uint64]bool{}
	got := c.ListsForTree(tree, func(id uint64) Identity { asked[id] = true; return Identity{} })
	for id, want := range map[uint64][2][]uint16{1: {nil, {1}}, 2: {{0, 1}, {0, 1}}, 3: {{0, 1}, {0, 1}}, 4: {nil, nil}} {
		if l := got[id]; !slices.Equal(l.Own, want[0]) || !slices.Equal(l.Subtree, want[1]) {
			t.Errorf("%s: own %v subtree %v, want %v", tree[id], l.Own, l.Subtree, want)
		}
	}
	if asked[2] || asked[3] {
		t.Errorf("the identity of a cgroup under /kubepods was asked: %v", asked)
	}
}
