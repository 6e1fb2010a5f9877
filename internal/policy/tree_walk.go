package policy

import "slices"

// treeWalk computes ListsForTree depth first. At each node it holds, in
// policy order, only the rules whose glob can still match the node or a
// cgroup below it, each with its automaton state (see compiledGlob),
// derived from the parent's: a rule whose pattern cannot match below a
// node costs nothing further in its subtree.
//
// Two kinds of rules need no state: those without a cgroup condition and
// those whose state has reached a run of "**" ending the pattern, which
// match every cgroup at and below the node ("saturated"). A saturated rule
// with neither comm, uid nor name condition ends both lists of every cgroup
// of the subtree (it applies to all of them, to every process), so the
// rules after it are dropped there.
type treeWalk struct {
	c      *Compiled
	t      *cgroupTree
	ident  func(uint64) Identity
	out    map[uint64]CgroupLists
	info   []ruleInfo
	levels []ruleLevel // by depth, reused from one sibling to the next
	arena  []uint16    // the lists' memory
}

// ruleLevel is the live rules at one node.
type ruleLevel struct {
	live []liveRule
	bits []uint64 // the states, words long each
}

type liveRule struct {
	rule int32
	off  int32 // the rule's state in bits; -1: saturated (or no cgroup condition)
}

const saturated = -1

// state is the state of live rule lr, whose glob is g.
func (lv *ruleLevel) state(lr liveRule, g *compiledGlob) []uint64 {
	return lv.bits[lr.off : int(lr.off)+g.words]
}

// rootLevel is the live rules at the root cgroup, "/".
func (w *treeWalk) rootLevel() ruleLevel {
	var lv ruleLevel
	for i := range w.c.rules {
		g := &w.c.globs[i]
		lr := liveRule{rule: int32(i), off: saturated}
		switch g.cond {
		case globInvalid:
			continue // matches nothing
		case globValid:
			off := len(lv.bits)
			lv.bits = slices.Grow(lv.bits, g.words)[:off+g.words]
			g.start(lv.bits[off:])
			lr.off = int32(off)
			if g.below(lv.bits[off:]) == belowAll {
				lv.bits, lr.off = lv.bits[:off], saturated
			}
		}
		lv.live = append(lv.live, lr)
		if lr.off == saturated && w.info[i].final {
			break
		}
	}
	return lv
}

// derive fills child with the live rules of parent's child cgroup name;
// idx (nil: none) says which of parent's rules may match it.
func (w *treeWalk) derive(parent, child *ruleLevel, name string, idx *childIndex) {
	child.live, child.bits = child.live[:0], child.bits[:0]
	ascii := isASCII(name)
	if idx != nil && ascii {
		for _, i := range idx.candidates(name) {
			if w.deriveRule(parent, child, parent.live[i], name, ascii) {
				return
			}
		}
		return
	}
	for _, lr := range parent.live {
		if w.deriveRule(parent, child, lr, name, ascii) {
			return
		}
	}
}

// deriveRule adds live rule lr of parent to child if it is still alive
// there; true when no rule after it can be in a list of child's subtree.
func (w *treeWalk) deriveRule(parent, child *ruleLevel, lr liveRule, name string, ascii bool) bool {
	if lr.off != saturated {
		g := &w.c.globs[lr.rule]
		off := len(child.bits)
		child.bits = slices.Grow(child.bits, g.words)[:off+g.words]
		s := child.bits[off:]
		if !g.step(s, parent.state(lr, g), name, ascii) {
			child.bits = child.bits[:off]
			return false // dead: nothing at or below child matches
		}
		lr.off = int32(off)
		if g.below(s) == belowAll {
			child.bits, lr.off = child.bits[:off], saturated
		}
	}
	child.live = append(child.live, lr)
	return lr.off == saturated && w.info[lr.rule].final
}

// visit gives node n, at depth d, and its subtree their lists; levels[d]
// holds n's live rules.
func (w *treeWalk) visit(n int32, d int) {
	w.emit(n, &w.levels[d])
	node := &w.t.nodes[n]
	if node.firstChild < 0 {
		return
	}
	if len(w.levels) == d+1 {
		w.levels = append(w.levels, ruleLevel{})
	}
	idx := w.newChildIndex(&w.levels[d], int(node.children))
	for ch := node.firstChild; ch >= 0; ch = w.t.nodes[ch].nextSibling {
		// visit may grow w.levels: take the pointers again each time
		w.derive(&w.levels[d], &w.levels[d+1], w.t.nodes[ch].name, idx)
		w.visit(ch, d+1)
	}
}

// emit puts the lists of the ids at node n, whose live rules are lv, into
// w.out. The subtree list is one per path, the own list one per id (the
// identity is the id's).
func (w *treeWalk) emit(n int32, lv *ruleLevel) {
	e := w.t.nodes[n].firstEntry
	if e < 0 {
		return
	}
	sub, subErr := w.c.bounded(w.subtreeList(lv), "new cgroups under ", w.t.entries[e].path)
	for ; e >= 0; e = w.t.entries[e].next {
		en := &w.t.entries[e]
		own, err := w.c.bounded(w.ownList(lv, en.id), "cgroup ", en.path)
		w.out[en.id] = CgroupLists{Own: own, OwnErr: err, Subtree: sub, SubtreeErr: subErr}
	}
}

// ownList is CandidatesOf's list over the live rules at a node.
func (w *treeWalk) ownList(lv *ruleLevel, id uint64) []uint16 {
	start := len(w.arena)
	var ident Identity
	asked := false
	for _, lr := range lv.live {
		if lr.off != saturated && !w.c.globs[lr.rule].matches(lv.state(lr, &w.c.globs[lr.rule])) {
			continue
		}
		if w.info[lr.rule].hasNames {
			if !asked {
				ident, asked = w.ident(id), true
			}
			if !w.c.rules[lr.rule].namesApply(ident) {
				continue
			}
		}
		w.arena = append(w.arena, uint16(lr.rule))
		if w.info[lr.rule].endsList {
			break
		}
	}
	return w.list(start)
}

// subtreeList is SubtreeCandidates's list over the live rules at a node: a
// saturated rule matches every cgroup below it, one with a state may match
// some (belowSome; belowNone when only the node itself is left).
func (w *treeWalk) subtreeList(lv *ruleLevel) []uint16 {
	start := len(w.arena)
	for _, lr := range lv.live {
		in := &w.info[lr.rule]
		if !in.unknownOK {
			continue
		}
		if lr.off != saturated && !(in.deny && w.c.globs[lr.rule].below(lv.state(lr, &w.c.globs[lr.rule])) == belowSome) {
			continue
		}
		w.arena = append(w.arena, uint16(lr.rule))
		if in.endsList {
			break
		}
	}
	return w.list(start)
}

// list is the arena from start on, nil when empty (as the per-path
// functions), with no room to append into the next list.
func (w *treeWalk) list(start int) []uint16 {
	if len(w.arena) == start {
		return nil
	}
	return w.arena[start:len(w.arena):len(w.arena)]
}
