package policy

import (
	"path"
	"strings"
	"testing"
)

func TestMatchCgroup(t *testing.T) {
	const pod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c.slice/cri-containerd-abc.scope"
	tests := []struct {
		pattern, path string
		want          bool
	}{
		{"/kubepods*/**", "/kubepods.slice/x/y", true},
		{"/kubepods*/**", "/kubepods", true},
		{"/kubepods*/**", "/kubepods.slice", true},
		{"/kubepods*/**", pod, true},
		{"/kubepods*/**", "/system.slice/kubepods", false},
		{"/kubepods*/**", "/", false},
		{"/a/*/c", "/a/b/c", true},
		{"/a/*/c", "/a/b/x/c", false},
		{"/a/*/c", "/a/c", false},
		{"/a/**/c", "/a/c", true},
		{"/a/**/c", "/a/b/c", true},
		{"/a/**/c", "/a/b/x/c", true},
		{"/a/**/c", "/a/b/x/d", false},
		{"/a/**/c", "/a/b/c/d", false},
		{"/a/**/c/**", "/a/b/c/d", true},
		{"/**/c", "/c", true},
		{"/**/c", "/x/y/c", true},
		{"/**/c", "/x/y/cc", false},
		{"/**/**/c", "/c", true},
		{"/**/x/**/y", "/x/y", true},
		{"/**/x/**/y", "/a/x/b/c/y", true},
		{"/**/x/**/y", "/a/y/b/c/x", false},
		{"/**", "/", true},
		{"/**", "/a/b", true},
		{"/", "/", true},
		{"/", "/a", false},
		{"/system.slice/backup.service", "/system.slice/backup.service", true},
		{"/system.slice/backup.service", "/system.slice/backup.service/child", false},
		{"/system.slice/backup.service", "/system.slice/backup.servicex", false},
		{"/system.slice/backup.service", "/System.slice/backup.service", false},
		{"/kubepods.slice/*/*pod1b2c*/*", pod, true},
		{"/kubepods.slice/*/*pod1b2c*/*", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c.slice", false},
		{"/kubepods.slice/*/*pod9999*/*", pod, false},
		{"/a/b?", "/a/bc", true},
		{"/a/b?", "/a/b", false},
		{"/a/b?", "/a/bcd", false},
		{"/a/[bc]x", "/a/cx", true},
		{"/a/[^bc]x", "/a/cx", false},
		{"/a/[a-z]*", "/a/q.scope", true},
		{`/a/\*`, "/a/*", true},
		{`/a/\*`, "/a/b", false},
		{"/a/*", "/a/", false},       // not canonical
		{"/a/*", "a/b", false},       // relative
		{"/a/*/b", "/a//b", false},   // empty segment
		{"/a/*/b", "/a/../b", false}, // dot-dot
		{"/a/[b", "/a/[b", false},    // invalid pattern matches nothing
		{"/a/x**", "/a/x", false},
	}
	for _, tt := range tests {
		if got := MatchCgroup(tt.pattern, tt.path); got != tt.want {
			t.Errorf("MatchCgroup(%q, %q) = %v, want %v", tt.pattern, tt.path, got, tt.want)
		}
	}
}

func TestValidateCgroupGlob(t *testing.T) {
	for _, good := range []string{
		"/", "/**", "/a", "/a/b", "/kubepods*/**", "/a/**/c", "/**/c", "/a/*/c",
		"/kubepods.slice/*/*pod1b2c*/*", "/a/[bc]", "/a/[^b]", `/a/\*\*`, "/a/[*][*]", "/a.b/c-d@e:f",
	} {
		if err := ValidateCgroupGlob(good); err != nil {
			t.Errorf("ValidateCgroupGlob(%q) = %v, want nil", good, err)
		}
	}
	tests := []struct {
		pattern, want string
	}{
		{"", "empty"},
		{"a/b", `must start with "/"`},
		{"*", `must start with "/"`},
		{"/a//b", `empty segment ("//")`},
		{"//", `must not end with "/"`},
		{"/a/", `must not end with "/"`},
		{"/a/x**", `"**" must be a whole segment`},
		{"/a/**x", `"**" must be a whole segment`},
		{"/a/***", `"**" must be a whole segment`},
		{"/a/[b", `segment "[b"`},
		{`/a/b\`, `segment "b\\"`},
		{"/a/../b", `".." segments are not allowed`},
		{"/a/./b", `"." segments are not allowed`},
		{"/..", `".." segments are not allowed`},
		{"/a\x00b", "NUL"},
		{"/" + strings.Repeat("a", 4096), "longer than 4096 bytes"},
	}
	for _, tt := range tests {
		err := ValidateCgroupGlob(tt.pattern)
		if err == nil {
			t.Errorf("ValidateCgroupGlob(%q) = nil, want an error", tt.pattern)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "is not a valid glob") {
			t.Errorf("ValidateCgroupGlob(%q) = %q, want it to say %q", tt.pattern, err, tt.want)
		}
	}
}

func TestMatchesEveryCgroup(t *testing.T) {
	for p, want := range map[string]bool{"/**": true, "/**/**": true, "/": false, "/*": false, "/**/a": false, "/a**": false} {
		if got := matchesEveryCgroup(p); got != want {
			t.Errorf("matchesEveryCgroup(%q) = %v, want %v", p, got, want)
		}
	}
}

// FuzzMatchCgroup checks the matcher against a plain recursive one.
func FuzzMatchCgroup(f *testing.F) {
	f.Add("/a/**/c", "/a/b/c")
	f.Add("/**/x/**", "/x")
	f.Add("/k*/**/?", "/kube/a/b")
	f.Fuzz(func(t *testing.T, pattern, p string) {
		got := MatchCgroup(pattern, p)
		want := false
		if ValidateCgroupGlob(pattern) == nil {
			if segs, ok := splitCgroupPath(p); ok {
				want = naiveMatch(splitPattern(pattern), segs)
			}
		}
		if got != want {
			t.Fatalf("MatchCgroup(%q, %q) = %v, naive %v", pattern, p, got, want)
		}
	})
}

func naiveMatch(pat, segs []string) bool {
	if len(pat) == 0 {
		return len(segs) == 0
	}
	if pat[0] == "**" {
		for k := 0; k <= len(segs); k++ {
			if naiveMatch(pat[1:], segs[k:]) {
				return true
			}
		}
		return false
	}
	if len(segs) == 0 {
		return false
	}
	ok, _ := path.Match(pat[0], segs[0])
	return ok && naiveMatch(pat[1:], segs[1:])
}

// How a rule's glob matches the cgroups that will be made below a known
// one, whatever their names.
func TestMatchBelow(t *testing.T) {
	for _, tt := range []struct {
		pattern, path string
		want          below
	}{
		{"/kubepods/**", "/kubepods", belowAll},
		{"/kubepods/**", "/kubepods/burstable/pod1", belowAll},
		{"/kubepods/**", "/system.slice", belowNone},
		{"/kubepods/*", "/kubepods", belowSome},
		{"/kubepods/*", "/kubepods/pod1", belowNone},
		{"/kubepods/*/app", "/kubepods", belowSome},
		{"/kubepods/*/app", "/kubepods/pod1", belowSome},
		{"/kubepods/*/app", "/kubepods/pod1/app", belowNone},
		{"/kubepods/*/app/**", "/kubepods/pod1/app", belowAll},
		{"/**/bad-*", "/", belowSome},
		{"/**/bad-*", "/a/b", belowSome},
		{"/**", "/", belowAll},
		{"/**", "/a", belowAll},
		{"/a/**/b/**", "/a/x/b", belowAll},
		{"/a/**/b/**", "/a/x", belowSome},
		{"/a", "/", belowSome},
		{"/a", "/a", belowNone},
		{"/a/b", "/c", belowNone},
		{"/", "/", belowNone},
	} {
		if got := matchBelow(tt.pattern, tt.path); got != tt.want {
			t.Errorf("matchBelow(%q, %q) = %d, want %d", tt.pattern, tt.path, got, tt.want)
		}
	}
}
