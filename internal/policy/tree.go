package policy

import "strings"

// CgroupLists are the two rule lists of one cgroup of a tree.
type CgroupLists struct {
	// Own and OwnErr are what CandidatesOf returns for the cgroup: its
	// list, or the overflow rule's with an error saying why.
	Own    []uint16
	OwnErr error
	// Subtree and SubtreeErr are what SubtreeCandidates returns for it: the
	// list of the cgroups made below it before the next scan.
	Subtree    []uint16
	SubtreeErr error
}

// ListsForTree returns the rule lists of every cgroup of tree (cgroup id to
// path, relative to the cgroup v2 mount as cgroupfs.Scan gives them):
// exactly what CandidatesOf(path, ident(id)) and SubtreeCandidates(path)
// return for each, path by path, but computed in one walk of the tree, so
// that a policy of many rules over many cgroups compiles in one pass.
//
// ident gives the workload of a cgroup (nil: PathIdentity of its path, as
// Candidates). It is called at most once per id, and only for a cgroup a
// rule with name conditions could apply to. The tree need not hold every
// ancestor of its paths; a path not in canonical form gets the lists of
// the per-path functions (no cgroup glob matches it). The lists must not be
// changed (they share memory, with a capacity that makes append copy).
func (c *Compiled) ListsForTree(tree map[uint64]string, ident func(id uint64) Identity) map[uint64]CgroupLists {
	if ident == nil {
		ident = func(id uint64) Identity { return PathIdentity(tree[id]) }
	}
	t := buildCgroupTree(tree)
	out := make(map[uint64]CgroupLists, len(tree))
	for _, id := range t.odd {
		p := tree[id]
		var l CgroupLists
		l.Own, l.OwnErr = c.CandidatesOf(p, ident(id))
		l.Subtree, l.SubtreeErr = c.SubtreeCandidates(p)
		out[id] = l
	}
	w := &treeWalk{c: c, t: t, ident: ident, out: out, info: ruleInfos(c.rules), arena: make([]uint16, 0, 2*len(tree))}
	w.levels = []ruleLevel{w.rootLevel()}
	w.visit(0, 0)
	return out
}

// cgroupTree is the tree of a set of paths, one node per path segment
// (node 0 the root), linked by index so that building it allocates little.
type cgroupTree struct {
	nodes   []treeNode
	entries []treeEntry
	odd     []uint64 // the ids of paths not in canonical form
}

type treeNode struct {
	name                                string
	firstChild, nextSibling, firstEntry int32 // -1: none
	children                            int32
}

// treeEntry is one id of the tree at a node (several ids may share a path).
type treeEntry struct {
	id   uint64
	path string
	next int32
}

type treeKey struct {
	parent int32
	name   string
}

func buildCgroupTree(tree map[uint64]string) *cgroupTree {
	t := &cgroupTree{nodes: []treeNode{{firstChild: -1, nextSibling: -1, firstEntry: -1}}}
	index := make(map[treeKey]int32, len(tree))
	for id, p := range tree {
		if !canonicalCgroupPath(p) {
			t.odd = append(t.odd, id)
			continue
		}
		n := int32(0)
		for rest := p[1:]; rest != ""; {
			var seg string
			seg, rest, _ = strings.Cut(rest, "/")
			n = t.child(index, n, seg)
		}
		t.entries = append(t.entries, treeEntry{id: id, path: p, next: t.nodes[n].firstEntry})
		t.nodes[n].firstEntry = int32(len(t.entries) - 1)
	}
	return t
}

// child returns node n's child named seg, made if new.
func (t *cgroupTree) child(index map[treeKey]int32, n int32, seg string) int32 {
	k := treeKey{n, seg}
	if c, ok := index[k]; ok {
		return c
	}
	c := int32(len(t.nodes))
	t.nodes = append(t.nodes, treeNode{name: seg, firstChild: -1, nextSibling: t.nodes[n].firstChild, firstEntry: -1})
	t.nodes[n].firstChild = c
	t.nodes[n].children++
	index[k] = c
	return c
}

// canonicalCgroupPath is splitCgroupPath's test, without splitting.
func canonicalCgroupPath(p string) bool {
	if p == "/" {
		return true
	}
	if !strings.HasPrefix(p, "/") {
		return false
	}
	for rest := p[1:]; ; {
		seg, more, found := strings.Cut(rest, "/")
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		if !found {
			return true
		}
		rest = more
	}
}

// ruleInfo is what the walk asks of a rule at every node, worked out once.
type ruleInfo struct {
	endsList  bool // no comm or uid condition: a list stops after it
	final     bool // endsList and no name condition: applies to every process
	unknownOK bool // namesApply(Identity{}): kept for cgroups not named yet
	hasNames  bool
	deny      bool
}

func ruleInfos(rules []Rule) []ruleInfo {
	out := make([]ruleInfo, len(rules))
	for i := range rules {
		r := &rules[i]
		ends := r.Match.Comm == "" && r.Match.UID == nil
		out[i] = ruleInfo{endsList: ends, final: ends && !r.Match.HasNames(), unknownOK: r.namesApply(Identity{}),
			hasNames: r.Match.HasNames(), deny: r.Deny}
	}
	return out
}
