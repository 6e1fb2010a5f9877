package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// handOver connects to IMDS, forks, and the child moves itself into the
// cgroup given and sends the request on the inherited socket: the writer
// differs from the connector in process and cgroup. Prints the owner's pid,
// then the writer's pid with the status line's code or the send's errno.
const handOver = `
import json, os, socket, sys
addr, port, procs, req = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection((addr, port), timeout=5)
print(json.dumps({"owner": os.getpid()}), flush=True)
pid = os.fork()
if pid == 0:
    with open(procs, "w") as f:
        f.write("0")
    out = {"writer": os.getpid()}
    try:
        s.sendall(req.encode())
        data = s.recv(4096)
        out["status"] = data.split(b" ", 2)[1].decode() if data else ""
    except OSError as e:
        out["errno"] = e.errno
    print(json.dumps(out), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
`

type handOverResult struct {
	Owner  int    `json:"owner"`
	Writer int    `json:"writer"`
	Status string `json:"status"`
	Errno  int    `json:"errno"`
}

func runHandOver(t *testing.T, l *lab.Lab, from, to string) handOverResult {
	t.Helper()
	req := "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
	out, stderr, code, _ := runInLabCgroup(t, l, lab.Node, from, "python3", "-c", handOver,
		lab.IMDSv4, "80", filepath.Join(to, "cgroup.procs"), req)
	if code != 0 {
		t.Fatalf("python3: exit %d: %s", code, stderr)
	}
	var r handOverResult
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("python3 printed %q: %v", out, err)
		}
	}
	if r.Owner == 0 || r.Writer == 0 || r.Owner == r.Writer {
		t.Fatalf("python3 printed %q: want an owner and another writer", out)
	}
	return r
}

// A socket's requests are judged, and reported, by the task that connected
// it, on every kernel: a socket inherited over fork (or passed over a unix
// socket) by a process in another cgroup keeps its connector's rule. Giving
// a socket away takes the connector's cooperation, and what it gives is
// what it could have fetched itself, so no process gains a right this way.
func TestSocketIsJudgedByTheTaskThatConnected(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	legacy, _ := l.NewSubCgroup(t, "legacy")
	other, _ := l.NewSubCgroup(t, "other")
	pol := writePolicy(t, t.TempDir(), "policy.yaml", fmt.Sprintf(`
rules:
  - name: legacy-agent
    match: {cgroup: "%s/legacy"}
    allowV1: true
`, l.CgroupRel))
	d := startDaemon(t, l, "--policy", pol)

	// connected under allowV1, written from a cgroup without it: allowed
	r := runHandOver(t, l, legacy, other)
	if r.Status != "200" || r.Errno != 0 {
		t.Errorf("socket connected in legacy, written from other: %+v, want 200", r)
	}
	ev := d.WaitEvent("the allowed request", func(e event) bool { return e.Kind == "request" && e.PID == r.Owner })
	if ev.Action != "allow" || ev.Rule != "legacy-agent" || ev.Cgroup != l.CgroupRel+"/legacy" || ev.Comm != "python3" {
		t.Errorf("event %+v, want allow by legacy-agent, reported as the connecting python3 in legacy", ev)
	}

	// connected without allowV1, written from legacy: refused
	before := len(srv.Requests())
	r = runHandOver(t, l, other, legacy)
	if r.Errno != 13 {
		t.Errorf("socket connected in other, written from legacy: %+v, want EACCES (13)", r)
	}
	ev = d.WaitEvent("the refused request", func(e event) bool { return e.Kind == "request" && e.PID == r.Owner })
	if ev.Action != "deny" || ev.Reason != "imdsv1_no_token" || ev.Cgroup != l.CgroupRel+"/other" || ev.Rule != "" {
		t.Errorf("event %+v, want deny imdsv1_no_token, reported as the connector in other", ev)
	}
	if n := len(srv.Requests()); n != before {
		t.Errorf("the server got %d requests from the refused socket", n-before)
	}
}
