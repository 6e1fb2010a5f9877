package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
	"github.com/imdsguard/imdsguard/test/testbin"
)

const credPath = "/latest/meta-data/iam/security-credentials/" + imdsserver.DefaultRole

var imdsAddr = net.JoinHostPort(lab.IMDSv4, "80")

// runInLab runs a program in ns inside the lab cgroup and returns its
// stdout, stderr, exit code and run time.
func runInLab(t testing.TB, l *lab.Lab, ns lab.NS, env []string, name string, args ...string) (string, string, int, time.Duration) {
	t.Helper()
	return runInLabEnv(t, l, ns, l.Cgroup, env, name, args...)
}

// runInLabCgroup is runInLab in another cgroup of the lab.
func runInLabCgroup(t testing.TB, l *lab.Lab, ns lab.NS, dir string, name string, args ...string) (string, string, int, time.Duration) {
	t.Helper()
	return runInLabEnv(t, l, ns, dir, nil, name, args...)
}

func runInLabEnv(t testing.TB, l *lab.Lab, ns lab.NS, dir string, env []string, name string, args ...string) (string, string, int, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := l.CommandInCgroup(ctx, ns, dir, name, args...)
	if env != nil {
		cmd.Env = env
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %s: %v", name, err)
	}
	return stdout.String(), stderr.String(), code, took
}

func TestCurlWithoutTokenFailsAtOnce(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)

	_, stderr, code, took := runInLab(t, l, lab.Node, nil, "curl", "-sS", "-m", "10", "http://"+imdsAddr+credPath)
	// curl: (55) Send failure: Permission denied  (send() got EACCES)
	if code != 55 || !strings.Contains(stderr, "Permission denied") {
		t.Fatalf("curl exit %d, stderr %q; want 55 and EACCES (Permission denied)", code, stderr)
	}
	if took > 2*time.Second {
		t.Errorf("curl took %s to fail, want well under its 10 s timeout", took)
	}
	if n := srv.ReceivedBytes(); n != 0 {
		t.Fatalf("IMDS server received %d bytes of a refused request: %+v", n, srv.Conns())
	}
	ev := d.WaitEvent("request deny", func(e event) bool { return e.Kind == "request" && e.Comm == "curl" })
	if ev.Action != "deny" || ev.Reason != "imdsv1_no_token" || ev.Method != "GET" || ev.Path != credPath ||
		!ev.CredentialAccess || ev.HasToken == nil || *ev.HasToken || !ev.HostNetns || ev.Cgroup != l.CgroupRel {
		t.Fatalf("event %+v, want deny imdsv1_no_token GET %s credential_access has_token=false", ev, credPath)
	}
}

func TestCurlWithTokenGets200(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{RequireToken: true})
	d := startDaemon(t, l)

	token, _, code, _ := runInLab(t, l, lab.Node, nil, "curl", "-sS", "-m", "10", "-X", "PUT",
		"-H", "X-aws-ec2-metadata-token-ttl-seconds: 60", "http://"+imdsAddr+"/latest/api/token")
	if code != 0 || token == "" {
		t.Fatalf("token PUT: exit %d token %q", code, token)
	}
	body, stderr, code, _ := runInLab(t, l, lab.Node, nil, "curl", "-sS", "-m", "10", "-w", "\n%{http_code}",
		"-H", "X-aws-ec2-metadata-token: "+token, "http://"+imdsAddr+credPath)
	if code != 0 || !strings.HasSuffix(body, "\n200") || !strings.Contains(body, imdsserver.AccessKeyID) {
		t.Fatalf("GET with token: exit %d stderr %q body %q, want 200 with credentials", code, stderr, body)
	}
	put := d.WaitEvent("token PUT", func(e event) bool { return e.Kind == "request" && e.Method == "PUT" })
	if put.Action != "allow" || put.Path != "/latest/api/token" || put.CredentialAccess {
		t.Errorf("token PUT event %+v", put)
	}
	get := d.WaitEvent("credential GET", func(e event) bool { return e.Kind == "request" && e.Method == "GET" })
	if get.Action != "allow" || get.Reason != "" || !get.CredentialAccess || get.HasToken == nil || !*get.HasToken {
		t.Errorf("credential GET event %+v, want allow, credential_access, has_token", get)
	}
	// The token's value is never logged.
	raw := strings.Join(d.Lines(), "\n")
	if strings.Contains(raw, token) {
		t.Fatalf("events contain the session token:\n%s", raw)
	}
	if got := len(srv.Requests()); got != 2 {
		t.Errorf("server answered %d requests, want 2", got)
	}
}

func TestAWSSDKGoV2FetchesCredentials(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{RequireToken: true})
	d := startDaemon(t, l)
	bin := buildPackage(t, "github.com/imdsguard/imdsguard/test/sdkclient")

	out, stderr, code, _ := runInLab(t, l, lab.Node, nil, bin, "-endpoint", "http://"+imdsAddr)
	var r struct {
		Role        string `json:"role"`
		AccessKeyID string `json:"access_key_id"`
		Error       string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 {
		t.Fatalf("sdkclient exit %d out %q stderr %q: %v", code, out, stderr, err)
	}
	if r.Error != "" || r.Role != imdsserver.DefaultRole || r.AccessKeyID != imdsserver.AccessKeyID {
		t.Fatalf("aws-sdk-go-v2 under enforce: %+v", r)
	}
	for _, ev := range d.Events() {
		if ev.Action != "allow" {
			t.Errorf("event %+v: the SDK's requests must all pass", ev)
		}
	}
	checkAllRequestsCarriedTokens(t, srv)
}

func TestBotocoreFetchesCredentials(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		lab.RequirePrivileged(t) // keeps the CI rule: skip locally, fail in CI
		t.Skip("needs /usr/bin/python3 with python3-botocore")
	}
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{RequireToken: true})
	d := startDaemon(t, l)

	home := t.TempDir()
	script := `
import json, botocore.session
s = botocore.session.get_session()
c = s.get_credentials()
print(json.dumps({"access_key": c.access_key if c else None, "method": c.method if c else None}))
`
	env := []string{
		"HOME=" + home, "PATH=/usr/bin:/bin",
		"AWS_CONFIG_FILE=" + filepath.Join(home, "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "none"),
		"AWS_EC2_METADATA_SERVICE_ENDPOINT=http://" + imdsAddr + "/",
		"AWS_METADATA_SERVICE_TIMEOUT=5", "AWS_METADATA_SERVICE_NUM_ATTEMPTS=1",
	}
	out, stderr, code, _ := runInLab(t, l, lab.Node, env, "/usr/bin/python3", "-c", script)
	var r struct {
		AccessKey string `json:"access_key"`
		Method    string `json:"method"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 {
		t.Fatalf("botocore exit %d out %q stderr %q: %v", code, out, stderr, err)
	}
	if r.AccessKey != imdsserver.AccessKeyID || r.Method != "iam-role" {
		t.Fatalf("botocore under enforce got %+v, want the role's key via iam-role", r)
	}
	for _, ev := range d.Events() {
		if ev.Action != "allow" {
			t.Errorf("event %+v: botocore's requests must all pass", ev)
		}
	}
	checkAllRequestsCarriedTokens(t, srv)
}

func checkAllRequestsCarriedTokens(t testing.TB, srv *imdsserver.Server) {
	t.Helper()
	reqs := srv.Requests()
	if len(reqs) == 0 {
		t.Fatal("server saw no request")
	}
	for _, r := range reqs {
		if r.Method != "PUT" && r.Header.Get("X-aws-ec2-metadata-token") == "" {
			t.Errorf("server got a token-less %s %s", r.Method, r.URI)
		}
	}
}

func buildPackage(t testing.TB, pkg string) string {
	t.Helper()
	out, err := testbin.Build(pkg, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func get(path, token string) string {
	h := ""
	if token != "" {
		h = "X-aws-ec2-metadata-token: " + token + "\r\n"
	}
	return "GET " + path + " HTTP/1.1\r\nHost: 169.254.169.254\r\n" + h + "\r\n"
}

// A raw client's split writes, pipelining and keep-alive: every request is
// judged on its own, and the server receives exactly the allowed ones.
func TestRawClientIsJudgedPerRequest(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)

	a1 := get("/latest/meta-data/instance-id", "tok-1")
	a2 := get("/latest/meta-data/placement/region", "tok-2")
	denied := get(credPath, "")
	writes := []string{
		// one request split over four writes, the token header name cut in two
		"G", "ET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-meta", "data-token: tok-1\r\n", "\r\n",
		// two pipelined requests in one write, each judged
		a1 + a2,
		// keep-alive: the next request on the same connection
		a2,
		// pipelined: allowed then refused: the allowed one goes, the write is short
		a1 + denied,
		// a connection that carried a refused request refuses every later write
		a1,
	}
	args := []string{"-mode", "raw", "-addr", imdsAddr, "-pause", "30ms"}
	for _, w := range writes {
		args = append(args, "-write", strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(w))
	}
	r := runClient(t, l, lab.Node, "", args...)
	if len(r.Writes) != len(writes) {
		t.Fatalf("writes %+v", r.Writes)
	}
	for i, w := range r.Writes[:6] {
		if w.N != len(writes[i]) || w.Errno != "" {
			t.Errorf("write %d: n=%d errno=%q, want all %d bytes written", i, w.N, w.Errno, len(writes[i]))
		}
	}
	if w := r.Writes[6]; w.Errno != "" || w.N < len(a1) || w.N >= len(writes[6]) {
		t.Errorf("pipelined allowed+refused write: n=%d errno=%q, want a short write", w.N, w.Errno)
	}
	if w := r.Writes[7]; w.Errno != "EACCES" {
		t.Errorf("write after a refused request: n=%d errno=%q, want EACCES", w.N, w.Errno)
	}
	wantBytes := a1 + a1 + a2 + a2 + a1
	var got []byte
	for _, c := range srv.Conns() {
		got = append(got, c.Received...)
	}
	if string(got) != wantBytes {
		t.Fatalf("server received:\n%q\nwant exactly the allowed requests:\n%q", got, wantBytes)
	}
	// Events arrive after the client is done (the daemon polls the ring
	// buffer): wait for the last one before reading them all.
	d.WaitEvent("the refused request", func(e event) bool {
		return e.Kind == "request" && e.PID == r.PID && e.Action == "deny"
	})
	var verdicts []string
	for _, ev := range d.Events() {
		if ev.Kind == "request" && ev.PID == r.PID {
			verdicts = append(verdicts, ev.Action+" "+ev.Path)
		}
	}
	want := []string{
		"allow /latest/meta-data/instance-id",
		"allow /latest/meta-data/instance-id",
		"allow /latest/meta-data/placement/region",
		"allow /latest/meta-data/placement/region",
		"allow /latest/meta-data/instance-id",
		"deny " + credPath,
	}
	if strings.Join(verdicts, "\n") != strings.Join(want, "\n") {
		t.Fatalf("request events:\n%s\nwant:\n%s", strings.Join(verdicts, "\n"), strings.Join(want, "\n"))
	}
}

// startWaitingClient connects from ns before the guard exists and waits
// for a file before it writes.
func startWaitingClient(t testing.TB, l *lab.Lab, ns lab.NS, args ...string) (wait func() clientResult, release func()) {
	t.Helper()
	return startWaitingClientIn(t, l, ns, l.Cgroup, args...)
}

// startWaitingClientIn is startWaitingClient in another cgroup of the lab.
func startWaitingClientIn(t testing.TB, l *lab.Lab, ns lab.NS, dir string, args ...string) (wait func() clientResult, release func()) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "go")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	cmd := l.CommandInCgroup(ctx, ns, dir, bins.labclient, append(args, "-wait-file", file)...)
	var stdout safeBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), `"connected":true`) {
		if time.Now().After(deadline) {
			t.Fatalf("client never connected: %s", stdout.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	release = func() {
		if err := os.WriteFile(file, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wait = func() clientResult {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("client: %v: %s", err, stdout.String())
		}
		return parseClient(t, []byte(stdout.String()))
	}
	return wait, release
}

// Connections opened before the daemon started cannot be judged: the server
// may be inside a body or a half-written request. The attack: a POST
// announcing a 100-byte body, 10 of them sent before the guard starts; the
// other 90 hide a token-less credentials GET that the server, its body
// done, reads as a request. Every write on an adopted connection is
// refused, and each connection is reported once.
func TestConnectionsOpenedBeforeStartAreRefused(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})

	enc := func(s string) string { return strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(s) }
	head := "POST /latest/meta-data/x HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token: tok\r\nContent-Length: 100\r\n\r\n"
	body10 := "0123456789"
	// the 90 bytes that end the server's body look to a judge that starts
	// here like a POST whose body is the smuggled request
	smuggled := get(credPath, "")
	cover := func(pad string) string {
		return "POST /x HTTP/1.1\r\nX-aws-ec2-metadata-token: t\r\nX-Pad: " + pad + "\r\nContent-Length: " +
			strconv.Itoa(len(smuggled)) + "\r\n\r\n"
	}
	rest := cover(strings.Repeat("p", 90-len(cover("")))) + smuggled
	attackWait, attackGo := startWaitingClient(t, l, lab.Node, "-mode", "raw", "-addr", imdsAddr,
		"-pre-write", enc(head+body10), "-write", enc(rest))
	hostWait, hostGo := startWaitingClient(t, l, lab.Node, "-mode", "raw", "-addr", imdsAddr,
		"-write", enc(get("/latest/meta-data/instance-id", "tok")), "-write", enc(get("/latest/meta-data/instance-id", "tok")))
	podWait, podGo := startWaitingClient(t, l, lab.Pod, "-mode", "raw", "-addr", imdsAddr,
		"-write", enc(get(credPath, "tok")))
	// the server has the head and the first 10 bytes before the guard starts
	for deadline := time.Now().Add(5 * time.Second); srv.ReceivedBytes() < len(head+body10); {
		if time.Now().After(deadline) {
			t.Fatalf("server got %d bytes before the start, want %d", srv.ReceivedBytes(), len(head+body10))
		}
		time.Sleep(10 * time.Millisecond)
	}

	d := startDaemon(t, l)
	if !strings.Contains(d.WaitLog(`"msg":"enforcing"`, time.Second), `"adopted_connections":3`) {
		t.Errorf("start log does not report 3 adopted connections:\n%s", d.Stderr())
	}
	attackGo()
	hostGo()
	podGo()
	attack, host, pod := attackWait(), hostWait(), podWait()

	if attack.PreWrite.Errno != "" || len(attack.Writes) != 1 || attack.Writes[0].Errno != "EACCES" {
		t.Errorf("attack writes %+v then %+v, want the rest of the body refused", attack.PreWrite, attack.Writes)
	}
	if len(host.Writes) != 2 || host.Writes[0].Errno != "EACCES" || host.Writes[1].Errno != "EACCES" {
		t.Errorf("host writes %+v, want both refused, token or not", host.Writes)
	}
	if len(pod.Writes) != 1 || pod.Writes[0].Errno != "EACCES" {
		t.Errorf("pod writes %+v, want its request refused", pod.Writes)
	}
	var got []byte
	for _, c := range srv.Conns() {
		got = append(got, c.Received...)
	}
	if string(got) != head+body10 {
		t.Fatalf("server received %q, want only what was sent before the start", got)
	}
	for _, r := range srv.Requests() {
		if r.URI != "/latest/meta-data/x" {
			t.Errorf("server got %s %s after the start", r.Method, r.URI)
		}
	}
	for _, c := range []clientResult{attack, host, pod} {
		ev := d.WaitEvent("the adopted connection", func(e event) bool { return e.Kind == "request" && e.PID == c.PID })
		if ev.Action != "deny" || ev.Reason != "adopted_connection" {
			t.Errorf("event %+v, want deny adopted_connection", ev)
		}
	}
	time.Sleep(200 * time.Millisecond)
	n := 0
	for _, ev := range d.Events() {
		if ev.Reason == "adopted_connection" {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d adopted_connection events, want one per connection (3)", n)
	}
}

func TestAuditModePassesRequestsAndReports(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l, "--mode", "audit")

	body, stderr, code, _ := runInLab(t, l, lab.Node, nil, "curl", "-sS", "-m", "10", "http://"+imdsAddr+credPath)
	if code != 0 || !strings.Contains(body, imdsserver.AccessKeyID) {
		t.Fatalf("audit mode, token-less curl: exit %d stderr %q body %q", code, stderr, body)
	}
	ev := d.WaitEvent("audited request", func(e event) bool { return e.Kind == "request" && e.Comm == "curl" })
	if ev.Action != "audit" || ev.Reason != "imdsv1_no_token" || !ev.CredentialAccess {
		t.Fatalf("event %+v, want audit imdsv1_no_token credential_access", ev)
	}
	r := runClient(t, l, lab.Node, "", "-mode", "http", "-addr", imdsAddr, "-path", "/latest/meta-data/instance-id",
		"-header", "X-Forwarded-For: 10.0.0.1", "-token", "x")
	if r.Status == 0 {
		t.Fatalf("audit mode, forwarded request: %+v", r)
	}
	d.WaitEvent("audited forwarded request", func(e event) bool {
		return e.Kind == "request" && e.PID == r.PID && e.Action == "audit" && e.Reason == "forwarded_request"
	})
	if got := len(srv.Requests()); got != 2 {
		t.Errorf("server answered %d requests, want both", got)
	}
}

// requireToken: false turns the token rule off; requests are still judged
// for the other rules and reported.
func TestPolicyWithoutTokenRule(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte("requireToken: false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, l, "--policy", pol)

	body, stderr, code, _ := runInLab(t, l, lab.Node, nil, "curl", "-sS", "-m", "10", "http://"+imdsAddr+credPath)
	if code != 0 || !strings.Contains(body, imdsserver.AccessKeyID) {
		t.Fatalf("token-less curl with requireToken: false: exit %d stderr %q", code, stderr)
	}
	ev := d.WaitEvent("allowed token-less request", func(e event) bool { return e.Kind == "request" && e.Comm == "curl" })
	if ev.Action != "allow" || ev.HasToken == nil || *ev.HasToken || !ev.CredentialAccess {
		t.Fatalf("event %+v, want allow, has_token false, credential_access", ev)
	}
	// the forwarded-request rule still applies
	r := runClient(t, l, lab.Node, "", "-mode", "http", "-addr", imdsAddr, "-header", "X-Forwarded-For: 203.0.113.9")
	if r.Status != 0 || !strings.Contains(r.Error, "EACCES") {
		t.Fatalf("forwarded request: %+v, want EACCES", r)
	}
	if got := len(srv.Requests()); got != 1 {
		t.Errorf("server answered %d requests, want 1", got)
	}
}

// A client that puts the token in its arguments, as scripts do with
// curl -H, and is still running when its event is read: the token is not in
// the event's cmdline (the SIEM must never hold a live token).
func TestTokenInClientArgumentsIsNotLogged(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)
	const token = "AQAEAsecret-session-token-value"
	script := `
import socket, sys, time
s = socket.create_connection((sys.argv[2], 80), timeout=5)
s.sendall(("GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n" + sys.argv[1] + "\r\n\r\n").encode())
print(s.recv(100).split(b" ")[1].decode(), flush=True)
time.sleep(3)
`
	// from a file: a short command line, all of it in the event
	file := filepath.Join(t.TempDir(), "client.py")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, code, _ := runInLab(t, l, lab.Node, nil, "python3", file, "X-aws-ec2-metadata-token: "+token, lab.IMDSv4)
	// the server refuses the made-up token (401); the guard let it through
	if code != 0 || strings.TrimSpace(out) != "401" {
		t.Fatalf("client: exit %d out %q stderr %q, want the server's 401", code, out, stderr)
	}
	ev := d.WaitEvent("the request", func(e event) bool { return e.Kind == "request" && e.Comm == "python3" })
	if !strings.Contains(ev.Cmdline, "X-aws-ec2-metadata-token: <redacted>") {
		t.Errorf("event cmdline %q, want the token header redacted", ev.Cmdline)
	}
	if raw := strings.Join(d.Lines(), "\n"); strings.Contains(raw, token) {
		t.Fatalf("events contain the session token:\n%s", raw)
	}
}

// runPythonReport runs a python3 script in the node namespace of the lab
// and decodes the JSON object it prints into report.
func runPythonReport(t testing.TB, l *lab.Lab, report any, script string, args ...string) {
	t.Helper()
	out, stderr, code, _ := runInLab(t, l, lab.Node, nil, "python3", append([]string{"-c", script}, args...)...)
	if code != 0 {
		t.Fatalf("python3: exit %d: %s", code, stderr)
	}
	if err := json.Unmarshal([]byte(out), report); err != nil {
		t.Fatalf("python3 printed %q: %v", out, err)
	}
}
