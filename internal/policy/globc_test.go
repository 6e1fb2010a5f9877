package policy

import (
	"math/rand/v2"
	"path"
	"strings"
	"testing"
)

// Pieces random globs and paths are made of: literal, "*", "?", classes,
// escapes and "**" segments, with non-ASCII and invalid UTF-8 names where
// "?" (one rune for path.Match) is not one byte.
var (
	globPieces = []string{"a", "b", "ab", "w", "1", "*", "?", "[ab]", "[^a]", `\a`, `\*`, "é", "\xff", "-", "."}
	nameParts  = []string{"a", "b", "ab", "w", "1", "é", "\xff", "\xc3", "*", "?", "[", "-", "."}
)

func randSegment(r *rand.Rand, parts []string) string {
	var sb strings.Builder
	for range 1 + r.IntN(3) {
		sb.WriteString(parts[r.IntN(len(parts))])
	}
	return sb.String()
}

// randGlob is a random cgroup glob, valid most of the time.
func randGlob(r *rand.Rand) string {
	if r.IntN(20) == 0 {
		return []string{"/", "", "a", "/a/", "/a//b", "/a**", "/[", "/..", `/a\`, "/**"}[r.IntN(10)]
	}
	var sb strings.Builder
	for range 1 + r.IntN(4) {
		sb.WriteString("/")
		if r.IntN(4) == 0 {
			sb.WriteString("**")
		} else {
			sb.WriteString(randSegment(r, globPieces))
		}
	}
	return sb.String()
}

// randCgroupPath is a random path, canonical most of the time.
func randCgroupPath(r *rand.Rand) string {
	if r.IntN(20) == 0 {
		return []string{"/", "", "a", "/a/", "//", "/./a", "/a/.."}[r.IntN(7)]
	}
	var sb strings.Builder
	for range r.IntN(5) {
		sb.WriteString("/")
		sb.WriteString(randSegment(r, nameParts))
	}
	if sb.Len() == 0 {
		return "/"
	}
	return sb.String()
}

// checkCompiledGlob holds the compiled glob to MatchCgroup and matchBelow.
func checkCompiledGlob(t *testing.T, pattern, p string) {
	t.Helper()
	g := compileGlob(pattern)
	segs, canonical := splitCgroupPath(p)
	var sc pathScratch
	if pattern == "" {
		return // no condition: not a pattern MatchCgroup knows
	}
	if got, want := sc.matches(&g, segs, canonical), MatchCgroup(pattern, p); got != want {
		t.Fatalf("compiled %q matches %q: %v, MatchCgroup %v", pattern, p, got, want)
	}
	if got, want := sc.below(&g, segs, canonical), matchBelow(pattern, p); got != want {
		t.Fatalf("compiled %q below %q: %d, matchBelow %d", pattern, p, got, want)
	}
}

func TestCompiledGlobIsMatchCgroup(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		checkCompiledGlob(t, randGlob(r), randCgroupPath(r))
	}
	// a pattern longer than 64 segments takes states of several words
	long := strings.Repeat("/**/a", 40)
	checkCompiledGlob(t, long, strings.Repeat("/a", 45))
	checkCompiledGlob(t, long, strings.Repeat("/a", 39))
	checkCompiledGlob(t, long+"/**", strings.Repeat("/a", 40))
}

// The fast segment matchers are path.Match, byte for byte.
func TestSegMatcherIsPathMatch(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 200000 {
		seg, name := randSegment(r, globPieces), randSegment(r, nameParts)
		if _, err := path.Match(seg, ""); err != nil || seg == "**" {
			continue
		}
		m := classify(seg)
		want, _ := path.Match(seg, name)
		if got := m.match(name, isASCII(name)); got != want {
			t.Fatalf("segment %q (kind %d) matches %q: %v, path.Match %v", seg, m.kind, name, got, want)
		}
	}
}

func FuzzCompiledGlob(f *testing.F) {
	f.Add("/a/**/c", "/a/b/c")
	f.Add("/**/x/**", "/x")
	f.Add("/k*/**/?", "/kube/a/b")
	f.Add("/w??123", "/w\xc3\xa9123")
	f.Add("/*a*b?", "/aab\xff")
	f.Fuzz(func(t *testing.T, pattern, p string) { checkCompiledGlob(t, pattern, p) })
}

func FuzzSegMatcher(f *testing.F) {
	f.Add("w??123", "w00123")
	f.Add("*a?", "\xc3\xa9a\xc3\xa9")
	f.Add("?*?", "é")
	f.Fuzz(func(t *testing.T, seg, name string) {
		if _, err := path.Match(seg, ""); err != nil || seg == "**" || hasDoubleStar(seg) ||
			strings.Contains(seg, "/") || name == "" || strings.Contains(name, "/") {
			return
		}
		want, _ := path.Match(seg, name)
		m := classify(seg)
		if got := m.match(name, isASCII(name)); got != want {
			t.Fatalf("segment %q matches %q: %v, path.Match %v", seg, name, got, want)
		}
	})
}
