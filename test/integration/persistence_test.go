package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// pinStatus is the part of `imdsguard status --json` the tests read.
type pinHook struct {
	Hook      string `json:"hook"`
	Attached  bool   `json:"attached"`
	ProgramID uint32 `json:"program_id"`
}

type pinStatus struct {
	Enforcing  bool     `json:"enforcing"`
	PodDevices []string `json:"pod_devices"`
	Pinned     bool     `json:"pinned"`
	Complete   bool     `json:"complete"`
	Daemon     struct {
		Running bool `json:"running"`
		PID     int  `json:"pid"`
	} `json:"daemon"`
	Meta *struct {
		Layout     string `json:"layout"`
		Mode       string `json:"mode"`
		PolicyHash string `json:"policy_hash"`
		PID        int    `json:"pid"`
	} `json:"meta"`
	Hooks    []pinHook `json:"hooks"`
	Counters *struct {
		Verdicts map[string]uint64 `json:"verdicts"`
	} `json:"counters"`
	RetiredSocketMaps int `json:"retired_socket_maps"`
	Nftables          struct {
		Present bool `json:"present"`
	} `json:"nftables"`
}

// imdsguardCmd runs an imdsguard command against the lab's pin directory.
func imdsguardCmd(t testing.TB, l *lab.Lab, args ...string) (string, string, int) {
	t.Helper()
	pinDir, err := l.PinDir()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.imdsguard, append(args, "--pin-dir", pinDir)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("imdsguard %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

func readStatus(t testing.TB, l *lab.Lab) pinStatus {
	t.Helper()
	out, stderr, code := imdsguardCmd(t, l, "status", "--json")
	var st pinStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json (exit %d): %v\n%s%s", code, err, out, stderr)
	}
	if want := map[bool]int{true: 0, false: 3}[st.Enforcing]; code != want {
		t.Errorf("status exit code %d with enforcing=%v, want %d", code, st.Enforcing, want)
	}
	return st
}

// loadResult is what imdsLoop reports.
type loadResult struct {
	V1Sent    int      `json:"v1_sent"`
	V1Refused int      `json:"v1_refused"`
	V2OK      int      `json:"v2_ok"`
	V2Failed  int      `json:"v2_failed"`
	Errors    []string `json:"errors"`
	Connected int      `json:"connected"`
	Refused   int      `json:"refused"`
}

// imdsLoop hammers IMDS for the given time from the lab: on the host, a
// token-less GET and an IMDSv2 GET on new connections, in turn; in the
// pod, connects.
const imdsLoop = `
import json, socket, sys, time
where, dur = sys.argv[1], float(sys.argv[2])
r = dict(v1_sent=0, v1_refused=0, v2_ok=0, v2_failed=0, errors=[], connected=0, refused=0)
def conn():
    return socket.create_connection(("169.254.169.254", 80), timeout=5)
def request(s, req):
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            break
        buf += d
    return buf
end = time.time() + dur
token = None
if where == "host":
    s = conn()
    resp = request(s, b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 600\r\nContent-Length: 0\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(body) < n:
        body += s.recv(4096)
    token = body.decode()
    s.close()
while time.time() < end:
    if where == "pod":
        s = socket.socket(); s.settimeout(5)
        try:
            s.connect(("169.254.169.254", 80)); r["connected"] += 1
        except PermissionError:
            r["refused"] += 1
        except Exception as e:
            r["errors"].append(repr(e))
        s.close()
        continue
    try:
        s = conn()
        try:
            s.sendall(b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\n\r\n")
            r["v1_sent"] += 1
        except PermissionError:
            r["v1_refused"] += 1
        s.close()
        s = conn()
        resp = request(s, ("GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: %s\r\n\r\n" % token).encode())
        s.close()
        if resp.startswith(b"HTTP/1.1 200"):
            r["v2_ok"] += 1
        else:
            r["v2_failed"] += 1
            r["errors"].append(resp[:60].decode(errors="replace"))
    except Exception as e:
        r["v2_failed"] += 1
        r["errors"].append(repr(e))
print(json.dumps(r))
`

// startLoad runs imdsLoop in ns for d; wait returns its report.
func startLoad(t testing.TB, l *lab.Lab, ns lab.NS, d time.Duration) (wait func() loadResult) {
	t.Helper()
	where := "host"
	if ns == lab.Pod {
		where = "pod"
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+60*time.Second)
	t.Cleanup(cancel)
	cmd := l.Command(ctx, ns, "/usr/bin/python3", "-c", imdsLoop, where, fmt.Sprint(d.Seconds()))
	var out, errb safeBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return func() loadResult {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("load in %s: %v: %s%s", ns, err, out.String(), errb.String())
		}
		var r loadResult
		if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
			t.Fatalf("load in %s: %v: %q", ns, err, out.String())
		}
		return r
	}
}

// checkNoGap asserts that throughout a load no token-less request and no
// pod connection got through, and no IMDSv2 request failed.
func checkNoGap(t testing.TB, host, pod loadResult, srv *imdsserver.Server) {
	t.Helper()
	if host.V1Sent != 0 || host.V1Refused < 20 {
		t.Errorf("token-less requests: %d sent, %d refused; want none sent (and many tried)", host.V1Sent, host.V1Refused)
	}
	if host.V2Failed != 0 || host.V2OK < 20 {
		t.Errorf("IMDSv2 requests: %d ok, %d failed %v; want all ok (and many)", host.V2OK, host.V2Failed, host.Errors)
	}
	if pod.Connected != 0 || pod.Refused < 20 || len(pod.Errors) > 0 {
		t.Errorf("pod connects: %d connected, %d refused, errors %v; want all refused (and many)", pod.Connected, pod.Refused, pod.Errors)
	}
	for _, r := range srv.Requests() {
		if r.Header.Get("X-aws-ec2-metadata-token") == "" && r.Method == "GET" {
			t.Errorf("IMDS served a token-less %s %s", r.Method, r.URI)
			break
		}
	}
}

// A daemon killed with SIGKILL leaves its enforcement pinned; a new daemon
// with another policy takes it over while clients hammer IMDS, and no
// request is judged by neither. Then status, detach and its idempotence.
func TestEnforcementOutlivesTheDaemonAndIsTakenOver(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	legacy, _ := l.NewSubCgroup(t, "legacy")
	dir := t.TempDir()
	p1 := writePolicy(t, dir, "p1.yaml", "mode: enforce\n")
	p2 := writePolicy(t, dir, "p2.yaml", fmt.Sprintf(`mode: enforce
rules:
  - name: legacy-agent
    match: {cgroup: "%s/legacy", comm: "legacyapp"}
    allowV1: true
`, l.CgroupRel))
	legacyGet := []string{"-mode", "http", "-addr", imdsAddr, "-path", "/latest/meta-data/instance-id", "-comm", "legacyapp"}

	a := startDaemon(t, l, "--policy", p1, "--on-exit", "keep")
	if r := runClient(t, l, lab.Node, legacy, legacyGet...); r.Status == 200 {
		t.Fatalf("under p1 the legacy app got 200 without a token: %+v", r)
	}
	hostLoad := startLoad(t, l, lab.Node, 8*time.Second)
	podLoad := startLoad(t, l, lab.Pod, 8*time.Second)

	time.Sleep(time.Second)
	if err := a.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the killed daemon to exit", a.Exited)
	// Nobody runs: the kernel enforces what is pinned.
	st := readStatus(t, l)
	if !st.Enforcing || st.Daemon.Running {
		t.Fatalf("status after SIGKILL: enforcing=%v running=%v, want pinned enforcement and no daemon", st.Enforcing, st.Daemon.Running)
	}
	if r := runClient(t, l, lab.Pod, "", "-mode", "connect", "-addr", imdsAddr); r.ConnectErrno != "EPERM" {
		t.Errorf("pod connect with no daemon: errno %q, want EPERM", r.ConnectErrno)
	}
	time.Sleep(time.Second)

	b := startDaemon(t, l, "--policy", p2, "--on-exit", "keep")
	if start := b.WaitLog(`"msg":"enforcing"`, time.Second); !strings.Contains(start, `"takeover":"adopted"`) {
		t.Errorf("second daemon did not adopt the pins: %s", start)
	}
	host, pod := hostLoad(), podLoad()
	checkNoGap(t, host, pod, srv)

	// The new policy is the one in force.
	if r := runClient(t, l, lab.Node, legacy, legacyGet...); r.Status != 200 {
		t.Errorf("under p2 the legacy app got %+v, want 200 without a token", r)
	}
	st = readStatus(t, l)
	if !st.Enforcing || !st.Daemon.Running || st.Daemon.PID != b.PID() {
		t.Errorf("status: enforcing=%v running=%v pid=%d, want the second daemon (pid %d)", st.Enforcing, st.Daemon.Running, st.Daemon.PID, b.PID())
	}
	if st.Meta == nil || !strings.Contains(b.Stderr(), `"policy_hash":"`+st.Meta.PolicyHash+`"`) || st.Meta.Mode != "enforce" {
		t.Errorf("status meta %+v does not name the second daemon's policy", st.Meta)
	}
	// The counters live in the pinned maps: they span both daemons and
	// the time between them, and count every refusal exactly once.
	// (+1: the legacy app's request under p1)
	if got := st.Counters.Verdicts["request_deny_imdsv1_no_token"]; got != uint64(host.V1Refused)+1 {
		t.Errorf("kernel counted %d token-less refusals, the clients saw %d", got, host.V1Refused+1)
	}
	if !st.Nftables.Present {
		t.Error("status: nftables table absent")
	}
	for _, h := range st.Hooks {
		if !h.Attached || h.ProgramID == 0 {
			t.Errorf("status: hook %+v not attached", h)
		}
	}
	human, _, code := imdsguardCmd(t, l, "status")
	for _, re := range []string{`enforcement:\s+pinned in `, fmt.Sprintf(`daemon:\s+running \(pid %d\)`, b.PID()), `mode:\s+enforce`,
		`hooks:\s+sk_msg \(prog \d+\), egress \(prog \d+\), setsockopt \(prog \d+\), sockops \(prog \d+\), connect4 \(prog \d+\), connect6 \(prog \d+\)`,
		`nftables:\s+table inet imdsguard present`, `request_deny_imdsv1_no_token\s+\d+`} {
		if !regexp.MustCompile(re).MatchString(human) {
			t.Errorf("status output lacks %q:\n%s", re, human)
		}
	}
	if code != 0 {
		t.Errorf("status exit %d while enforcing", code)
	}

	// detach refuses while a daemon runs: it would go on enforcing.
	if _, stderr, code := imdsguardCmd(t, l, "detach"); code != 1 || !strings.Contains(stderr, fmt.Sprintf("(pid %d) is running", b.PID())) {
		t.Errorf("detach beside a running daemon: exit %d, %q; want 1 naming the daemon", code, stderr)
	}
	if code := b.Stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	b.WaitLog("enforcement stays pinned", time.Second)
	if r := runClient(t, l, lab.Pod, "", "-mode", "connect", "-addr", imdsAddr); r.ConnectErrno != "EPERM" {
		t.Errorf("pod connect after SIGTERM with --on-exit keep: errno %q, want EPERM", r.ConnectErrno)
	}

	out, stderr, code := imdsguardCmd(t, l, "detach")
	if code != 0 {
		t.Fatalf("detach: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"removed link connect4", "removed link connect6", "removed link sockops", "removed link egress", "removed sk_msg", "removed nftables table inet imdsguard"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("detach output lacks %q:\n%s", want, out)
		}
	}
	if n := attachedPrograms(t, l.Cgroup); n != 0 {
		t.Errorf("%d programs attached after detach", n)
	}
	if r := runClient(t, l, lab.Pod, "", "-mode", "http", "-addr", imdsAddr, "-path", "/latest/meta-data/instance-id"); r.Status != 200 {
		t.Errorf("pod after detach: %+v, want 200", r)
	}
	out, _, code = imdsguardCmd(t, l, "detach")
	if code != 0 || !strings.Contains(out, "nothing to remove") {
		t.Errorf("second detach: exit %d, %q; want 0 and nothing to remove", code, out)
	}
	if st := readStatus(t, l); st.Pinned || st.Enforcing || st.Nftables.Present {
		t.Errorf("status after detach: %+v, want nothing", st)
	}
}

// Pins of another layout (here: another ring buffer size, as an upgrade
// that changes a map would leave) are replaced, new first, while clients
// hammer IMDS; a keep-alive connection opened before stays judged by the
// old programs until it closes, then their socket map goes.
func TestPinsOfAnotherLayoutAreReplaced(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	a := startDaemon(t, l, "--ringbuf-bytes", "65536", "--on-exit", "keep")
	oldLayout := readStatus(t, l).Meta.Layout

	enc := func(s string) string { return strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(s) }
	keepAliveWait, keepAliveGo := startWaitingClient(t, l, lab.Node, "-mode", "raw", "-addr", imdsAddr,
		"-write", enc(get("/latest/meta-data/instance-id", "tok")), "-write", enc(get(credPath, "")))

	hostLoad := startLoad(t, l, lab.Node, 6*time.Second)
	podLoad := startLoad(t, l, lab.Pod, 6*time.Second)
	time.Sleep(time.Second)
	if code := a.Stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	b := startDaemon(t, l, "--on-exit", "keep")
	if start := b.WaitLog(`"msg":"enforcing"`, time.Second); !strings.Contains(start, `"takeover":"replaced"`) {
		t.Errorf("second daemon did not replace the pins: %s", start)
	}
	host, pod := hostLoad(), podLoad()
	checkNoGap(t, host, pod, srv)

	st := readStatus(t, l)
	if !st.Enforcing || st.Meta.Layout == oldLayout || st.RetiredSocketMaps != 1 {
		t.Errorf("status after replacement: enforcing=%v layout %s (old %s) retired=%d; want the new layout and the old socket map retired",
			st.Enforcing, st.Meta.Layout, oldLayout, st.RetiredSocketMaps)
	}
	// Only the new programs are on the hooks: old ones were removed.
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupSockOps, ebpf.AttachCGroupInetEgress} {
		if n := programsOn(t, l.Cgroup, at); n != 1 {
			t.Errorf("%d programs on %s after the replacement, want 1", n, at)
		}
	}

	// The connection opened under the old layout is still judged.
	keepAliveGo()
	r := keepAliveWait()
	if len(r.Writes) != 2 || r.Writes[0].Errno != "" || r.Writes[1].Errno != "EACCES" {
		t.Errorf("old keep-alive connection writes %+v, want the IMDSv2 request sent and the token-less one refused", r.Writes)
	}
	waitFor(t, 10*time.Second, "the retired socket map to drain", func() bool { return readStatus(t, l).RetiredSocketMaps == 0 })
	b.WaitLog("the last connection judged by the previous programs has closed", time.Second)
	b.Stop()
	if out, _, code := imdsguardCmd(t, l, "detach"); code != 0 || !strings.Contains(out, "removed link connect4") {
		t.Errorf("detach: exit %d: %s", code, out)
	}
}

func programsOn(t testing.TB, cgroup string, at ebpf.AttachType) int {
	t.Helper()
	n, err := lab.ProgramsOn(cgroup, at)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
