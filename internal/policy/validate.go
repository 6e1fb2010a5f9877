package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/imdsguard/imdsguard/bpf"
)

// Limits.
const (
	// maxEndpoints is half the kernel's endpoints map: the two policy
	// generations share it, and both are there during a reload.
	maxEndpoints = bpf.MaxEndpoints / 2
	// maxComm is the longest process name the kernel keeps
	// (TASK_COMM_LEN less its NUL).
	maxComm = len(bpf.ImdsguardEvent{}.Comm) - 1
)

var ruleName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// validate checks the values the walk could not check on its own: lists
// whose items depend on one another, and rules. Keys the walk refused are
// not checked again; keys the file leaves out have their (valid) defaults.
func (d *decoder) validate(p *Policy) {
	d.validateEndpoints(p.Endpoints)
	d.validateCredentialPaths(p.CredentialPaths)
	d.validateRules(p.Rules)
}

func (d *decoder) validateEndpoints(eps []string) {
	const key = "endpoints"
	if d.failed[key] {
		return
	}
	if len(eps) == 0 {
		d.add(d.line(key), key, "must list at least one endpoint")
	}
	if len(eps) > maxEndpoints {
		d.add(d.line(key), key, "at most %d endpoints (got %d)", maxEndpoints, len(eps))
	}
	first := map[netip.AddrPort]int{}
	for i, s := range eps {
		ip := indexPath(key, i)
		if d.failed[ip] {
			continue
		}
		ap, err := ParseEndpoint(s)
		if err != nil {
			d.add(d.line(ip), ip, "%v", err)
			continue
		}
		if j, dup := first[ap]; dup {
			d.add(d.line(ip), ip, "%q is listed twice: it is the same endpoint as %s%s", s, indexPath(key, j), d.at(indexPath(key, j)))
			continue
		}
		first[ap] = i
	}
}

func (d *decoder) validateCredentialPaths(cps []string) {
	const key = "credentialPaths"
	if d.failed[key] {
		return
	}
	if len(cps) > maxCredentialPaths {
		d.add(d.line(key), key, "at most %d paths (got %d)", maxCredentialPaths, len(cps))
	}
	first := map[string]int{}
	for i, cp := range cps {
		ip := indexPath(key, i)
		if d.failed[ip] {
			continue
		}
		prefix, err := CredentialPrefix(cp)
		if err != nil {
			d.add(d.line(ip), ip, "%v", err)
			continue
		}
		if j, dup := first[prefix]; dup {
			d.add(d.line(ip), ip, "%q is listed twice: it is the same path as %s%s; the version segment, case and a trailing \"/\" do not matter", cp, indexPath(key, j), d.at(indexPath(key, j)))
			continue
		}
		first[prefix] = i
	}
}

// at is " (line N)" for a key path the file has, else "".
func (d *decoder) at(path string) string {
	if l := d.line(path); l > 0 {
		return fmt.Sprintf(" (line %d)", l)
	}
	return ""
}

func (d *decoder) validateRules(rules []Rule) {
	if d.failed["rules"] {
		return
	}
	if len(rules) > MaxRules {
		d.add(d.line("rules"), "rules", "at most %d rules (got %d)", MaxRules, len(rules))
	}
	names := map[string]int{}             // name -> index of the rule that has it first
	canShadow := make([]bool, len(rules)) // the rule is sound and can match
	anyCgroup := make([]bool, len(rules)) // its cgroup glob is no condition (see covers)
	for i := range rules {
		rp := indexPath("rules", i)
		if d.failed[rp] {
			continue // not a rule at all
		}
		d.checkRuleName(rules, i, names)
		sound, neverMatches := d.checkRuleMatch(&rules[i], rp)
		if d.failedUnder(rp) {
			// The rule is not what the file meant; judging what it grants
			// or whether it is shadowed would only add noise.
			continue
		}
		d.checkRuleGrants(&rules[i], rp)
		if !neverMatches {
			d.checkShadowed(rules, i, canShadow, anyCgroup)
		}
		canShadow[i] = sound
		anyCgroup[i] = rules[i].Match.Cgroup == "" || matchesEveryCgroup(rules[i].Match.Cgroup)
	}
}

// checkRuleName: every rule has a valid name of its own.
func (d *decoder) checkRuleName(rules []Rule, i int, names map[string]int) {
	r := &rules[i]
	rp := indexPath("rules", i)
	np := keyPath(rp, "name")
	switch {
	case d.failed[np]:
	case !d.has(np):
		d.add(d.line(rp), np, "missing: every rule needs a name")
	case !ruleName.MatchString(r.Name):
		d.add(d.line(np), np, "%s is not a valid rule name: use 1 to 63 lower-case letters, digits and \"-\", starting and ending with a letter or digit", quote(r.Name))
	default:
		if j, dup := names[r.Name]; dup {
			d.add(d.line(np), np, "duplicate rule name %q (first at line %d)", r.Name, d.line(keyPath(indexPath("rules", j), "name")))
		} else {
			names[r.Name] = i
		}
	}
}

// checkRuleMatch checks the cgroup glob, the name globs and the comm: sound
// says the match is valid, neverMatches that it can never hold.
func (d *decoder) checkRuleMatch(r *Rule, rp string) (sound, neverMatches bool) {
	mp := keyPath(rp, "match")
	cp, commP := keyPath(mp, "cgroup"), keyPath(mp, "comm")
	sound = true
	fail := func(key, msg string, never bool) {
		d.add(d.line(key), key, "%s", msg)
		sound, neverMatches = false, neverMatches || never
	}
	cgroupOK := false
	if d.has(cp) && !d.failed[cp] {
		if err := ValidateCgroupGlob(r.Match.Cgroup); err != nil {
			fail(cp, err.Error(), false)
		} else {
			cgroupOK = true
		}
	}
	for _, k := range nameKeys {
		kp := keyPath(mp, k.key)
		if d.has(kp) && !d.failed[kp] {
			if msg, never := k.globProblem(r.Match.name(k.key)); msg != "" {
				fail(kp, msg, never)
			}
		}
	}
	if cgroupOK && r.Match.HasNames() && !cgroupCanBePodContainer(r.Match.Cgroup) {
		fail(cp, fmt.Sprintf("%q is not the cgroup of a pod's container, so with %s this rule can never match: %s", r.Match.Cgroup, r.Match.nameKeysSet(), whyPodCgroup), true)
	}
	if d.has(commP) && !d.failed[commP] {
		if msg, never := commProblem(r.Match.Comm); msg != "" {
			fail(commP, msg, never)
		}
	}
	return sound, neverMatches
}

// whyPodCgroup says which cgroups name conditions match.
const whyPodCgroup = "namespace, pod and container match only the cgroup the container runtime makes for each container of a pod " +
	"(its last segment names the container, e.g. \"cri-containerd-<id>.scope\"); leave cgroup out to match every pod's containers, " +
	"or end the glob with a segment that matches the container's (e.g. \"/kubepods.slice/**\")"

// name is the value of a name key of the match.
func (m *Match) name(key string) string {
	switch key {
	case "namespace":
		return m.Namespace
	case "pod":
		return m.Pod
	}
	return m.Container
}

// nameKeysSet lists the name keys the match has: "namespace and pod".
func (m *Match) nameKeysSet() string {
	var keys []string
	for _, k := range nameKeys {
		if m.name(k.key) != "" {
			keys = append(keys, k.key)
		}
	}
	return strings.Join(keys, " and ")
}

// checkRuleGrants: a rule denies or grants, not both, and a grant is pinned
// to one workload by its cgroup or its namespace; a grant by pod or
// container name by its namespace.
func (d *decoder) checkRuleGrants(r *Rule, rp string) {
	mp := keyPath(rp, "match")
	grants := grantNames(r)
	mline := d.line(mp)
	if mline == 0 {
		mline = d.line(rp)
	}
	switch {
	case r.Deny && grants != "":
		d.add(d.line(keyPath(rp, "deny")), keyPath(rp, "deny"), "deny cannot be combined with %s: a denied workload gets no IMDS access at all", grants)
	case !r.Deny && grants == "":
		d.add(d.line(rp), rp, "rule grants nothing: set deny, allowV1, allowNonHostNetns or credentialReadsPerMinute")
	case grants == "" || pinsNamespace(r.Match.Namespace):
		// pinned to a workload by its namespace (or a deny)
	case r.Match.Namespace != "":
		np := keyPath(mp, "namespace")
		d.add(d.line(np), np, "%q matches every namespace, but a rule that grants %s by name must name the namespace of the workload it is for (a letter of it at least, as in \"payments\" or \"team-*\"): %s", r.Match.Namespace, grants, whyNamespace)
	case r.Match.HasNames():
		// a cgroup glob that pins the pod would do too, but one that
		// wildcards its uid (as a rule by name would) matches every pod
		d.add(mline, mp, "a rule that grants %s by %s name must also match a namespace: %s", grants, r.Match.nameKeysSet(), whyNamespace)
	case r.Match.Cgroup != "" && !matchesEveryCgroup(r.Match.Cgroup):
		// pinned to a workload by its cgroup
	case r.Match.Cgroup == "":
		d.add(mline, mp, "a rule that grants %s must also match a cgroup or a namespace: %s", grants, whyCgroup)
	default:
		cp := keyPath(mp, "cgroup")
		d.add(d.line(cp), cp, "%q matches every cgroup, but a rule that grants %s must match the cgroup of the workload it is for (or its namespace): %s", r.Match.Cgroup, grants, whyCgroup)
	}
}

// checkShadowed reports rule i if an earlier sound rule matches
// everything it matches (first match wins).
func (d *decoder) checkShadowed(rules []Rule, i int, canShadow, anyCgroup []bool) {
	label := func(i int) string {
		if ruleName.MatchString(rules[i].Name) {
			return fmt.Sprintf("%q", rules[i].Name)
		}
		return indexPath("rules", i)
	}
	for j := range i {
		if canShadow[j] && covers(rules[j].Match, anyCgroup[j], rules[i].Match) {
			rp := indexPath("rules", i)
			d.add(d.line(rp), rp, "rule %s can never match: rule %s (line %d) matches everything it matches", label(i), label(j), d.line(indexPath("rules", j)))
			return
		}
	}
}

// whyCgroup says why a rule that grants something must match a cgroup or a
// namespace.
const whyCgroup = "comm and uid are chosen by the process itself (any program can name itself \"backup-agent\", and a uid covers everything run as it), " +
	"while the cgroup is assigned by systemd or the kubelet, and a pod's namespace by the cluster's administrators, so only they pin the exception to one workload"

// whyNamespace says why a grant by pod or container name needs a namespace.
const whyNamespace = "pod and container names are chosen by whoever creates the pod, in any namespace they may create pods in, " +
	"while namespaces are made by the cluster's administrators, so only the namespace pins the exception to one workload"

// grantNames lists what a rule grants beyond the defaults: "allowV1",
// "allowNonHostNetns", both joined with "and", or "".
func grantNames(r *Rule) string {
	var g []string
	if r.AllowV1 {
		g = append(g, "allowV1")
	}
	if r.AllowNonHostNetns {
		g = append(g, "allowNonHostNetns")
	}
	if r.CredentialReadsPerMinute != 0 {
		// a bound of its own may be looser than the policy's: a grant
		g = append(g, "credentialReadsPerMinute")
	}
	return strings.Join(g, " and ")
}

// commProblem checks a comm value; never says the rule can never match.
func commProblem(c string) (msg string, never bool) {
	switch {
	case c == "":
		return "must not be empty", false
	case strings.IndexByte(c, 0) >= 0:
		return fmt.Sprintf("%s contains a NUL byte", quote(c)), false
	case strings.Contains(c, "/"):
		return fmt.Sprintf("%s contains \"/\": comm is the process name without its directory (e.g. \"curl\", not \"/usr/bin/curl\")", quote(c)), false
	case len(c) > maxComm:
		return fmt.Sprintf("%s is %d bytes, but the kernel keeps only the first %d bytes of a process name, so this rule can never match (write %q)", quote(c), len(c), maxComm, c[:maxComm]), true
	}
	return "", false
}

// covers reports whether every process match b matches is also matched by
// a: a's conditions are a subset of b's (a cgroup of only "**" segments is
// no condition: aAnyCgroup, worked out once per rule, since every pair of
// rules is checked). Globs are compared as text. Name conditions match only
// pods' container cgroups, so a's names cover b's cgroup, whatever it is,
// when b has the same names.
func covers(a Match, aAnyCgroup bool, b Match) bool {
	if !aAnyCgroup && a.Cgroup != b.Cgroup {
		return false
	}
	if a.Namespace != "" && a.Namespace != b.Namespace || a.Pod != "" && a.Pod != b.Pod || a.Container != "" && a.Container != b.Container {
		return false
	}
	if a.Comm != "" && a.Comm != b.Comm {
		return false
	}
	if a.UID != nil && (b.UID == nil || *a.UID != *b.UID) {
		return false
	}
	return true
}
