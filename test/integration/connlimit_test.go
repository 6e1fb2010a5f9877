package integration

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// holdConnections opens n connections to IMDS on port 80 and holds them,
// then m more; it prints how each of those ended ("ok" or the errno name),
// then closes everything and, after refused attempts on port 81 (nothing
// listens: each is reset), opens one more on port 80.
const holdConnections = `
import errno, json, socket, sys
addr, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def conn(port):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((addr, port))
        return s, "ok"
    except OSError as e:
        s.close()
        return None, errno.errorcode.get(e.errno, str(e.errno))
held, out = [], {"first": [], "more": [], "refused81": [], "after": ""}
for _ in range(n):
    s, r = conn(80); out["first"].append(r); held.append(s)
for _ in range(m):
    s, r = conn(80); out["more"].append(r); held.append(s)
for s in held:
    if s: s.close()
for _ in range(2 * n):
    s, r = conn(81); out["refused81"].append(r)
s, out["after"] = conn(80)
print(json.dumps(out))
`

// One workload cannot take every IMDS connection: past its cgroup's share
// connect() fails at once with EPERM and an event, other cgroups connect as
// before, and connections that end (closed, or reset before they were
// established) give their share back.
func TestConnectionsPerCgroupAreBounded(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	greedy, _ := l.NewSubCgroup(t, "greedy")
	other, _ := l.NewSubCgroup(t, "other")
	pol := writePolicy(t, t.TempDir(), "policy.yaml", `
maxConnectionsPerCgroup: 5
endpoints: ["169.254.169.254:80", "169.254.169.254:81"]
`)
	d := startDaemon(t, l, "--policy", pol)

	out, stderr, code, _ := runInLabCgroup(t, l, lab.Node, greedy, "python3", "-c", holdConnections, lab.IMDSv4, "5", "3")
	if code != 0 {
		t.Fatalf("python3: exit %d: %s", code, stderr)
	}
	var r struct {
		First, More, Refused81 []string
		After                  string
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("python3 printed %q: %v", out, err)
	}
	if strings.Join(r.First, " ") != "ok ok ok ok ok" {
		t.Errorf("the first 5 connections: %v, want all ok", r.First)
	}
	if strings.Join(r.More, " ") != "EPERM EPERM EPERM" {
		t.Errorf("connections past the share: %v, want EPERM", r.More)
	}
	for _, o := range r.Refused81 {
		if o != "ECONNREFUSED" {
			t.Errorf("connections to a port nothing listens on: %v, want ECONNREFUSED", r.Refused81)
			break
		}
	}
	if r.After != "ok" {
		t.Errorf("a connection after the others closed and were reset: %q, want ok (their share given back)", r.After)
	}
	ev := d.WaitEvent("the refusal", func(e event) bool { return e.Reason == "connection_limit" })
	if ev.Kind != "connect" || ev.Action != "deny" || ev.Cgroup != l.CgroupRel+"/greedy" {
		t.Errorf("event %+v, want connect deny connection_limit in greedy", ev)
	}

	// another cgroup is not affected while greedy holds its share
	wait, release := startWaitingClientIn(t, l, lab.Node, greedy, "-mode", "connect", "-addr", imdsAddr)
	if r := runClient(t, l, lab.Node, other, "-mode", "connect", "-addr", imdsAddr); r.ConnectErrno != "" {
		t.Errorf("a connection from another cgroup: %+v, want ok", r)
	}
	release()
	wait()
}

// The per-user share holds across cgroups: a non-root uid cannot escape it
// by spreading its connections over cgroups of its own.
func TestConnectionsPerUserAreBounded(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	pol := writePolicy(t, t.TempDir(), "policy.yaml", `
maxConnectionsPerUser: 3
endpoints: ["169.254.169.254:80", "169.254.169.254:81"]
`)
	d := startDaemon(t, l, "--policy", pol)
	out, stderr, code, _ := runInLab(t, l, lab.Node, nil, "setpriv", "--reuid=4321", "--regid=4321", "--clear-groups",
		"/usr/bin/python3", "-c", holdConnections, lab.IMDSv4, "3", "2")
	if code != 0 {
		t.Fatalf("python3 as uid 4321: exit %d: %s", code, stderr)
	}
	var r struct {
		First, More []string
		After       string
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("python3 printed %q: %v", out, err)
	}
	if strings.Join(r.First, " ") != "ok ok ok" || strings.Join(r.More, " ") != "EPERM EPERM" || r.After != "ok" {
		t.Errorf("uid 4321 with a share of 3: %+v, want 3 ok, then EPERM, then ok once they closed", r)
	}
	ev := d.WaitEvent("the refusal", func(e event) bool { return e.Reason == "connection_limit" })
	if ev.UID != 4321 {
		t.Errorf("event %+v, want uid 4321", ev)
	}
}
