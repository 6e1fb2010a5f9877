package policy

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ParseError is one problem in a policy file. Parse and Load return every
// problem of a file at once, each a *ParseError, joined with errors.Join;
// its text is "FILE:LINE: KEY: message".
type ParseError struct {
	Source string // the file name given to Parse
	Line   int    // 1-based; 0 when the problem has no line of its own
	Key    string // the key's path, e.g. "rules[1].match.cgroup"; empty when the problem is not about one key
	Msg    string
}

func (e *ParseError) Error() string {
	var b strings.Builder
	b.WriteString(e.Source)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// problems collects a file's ParseErrors.
type problems struct {
	source string
	list   []*ParseError
}

func (ps *problems) add(line int, key, format string, args ...any) {
	ps.list = append(ps.list, &ParseError{Source: ps.source, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// maxProblems is how many problems err reports; the rest are counted.
// Past the first few the list is mostly consequences of them (a file
// replaced by something else fails on every line), and a long list buries
// the line to fix first.
const maxProblems = 20

// err returns the first maxProblems problems in line order (those without
// a line last), one error each, then one that counts the rest; or nil.
func (ps *problems) err() error {
	if len(ps.list) == 0 {
		return nil
	}
	sort.SliceStable(ps.list, func(i, j int) bool {
		a, b := ps.list[i].Line, ps.list[j].Line
		if a == 0 || b == 0 {
			return a != 0 && b == 0
		}
		return a < b
	})
	shown := ps.list[:min(len(ps.list), maxProblems)]
	errs := make([]error, 0, len(shown)+1)
	for _, e := range shown {
		errs = append(errs, e)
	}
	if more := len(ps.list) - len(shown); more > 0 {
		errs = append(errs, &ParseError{Source: ps.source, Msg: fmt.Sprintf("and %d more %s", more, plural(more, "problem"))})
	}
	return errors.Join(errs...)
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// keyPath joins a parent key path and a key: "rules[1]" + "match".
func keyPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// indexPath names a list item: "endpoints" + 0 = "endpoints[0]".
func indexPath(parent string, i int) string { return fmt.Sprintf("%s[%d]", parent, i) }

// quote renders a value for a message, shortened when long.
func quote(s string) string {
	const limit = 80
	if len(s) > limit {
		return fmt.Sprintf("%q…", s[:limit])
	}
	return fmt.Sprintf("%q", s)
}

// closest returns the candidate nearest to s when it is at most two edits
// away (case is ignored), for "did you mean" hints.
func closest(s string, candidates []string) (string, bool) {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	return best, bestD <= 2
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
