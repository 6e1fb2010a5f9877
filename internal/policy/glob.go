package policy

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// maxCgroupGlob bounds a cgroup pattern: no cgroup path is longer than
// PATH_MAX.
const maxCgroupGlob = 4096

// ValidateCgroupGlob checks a cgroup path pattern (the syntax MatchCgroup
// accepts). The error names the pattern and says what is wrong with it.
//
// A pattern is absolute ("/..."), its segments are separated by single
// slashes, and it has no trailing slash; the pattern "/" alone matches only
// the root cgroup. Within a segment "*" matches any run of characters, "?"
// one character, "[...]" a character class and "\" escapes the next
// character, as in path.Match. A segment that is exactly "**" matches zero
// or more whole segments. "." and ".." segments are not allowed.
func ValidateCgroupGlob(pattern string) error {
	if err := cgroupGlobProblem(pattern); err != nil {
		return fmt.Errorf("%q is not a valid glob: %w", pattern, err)
	}
	return nil
}

func cgroupGlobProblem(pattern string) error {
	switch {
	case pattern == "":
		return errors.New("the pattern is empty")
	case !strings.HasPrefix(pattern, "/"):
		return errors.New(`it must start with "/" (cgroup paths are relative to the cgroup2 mount, e.g. "/system.slice/backup.service")`)
	case len(pattern) > maxCgroupGlob:
		return fmt.Errorf("it is longer than %d bytes", maxCgroupGlob)
	case strings.IndexByte(pattern, 0) >= 0:
		return errors.New("it contains a NUL byte")
	case pattern == "/":
		return nil
	case strings.HasSuffix(pattern, "/"):
		return errors.New(`it must not end with "/"`)
	}
	for _, seg := range strings.Split(pattern[1:], "/") {
		switch {
		case seg == "":
			return errors.New(`it has an empty segment ("//")`)
		case seg == "." || seg == "..":
			return fmt.Errorf("%q segments are not allowed", seg)
		case seg == "**":
			continue
		case hasDoubleStar(seg):
			return fmt.Errorf(`"**" must be a whole segment, as in "/a/**/b" (segment %q)`, seg)
		}
		if _, err := path.Match(seg, ""); err != nil {
			return fmt.Errorf(`segment %q: unclosed "[" or bad character class or trailing "\"`, seg)
		}
	}
	return nil
}

// hasDoubleStar reports whether seg holds two unescaped "*" in a row
// outside a character class.
func hasDoubleStar(seg string) bool {
	for i := 0; i < len(seg); i++ {
		switch seg[i] {
		case '\\':
			i++
		case '[':
			// Skip the class; a malformed one is path.Match's to report.
			j := i + 1
			if j < len(seg) && seg[j] == '^' {
				j++
			}
			if j < len(seg) && seg[j] == ']' {
				j++
			}
			for j < len(seg) && seg[j] != ']' {
				if seg[j] == '\\' {
					j++
				}
				j++
			}
			i = j
		case '*':
			if i+1 < len(seg) && seg[i+1] == '*' {
				return true
			}
		}
	}
	return false
}

// MatchCgroup reports whether a cgroup v2 path, relative to the cgroup2
// mount ("/" is the root, "/system.slice/backup.service" a service),
// matches pattern (see ValidateCgroupGlob for the syntax). An invalid
// pattern matches nothing, and so does a path that is not in canonical
// form (relative, with empty, "." or ".." segments, or a trailing "/").
func MatchCgroup(pattern, cgroupPath string) bool {
	if cgroupGlobProblem(pattern) != nil {
		return false
	}
	segs, ok := splitCgroupPath(cgroupPath)
	if !ok {
		return false
	}
	return matchSegments(splitPattern(pattern), segs)
}

func splitPattern(pattern string) []string {
	if pattern == "/" {
		return nil
	}
	return strings.Split(pattern[1:], "/")
}

func splitCgroupPath(p string) ([]string, bool) {
	if p == "/" {
		return nil, true
	}
	if !strings.HasPrefix(p, "/") {
		return nil, false
	}
	segs := strings.Split(p[1:], "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return nil, false
		}
	}
	return segs, true
}

// matchSegments matches path segments against pattern segments, "**"
// standing for any number of segments. ok[j] says whether pat[i:] matches
// segs[j:], computed from the last pattern segment backwards, so any number
// of "**" costs O(len(pat)·len(segs)).
func matchSegments(pat, segs []string) bool {
	n := len(segs)
	ok := make([]bool, n+1)
	ok[n] = true // the empty pattern matches only the empty path
	next := make([]bool, n+1)
	for i := len(pat) - 1; i >= 0; i-- {
		if pat[i] == "**" {
			// pat[i:] matches segs[j:] if pat[i+1:] matches segs[k:] for some k >= j.
			found := false
			for j := n; j >= 0; j-- {
				found = found || ok[j]
				next[j] = found
			}
		} else {
			next[n] = false
			for j := n - 1; j >= 0; j-- {
				m, _ := path.Match(pat[i], segs[j])
				next[j] = m && ok[j+1]
			}
		}
		ok, next = next, ok
	}
	return ok[0]
}

// below says how a pattern matches the cgroups strictly below a path.
type below int

const (
	belowNone below = iota // no cgroup below the path matches
	belowSome              // some do, which ones depends on their names
	belowAll               // every one does
)

// matchBelow says how pattern matches the cgroups strictly below
// cgroupPath, whatever their names: it runs the pattern over the path's
// segments, keeping every pattern position reachable ("**" may take any
// number of segments), then looks at what is left of the pattern.
func matchBelow(pattern, cgroupPath string) below {
	if cgroupGlobProblem(pattern) != nil {
		return belowNone
	}
	segs, ok := splitCgroupPath(cgroupPath)
	if !ok {
		return belowNone
	}
	pat := splitPattern(pattern)
	states := starClosure(pat, map[int]bool{0: true})
	for _, seg := range segs {
		next := map[int]bool{}
		for p := range states {
			switch {
			case p == len(pat):
			case pat[p] == "**":
				next[p] = true
			default:
				if m, _ := path.Match(pat[p], seg); m {
					next[p+1] = true
				}
			}
		}
		states = starClosure(pat, next)
	}
	result := belowNone
	for p := range states {
		if p == len(pat) {
			continue // only the path itself
		}
		if onlyStars(pat[p:]) {
			return belowAll
		}
		result = belowSome
	}
	return result
}

// starClosure adds to states the positions after each "**" they stand on
// ("**" may match no segment).
func starClosure(pat []string, states map[int]bool) map[int]bool {
	for p := 0; p < len(pat); p++ {
		if states[p] && pat[p] == "**" {
			states[p+1] = true
		}
	}
	return states
}

func onlyStars(pat []string) bool {
	for _, s := range pat {
		if s != "**" {
			return false
		}
	}
	return len(pat) > 0
}

// matchesEveryCgroup reports whether a valid pattern matches every cgroup
// path: it is made of "**" segments only.
func matchesEveryCgroup(pattern string) bool {
	if pattern == "/" || cgroupGlobProblem(pattern) != nil {
		return false
	}
	for _, s := range splitPattern(pattern) {
		if s != "**" {
			return false
		}
	}
	return true
}
