package suggest

import (
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/policy"
)

const basePolicy = `# Our node policy.
mode: audit
cloud: auto
rules:
  # the broker reaches IMDS from its own network namespace
  - name: iam-broker
    match: {cgroup: "/kubepods.slice/*/*pod1b2c*/*"}
    allowNonHostNetns: true
  - name: backup
    match: {cgroup: "/system.slice/backup.service"}
    credentialReadsPerMinute: 100
  - name: agent-comm
    match: {cgroup: "/system.slice/agent.service", comm: "agent"}
    allowNonHostNetns: true
  - name: no-ci
    match: {uid: 1001}
    deny: true
  - name: deny-batch
    match: {cgroup: "/system.slice/batch.service"}
    deny: true
`

func TestSuggestOnTopOfAPolicy(t *testing.T) {
	broker := pod("kube-system", "iam-broker-7d9f8", "broker", uid)
	res := run(t, Config{Base: []byte(basePolicy), BaseSource: "policy.yaml"}, jsonLines(
		// iam-broker already lets the pod in from its netns; its v1 requests
		// need a rule before iam-broker that keeps allowNonHostNetns
		ev("2025-06-01T10:00:00Z", bpf.ReasonNonHostNetns, cgBroker, "aws", connect, broker),
		ev("2025-06-01T10:00:01Z", bpf.ReasonIMDSv1NoToken, cgBroker, "aws", broker),
		// the rule "backup" is exactly this workload's: extended in place
		ev("2025-06-01T10:00:02Z", bpf.ReasonIMDSv1NoToken, cgBackup, "backup-agent"),
		// agent-comm, the workload's own rule narrowed by comm, matched:
		// extended in place
		ev("2025-06-01T10:00:03Z", bpf.ReasonIMDSv1NoToken, "/system.slice/agent.service", "agent"),
		// another comm in agent.service: no rule matched it, appended
		ev("2025-06-01T10:00:04Z", bpf.ReasonIMDSv1NoToken, "/system.slice/agent.service", "helper"),
		// denied by the policy: never overridden
		ev("2025-06-01T10:00:05Z", bpf.ReasonIMDSv1NoToken, "/system.slice/batch.service", "batch"),
		ev("2025-06-01T10:00:06Z", bpf.ReasonIMDSv1NoToken, "/system.slice/new.service", "ci", uidOf(1001)),
		// new workloads, appended; the second's name is taken by a base rule
		ev("2025-06-01T10:00:07Z", bpf.ReasonIMDSv1NoToken, "/system.slice/new.service", "new"),
		ev("2025-06-01T10:00:08Z", bpf.ReasonIMDSv1NoToken, "/system.slice/other.slice/backup.service", "b"),
	))
	pol := wantRules(t, res.YAML, []rule{
		{name: "kube-system-iam-broker", cgroup: globPodsBroker, namespace: "kube-system", pod: "iam-broker-?????", ctr: "broker", v1: true, netns: true},
		{name: "iam-broker", cgroup: "/kubepods.slice/*/*pod1b2c*/*", netns: true},
		{name: "backup", cgroup: cgBackup, v1: true, credentialReadsPerMinute: 100},
		{name: "agent-comm", cgroup: "/system.slice/agent.service", comm: "agent", v1: true, netns: true},
		{name: "no-ci", deny: true},
		{name: "deny-batch", cgroup: "/system.slice/batch.service", deny: true},
		{name: "agent", cgroup: "/system.slice/agent.service", v1: true},
		{name: "new", cgroup: "/system.slice/new.service", v1: true},
		{name: "backup-2", cgroup: "/system.slice/other.slice/backup.service", v1: true},
	})
	if pol.Mode != "audit" || pol.Cloud != "auto" {
		t.Errorf("mode %q cloud %q: the base policy's keys were not kept", pol.Mode, pol.Cloud)
	}
	// apart from its rules, the output is the base policy
	basePol := rulesOf(t, []byte(basePolicy))
	basePol.Rules, pol.Rules = nil, nil
	if a, b := effective(t, basePol), effective(t, pol); a != b {
		t.Errorf("the output's keys differ from the base policy's:\n%s\nbase:\n%s", b, a)
	}
	wantContains(t, res.YAML,
		"Our node policy.", "cloud: auto", "the broker reaches IMDS from its own network namespace",
		"on top of policy.yaml (its keys, comments and rules kept)",
		"mode: audit is kept from policy.yaml: set mode: enforce",
		`it comes before the policy's rule "iam-broker", which matched these processes first, and keeps what that rule granted (allowNonHostNetns)`,
		"extended by imdsguard suggest for unit backup.service: 1 audit event at 2025-06-01T10:00:02Z",
		"extended by imdsguard suggest for unit agent.service: 1 audit event at 2025-06-01T10:00:03Z",
		"suggested for unit agent.service: 1 audit event at 2025-06-01T10:00:04Z",
		`- 1 from "/system.slice/batch.service", processes batch 1, 1 audit event at 2025-06-01T10:00:05Z: the policy's rule "deny-batch" denies it`,
		`rule "no-ci" denies it`,
		`Already allowed by the policy's rules (events recorded before those rules were in force): - rule "iam-broker": 1 audit event at 2025-06-01T10:00:00Z`,
	)
	if strings.Count(string(res.YAML), "apiVersion") != 0 {
		t.Errorf("keys the base policy leaves out were added:\n%s", res.YAML)
	}
}

// A rule placed before the base rules the workload hit takes their comm
// and uid; its comment names the deny rules after it that some process of
// the workload could have reached before.
func TestSuggestNamesTheDenyRulesItComesBefore(t *testing.T) {
	cgA := "/kubepods/besteffort/pod" + uid2 + "/" + cid
	cgB := "/kubepods/besteffort/pod" + uid2 + "/" + cid2
	base := `rules:
  - name: container-a
    match: {cgroup: "/kubepods/besteffort/*/` + cid + `", comm: "app"}
    allowNonHostNetns: true
  - name: no-root-app
    match: {cgroup: "/kubepods/**", comm: "app", uid: 0}
    deny: true
  - name: container-b
    match: {cgroup: "/kubepods/besteffort/*/` + cid2 + `", comm: "app"}
    allowNonHostNetns: true
`
	res := run(t, Config{Base: []byte(base), BaseSource: "p.yaml"}, jsonLines(
		ev("2025-06-01T10:00:00Z", bpf.ReasonIMDSv1NoToken, cgA, "app", uidOf(1000)),
		ev("2025-06-01T10:00:01Z", bpf.ReasonIMDSv1NoToken, cgB, "app", uidOf(1000)),
	))
	wantRules(t, res.YAML, []rule{
		{name: "pod-9f8e7d6c-app", cgroup: globWeb, comm: "app", v1: true, netns: true},
		{name: "container-a", cgroup: "/kubepods/besteffort/*/" + cid, comm: "app", netns: true},
		{name: "no-root-app", cgroup: "/kubepods/**", comm: "app", deny: true},
		{name: "container-b", cgroup: "/kubepods/besteffort/*/" + cid2, comm: "app", netns: true},
	})
	wantContains(t, res.YAML,
		`it comes before the policy's rule "container-a", which matched these processes first, and keeps what that rule granted (allowNonHostNetns) and its conditions (comm app)`,
		`it comes before the policy's deny rule "no-root-app": processes of this workload that rule would deny (cgroup /kubepods/**, comm app, uid 0) get this rule instead`)
}

// A rule for processes that a broad base rule matched goes before it, and
// keeps its comm: it must not take processes a narrower base rule of the
// workload has (or shadow that rule); when it would, it is left out.
func TestSuggestDoesNotShadowABaseRule(t *testing.T) {
	base := `rules:
  - name: helpers-netns
    match: {cgroup: "/system.slice/*.service", comm: "helper"}
    allowNonHostNetns: true
  - name: agent-comm
    match: {cgroup: "/system.slice/agent.service", comm: "agent"}
    allowNonHostNetns: true
  - name: services-netns
    match: {cgroup: "/system.slice/*.service"}
    allowNonHostNetns: true
  - name: tools-bound
    match: {cgroup: "/system.slice/tools.service", comm: "tool"}
    credentialReadsPerMinute: 5
`
	res := run(t, Config{Base: []byte(base), BaseSource: "p.yaml"}, jsonLines(
		ev("2025-06-01T10:00:00Z", bpf.ReasonIMDSv1NoToken, "/system.slice/agent.service", "helper"),
		ev("2025-06-01T10:00:01Z", bpf.ReasonIMDSv1NoToken, "/system.slice/tools.service", "other"),
	))
	wantRules(t, res.YAML, []rule{
		{name: "agent-helper", cgroup: "/system.slice/agent.service", comm: "helper", v1: true, netns: true},
		{name: "helpers-netns", cgroup: "/system.slice/*.service", comm: "helper", netns: true},
		{name: "agent-comm", cgroup: "/system.slice/agent.service", comm: "agent", netns: true},
		{name: "services-netns", cgroup: "/system.slice/*.service", netns: true},
		{name: "tools-bound", cgroup: "/system.slice/tools.service", comm: "tool", credentialReadsPerMinute: 5},
	})
	wantContains(t, res.YAML, `- 1 from "/system.slice/tools.service", processes other 1, 1 audit event at 2025-06-01T10:00:01Z: the policy's rule "tools-bound" has the same cgroup glob "/system.slice/tools.service": a rule for these processes before it would shadow it`)
}

func TestSuggestRefusesABadBasePolicy(t *testing.T) {
	_, err := Suggest(Config{Base: []byte("mdoe: audit\n"), BaseSource: "policy.yaml"}, nil)
	if err == nil || !strings.Contains(err.Error(), `policy.yaml:1: mdoe: unknown key "mdoe"`) {
		t.Fatalf("error %v, want the policy's own parse error", err)
	}
}

func TestSuggestOnTopOfAnEmptyOrFlowPolicy(t *testing.T) {
	e := ev("2025-06-01T10:00:00Z", bpf.ReasonIMDSv1NoToken, cgBackup, "a")
	for name, base := range map[string]string{
		"empty":      "",
		"comments":   "# nothing yet\n",
		"no rules":   "mode: enforce\n",
		"null rules": "mode: enforce\nrules:\n",
		"flow rules": "mode: enforce\nrules: []\n",
	} {
		t.Run(name, func(t *testing.T) {
			res := run(t, Config{Base: []byte(base), BaseSource: "p.yaml"}, jsonLines(e))
			wantRules(t, res.YAML, []rule{{name: "backup", cgroup: cgBackup, v1: true}})
		})
	}
}

// Events a base rule already allows (recorded before it was added) need
// no rule: running suggest again on the same events adds nothing.
func TestSuggestAgainAddsNothing(t *testing.T) {
	input := jsonLines(mixed()...)
	first := run(t, Config{}, input)
	again := run(t, Config{Base: first.YAML, BaseSource: "suggested.yaml"}, input)
	if again.Rules != 0 {
		t.Errorf("a second run suggested %d more rules:\n%s", again.Rules, again.YAML)
	}
	if got, want := short(rulesOf(t, again.YAML).Rules), short(rulesOf(t, first.YAML).Rules); len(got) != len(want) {
		t.Errorf("rules %+v, want %+v", got, want)
	}
	wantContains(t, again.YAML, `rule "backup": 4 audit events`)
}

func effective(t *testing.T, p *policy.Policy) string {
	t.Helper()
	out, err := p.YAML()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
