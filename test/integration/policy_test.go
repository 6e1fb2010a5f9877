package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/pindir"
	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

func writePolicy(t testing.TB, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil { // atomic, like an editor or a config manager
		t.Fatal(err)
	}
	return p
}

// runClientAs runs labclient as uid in ns and cgroup dir ("" for the lab's).
func runClientAs(t testing.TB, l *lab.Lab, ns lab.NS, dir string, uid uint32, args ...string) clientResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if dir == "" {
		dir = l.Cgroup
	}
	// setpriv drops to uid after nsenter entered the namespace (which needs
	// root), then execs labclient: same pid, comm "labclient".
	argv := append([]string{fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups", bins.labclient}, args...)
	cmd := l.CommandInCgroup(ctx, ns, dir, "setpriv", argv...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("labclient as uid %d: %v", uid, err)
	}
	return parseClient(t, out)
}

// Each kind of rule changes what its matched process may do, and only for
// that process.
func TestRulesApplyToTheirProcessesOnly(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	legacy, _ := l.NewSubCgroup(t, "legacy")
	broker, _ := l.NewSubCgroup(t, "broker")
	other, _ := l.NewSubCgroup(t, "other")
	hostnet, _ := l.NewSubCgroup(t, "kubepods")
	pol := writePolicy(t, t.TempDir(), "policy.yaml", fmt.Sprintf(`
rules:
  - name: legacy-agent
    match: {cgroup: "%[1]s/legacy", comm: "labclient"}
    allowV1: true
  - name: iam-broker
    match: {cgroup: "%[1]s/broker"}
    allowNonHostNetns: true
  - name: no-imds-for-ci
    match: {uid: 1001}
    deny: true
  - name: no-host-network-pods
    match: {cgroup: "%[1]s/kubepods/**"}
    deny: true
`, l.CgroupRel))
	d := startDaemon(t, l, "--policy", pol)
	get := []string{"-mode", "http", "-addr", imdsAddr, "-path", "/latest/meta-data/instance-id"}
	tokenGet := append(append([]string{}, get...), "-fetch-token")

	// allowV1: token-less requests pass for labclient in legacy only
	if r := runClient(t, l, lab.Node, legacy, get...); r.Status != 200 {
		t.Errorf("allowV1 process, token-less GET: %+v, want 200", r)
	}
	ev := d.WaitEvent("allowV1 request", func(e event) bool { return e.Kind == "request" && e.Cgroup == l.CgroupRel+"/legacy" })
	if ev.Action != "allow" || ev.Rule != "legacy-agent" {
		t.Errorf("allowV1 event %+v, want allow by rule legacy-agent", ev)
	}
	if r := runClient(t, l, lab.Node, other, get...); !strings.Contains(r.Error, "EACCES") {
		t.Errorf("unmatched cgroup, token-less GET: %+v, want EACCES", r)
	}
	_, stderr, code, _ := runInLabCgroup(t, l, lab.Node, legacy, "curl", "-sS", "-m", "5", "http://"+imdsAddr+"/latest/meta-data/instance-id")
	if code != 55 {
		t.Errorf("legacy cgroup but comm curl, token-less GET: exit %d %s, want 55 (EACCES)", code, stderr)
	}

	// allowNonHostNetns: the broker's pod reaches IMDS; other pods do not
	if r := runClient(t, l, lab.Pod, broker, tokenGet...); r.ConnectErrno != "" || r.Status != 200 {
		t.Errorf("broker pod with token: %+v, want 200", r)
	}
	if r := runClient(t, l, lab.Pod, broker, get...); !strings.Contains(r.Error, "EACCES") {
		t.Errorf("broker pod without token: %+v, want EACCES (allowNonHostNetns does not lift the token rule)", r)
	}
	if r := runClient(t, l, lab.Pod, other, tokenGet...); r.ConnectErrno != "EPERM" {
		t.Errorf("other pod: %+v, want EPERM", r)
	}

	// deny by uid: no IMDS at all for uid 1001, even from the host with a token
	if r := runClientAs(t, l, lab.Node, other, 1001, tokenGet...); r.ConnectErrno != "EPERM" || r.TokenConnectErrno != "EPERM" {
		t.Errorf("uid 1001: %+v, want EPERM", r)
	}
	ev = d.WaitEvent("uid deny", func(e event) bool { return e.UID == 1001 })
	if ev.Action != "deny" || ev.Reason != "policy_rule" || ev.Rule != "no-imds-for-ci" {
		t.Errorf("uid 1001 event %+v, want deny policy_rule by no-imds-for-ci", ev)
	}
	if r := runClientAs(t, l, lab.Node, other, 1002, tokenGet...); r.Status != 200 {
		t.Errorf("uid 1002: %+v, want 200", r)
	}

	// a hostNetwork pod: the host's network namespace, a pod's cgroup
	sub := filepath.Join(hostnet, "pod-abc")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(sub) })
	waitFor(t, 3*time.Second, "the new pod cgroup to be refused", func() bool {
		return runClient(t, l, lab.Node, sub, tokenGet...).ConnectErrno == "EPERM"
	})
	ev = d.WaitEvent("host-network pod deny", func(e event) bool { return e.Cgroup == l.CgroupRel+"/kubepods/pod-abc" && e.Action == "deny" })
	if ev.Reason != "policy_rule" || ev.Rule != "no-host-network-pods" || !ev.HostNetns {
		t.Errorf("host-network pod event %+v", ev)
	}
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A cgroup created after the policy loaded gets its rules within a second.
func TestCgroupCreatedAfterLoadIsMatched(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	pol := writePolicy(t, t.TempDir(), "policy.yaml", fmt.Sprintf(`
rules:
  - name: late-deny
    match: {cgroup: "%s/late*"}
    deny: true
`, l.CgroupRel))
	startDaemon(t, l, "--policy", pol)
	dir := filepath.Join(l.Cgroup, "late1")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	created := time.Now()
	waitFor(t, 3*time.Second, "the late cgroup to be matched", func() bool {
		r := runClient(t, l, lab.Node, dir, "-mode", "connect", "-addr", imdsAddr)
		return r.ConnectErrno == "EPERM"
	})
	if took := time.Since(created); took > 1500*time.Millisecond {
		t.Errorf("matched after %s, want within about a second", took)
	}
	// Known to the daemon (the kernel refuses it from the first connect,
	// by the lab cgroup's subtree list), and forgotten once removed. The
	// kernel's list is read, not the daemon's log: other tests' cgroups
	// come and go on the same tree at the same time.
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the late cgroup's own rule list", func() bool { return cgroupListed(t, l, st.Ino) })
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the removed cgroup's rule list to go", func() bool { return !cgroupListed(t, l, st.Ino) })
}

// cgroupListed says whether the daemon's pinned cgroup_rules map holds a
// list for cgroup id.
func cgroupListed(t testing.TB, l *lab.Lab, id uint64) bool {
	t.Helper()
	pinDir, err := l.PinDir()
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, pindir.MapsDir, bpf.ImdsguardMapCgroupRules), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("opening the pinned cgroup_rules map: %v", err)
	}
	defer m.Close()
	var key bpf.ImdsguardCgroupKey
	var list bpf.ImdsguardRuleList
	it := m.Iterate()
	for it.Next(&key, &list) {
		if key.CgroupId == id {
			return true
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("reading the pinned cgroup_rules map: %v", err)
	}
	return false
}

// 100 reloads, valid and invalid, while a client hammers IMDS with
// token-less requests that every policy refuses: none gets through.
func TestReloadsUnderLoadNeverLetARequestThrough(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	dir := t.TempDir()
	a := "mode: enforce\n"
	b := fmt.Sprintf("mode: enforce\nrefuseForwarded: false\nrules:\n  - name: ci\n    match: {uid: 4242}\n    deny: true\n  - name: other\n    match: {cgroup: %q}\n    deny: true\n", l.CgroupRel+"/nothing")
	bad := "mode: enforce\nrules:\n  - name: Bad Name\n    deny: maybe\n"
	pol := writePolicy(t, dir, "policy.yaml", a)
	d := startDaemon(t, l, "--policy", pol)

	// The client hammers until the reloads are done (stop exists), however
	// long they take on this machine.
	stop := filepath.Join(dir, "stop")
	script := `
import os, socket, sys
ok = refused = 0
while not os.path.exists(sys.argv[1]):
    s = socket.create_connection(("169.254.169.254", 80), timeout=2)
    try:
        s.sendall(b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\n\r\n")
        ok += 1
    except PermissionError:
        refused += 1
    s.close()
print(ok, refused)
`
	// A safety net only: the client stops when the reloads are done, and
	// 100 reloads take 90 s on an emulated kernel sharing its cores.
	ctx, cancel := context.WithTimeout(context.Background(), lab.Patience(3*time.Minute))
	defer cancel()
	cmd := l.Command(ctx, lab.Node, "/usr/bin/python3", "-c", script, stop)
	var out safeBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		// b, bad, a, ...: each file differs from the policy in force, so
		// each reload reports (an unchanged one would not)
		body := a
		switch i % 3 {
		case 0:
			body = b
		case 1:
			body = bad
		}
		seen := policyEvents(d)
		writePolicy(t, dir, "policy.yaml", body)
		if err := d.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		// Paced by the daemon: the next file replaces this one once a
		// reload has reported (under emulation a reload takes far longer
		// than the 30 ms between writes), so nearly every invalid file is
		// seen. Best effort: a reload that finds the policy in force
		// unchanged (SIGHUP and the file watch racing) reports nothing.
		for deadline := time.Now().Add(lab.Patience(3 * time.Second)); policyEvents(d) == seen && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(30 * time.Millisecond)
	}
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client: %v: %s", err, out.String())
	}
	var okN, refused int
	fmt.Sscan(out.String(), &okN, &refused)
	if refused < 20 || okN != 0 {
		t.Fatalf("client: %q: want only refusals (and many)", out.String())
	}
	if n := srv.ReceivedBytes(); n != 0 {
		t.Fatalf("IMDS received %d bytes of token-less requests during reloads", n)
	}
	if code := d.Stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	exit := d.WaitLog("detached; exiting", time.Second)
	if !strings.Contains(exit, `"invalid":`) || !strings.Contains(exit, `"loaded":`) {
		t.Errorf("exit log does not count loaded and invalid reloads: %s", exit)
	}
	var invalid int
	for _, line := range d.Lines() {
		if strings.Contains(line, `"kind":"policy"`) && strings.Contains(line, `"result":"invalid"`) {
			invalid++
		}
	}
	if invalid < 20 {
		t.Errorf("%d invalid-policy events, want one per invalid file (33)", invalid)
	}
}

// policyEvents counts the daemon's policy events (loaded and invalid).
func policyEvents(d *daemon.Daemon) int {
	n := 0
	for _, line := range d.Lines() {
		if strings.Contains(line, `"kind":"policy"`) {
			n++
		}
	}
	return n
}

// A Kubernetes ConfigMap update swaps a "..data" symlink; a broken update
// leaves the last good policy in force.
func TestConfigMapUpdatesAndBrokenUpdateKeepsPolicy(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	dir := t.TempDir()
	version := 0
	publish := func(body string) {
		t.Helper()
		version++
		ts := filepath.Join(dir, fmt.Sprintf("..2026_11_23_v%d", version))
		if err := os.Mkdir(ts, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ts, "policy.yaml"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	publish("mode: enforce\n")
	if err := os.Symlink("..data/policy.yaml", filepath.Join(dir, "policy.yaml")); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, l, "--policy", filepath.Join(dir, "policy.yaml"))
	get := []string{"-mode", "http", "-addr", imdsAddr, "-path", "/latest/meta-data/instance-id"}
	if r := runClient(t, l, lab.Node, "", get...); !strings.Contains(r.Error, "EACCES") {
		t.Fatalf("before the update: %+v, want EACCES", r)
	}

	publish(fmt.Sprintf("rules:\n  - name: legacy\n    match: {cgroup: %q}\n    allowV1: true\n", l.CgroupRel))
	d.WaitEvent("reload", func(e event) bool { return e.Kind == "policy" && e.Result == "loaded" })
	if r := runClient(t, l, lab.Node, "", get...); r.Status != 200 {
		t.Fatalf("after the valid update: %+v, want 200", r)
	}

	publish("rules:\n  - name: legacy\n    match: {cgroup: \"/nope[\"}\n    allowV1: true\n")
	ev := d.WaitEvent("refused reload", func(e event) bool { return e.Kind == "policy" && e.Result == "invalid" })
	if !strings.Contains(ev.Error, "match.cgroup") {
		t.Errorf("invalid-policy event error %q does not name the key", ev.Error)
	}
	if r := runClient(t, l, lab.Node, "", get...); r.Status != 200 {
		t.Fatalf("after the broken update: %+v, want the previous policy (200)", r)
	}
	if len(srv.Requests()) != 2 {
		t.Errorf("server answered %d requests, want 2", len(srv.Requests()))
	}
}

// The connect hooks skip ports no endpoint uses without a lookup; an
// endpoint added by a reload is guarded from the switch on, and one removed
// is let through again.
func TestEndpointOnAnotherPortIsGuardedAfterReload(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	// Another port of the IMDS address, whose bit (port % 64) is not
	// port 80's (8080's is).
	other := net.JoinHostPort(lab.IMDSv4, "8081")
	ln, err := l.Listen(lab.IMDS, "tcp4", other)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	dir := t.TempDir()
	pol := writePolicy(t, dir, "policy.yaml", "mode: enforce\n")
	d := startDaemon(t, l, "--policy", pol)
	podConnect := func() string {
		return runClient(t, l, lab.Pod, "", "-mode", "connect", "-addr", other).ConnectErrno
	}
	if e := podConnect(); e != "" {
		t.Fatalf("pod connect to %s before it is an endpoint: %q, want success", other, e)
	}
	writePolicy(t, dir, "policy.yaml", "mode: enforce\nendpoints: [\"169.254.169.254:80\", \"169.254.169.254:8081\"]\n")
	d.Signal(syscall.SIGHUP)
	d.WaitLog(`"msg":"policy reloaded"`, 5*time.Second)
	if e := podConnect(); e != "EPERM" {
		t.Errorf("pod connect to %s once it is an endpoint: %q, want EPERM", other, e)
	}
	if e := runClient(t, l, lab.Pod, "", "-mode", "connect", "-addr", imdsAddr).ConnectErrno; e != "EPERM" {
		t.Errorf("pod connect to %s: %q, want EPERM", imdsAddr, e)
	}
	writePolicy(t, dir, "policy.yaml", "mode: enforce\n")
	d.Signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "the second reload", func() bool {
		return strings.Count(d.Stderr(), `"msg":"policy reloaded"`) >= 2
	})
	if e := podConnect(); e != "" {
		t.Errorf("pod connect to %s after it is no endpoint again: %q, want success", other, e)
	}
}
