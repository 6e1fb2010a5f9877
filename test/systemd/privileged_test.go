package systemd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
	"github.com/imdsguard/imdsguard/test/labclient/report"
)

// The privileged tests run the daemon as the unit does (unitexec: exactly
// the given capabilities, no_new_privs, the read-only file system of
// ProtectSystem=strict, ProtectKernelTunables= and ProtectControlGroups=,
// writable pins) in the lab, its node namespace playing the host, and
// probe what it enforces. IMDS exists only in the lab's imds namespace;
// the programs attach only to the lab's cgroup.

var (
	imdsAddr = net.JoinHostPort(lab.IMDSv4, "80")
	credPath = "/latest/meta-data/iam/security-credentials/" + imdsserver.DefaultRole
)

// A probe is one thing the daemon must do; probeDaemon reports those it
// did not do.
type probe string

const (
	podConnectEPERM   probe = "a pod's connect to IMDS fails with EPERM"
	hostNoTokenEACCES probe = "a token-less host GET fails with EACCES"
	hostToken200      probe = "a host GET with a token gets 200"
	allowedPod200     probe = "a pod an allowNonHostNetns rule matches gets 200"
	eventCgroup       probe = "the event names the client's cgroup"
	eventExe          probe = "the event names the client's executable"
	quietLog          probe = "the daemon logs no warning or error"
)

var allProbes = []probe{podConnectEPERM, hostNoTokenEACCES, hostToken200, allowedPod200, eventCgroup, eventExe, quietLog}

// fixture is a lab with IMDS, a policy that lets the lab's "broker" cgroup
// reach IMDS from its pod, and a process of that pod in it.
type fixture struct {
	lab    *lab.Lab
	srv    *imdsserver.Server
	broker string // the broker cgroup's directory
	policy string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	l := lab.New(t)
	f := &fixture{lab: l, srv: imdsserver.New(imdsserver.Options{})}
	for _, a := range []struct{ network, addr string }{
		{"tcp4", imdsAddr},
		{"tcp6", net.JoinHostPort(lab.IMDSv6, "80")},
	} {
		ln, err := l.Listen(lab.IMDS, a.network, a.addr)
		if err != nil {
			t.Fatalf("listening on %s in imds: %v", a.addr, err)
		}
		go f.srv.Serve(ln)
	}
	t.Cleanup(func() { f.srv.Close() })

	f.broker, _ = l.NewSubCgroup(t, "broker")
	f.policy = filepath.Join(t.TempDir(), "policy.yaml")
	pol := fmt.Sprintf("rules:\n  - name: iam-broker\n    match: {cgroup: %q}\n    allowNonHostNetns: true\n", l.CgroupRel+"/broker")
	if err := os.WriteFile(f.policy, []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	// A process of the broker pod, so the daemon lets its address through
	// the nftables table from the start. The lab kills it at teardown.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	sleeper := l.CommandInCgroup(ctx, lab.Pod, f.broker, "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatalf("starting the broker pod's process: %v", err)
	}
	go sleeper.Wait() //nolint:errcheck // killed at teardown
	return f
}

// wrapper writes a script that daemon.Start can run as the daemon binary:
// it execs unitexec, which runs the real daemon with exactly caps.
func wrapper(t *testing.T, caps []string) string {
	t.Helper()
	b := build(t)
	args := []string{b.unitexec, "-caps", strings.Join(caps, ",")}
	for _, p := range loadUnit(t).list("Service", "ReadWritePaths") {
		if _, err := os.Stat(p); err == nil {
			args = append(args, "-rw", p)
		}
	}
	args = append(args, "--", b.imdsguard)
	script := "#!/bin/sh\nexec " + strings.Join(args, " ") + ` "$@"` + "\n"
	path := filepath.Join(t.TempDir(), "imdsguard-as-unit")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// fatalRecorder is the testing.TB daemon.Start gets: while capturing, a
// Fatal records its message and ends only the goroutine that called it, so
// a daemon that refuses to start is an outcome to check, not a failure.
// Afterwards it is the test's own TB.
type fatalRecorder struct {
	testing.TB
	mu        sync.Mutex
	capturing bool
	msg       string
}

func (r *fatalRecorder) captured(msg string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.capturing {
		return false
	}
	if r.msg == "" {
		r.msg = msg
	}
	return true
}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	if r.captured(fmt.Sprintf(format, args...)) {
		runtime.Goexit()
	}
	r.TB.Helper()
	r.TB.Fatalf(format, args...)
}

func (r *fatalRecorder) Fatal(args ...any) {
	if r.captured(fmt.Sprint(args...)) {
		runtime.Goexit()
	}
	r.TB.Helper()
	r.TB.Fatal(args...)
}

func (r *fatalRecorder) FailNow() {
	if r.captured("FailNow") {
		runtime.Goexit()
	}
	r.TB.FailNow()
}

// startAsUnit starts the daemon like the unit with caps (daemon.Start,
// so with the harness's flags: the lab's cgroup, host netns and pin
// directory). It returns the running daemon, or the daemon's stderr if it
// exited before enforcing.
func startAsUnit(t *testing.T, f *fixture, caps []string, args ...string) (*daemon.Daemon, string) {
	t.Helper()
	bin := wrapper(t, caps)
	r := &fatalRecorder{TB: t, capturing: true}
	var d *daemon.Daemon
	done := make(chan struct{})
	go func() {
		defer close(done)
		d = daemon.Start(r, bin, f.lab, append([]string{"--policy", f.policy}, args...)...)
	}()
	<-done
	r.mu.Lock()
	r.capturing = false
	msg := r.msg
	r.mu.Unlock()
	if msg == "" {
		return d, ""
	}
	if !strings.HasPrefix(msg, "imdsguard exited before enforcing") {
		t.Fatalf("starting the daemon: %s", msg)
	}
	_, stderr, _ := strings.Cut(msg, "stderr:\n")
	return nil, strings.TrimSpace(stderr)
}

// clientResult is labclient's report.
type clientResult = report.Report

// runClient runs labclient in ns, in the lab's cgroup or dir.
func runClient(t *testing.T, l *lab.Lab, ns lab.NS, dir string, args ...string) clientResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if dir == "" {
		dir = l.Cgroup
	}
	cmd := l.CommandInCgroup(ctx, ns, dir, build(t).labclient, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("labclient %v in %s: %v\nstderr: %s", args, ns, err, stderr.String())
	}
	r, err := report.Parse(stdout.Bytes())
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout.String())
	}
	return r
}

// probeDaemon runs every probe against a running daemon and returns those
// that failed, each with what was seen instead.
func probeDaemon(t *testing.T, f *fixture, d *daemon.Daemon) map[probe]string {
	t.Helper()
	l := f.lab
	failed := map[probe]string{}

	if r := runClient(t, l, lab.Pod, "", "-mode", "connect", "-addr", imdsAddr, "-timeout", "3s"); r.ConnectErrno != "EPERM" {
		failed[podConnectEPERM] = fmt.Sprintf("connect errno %q, error %q", r.ConnectErrno, r.Error)
	}

	// labclient reads Go string escapes in -write
	get := "GET " + credPath + ` HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n`
	// The client lingers after connecting, so /proc still has it when the
	// daemon reports the connect (exe comes from there).
	denied := runClient(t, l, lab.Node, "", "-mode", "raw", "-addr", imdsAddr, "-timeout", "3s",
		"-keepalive-wait", "1s", "-write", get)
	if len(denied.Writes) == 0 || denied.Writes[0].Errno != "EACCES" {
		failed[hostNoTokenEACCES] = fmt.Sprintf("connect errno %q, writes %+v, error %q", denied.ConnectErrno, denied.Writes, denied.Error)
	} else if slices.ContainsFunc(f.srv.Requests(), func(r imdsserver.Request) bool { return r.URI == credPath }) {
		failed[hostNoTokenEACCES] = "the write failed, but IMDS got the request"
	}

	if r := runClient(t, l, lab.Node, "", "-mode", "http", "-addr", imdsAddr, "-timeout", "3s",
		"-fetch-token", "-path", "/latest/meta-data/instance-id"); r.Status != 200 {
		failed[hostToken200] = fmt.Sprintf("status %d, connect errno %q, error %q", r.Status, r.ConnectErrno, r.Error)
	}

	// The daemon lets the broker pod's address through the nftables table
	// within its rescan interval; try for a few seconds.
	var last clientResult
	deadline := time.Now().Add(6 * time.Second)
	for {
		last = runClient(t, l, lab.Pod, f.broker, "-mode", "http", "-addr", imdsAddr, "-timeout", "1s",
			"-fetch-token", "-path", "/latest/meta-data/instance-id")
		if last.Status == 200 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if last.Status != 200 {
		failed[allowedPod200] = fmt.Sprintf("status %d, connect errno %q, error %q", last.Status, last.ConnectErrno, last.Error)
	}

	var ev *daemon.Event
	for deadline := time.Now().Add(5 * time.Second); ev == nil && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, e := range d.Events() {
			if e.PID == denied.PID && e.Kind == "connect" {
				ev = &e
				break
			}
		}
	}
	switch {
	case ev == nil:
		failed[eventCgroup] = "no connect event for the token-less GET"
		failed[eventExe] = failed[eventCgroup]
	default:
		if ev.Cgroup != l.CgroupRel {
			failed[eventCgroup] = fmt.Sprintf("cgroup %q, want %q", ev.Cgroup, l.CgroupRel)
		}
		if ev.Exe != build(t).labclient {
			failed[eventExe] = fmt.Sprintf("exe %q, want %q", ev.Exe, build(t).labclient)
		}
	}

	if noisy := warnings(d.Stderr(), l); len(noisy) > 0 {
		failed[quietLog] = strings.Join(noisy, "\n")
	}
	return failed
}

// warnings returns the daemon's log lines at level warn or above, except
// those about other tests on this machine. The daemon adopts connections
// in every network namespace of the machine, so it reports a namespace
// being deleted while it walks them ("invalid argument" between the unmount
// and the unlink of /run/netns/NAME), and IMDS connections of other labs
// that another daemon already judges. The lab here has no connection open
// before the daemon starts.
func warnings(stderr string, l *lab.Lab) []string {
	var out []string
	for _, line := range strings.Split(stderr, "\n") {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
			Netns string `json:"netns"`
		}
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Level == "" || entry.Level == "info" || entry.Level == "debug" {
			continue
		}
		switch {
		case entry.Msg == "adopting connections" && entry.Netns != "" && !strings.Contains(entry.Netns, l.ID):
			continue
		case entry.Msg == "connections to IMDS opened before start could not be put under the request judge":
			continue
		case strings.HasPrefix(entry.Msg, "32-bit (compat) setsockopt calls are not guarded") && lab.ProbeFmodRet() != nil:
			continue // the kernel refuses the program to root as well
		}
		out = append(out, line)
	}
	return out
}

// (c) With exactly the unit's capabilities, under its sandbox, the daemon
// does everything: refuses pods and token-less requests, lets through what
// the policy allows, reports fully, reloads on SIGHUP, and says nothing
// alarming.
func TestUnitCapabilitiesEnforce(t *testing.T) {
	caps := unitCaps(t)
	f := newFixture(t)
	d, refused := startAsUnit(t, f, caps)
	if d == nil {
		t.Fatalf("with the unit's capabilities %v the daemon did not start:\n%s", caps, refused)
	}
	checkConfined(t, f, d.PID(), caps)
	for p, seen := range probeDaemon(t, f, d) {
		t.Errorf("with the unit's capabilities: %s: no: %s", p, seen)
	}

	// systemctl reload: SIGHUP re-reads the policy (from the read-only
	// file system) and puts it in force. The daemon also watches the file,
	// so the reload may come from either; both read the same way.
	changed := fmt.Sprintf("rules:\n  - name: iam-broker-v2\n    match: {cgroup: %q}\n    allowNonHostNetns: true\n", f.lab.CgroupRel+"/broker")
	if err := os.WriteFile(f.policy+".new", []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(f.policy+".new", f.policy); err != nil {
		t.Fatal(err)
	}
	if err := d.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	t.Logf("reload: %s", d.WaitLog(`"msg":"policy reloaded"`, 5*time.Second))
	if r := runClient(t, f.lab, lab.Pod, "", "-mode", "connect", "-addr", imdsAddr, "-timeout", "3s"); r.ConnectErrno != "EPERM" {
		t.Errorf("after reload, pod connect errno %q, want EPERM", r.ConnectErrno)
	}
	if code := d.Stop(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0; stderr:\n%s", code, d.Stderr())
	}
	if noisy := warnings(d.Stderr(), f.lab); len(noisy) > 0 {
		t.Errorf("warnings or errors in the daemon's log:\n%s", strings.Join(noisy, "\n"))
	}
}

// The unit restarts the daemon (Restart=always, systemctl restart) with its
// default --on-exit keep: enforcement stays pinned while no daemon runs,
// and the next one, with the same capabilities and sandbox, takes the pins
// over.
func TestRestartUnderUnitKeepsEnforcing(t *testing.T) {
	caps := unitCaps(t)
	f := newFixture(t)
	// --on-exit keep as the unit has it (the harness asks for detach; a
	// later flag wins). Should the test fail, the lab's teardown unmounts
	// its BPF filesystem, which drops the pins.
	first, refused := startAsUnit(t, f, caps, "--on-exit", "keep")
	if first == nil {
		t.Fatalf("the daemon did not start:\n%s", refused)
	}
	if code := first.Stop(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0; stderr:\n%s", code, first.Stderr())
	}
	first.WaitLog("enforcement stays pinned", time.Second)
	if r := runClient(t, f.lab, lab.Pod, "", "-mode", "connect", "-addr", imdsAddr, "-timeout", "3s"); r.ConnectErrno != "EPERM" {
		t.Fatalf("with the daemon stopped, pod connect errno %q, want EPERM (pinned enforcement)", r.ConnectErrno)
	}

	second, refused := startAsUnit(t, f, caps)
	if second == nil {
		t.Fatalf("the restarted daemon did not start:\n%s", refused)
	}
	line := second.WaitLog(`"msg":"enforcing"`, time.Second)
	if strings.Contains(line, `"takeover":"none"`) {
		t.Errorf("the restarted daemon attached afresh instead of taking the pins over: %s", line)
	}
	for p, seen := range probeDaemon(t, f, second) {
		t.Errorf("after the restart: %s: no: %s", p, seen)
	}
	if code := second.Stop(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0; stderr:\n%s", code, second.Stderr())
	}
	if n := attachedPrograms(t, f.lab.Cgroup); n != 0 {
		t.Errorf("%d programs still attached after the daemon with --on-exit detach stopped", n)
	}
}

// checkConfined makes sure the daemon at pid runs as the unit would have it
// (so that what passed proves something): exactly caps, no_new_privs, a
// read-only root, in the lab's node namespace.
func checkConfined(t *testing.T, f *fixture, pid int, caps []string) {
	t.Helper()
	var want uint64
	for _, c := range caps {
		bit := slices.Index(capNames, c) // capNames is in bit order
		if bit < 0 {
			t.Fatalf("unknown capability %s", c)
		}
		want |= 1 << bit
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	wantLines := []string{"NoNewPrivs:\t1"}
	for _, set := range []string{"CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		wantLines = append(wantLines, fmt.Sprintf("%s:\t%016x", set, want))
	}
	for _, w := range wantLines {
		if !slices.Contains(strings.Split(string(status), "\n"), w) {
			t.Errorf("daemon (pid %d) status lacks %q:\n%s", pid, w, status)
		}
	}
	mountinfo, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	rootRO := false
	for _, line := range strings.Split(string(mountinfo), "\n") {
		if fs := strings.Fields(line); len(fs) > 5 && fs[4] == "/" {
			rootRO = slices.Contains(strings.Split(fs[5], ","), "ro") // the last "/" mount is the visible one
		}
	}
	if !rootRO {
		t.Errorf("daemon (pid %d): / is not read-only in its mount namespace", pid)
	}
	got, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	var node string
	if err := f.lab.Do(lab.Node, func() error {
		var err error
		node, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got != node {
		t.Errorf("daemon (pid %d) runs in network namespace %s, want the lab's node %s", pid, got, node)
	}
}

// (d) Without each capability of the unit the daemon either refuses to start
// with one line saying why, or stops doing something it must: the evidence
// that each one is needed. (c) is the evidence that they are enough.
func TestEachCapabilityIsNeeded(t *testing.T) {
	caps := unitCaps(t)
	type outcome struct {
		refused *regexp.Regexp // the start fails with one line matching this
		broken  []probe        // else: exactly these probes fail
	}
	type row struct {
		drop []string // capabilities taken from the unit's set
		want outcome
		why  string // what the capability is for, for failure messages
	}
	tests := []row{
		// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (kernel and
		// daemon alike), so each is seen missing only without it too.
		{[]string{"CAP_BPF"}, outcome{}, "implied by CAP_SYS_ADMIN"},
		{[]string{"CAP_BPF", "CAP_SYS_ADMIN"}, outcome{refused: regexp.MustCompile(`must run as root \(missing CAP_BPF, CAP_SYS_ADMIN\)`)}, "bpf(2)"},
		{[]string{"CAP_PERFMON"}, outcome{}, "implied by CAP_SYS_ADMIN"},
		{[]string{"CAP_PERFMON", "CAP_SYS_ADMIN"}, outcome{refused: regexp.MustCompile(`must run as root \(missing CAP_PERFMON, CAP_SYS_ADMIN\)`)}, "bpf_probe_read_kernel, bpf_get_current_task"},
		{[]string{"CAP_NET_ADMIN"}, outcome{refused: regexp.MustCompile(`must run as root \(missing CAP_NET_ADMIN\)`)}, "nftables"},
		// setns(2) into its own namespace, to adopt connections opened
		// before start, already fails.
		{[]string{"CAP_SYS_ADMIN"}, outcome{refused: regexp.MustCompile(`missing CAP_SYS_ADMIN|entering /proc/self/ns/net: operation not permitted`)}, "setns"},
		// The daemon cannot see the broker pod's namespace (its process
		// has capabilities the daemon lacks), so nftables keeps dropping
		// the pod's packets; nor the client's executable.
		// (and it says so: a warning at start)
		{[]string{"CAP_SYS_PTRACE"}, outcome{broken: []probe{allowedPod200, eventExe, quietLog}}, "/proc/PID/ns/net, /proc/PID/exe"},
	}
	// Every capability of the unit must be shown needed by some row.
	for _, c := range caps {
		if !slices.ContainsFunc(tests, func(tt row) bool {
			return slices.Contains(tt.drop, c) && (tt.want.refused != nil || len(tt.want.broken) > 0)
		}) {
			t.Errorf("nothing shows that the unit's %s is needed: add a row, or drop it from the unit", c)
		}
	}
	lab.RequirePrivileged(t)
	for _, tt := range tests {
		t.Run("without_"+strings.Join(tt.drop, "+"), func(t *testing.T) {
			var kept []string
			for _, c := range caps {
				if !slices.Contains(tt.drop, c) {
					kept = append(kept, c)
				}
			}
			if len(kept)+len(tt.drop) != len(caps) {
				t.Fatalf("dropping %v: not all of them are in the unit's %v", tt.drop, caps)
			}
			f := newFixture(t)
			d, refused := startAsUnit(t, f, kept)
			if d == nil {
				if tt.want.refused == nil {
					t.Fatalf("without %v (%s) the daemon refused to start, want it to run:\n%s", tt.drop, tt.why, refused)
				}
				lines := strings.Split(refused, "\n")
				if len(lines) != 1 || !strings.HasPrefix(lines[0], "imdsguard: ") || !tt.want.refused.MatchString(lines[0]) {
					t.Fatalf("without %v: stderr %q, want one line \"imdsguard: …\" matching %q", tt.drop, refused, tt.want.refused)
				}
				t.Logf("without %v the daemon refuses to start: %s", tt.drop, refused)
				if n := attachedPrograms(t, f.lab.Cgroup); n != 0 {
					t.Errorf("%d programs left attached to the lab's cgroup after the failed start", n)
				}
				return
			}
			if tt.want.refused != nil {
				t.Fatalf("without %v (%s) the daemon started, want it to refuse with %q", tt.drop, tt.why, tt.want.refused)
			}
			failed := probeDaemon(t, f, d)
			for _, p := range allProbes {
				seen, broke := failed[p]
				switch want := slices.Contains(tt.want.broken, p); {
				case broke && want:
					t.Logf("without %v, as expected: not %s: %s", tt.drop, p, seen)
				case broke:
					t.Errorf("without %v: not %s: %s", tt.drop, p, seen)
				case want:
					t.Errorf("without %v (%s): %s still, want that to break", tt.drop, tt.why, p)
				}
			}
		})
	}
}

// attachedPrograms counts the programs attached to a cgroup.
func attachedPrograms(t testing.TB, cgroup string) int {
	t.Helper()
	n, err := lab.ProgramsOn(cgroup, ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
		ebpf.AttachCGroupSockOps, ebpf.AttachCGroupInetEgress)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
