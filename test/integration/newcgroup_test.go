package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/internal/policy"
	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// escapeToNewCgroup makes a cgroup under parent, moves itself into it and
// connects to IMDS at once (long before the daemon's next rescan), n times;
// it prints the connect's outcome each time: "ok" or the errno.
const escapeToNewCgroup = `
import errno, os, socket, sys
parent, addr, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    d = os.path.join(parent, "new-%d-%d" % (os.getpid(), i))
    os.mkdir(d)
    with open(os.path.join(d, "cgroup.procs"), "w") as f:
        f.write("0")
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((addr, 80))
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
    s.close()
    with open(os.path.join(parent, "cgroup.procs"), "w") as f:
        f.write("0")
    os.rmdir(d)
`

// A process that makes a cgroup and moves itself in (root, or any user with
// a delegated subtree) must not escape a deny rule whose glob matches the
// new cgroup until the daemon's next scan: the kernel judges a cgroup it has
// no entry for by its nearest known ancestor's subtree list, in which a deny
// that may match is taken to match.
func TestNewCgroupDoesNotEscapeItsDenyRule(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	jobs, _ := l.NewSubCgroup(t, "jobs")
	pol := writePolicy(t, t.TempDir(), "policy.yaml", fmt.Sprintf(`
rules:
  - name: no-imds-for-jobs
    match: {cgroup: "%s/jobs/new-*"}
    deny: true
`, l.CgroupRel))
	d := startDaemon(t, l, "--policy", pol)
	out, stderr, code, _ := runInLab(t, l, lab.Node, nil, "python3", "-c", escapeToNewCgroup, jobs, lab.IMDSv4, "20")
	if code != 0 {
		t.Fatalf("python3: exit %d: %s", code, stderr)
	}
	outcomes := strings.Fields(out)
	if len(outcomes) != 20 {
		t.Fatalf("outcomes %q, want 20", out)
	}
	for i, o := range outcomes {
		if o != "EPERM" {
			t.Errorf("connect %d from a new cgroup under jobs: %s, want EPERM (no-imds-for-jobs)", i, o)
		}
	}
	ev := d.WaitEvent("a refused connect", func(e event) bool { return e.Kind == "connect" && e.Comm == "python3" })
	if ev.Action != "deny" || ev.Reason != "policy_rule" || ev.Rule != "no-imds-for-jobs" {
		t.Errorf("event %+v, want deny policy_rule by no-imds-for-jobs", ev)
	}
	if n := len(srv.Conns()); n != 0 {
		t.Errorf("IMDS saw %d connections from new cgroups", n)
	}
}

// A grant (allowV1) reaches a new cgroup only once the daemon has matched
// the cgroup's name, never before; the delay is the rescan's.
func TestNewCgroupGetsItsGrantOnlyOnceMatched(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	legacy, _ := l.NewSubCgroup(t, "legacy")
	pol := writePolicy(t, t.TempDir(), "policy.yaml", fmt.Sprintf(`
rules:
  - name: legacy-v1
    match: {cgroup: "%s/legacy/app-*"}
    allowV1: true
`, l.CgroupRel))
	startDaemon(t, l, "--policy", pol)
	get := []string{"-mode", "http", "-addr", imdsAddr, "-path", "/latest/meta-data/instance-id"}

	dir := filepath.Join(legacy, "app-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	// Until the daemon has matched the new cgroup's name its token-less
	// requests are refused (the subtree list leaves the grant out: see
	// policy.TestSubtreeCandidatesAreTheStrictest); then they pass.
	created := time.Now()
	refused := 0
	for {
		r := runClient(t, l, lab.Node, dir, get...)
		if r.Status == 200 {
			break
		}
		if !strings.Contains(r.Error, "EACCES") {
			t.Fatalf("before the grant: %+v, want EACCES", r)
		}
		refused++
		if time.Since(created) > 5*time.Second {
			t.Fatalf("allowV1 never reached the new cgroup (%d refusals)", refused)
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(created)
	t.Logf("allowV1 reached the new cgroup %s after it was made (%d refusals before)", took.Round(time.Millisecond), refused)
	if took > 2*time.Second {
		t.Errorf("the grant took %s, want it within the rescan interval and a little", took)
	}
}

// A cgroup made later that more rules could apply to than the kernel's list
// holds is refused, not judged by the default list.
func TestNewCgroupWithTooManyRulesIsRefused(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range policy.RulesPerCgroup + 1 {
		fmt.Fprintf(&b, "  - name: r%d\n    match: {cgroup: \"%s/crowded*\", uid: %d}\n    allowV1: true\n", i, l.CgroupRel, 2000+i)
	}
	pol := writePolicy(t, t.TempDir(), "policy.yaml", b.String())
	d := startDaemon(t, l, "--policy", pol)
	dir := filepath.Join(l.Cgroup, "crowded1")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	d.WaitLog("cgroup refused IMDS", 5*time.Second)
	r := runClient(t, l, lab.Node, dir, "-mode", "connect", "-addr", imdsAddr)
	if r.ConnectErrno != "EPERM" {
		t.Fatalf("connect from a cgroup with 17 candidate rules: %+v, want EPERM", r)
	}
	ev := d.WaitEvent("the refusal", func(e event) bool { return e.Kind == "connect" && e.PID == r.PID })
	if ev.Reason != "policy_rule" || ev.Rule != policy.OverflowRuleName {
		t.Errorf("event %+v, want policy_rule by %q", ev, policy.OverflowRuleName)
	}
}

// waitV1 waits until a token-less GET from the cgroup at dir gets want
// (200, or 0 for refused with EACCES) and says how long it took.
func waitV1(t *testing.T, l *lab.Lab, dir string, want int, within time.Duration) time.Duration {
	t.Helper()
	get := []string{"-mode", "http", "-addr", imdsAddr, "-path", "/latest/meta-data/instance-id"}
	start := time.Now()
	for {
		r := runClient(t, l, lab.Node, dir, get...)
		switch {
		case want == 200 && r.Status == 200, want == 0 && strings.Contains(r.Error, "EACCES"):
			return time.Since(start)
		case r.Status != 200 && !strings.Contains(r.Error, "EACCES"):
			t.Fatalf("token-less GET from %s: %+v, want 200 or EACCES", dir, r)
		}
		if time.Since(start) > within {
			t.Fatalf("token-less GET from %s still %+v after %s, want %d", dir, r, within, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A cgroup made several levels deep at once (mkdir -p: the levels below
// the first are made before the daemon watches them) gets its grant as
// fast as one made alone, not at the next full read of the tree.
func TestDeepNewCgroupGetsItsGrantAtOnce(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	pol := writePolicy(t, t.TempDir(), "policy.yaml", fmt.Sprintf(`
rules:
  - name: deep-v1
    match: {cgroup: "%s/**/deep"}
    allowV1: true
`, l.CgroupRel))
	startDaemon(t, l, "--policy", pol)
	top := filepath.Join(l.Cgroup, "a")
	dir := filepath.Join(top, "b", "c", "deep")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for d := dir; d != l.Cgroup; d = filepath.Dir(d) {
			os.Remove(d)
		}
	})
	took := waitV1(t, l, dir, 200, 10*time.Second)
	t.Logf("allowV1 reached %s %s after mkdir -p", dir, took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("the grant took %s, want about as fast as for a cgroup made alone", took)
	}
}

// A reload compiles against the tree the daemon follows rather than reading
// it again: a cgroup made after the start, known only from the daemon's
// watch, gets the new policy's grant at once.
func TestReloadGrantsACgroupMadeAfterTheStart(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	dir := t.TempDir()
	pol := writePolicy(t, dir, "policy.yaml", fmt.Sprintf(`
rules:
  - name: nothing-yet
    match: {cgroup: "%s/other"}
    deny: true
`, l.CgroupRel))
	d := startDaemon(t, l, "--policy", pol)
	late := filepath.Join(l.Cgroup, "late")
	if err := os.Mkdir(late, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(late) })
	var st syscall.Stat_t
	if err := syscall.Stat(late, &st); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the late cgroup's own rule list", func() bool { return cgroupListed(t, l, st.Ino) })
	waitV1(t, l, late, 0, 5*time.Second)

	writePolicy(t, dir, "policy.yaml", fmt.Sprintf(`
rules:
  - name: late-v1
    match: {cgroup: "%s/late"}
    allowV1: true
`, l.CgroupRel))
	if err := d.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.WaitLog(`"msg":"policy reloaded"`, 10*time.Second)
	if took := waitV1(t, l, late, 200, 10*time.Second); took > 2*time.Second {
		t.Errorf("the reloaded grant reached the late cgroup after %s, want at once", took)
	}
}
