package main

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
	"github.com/imdsguard/imdsguard/internal/policy"
)

func suggestNow() time.Time { return time.Date(2025, 6, 2, 0, 0, 0, 0, time.UTC) }

const (
	podUID   = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"
	podCgrp  = "/kubepods/burstable/pod" + podUID + "/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	podGlob  = "/kubepods/burstable/pod*/*" // the pod is matched by its names: uid and container id wildcarded
	unitCgrp = "/system.slice/backup.service"
)

// auditLines renders audit events with the daemon's encoder.
func auditLines(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, e := range []*events.Event{
		{Time: time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC), Reason: bpf.ReasonIMDSv1NoToken, Cgroup: unitCgrp, Comm: "backup-agent", Count: 3, Kind: bpf.KindRequest, Method: "GET", Path: "/latest/meta-data/iam/security-credentials/node"},
		{Time: time.Date(2025, 6, 1, 11, 0, 0, 0, time.UTC), Reason: bpf.ReasonNonHostNetns, Cgroup: podCgrp, Comm: "aws", Count: 1, Kind: bpf.KindConnect, Pod: "broker-1", Namespace: "infra", Container: "broker", PodUID: podUID},
		// older than --since 48h: left out of the policy
		{Time: time.Date(2025, 5, 1, 11, 0, 0, 0, time.UTC), Reason: bpf.ReasonIMDSv1NoToken, Cgroup: "/system.slice/old.service", Comm: "old", Count: 1, Kind: bpf.KindRequest},
		{Time: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC), Reason: bpf.ReasonTokenTTLOverCap, Cgroup: unitCgrp, Comm: "backup-agent", Count: 2, Kind: bpf.KindRequest, Method: "PUT", Path: "/latest/api/token"},
	} {
		e.Action, e.Endpoint = bpf.ActionAudit, netip.MustParseAddrPort("169.254.169.254:80")
		b.Write(events.EncodeJSON(e.Time, e))
		b.WriteByte('\n')
	}
	return b.String()
}

func write(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSuggestCommand(t *testing.T) {
	dir := t.TempDir()
	evFile := write(t, dir, "events.json", auditLines(t))
	base := write(t, dir, "policy.yaml", "mode: audit\nrules:\n  - name: no-ci\n    match: {uid: 1001}\n    deny: true\n")
	var out, errb bytes.Buffer
	// flags after the file: suggest takes them in any order
	if err := runSuggest([]string{evFile, "--since", "48h", "--policy", base}, nil, &out, &errb, suggestNow); err != nil {
		t.Fatalf("suggest: %v (stderr %s)", err, errb.String())
	}
	pol, err := policy.Parse(out.Bytes(), "out.yaml")
	if err != nil {
		t.Fatalf("the output is not a policy: %v\n%s", err, out.String())
	}
	var got []string
	for _, r := range pol.Rules {
		m := r.Match
		got = append(got, strings.TrimSpace(strings.Join([]string{r.Name, m.Cgroup, m.Namespace, m.Pod, m.Container}, " ")))
	}
	want := []string{"no-ci", "infra-broker-1 " + podGlob + " infra broker-1 broker", "backup " + unitCgrp}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rules:\n%s\nwant:\n%s\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"), out.String())
	}
	if !pol.Rules[1].AllowNonHostNetns || pol.Rules[1].AllowV1 || !pol.Rules[2].AllowV1 || pol.Rules[2].AllowNonHostNetns {
		t.Errorf("grants: %+v", pol.Rules)
	}
	// comments read as running text: how they wrap does not matter
	words := strings.Join(strings.Fields(strings.ReplaceAll(out.String(), "#", "")), " ")
	for _, s := range []string{
		"suggested for unit backup.service: 3 audit events at 2025-06-01T10:00:00Z",
		"token_ttl_over_cap (2 events): token PUTs asking for a longer life than maxTokenTTL",
		"skipped 1 event line before 2025-05-31T00:00:00Z (--since 48h).",
		"mode: audit rules:",
	} {
		if !strings.Contains(words, s) {
			t.Errorf("output lacks %q:\n%s", s, out.String())
		}
	}
	if want := "imdsguard suggest: 2 rule(s) for 4 of 6 audit event(s); 2 left out (listed at the end of the policy)\n"; errb.String() != want {
		t.Errorf("stderr %q, want %q", errb.String(), want)
	}

	// what suggest writes, imdsguard check accepts, on AWS and on a node
	// whose cloud it cannot name
	suggested := write(t, dir, "suggested.yaml", out.String())
	for cloudName, vendor := range map[string]string{"aws": "Amazon EC2\n", "generic": ""} {
		dmi := filepath.Join(dir, "dmi-"+cloudName)
		if err := os.Mkdir(dmi, 0o700); err != nil {
			t.Fatal(err)
		}
		write(t, dmi, "sys_vendor", vendor)
		var cout, cerr bytes.Buffer
		if err := checkCommand([]string{"--policy", suggested, "--dmi-dir", dmi}, &cout, &cerr); err != nil {
			t.Errorf("check on %s refuses the suggested policy: %v", cloudName, err)
		}
	}
}

func TestSuggestCommandReadsStdin(t *testing.T) {
	for _, args := range [][]string{nil, {"-"}, {"--since", "7d", "--", "-"}} {
		var out, errb bytes.Buffer
		if err := runSuggest(args, strings.NewReader(auditLines(t)), &out, &errb, suggestNow); err != nil {
			t.Fatalf("suggest %q: %v", args, err)
		}
		if !strings.Contains(out.String(), "name: backup\n") || !strings.Contains(out.String(), "from <stdin>") {
			t.Errorf("suggest %q: no rule for backup.service from stdin:\n%s", args, out.String())
		}
	}
}

func TestSuggestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	bad := write(t, dir, "bad.json", auditLines(t)+"this is not an event\n")
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"suggest", bad}, 1, "imdsguard: " + bad + ":5: not a JSON object (\"this is not an event\")"},
		{[]string{"suggest", filepath.Join(dir, "missing.json")}, 1, "imdsguard: opening events: open " + filepath.Join(dir, "missing.json")},
		{[]string{"suggest", "--since", "0", bad}, 2, `imdsguard: suggest: --since: "0": want a positive duration`},
		{[]string{"suggest", "--since", "soon", bad}, 2, `imdsguard: suggest: --since: "soon" is not a duration like 24h, 90m or 7d`},
		{[]string{"suggest", "--bogus"}, 2, "imdsguard: suggest: flag provided but not defined: -bogus"},
		{[]string{"suggest", "--policy", write(t, dir, "p.yaml", "mdoe: x\n"), bad}, 1, `imdsguard: reading the current policy: ` + filepath.Join(dir, "p.yaml") + `:1: mdoe: unknown key "mdoe"`},
	} {
		var out, errb bytes.Buffer
		code := realMain(tc.args, &out, &errb)
		if code != tc.code || !strings.HasPrefix(errb.String(), tc.msg) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, errb.String(), tc.code, tc.msg)
		}
		if out.Len() != 0 {
			t.Errorf("%q: wrote a policy although it failed:\n%s", tc.args, out.String())
		}
	}
}

func TestParseSince(t *testing.T) {
	for in, want := range map[string]time.Duration{"24h": 24 * time.Hour, "90m": 90 * time.Minute, "7d": 7 * 24 * time.Hour} {
		if got, err := parseSince(in); err != nil || got != want {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "-1h", "0d", "1w"} {
		if _, err := parseSince(in); err == nil {
			t.Errorf("parseSince(%q) accepted", in)
		}
	}
}
