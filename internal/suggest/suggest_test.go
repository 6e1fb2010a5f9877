package suggest

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
)

const (
	cgBackup  = "/system.slice/backup.service"
	cgNginx   = "/system.slice/nginx.service"
	cgWeb     = "/kubepods/besteffort/pod" + uid2 + "/" + cid2
	globWeb   = "/kubepods/besteffort/pod" + uid2 + "/*"
	cgBroker  = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidUnder + ".slice/cri-containerd-" + cid + ".scope"
	globBrokr = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidUnder + ".slice/cri-containerd-*.scope"
	// the globs of pods matched by their names: uid and container id wildcarded
	globPodsBE     = "/kubepods/besteffort/pod*/*"
	globPodsBroker = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod*.slice/cri-containerd-*.scope"
)

// mixed is a day of audit mode on a node: a legacy agent in a service, two
// pods, a proxy relaying requests, a client in the root cgroup.
func mixed() []*events.Event {
	broker := pod("kube-system", "iam-broker-7d9f8", "broker", uid)
	return []*events.Event{
		ev("2025-06-01T10:00:01Z", bpf.ReasonIMDSv1NoToken, cgBackup, "backup-agent", count(3), exe("/opt/backup/bin/backup-agent"),
			path("/latest/meta-data/iam/security-credentials/node-role")),
		ev("2025-06-01T12:30:00Z", bpf.ReasonIMDSv1NoToken, cgBackup, "backup-agent", exe("/opt/backup/bin/backup-agent"),
			path("/latest/meta-data/instance-id")),
		ev("2025-06-01T11:00:00Z", bpf.ReasonIMDSv1NoToken, cgWeb, "python3", pod("default", "web-5c7b9", "web", uid2), exe("/usr/bin/python3")),
		ev("2025-06-01T11:00:00Z", bpf.ReasonNonHostNetns, cgBroker, "aws", connect, count(2), broker),
		ev("2025-06-01T11:10:00Z", bpf.ReasonIMDSv1NoToken, cgBroker, "aws", broker, func(e *events.Event) { e.HostNetns = false }),
		ev("2025-06-01T11:05:00Z", bpf.ReasonForwardedRequest, cgNginx, "nginx", count(4)),
		ev("2025-06-01T11:06:00Z", bpf.ReasonIMDSv1NoToken, "/", "curl"),
		ev("2025-06-01T11:07:00Z", bpf.ReasonNone, "/user.slice/user-1000.slice/session-3.scope", "curl", action(bpf.ActionAllow)),
	}
}

func TestSuggestFreshPolicy(t *testing.T) {
	log := `{"level":"info","time":"2025-06-01T09:59:00Z","msg":"attached","mode":"audit"}` + "\n" +
		`{"time":"2025-06-01T10:00:00Z","kind":"policy","result":"loaded","trigger":"start","source":"p.yaml","policy_hash":"ab","rules":0}` + "\n\n"
	res := run(t, Config{}, log+jsonLines(mixed()...))
	pol := wantRules(t, res.YAML, []rule{
		{name: "kube-system-iam-broker", cgroup: globPodsBroker, namespace: "kube-system", pod: "iam-broker-?????", ctr: "broker", v1: true, netns: true},
		{name: "default-web", cgroup: globPodsBE, namespace: "default", pod: "web-?????", ctr: "web", v1: true},
		{name: "backup", cgroup: cgBackup, v1: true},
	})
	if pol.Mode != "enforce" {
		t.Errorf("mode %q, want enforce", pol.Mode)
	}
	wantContains(t, res.YAML,
		"kind: Policy mode: enforce rules:",
		// count (the sum of the events' counts), first and last time
		"suggested for unit backup.service: 4 audit events, 2025-06-01T10:00:01Z to 2025-06-01T12:30:00Z",
		"refused in enforce mode: imdsv1_no_token 4 (allowV1)",
		"processes (events): backup-agent (/opt/backup/bin/backup-agent) 4",
		"paths (events): /latest/meta-data/iam/security-credentials/node-role 3, /latest/meta-data/instance-id 1",
		"suggested for pod kube-system/iam-broker-7d9f8: 3 audit events, 2025-06-01T11:00:00Z to 2025-06-01T11:10:00Z",
		"refused in enforce mode: imdsv1_no_token 1 (allowV1), non_host_netns 2 (allowNonHostNetns)",
		"containers: broker",
		"the rule matches the pod by its names, not its uid: namespace kube-system and container broker exactly, and pod iam-broker-?????: the names of the pods of the DaemonSet or Job iam-broker, iam-broker-<5 characters>, so the rule holds when they are re-created",
		// what was left out, by reason, with counts
		"forwarded_request (4 events): requests relayed by a proxy",
		`- 4 from "/system.slice/nginx.service", processes nginx 4, 4 audit events at 2025-06-01T11:05:00Z`,
		"imdsv1_no_token (1 event) - 1 from \"/\", processes curl 1, 1 audit event at 2025-06-01T11:06:00Z: the root cgroup",
		"Read 11 lines: 8 event lines (13 audit, 1 allow, 0 deny, by their counts); skipped 1 log line and 1 policy or nftables event.",
		"3 rules for 8 audit events; 5 audit events left out (listed at the end).",
	)
	if res.Rules != 3 || res.LeftOut != 5 || res.Stats.Audit != 13 {
		t.Errorf("result: %d rules, %d left out, %d audit; want 3, 5, 13", res.Rules, res.LeftOut, res.Stats.Audit)
	}
}

// The whole output for one workload: the shape of the file is the contract.
func TestSuggestExactOutput(t *testing.T) {
	res := run(t, Config{}, jsonLines(
		ev("2025-06-01T10:00:00Z", bpf.ReasonIMDSv1NoToken, cgBackup, "backup-agent", count(2)),
		ev("2025-06-01T10:00:00Z", bpf.ReasonParseError, cgBackup, "backup-agent"),
	))
	want := `# Suggested by imdsguard suggest from events.json.
# Read 2 lines: 2 event lines (3 audit, 0 allow, 0 deny, by their counts).
# 1 rule for 2 audit events; 1 audit event left out (listed at the end).
# Each rule lets its whole workload (every process in the cgroups its glob matches) do what audit
#   mode saw some of its processes do. Review them before enforcing.

apiVersion: imdsguard.io/v1
kind: Policy
mode: enforce
rules:
  # suggested for unit backup.service: 2 audit events at 2025-06-01T10:00:00Z
  #   refused in enforce mode: imdsv1_no_token 2 (allowV1)
  #   processes (events): backup-agent 2
  #   paths (events): /latest/meta-data/ 2
  #   the glob names the systemd unit: it holds across restarts of the service and reboots
  - name: backup
    match: {cgroup: "/system.slice/backup.service"}
    allowV1: true

# Left out: audit events that enforce mode will refuse and that no rule here allows.
#
# parse_error (1 event): requests the kernel's parser could not read within its bounds: refused
#   whatever the rules say; the client needs fixing
#   - 1 from "/system.slice/backup.service", processes backup-agent 1, 1 audit event at
#       2025-06-01T10:00:00Z
`
	if got := string(res.YAML); got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
}

func TestSuggestIsDeterministic(t *testing.T) {
	evs := mixed()
	first := run(t, Config{}, jsonLines(evs...)).YAML
	r := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		r.Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
		if got := run(t, Config{}, jsonLines(evs...)).YAML; string(got) != string(first) {
			t.Fatalf("the order of the events changed the output:\n%s\nfirst:\n%s", got, first)
		}
	}
}

func TestSuggestLeavesOutWhatNoRuleGrants(t *testing.T) {
	for _, tc := range []struct {
		reason bpf.Reason
		why    string
	}{
		{bpf.ReasonForwardedRequest, "relayed by a proxy"},
		{bpf.ReasonTokenTTLOverCap, "maxTokenTTL"},
		{bpf.ReasonParseError, "could not read"},
		{bpf.ReasonConnectionLimit, "maxConnectionsPerCgroup"},
		{bpf.ReasonCredentialLimit, "credentialReadsPerMinute"},
		{bpf.ReasonPolicyRule, "never overrides a deny"},
		{bpf.ReasonRawPacket, "bypass the socket hooks"},
		{bpf.ReasonUnjudgedWrite, "went past the request judge"},
		{bpf.ReasonAdoptedConn, "before imdsguard started"},
	} {
		t.Run(tc.reason.String(), func(t *testing.T) {
			res := run(t, Config{}, jsonLines(ev("2025-06-01T10:00:00Z", tc.reason, cgBackup, "agent", count(7))))
			wantRules(t, res.YAML, nil)
			wantContains(t, res.YAML, tc.reason.String()+" (7 events): ", tc.why, `- 7 from "/system.slice/backup.service"`)
			if res.LeftOut != 7 {
				t.Errorf("left out %d, want 7", res.LeftOut)
			}
		})
	}
}

func TestSuggestLeavesOutPackets(t *testing.T) {
	pkt := &events.PacketEvent{Time: at("2025-06-01T10:00:00Z"), Action: bpf.ActionAudit,
		Endpoint: imdsEndpoint(), Src: netip.MustParseAddrPort("10.244.1.7:40000"), InInterface: "veth1"}
	res := run(t, Config{}, string(events.EncodeJSON(pkt.Time, pkt))+"\n")
	wantRules(t, res.YAML, nil)
	wantContains(t, res.YAML, "routed_from_other_netns (1 event): packets routed", "- 1 from packets from 10.244.1.7:40000")
}

func TestSuggestSince(t *testing.T) {
	input := jsonLines(
		ev("2025-06-01T10:00:00Z", bpf.ReasonIMDSv1NoToken, "/system.slice/old.service", "old"),   // 14h before testNow
		ev("2025-06-01T12:00:00Z", bpf.ReasonIMDSv1NoToken, "/system.slice/edge.service", "edge"), // exactly 12h
		ev("2025-06-01T23:00:00Z", bpf.ReasonIMDSv1NoToken, "/system.slice/new.service", "new"),
	)
	res := run(t, Config{Since: 12 * time.Hour}, input)
	wantRules(t, res.YAML, []rule{
		{name: "edge", cgroup: "/system.slice/edge.service", v1: true},
		{name: "new", cgroup: "/system.slice/new.service", v1: true},
	})
	wantContains(t, res.YAML, "skipped 1 event line before 2025-06-01T12:00:00Z (--since 12h).")
	if res.Stats.Old != 1 {
		t.Errorf("%d events older than --since, want 1", res.Stats.Old)
	}
	all := run(t, Config{}, input)
	if n := len(rulesOf(t, all.YAML).Rules); n != 3 {
		t.Errorf("without --since: %d rules, want 3", n)
	}
}

func TestSuggestReadsOCSF(t *testing.T) {
	evs := mixed()
	fromJSON := run(t, Config{}, jsonLines(evs...))
	fromOCSF := run(t, Config{}, ocsfLines(t, evs...))
	if string(fromOCSF.YAML) != string(fromJSON.YAML) {
		t.Errorf("OCSF input gave another policy than JSON input:\n%s\nJSON:\n%s", fromOCSF.YAML, fromJSON.YAML)
	}
}

func TestSuggestInputErrors(t *testing.T) {
	good := strings.TrimSuffix(jsonLines(ev("2025-06-01T10:00:00Z", bpf.ReasonIMDSv1NoToken, cgBackup, "a")), "\n")
	for _, tc := range []struct{ line, want string }{
		{"Jun 01 10:00:00 node imdsguard[42]: {\"kind\":\"request\"}", `events.json:2: not a JSON object ("Jun 01`},
		{"[1,2]", "events.json:2: not a JSON object"},
		{"null", "events.json:2: not a JSON object"},
		{`{"foo":1}`, `events.json:2: a JSON object with neither "kind"`},
		{`{"kind":"weird"}`, `events.json:2: unknown event kind "weird"`},
		{strings.Replace(good, `"time":"2025-06-01T10:00:00Z"`, `"time":"yesterday"`, 1), `events.json:2: event time "yesterday"`},
		{strings.Replace(good, `"action":"audit"`, `"action":"maybe"`, 1), `events.json:2: event action "maybe"`},
		{strings.Replace(good, `"cgroup":`, `"cgroupx":`, 1), `events.json:2: event has no "cgroup" field`},
		{strings.Replace(good, `"uid":0`, `"uid":"x"`, 1), "events.json:2: not an imdsguard event"},
		{`{"class_uid":4001,"metadata":{"log_name":"other"}}`, `events.json:2: an OCSF event from "other"`},
	} {
		_, err := Suggest(Config{}, []Source{{Name: "events.json", R: strings.NewReader(good + "\n" + tc.line + "\n")}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("line %s: error %v, want one containing %q", tc.line, err, tc.want)
		}
	}
}

func TestSuggestSkipsWhatIsNotAnEvent(t *testing.T) {
	input := "\n   \n" +
		`{"level":"warn","time":"2025-06-01T10:00:00Z","msg":"degraded"}` + "\n" +
		"imdsguard: attaching: operation not permitted\n" +
		`{"time":"2025-06-01T10:00:00Z","kind":"nftables","result":"restored","table":"imdsguard"}` + "\r\n" +
		`{"time":"2025-06-01T10:00:00Z","kind":"policy","result":"invalid","trigger":"SIGHUP","source":"p","policy_hash":"","rules":0,"error":"x"}` + "\n"
	res := run(t, Config{}, input)
	st := res.Stats
	if st.Lines != 6 || st.Logs != 2 || st.Other != 2 || st.Events != 0 {
		t.Errorf("stats %+v, want 6 lines, 2 log lines, 2 other, 0 events", st)
	}
	wantRules(t, res.YAML, nil)
}
