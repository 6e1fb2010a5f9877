package policy

import (
	"slices"
	"strings"
	"testing"
)

const (
	podCgroup  = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope"
	podCgroupB = "/kubepods/besteffort/pod9f8e7d6c-5b4a-3921-8f7e-6d5c4b3a2910/fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	service    = "/system.slice/backup.service"
)

func TestNameRulesParseAndRender(t *testing.T) {
	doc := rulesDoc(
		"  - name: web\n    match: {namespace: shop, pod: \"web-*-?????\", container: app}\n    allowV1: true\n",
		"  - name: broker\n    match: {cgroup: \"/kubepods.slice/**\", namespace: \"infra-[ab]\", container: broker, comm: aws}\n    allowNonHostNetns: true\n",
		"  - name: no-ci\n    match: {namespace: \"ci-*\"}\n    deny: true\n",
		"  - name: no-sidecars\n    match: {container: \"istio-*\"}\n    deny: true\n",
		"  - name: bound\n    match: {cgroup: \"/kubepods/besteffort/*/*\", namespace: jobs, pod: \"batch-?\"}\n    credentialReadsPerMinute: 5\n",
	)
	p, err := Parse([]byte(doc), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if m := p.Rules[0].Match; m.Namespace != "shop" || m.Pod != "web-*-?????" || m.Container != "app" || m.Cgroup != "" {
		t.Errorf("rules[0].match = %+v", m)
	}
	out, err := p.YAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`match: {namespace: shop, pod: 'web-*-?????', container: app}`,
		`match: {cgroup: /kubepods.slice/**, namespace: 'infra-[ab]', container: broker, comm: aws}`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("rendered policy lacks %q:\n%s", want, out)
		}
	}
	again, err := Parse(out, "rendered.yaml")
	if err != nil {
		t.Fatalf("the rendered policy does not parse: %v\n%s", err, out)
	}
	if !slices.EqualFunc(again.Rules, p.Rules, func(a, b Rule) bool {
		return a.Name == b.Name && a.Match.Namespace == b.Match.Namespace && a.Match.Pod == b.Match.Pod && a.Match.Container == b.Match.Container
	}) {
		t.Errorf("rules after a round trip: %+v, want %+v", again.Rules, p.Rules)
	}
}

func TestNameRuleErrors(t *testing.T) {
	for _, tt := range []struct {
		name, yaml string
		want       []wantErr
	}{
		{"empty", rulesDoc("  - {name: a, match: {namespace: \"\"}, deny: true}\n"), []wantErr{{3, "rules[0].match.namespace", "must not be empty (leave namespace out to match every namespace)"}}},
		{"bad class", rulesDoc("  - {name: a, match: {pod: \"web-[a\"}, deny: true}\n"), []wantErr{{3, "rules[0].match.pod", `"web-[a" is not a valid glob: unclosed "["`}}},
		{"double star", rulesDoc("  - {name: a, match: {container: \"**\"}, deny: true}\n"), []wantErr{{3, "rules[0].match.container", `"**" is not a valid glob: "**" means no more than "*" in a name`}}},
		{"upper case", rulesDoc("  - {name: a, match: {namespace: Shop}, deny: true}\n"), []wantErr{{3, "rules[0].match.namespace",
			`"Shop" can never match: Kubernetes namespace names are at most 63 lower-case letters, digits and "-", and "S" is none of them`}}},
		{"a dot in a container name", rulesDoc("  - {name: a, match: {cgroup: /kubepods/**, container: a.b}, deny: true}\n"), []wantErr{{3, "rules[0].match.container", `"a.b" can never match`}}},
		{"a dot in a pod name is fine, a slash is not", rulesDoc("  - {name: a, match: {pod: \"a.b/c\"}, deny: true}\n"), []wantErr{{3, "rules[0].match.pod", `"a.b/c" can never match: Kubernetes pod names are at most 253 lower-case letters, digits and "-" and ".", and "/" is none of them`}}},
		{"an escaped star is a star", rulesDoc("  - {name: a, match: {namespace: \"kube-\\\\*\"}, deny: true}\n"), []wantErr{{3, "rules[0].match.namespace", `"kube-\\*" can never match`}}},
		{"not a string", rulesDoc("  - {name: a, match: {namespace: 12}, deny: true}\n"), []wantErr{{3, "rules[0].match.namespace", `want a string, got the number 12 (quote it if you mean the string "12")`}}},
		{"under the rule", rulesDoc("  - {name: a, namespace: shop, deny: true}\n"), []wantErr{{3, "rules[0].namespace", `unknown key "namespace" (it belongs under match: match: {namespace: …})`}}},
		{"a cgroup no pod container has", rulesDoc("  - name: a\n    match: {cgroup: /system.slice/backup.service, namespace: shop}\n    deny: true\n"), []wantErr{{4, "rules[0].match.cgroup",
			`"/system.slice/backup.service" is not the cgroup of a pod's container, so with namespace this rule can never match: namespace, pod and container match only the cgroup the container runtime makes for each container of a pod`}}},
		{"the pod's cgroup, not its container's", rulesDoc("  - name: a\n    match: {cgroup: /kubepods/besteffort/pod1b2c, pod: web, container: app}\n    deny: true\n"), []wantErr{{4, "rules[0].match.cgroup", "so with pod and container this rule can never match"}}},
		{"grant by pod name without a namespace", rulesDoc("  - name: a\n    match: {pod: \"web-*\"}\n    allowV1: true\n"), []wantErr{{4, "rules[0].match",
			"a rule that grants allowV1 by pod name must also match a namespace: pod and container names are chosen by whoever creates the pod"}}},
		{"grant by container name in a cgroup", rulesDoc("  - name: a\n    match: {cgroup: \"/kubepods.slice/*/*pod1b2c*/*\", container: broker}\n    allowNonHostNetns: true\n"), []wantErr{{4, "rules[0].match", "a rule that grants allowNonHostNetns by container name must also match a namespace"}}},
		{"grant by container name on every cgroup", rulesDoc("  - name: a\n    match: {cgroup: \"/**\", container: app}\n    allowNonHostNetns: true\n"), []wantErr{{4, "rules[0].match", "a rule that grants allowNonHostNetns by container name must also match a namespace"}}},
		{"grant in every namespace", rulesDoc("  - name: a\n    match: {namespace: \"*\", pod: web}\n    credentialReadsPerMinute: 100\n"), []wantErr{{4, "rules[0].match.namespace",
			`"*" matches every namespace, but a rule that grants credentialReadsPerMinute by name must name the namespace of the workload it is for (a letter of it at least, as in "payments" or "team-*")`}}},
		{"a class names no namespace", rulesDoc("  - name: a\n    match: {namespace: \"[a-z]*\"}\n    allowV1: true\n"), []wantErr{{4, "rules[0].match.namespace", `"[a-z]*" matches every namespace`}}},
		{"shadowed by the same names", rulesDoc(
			"  - {name: a, match: {namespace: shop, pod: web}, allowV1: true}\n",
			"  - {name: b, match: {namespace: shop, pod: web, container: app}, deny: true}\n",
		), []wantErr{{4, "rules[1]", `rule "b" can never match: rule "a" (line 3) matches everything it matches`}}},
		{"names cover any cgroup of the same names", rulesDoc(
			"  - {name: a, match: {namespace: shop}, deny: true}\n",
			"  - {name: b, match: {cgroup: \"/kubepods/**\", namespace: shop, comm: x}, deny: true}\n",
		), []wantErr{{4, "rules[1]", `rule "b" can never match: rule "a" (line 3)`}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), "p.yaml")
			checkErrors(t, tt.yaml, err, tt.want)
		})
	}
}

// Grants pinned by a namespace are fine, with or without a cgroup; so is
// any deny; a namespace glob need only name some of it.
func TestNameRulesThatAreValid(t *testing.T) {
	for _, rule := range []string{
		"{name: a, match: {namespace: shop}, allowV1: true}",
		"{name: a, match: {namespace: \"team-*\", pod: \"web-*\"}, allowNonHostNetns: true}",
		"{name: a, match: {cgroup: \"/kubepods.slice/*/*pod1b2c*/*\", namespace: infra, container: broker}, allowNonHostNetns: true}",
		"{name: a, match: {cgroup: \"/kubepods/besteffort/pod*/*\", namespace: shop, pod: web-0, container: app}, allowV1: true}",
		"{name: a, match: {container: \"*\"}, deny: true}",
		"{name: a, match: {namespace: \"kube-syste[m]\"}, allowV1: true}",
	} {
		if _, err := Parse([]byte(rulesDoc("  - "+rule+"\n")), "p.yaml"); err != nil {
			t.Errorf("%s: %v", rule, err)
		}
	}
}

// What a cgroup's list holds, for each thing its names can be: known
// (and matching or not), unknown, or not a pod's container at all.
func TestCandidatesByName(t *testing.T) {
	c := compileDoc(t, `
rules:
  - name: web-v1            # a grant by name
    match: {namespace: shop, pod: "web-*", container: app}
    allowV1: true
  - name: no-ci             # a deny by name
    match: {namespace: "ci-*"}
    deny: true
  - name: shop-bound        # a bound by name: not a deny
    match: {namespace: shop, comm: batch}
    credentialReadsPerMinute: 5
  - name: no-root           # no name condition
    match: {uid: 0}
    deny: true
`)
	web := Named(Workload{Namespace: "shop", Pod: "web-7d9f8-x7k2p", Container: "app"})
	ci := Named(Workload{Namespace: "ci-main", Pod: "job-1", Container: "run"})
	other := Named(Workload{Namespace: "shop", Pod: "cart-1", Container: "app"})
	for _, tt := range []struct {
		name string
		path string
		id   Identity
		want []string
	}{
		{"known, the grant's", podCgroup, web, []string{"web-v1"}},
		{"known, the deny's", podCgroup, ci, []string{"no-ci"}},
		{"known, neither", podCgroup, other, []string{"shop-bound", "no-root"}},
		{"unknown: the deny applies, the grant and the bound do not", podCgroup, Identity{}, []string{"no-ci"}},
		{"a name left empty is unknown", podCgroup, Named(Workload{Namespace: "shop", Pod: "web-1"}), []string{"no-ci"}},
		{"not a pod's container: no rule by name", service, NotAPodContainer(), []string{"no-root"}},
		{"from the path alone, a pod's container is unknown", podCgroupB, PathIdentity(podCgroupB), []string{"no-ci"}},
		{"from the path alone, a service is no pod's", service, PathIdentity(service), []string{"no-root"}},
		{"a container's own sub-cgroup is unknown for good", podCgroup + "/init", PathIdentity(podCgroup + "/init"), []string{"no-ci"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.CandidatesOf(tt.path, tt.id)
			if err != nil {
				t.Fatal(err)
			}
			if names := ruleNamesOf(c, got); !slices.Equal(names, tt.want) {
				t.Errorf("CandidatesOf(%s, %+v) = %v, want %v", tt.path, tt.id, names, tt.want)
			}
		})
	}
	if got, _ := c.Candidates(podCgroupB); !slices.Equal(ruleNamesOf(c, got), []string{"no-ci"}) {
		t.Errorf("Candidates(%s) = %v, want the path's identity's list", podCgroupB, ruleNamesOf(c, got))
	}
}

// First match wins, and unknown names are taken to match denies, not
// grants: an unknown workload gets what the policy gives one that no grant
// by name names, and every deny by name.
func TestUnknownNamesAndRuleOrder(t *testing.T) {
	c := compileDoc(t, `
rules:
  - name: web-v1            # the named workload's exception
    match: {namespace: shop, pod: "web-*"}
    allowV1: true
  - name: shop-deny         # after it: the rest of shop is denied
    match: {namespace: shop}
    deny: true
  - name: pods-netns        # a broader grant by cgroup
    match: {cgroup: "/kubepods.slice/**"}
    allowNonHostNetns: true
`)
	for _, tt := range []struct {
		name string
		id   Identity
		want []string
	}{
		{"web, known: its exception", Named(Workload{"shop", "web-1", "app"}), []string{"web-v1"}},
		{"shop, known: denied", Named(Workload{"shop", "cart-1", "app"}), []string{"shop-deny"}},
		{"elsewhere, known: the broad grant", Named(Workload{"infra", "x", "y"}), []string{"pods-netns"}},
		// web's exception is not in force until its names are known, and
		// the deny after it is: web is refused, not let through
		{"unknown: the deny after the grant wins", Identity{}, []string{"shop-deny"}},
	} {
		got, err := c.CandidatesOf(podCgroup, tt.id)
		if err != nil {
			t.Fatal(err)
		}
		if names := ruleNamesOf(c, got); !slices.Equal(names, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, names, tt.want)
		}
	}

	// Without a deny after it, an unknown workload falls through a grant
	// by name to what comes after: the broad grant, as for any pod.
	c = compileDoc(t, `
rules:
  - name: web-v1
    match: {namespace: shop, pod: "web-*"}
    allowV1: true
  - name: pods-netns
    match: {cgroup: "/kubepods.slice/**"}
    allowNonHostNetns: true
`)
	got, _ := c.CandidatesOf(podCgroup, Identity{})
	if names := ruleNamesOf(c, got); !slices.Equal(names, []string{"pods-netns"}) {
		t.Errorf("unknown, no deny: %v, want [pods-netns]", names)
	}
}

// Cgroups the kernel has no entry for yet (subtree and default lists) have
// no names: only the denies by name are in their lists.
func TestNewCgroupsGetOnlyTheDeniesByName(t *testing.T) {
	c := compileDoc(t, `
rules:
  - name: web-v1
    match: {namespace: shop, pod: web, comm: x}
    allowV1: true
  - name: no-ci
    match: {namespace: ci, comm: y}
    deny: true
  - name: broker
    match: {cgroup: "/kubepods/**", namespace: infra, comm: z}
    allowNonHostNetns: true
  - name: no-ci-pods
    match: {cgroup: "/kubepods/**", namespace: ci2}
    deny: true
`)
	sub, err := c.SubtreeCandidates("/kubepods")
	if err != nil {
		t.Fatal(err)
	}
	if names := ruleNamesOf(c, sub); !slices.Equal(names, []string{"no-ci", "no-ci-pods"}) {
		t.Errorf("SubtreeCandidates(/kubepods) = %v, want [no-ci no-ci-pods]", names)
	}
	def, err := c.DefaultCandidates()
	if err != nil {
		t.Fatal(err)
	}
	if names := ruleNamesOf(c, def); !slices.Equal(names, []string{"no-ci"}) {
		t.Errorf("DefaultCandidates() = %v, want [no-ci]", names)
	}
	if !c.HasCgroupRules() || !c.HasNameRules() || !c.GrantsByName() {
		t.Error("a policy with rules by name: the tree and the runtime must be read")
	}
	plain := compileDoc(t, "rules:\n  - {name: a, match: {uid: 1}, deny: true}\n")
	if plain.HasCgroupRules() || plain.HasNameRules() {
		t.Error("a policy without cgroup or name rules needs no tree")
	}
}

func ruleNamesOf(c *Compiled, idx []uint16) []string {
	var names []string
	for _, i := range idx {
		names = append(names, c.RuleName(int(i)))
	}
	return names
}
