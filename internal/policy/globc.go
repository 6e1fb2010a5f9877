package policy

import (
	"math/bits"
	"path"
	"strings"
)

// A compiledGlob is a rule's cgroup pattern split and classified once, at
// Compile time, so that matching it against the cgroups of a tree neither
// validates, splits nor allocates again. It matches exactly what
// MatchCgroup and matchBelow do (see ValidateCgroupGlob for the syntax);
// those stay the reference the tests hold it to.
//
// Matching runs the pattern as an automaton over the path's segments: a
// state is the set of pattern positions reachable after the segments seen
// so far (bit p: segs[p:] is left to match), closed under "**" matching no
// segment. Position len(segs) reached means the path itself matches.
type compiledGlob struct {
	cond  globCond
	segs  []segMatcher
	stars []int // the positions of the "**" segments, ascending
	// tail is the first position from which only "**" segments are left
	// (len(segs) if the last one is not "**"): reaching any position in
	// [tail, len(segs)) matches every cgroup at and below the path.
	tail  int
	words int // the uint64 words of a state: len(segs)+1 bits
}

// globCond says whether a rule has a cgroup condition at all.
type globCond uint8

const (
	globNone    globCond = iota // no cgroup condition: every cgroup
	globInvalid                 // an invalid pattern: no cgroup (as MatchCgroup)
	globValid
)

// segKind is how one pattern segment is matched against a path segment,
// from the cheapest; path.Match is kept for what is rare in cgroup names
// and costly to get exactly right (classes, escapes).
type segKind uint8

const (
	segLiteral   segKind = iota // no metacharacter: equality
	segAny                      // "*": any segment (path segments have no "/")
	segGlob                     // literal bytes, "*" and "?": globMatch
	segPathMatch                // classes or escapes: path.Match
	segStars                    // "**": any number of whole segments
)

type segMatcher struct {
	kind segKind
	pat  string
	// hasQ: a segGlob with "?", which path.Match takes as one rune, not one
	// byte; globMatch answers it only for ASCII names.
	hasQ bool
	// anchor, when anchored, is what an ASCII name needs to match (see
	// childIndex).
	anchor   segAnchor
	anchored bool
}

// compileGlobs compiles the cgroup glob of each rule.
func compileGlobs(rules []Rule) []compiledGlob {
	out := make([]compiledGlob, len(rules))
	for i := range rules {
		out[i] = compileGlob(rules[i].Match.Cgroup)
	}
	return out
}

// compileGlob compiles a rule's cgroup pattern ("" for no condition).
func compileGlob(pattern string) compiledGlob {
	if pattern == "" {
		return compiledGlob{cond: globNone}
	}
	if cgroupGlobProblem(pattern) != nil {
		return compiledGlob{cond: globInvalid}
	}
	pat := splitPattern(pattern)
	g := compiledGlob{cond: globValid, segs: make([]segMatcher, len(pat)), tail: len(pat), words: len(pat)/64 + 1}
	for i, s := range pat {
		g.segs[i] = classify(s)
		g.segs[i].anchor, g.segs[i].anchored = anchorOf(&g.segs[i])
		if s == "**" {
			g.stars = append(g.stars, i)
		}
	}
	for g.tail > 0 && pat[g.tail-1] == "**" {
		g.tail--
	}
	return g
}

func classify(seg string) segMatcher {
	switch {
	case seg == "**":
		return segMatcher{kind: segStars, pat: seg}
	case strings.ContainsAny(seg, `[\`):
		return segMatcher{kind: segPathMatch, pat: seg}
	case seg == "*":
		return segMatcher{kind: segAny, pat: seg}
	case strings.ContainsAny(seg, "*?"):
		return segMatcher{kind: segGlob, pat: seg, hasQ: strings.IndexByte(seg, '?') >= 0}
	}
	return segMatcher{kind: segLiteral, pat: seg}
}

// match reports whether path segment name (canonical: not empty, no "/")
// matches the segment, as path.Match would; ascii says whether name is
// all ASCII. Never called for "**".
func (m *segMatcher) match(name string, ascii bool) bool {
	switch m.kind {
	case segLiteral:
		return name == m.pat
	case segAny:
		return true
	case segGlob:
		if !m.hasQ || ascii {
			return globMatch(m.pat, name)
		}
	}
	ok, _ := path.Match(m.pat, name) // the pattern was validated
	return ok
}

// globMatch is path.Match for a pattern of literal bytes, "*" and "?" and a
// name without "/" in which "?" stands for one byte (path.Match's rune,
// when the name is ASCII or the pattern has no "?"): backtracking to the
// last "*" only, which suffices as every other piece has a fixed length.
func globMatch(pat, name string) bool {
	px, nx := 0, 0
	starPx, starNx := -1, 0
	for px < len(pat) || nx < len(name) {
		if px < len(pat) {
			c := pat[px]
			if c == '*' {
				starPx, starNx = px, nx
				px++
				continue
			}
			if nx < len(name) && (c == '?' || c == name[nx]) {
				px++
				nx++
				continue
			}
		}
		if starPx < 0 || starNx >= len(name) {
			return false
		}
		// let the last "*" take one more byte and go on from after it
		starNx++
		px, nx = starPx+1, starNx
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func hasBit(s []uint64, p int) bool { return s[p>>6]&(1<<(p&63)) != 0 }
func setBit(s []uint64, p int)      { s[p>>6] |= 1 << (p & 63) }

// start writes into s (g.words long) the state before any segment: the
// root cgroup's.
func (g *compiledGlob) start(s []uint64) {
	clear(s)
	setBit(s, 0)
	g.closure(s)
}

// closure adds to s the position after each "**" in it ("**" may match no
// segment); ascending, so that a run of "**" is followed to its end.
func (g *compiledGlob) closure(s []uint64) {
	for _, p := range g.stars {
		if hasBit(s, p) {
			setBit(s, p+1)
		}
	}
}

// step writes into dst the state after segment name from state src (both
// g.words long, distinct) and reports whether it is not empty.
func (g *compiledGlob) step(dst, src []uint64, name string, ascii bool) bool {
	clear(dst)
	n := len(g.segs)
	for w, word := range src {
		for word != 0 {
			p := w<<6 + bits.TrailingZeros64(word)
			word &= word - 1
			switch {
			case p == n: // the end of the pattern: nothing below matches
			case g.segs[p].kind == segStars:
				setBit(dst, p)
			case g.segs[p].match(name, ascii):
				setBit(dst, p+1)
			}
		}
	}
	g.closure(dst)
	live := false
	for _, word := range dst {
		live = live || word != 0
	}
	return live
}

// matches reports whether the path whose state is s matches the pattern.
func (g *compiledGlob) matches(s []uint64) bool { return hasBit(s, len(g.segs)) }

// below says how the pattern matches the cgroups strictly below the path
// whose state is s (as matchBelow).
func (g *compiledGlob) below(s []uint64) below {
	n := len(g.segs)
	for p := g.tail; p < n; p++ {
		if hasBit(s, p) {
			return belowAll
		}
	}
	for w, word := range s {
		if w == n>>6 {
			word &^= 1 << (n & 63)
		}
		if word != 0 {
			return belowSome
		}
	}
	return belowNone
}

// state writes into s (g.words long) the state of the path made of segs,
// using tmp (as long) as scratch; false when it is empty (no position
// left: the pattern matches neither the path nor anything below it).
func (g *compiledGlob) state(s, tmp []uint64, segs []string) bool {
	g.start(s)
	for _, seg := range segs {
		if !g.step(tmp, s, seg, isASCII(seg)) {
			return false
		}
		copy(s, tmp)
	}
	return true
}
