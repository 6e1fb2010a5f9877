package policy

import (
	"math/bits"
	"slices"
	"strings"
)

// A segAnchor is a run of literal bytes that every ASCII name matching a
// pattern segment holds at a known place: name[off:off+n], or counted from
// the end of the name, and a length the name must have (-1: any). It is a
// necessary condition only: a name that has the run is still matched.
type segAnchor struct {
	fromEnd bool
	off, n  int
	length  int
}

// anchorOf is the anchor of a segment, if it has one worth looking up: a
// literal is its own; a "*"/"?" glob's is its longest literal run before
// the first "*" or after the last (the pieces path.Match holds to the start
// and to the end of the name; "?" is one byte of an ASCII name).
func anchorOf(m *segMatcher) (segAnchor, bool) {
	switch m.kind {
	case segLiteral:
		return segAnchor{n: len(m.pat), length: len(m.pat)}, true
	case segGlob:
	default:
		return segAnchor{}, false
	}
	first, last := strings.IndexByte(m.pat, '*'), strings.LastIndexByte(m.pat, '*')
	if first < 0 {
		off, n := longestRun(m.pat)
		return segAnchor{off: off, n: n, length: len(m.pat)}, true
	}
	po, pn := longestRun(m.pat[:first])
	suffix := m.pat[last+1:]
	so, sn := longestRun(suffix)
	switch {
	case pn == 0 && sn == 0:
		return segAnchor{}, false
	case pn >= sn:
		return segAnchor{off: po, n: pn, length: -1}, true
	}
	return segAnchor{fromEnd: true, off: len(suffix) - so - sn, n: sn, length: -1}, true
}

// longestRun is the longest run of bytes other than "?" in s (which has no
// "*"): its offset and length.
func longestRun(s string) (off, n int) {
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && s[j] != '?' {
			j++
		}
		if j-i > n {
			off, n = i, j-i
		}
		i = j + 1
	}
	return off, n
}

// run is the bytes of an ASCII name where the anchor must be, if it has
// room for them.
func (a *segAnchor) run(name string) (string, bool) {
	if a.length >= 0 && len(name) != a.length {
		return "", false
	}
	start := a.off
	if a.fromEnd {
		start = len(name) - a.off - a.n
	}
	if start < 0 || start+a.n > len(name) {
		return "", false
	}
	return name[start : start+a.n], true
}

// childIndex picks, for the name of a child of a node with many children,
// the live rules that may match it, so that each child steps those only:
// the rules whose state stands on one segment with an anchor are looked up
// by it; the others (several positions, "**", no anchor) are stepped for
// every child.
type childIndex struct {
	always  []int32 // positions in the node's live rules, ascending
	anchors []segAnchor
	buckets map[anchorKey][]int32 // ascending too
	merged  []int32               // scratch for candidates
}

type anchorKey struct {
	anchor int32
	run    string
}

// Below these, stepping every rule for every child is as cheap.
const (
	minIndexChildren = 8
	minIndexRules    = 16
)

// newChildIndex indexes the live rules lv of a node with children
// children; nil when it is not worth it.
func (w *treeWalk) newChildIndex(lv *ruleLevel, children int) *childIndex {
	if children < minIndexChildren || len(lv.live) < minIndexRules {
		return nil
	}
	x := &childIndex{buckets: map[anchorKey][]int32{}}
	ids := map[segAnchor]int32{}
	for i, lr := range lv.live {
		m := w.segmentAt(lv, lr)
		if m == nil || !m.anchored {
			x.always = append(x.always, int32(i))
			continue
		}
		id, seen := ids[m.anchor]
		if !seen {
			id = int32(len(x.anchors))
			ids[m.anchor], x.anchors = id, append(x.anchors, m.anchor)
		}
		run, _ := m.anchor.run(m.pat) // the pattern holds its own anchor
		k := anchorKey{id, run}
		x.buckets[k] = append(x.buckets[k], int32(i))
	}
	// each child looks every anchor up: too many of them cost more than
	// they save
	if len(x.anchors) == 0 || len(x.anchors)*4 > len(lv.live)-len(x.always) {
		return nil
	}
	return x
}

// segmentAt is the one pattern segment live rule lr's state stands on
// (besides the end, which matters to the node, not to its children), nil
// when it stands on none or several, or is saturated.
func (w *treeWalk) segmentAt(lv *ruleLevel, lr liveRule) *segMatcher {
	if lr.off == saturated {
		return nil
	}
	g := &w.c.globs[lr.rule]
	p := -1
	for i, word := range lv.state(lr, g) {
		for word != 0 {
			q := i<<6 + bits.TrailingZeros64(word)
			word &= word - 1
			switch {
			case q == len(g.segs):
			case p >= 0:
				return nil
			default:
				p = q
			}
		}
	}
	if p < 0 || g.segs[p].kind == segStars {
		return nil
	}
	return &g.segs[p]
}

// candidates returns the positions, ascending, of the live rules that may
// match the child name (ASCII): the ones stepped for every child and those
// whose anchor it holds. The slice is reused by the next call.
func (x *childIndex) candidates(name string) []int32 {
	x.merged = x.merged[:0]
	for id := range x.anchors {
		run, ok := x.anchors[id].run(name)
		if !ok {
			continue
		}
		x.merged = append(x.merged, x.buckets[anchorKey{int32(id), run}]...)
	}
	if len(x.merged) == 0 {
		return x.always
	}
	x.merged = append(x.merged, x.always...)
	slices.Sort(x.merged)
	return x.merged
}
