package policy

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/imdsguard/imdsguard/internal/containerid"
)

// Workload names a container of a Kubernetes pod as the container runtime
// reports it over CRI. The kubelet sets these names from the API server;
// the workload cannot choose them, as it can its comm.
type Workload struct {
	Namespace, Pod, Container string
}

type nameState uint8

const (
	namesUnknown    nameState = iota // zero: the strictest
	namesKnown                       // w holds the runtime's names
	notPodContainer                  // not a kubelet pod's container: no name rule matches
)

// Identity is what the policy knows of the workload in one cgroup, for the
// rules that match names (namespace, pod, container). The zero Identity is a
// pod's container whose names are not known (the runtime has not listed the
// container yet, cannot be reached, or the cgroup is one a container may have
// made for itself): those rules judge it as strictly as they can, each deny
// rule taken to match it and each other rule not.
type Identity struct {
	state nameState
	w     Workload
}

// NotAPodContainer is the identity of a cgroup that no kubelet pod's
// container is in: a systemd service, a session, a container outside
// Kubernetes. No rule that matches names matches it.
func NotAPodContainer() Identity { return Identity{state: notPodContainer} }

// Named is the identity of a pod's container cgroup whose names the runtime
// reported. A name left empty makes it unknown: the kubelet sets all three.
func Named(w Workload) Identity {
	if w.Namespace == "" || w.Pod == "" || w.Container == "" {
		return Identity{}
	}
	return Identity{state: namesKnown, w: w}
}

// Known reports whether the identity holds the runtime's names.
func (id Identity) Known() bool { return id.state == namesKnown }

// Workload is the runtime's names, when Known.
func (id Identity) Workload() Workload { return id.w }

// PathIdentity is what the cgroup path alone says: not a pod's container,
// or a pod's container whose names are unknown (only the runtime knows them).
func PathIdentity(cgroupPath string) Identity {
	if _, place := containerid.Locate(cgroupPath); place == containerid.NotInPod {
		return NotAPodContainer()
	}
	return Identity{}
}

// HasNames reports whether the match has a namespace, pod or container
// condition, which only the container runtime can answer.
func (m *Match) HasNames() bool { return m.Namespace != "" || m.Pod != "" || m.Container != "" }

// matchNames reports whether every name condition of m holds for w.
func (m *Match) matchNames(w Workload) bool {
	for _, c := range []struct{ glob, name string }{{m.Namespace, w.Namespace}, {m.Pod, w.Pod}, {m.Container, w.Container}} {
		if c.glob == "" {
			continue
		}
		if ok, err := path.Match(c.glob, c.name); err != nil || !ok {
			return false
		}
	}
	return true
}

// AppliesTo reports whether the rule can match processes of the cgroup at
// cgroupPath whose workload is id: its cgroup glob matches the path and its
// name conditions hold (comm and uid are the kernel's to check, per
// process). For an unknown identity a rule with name conditions applies
// only if it denies: unknown names are taken to match a deny, never a
// grant.
func (r *Rule) AppliesTo(cgroupPath string, id Identity) bool {
	if r.Match.Cgroup != "" && !MatchCgroup(r.Match.Cgroup, cgroupPath) {
		return false
	}
	return r.namesApply(id)
}

func (r *Rule) namesApply(id Identity) bool {
	if !r.Match.HasNames() {
		return true
	}
	switch id.state {
	case namesKnown:
		return r.Match.matchNames(id.w)
	case notPodContainer:
		return false
	}
	return r.Deny
}

// nameKey is one of the match keys on a Kubernetes name.
type nameKey struct {
	key   string // the match key
	names string // what the names are, for messages
	chars string // the characters Kubernetes allows in them, besides a-z and 0-9
	max   int    // their longest
}

var nameKeys = []nameKey{
	{"namespace", "namespace names", "-", 63},
	{"pod", "pod names", "-.", 253},
	{"container", "container names", "-", 63},
}

// maxNameGlob bounds a name glob: the longest name with every character
// escaped, and more.
const maxNameGlob = 1024

// nameGlobProblem checks a namespace, pod or container glob: the syntax of
// one segment of a cgroup glob ("*", "?", "[…]", "\x"). never says the glob
// is valid but can never match a name Kubernetes allows.
func (k nameKey) globProblem(g string) (msg string, never bool) {
	switch {
	case g == "":
		return fmt.Sprintf("must not be empty (leave %s out to match every %s)", k.key, strings.TrimSuffix(k.names, " names")), false
	case len(g) > maxNameGlob:
		return fmt.Sprintf("%s is longer than %d bytes", quote(g), maxNameGlob), false
	case hasDoubleStar(g):
		return fmt.Sprintf(`%s is not a valid glob: "**" means no more than "*" in a name, which has no segments: write "*"`, quote(g)), false
	}
	if _, err := path.Match(g, ""); err != nil {
		return fmt.Sprintf(`%s is not a valid glob: unclosed "[" or bad character class or trailing "\"`, quote(g)), false
	}
	for _, c := range globLiterals(g) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.ContainsRune(k.chars, c)) {
			return fmt.Sprintf("%s can never match: Kubernetes %s are at most %d lower-case letters, digits and %s, and %q is none of them",
				quote(g), k.names, k.max, charList(k.chars), string(c)), true
		}
	}
	return "", false
}

func charList(chars string) string {
	var q []string
	for _, c := range chars {
		q = append(q, fmt.Sprintf("%q", string(c)))
	}
	return strings.Join(q, " and ")
}

// globLiterals returns the characters a glob matches as themselves: not
// "*", "?" or a character class, and with "\x" read as x.
func globLiterals(g string) []rune {
	var out []rune
	rs := []rune(g)
	for i := 0; i < len(rs); i++ {
		switch rs[i] {
		case '*', '?':
		case '\\':
			if i+1 < len(rs) {
				i++
				out = append(out, rs[i])
			}
		case '[':
			j := i + 1
			if j < len(rs) && rs[j] == '^' {
				j++
			}
			if j < len(rs) && rs[j] == ']' {
				j++
			}
			for j < len(rs) && rs[j] != ']' {
				if rs[j] == '\\' {
					j++
				}
				j++
			}
			i = j
		default:
			out = append(out, rs[i])
		}
	}
	return out
}

// pinsNamespace reports whether a namespace glob names namespaces rather
// than matching every one: it has at least one literal character.
func pinsNamespace(g string) bool { return g != "" && len(globLiterals(g)) > 0 }

// cgroupCanBePodContainer reports whether a cgroup glob may match the cgroup
// of a pod's container, the only cgroups name conditions match: its last
// segment has wildcards, or names a container ("cri-containerd-<id>.scope",
// "<id>", …).
func cgroupCanBePodContainer(glob string) bool {
	segs := splitPattern(glob)
	if len(segs) == 0 {
		return false // "/": the root cgroup
	}
	last := segs[len(segs)-1]
	if last == "**" || strings.ContainsAny(last, `*?[\`) {
		return true
	}
	return containerid.Parse("/"+last).ContainerID != ""
}

// ValidateNameGlob checks a glob for the match key "namespace", "pod" or
// "container", as the parser does: the error says what is wrong with it,
// including that it can never match a name Kubernetes allows.
func ValidateNameGlob(key, glob string) error {
	for _, k := range nameKeys {
		if k.key == key {
			if msg, _ := k.globProblem(glob); msg != "" {
				return errors.New(msg)
			}
			return nil
		}
	}
	return fmt.Errorf("%q is not a name key (want namespace, pod or container)", key)
}
