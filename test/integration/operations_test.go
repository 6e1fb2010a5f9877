package integration

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// A full ring buffer loses events, never verdicts: the exact totals come
// from the kernel's counters, and the loss is reported on stderr.
func TestFullRingBufferIsReportedAndTotalsStayExact(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l, "--ringbuf-bytes", "4096")

	const attempts = 200
	// Freeze the daemon so nothing drains the one-page ring buffer.
	if err := d.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	r := runClient(t, l, lab.Pod, "", "-mode", "connect", "-repeat", "200", "-addr", net.JoinHostPort(lab.IMDSv4, "80"))
	if err := d.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if r.ConnectErrnos["EPERM"] != attempts {
		t.Fatalf("connect outcomes %v, want %d x EPERM", r.ConnectErrnos, attempts)
	}

	warn := d.WaitLog("events lost", 10*time.Second)
	if code := d.Stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	exit := d.WaitLog("detached; exiting", time.Second)

	var w struct {
		LostTotal uint64 `json:"lost_total"`
	}
	if err := json.Unmarshal([]byte(warn), &w); err != nil || w.LostTotal == 0 {
		t.Fatalf("loss warning %q: want a lost_total above 0 (%v)", warn, err)
	}
	var x struct {
		Totals     map[string]uint64 `json:"totals"`
		EventsLost uint64            `json:"events_lost"`
	}
	if err := json.Unmarshal([]byte(exit), &x); err != nil {
		t.Fatal(err)
	}
	if got := x.Totals["connect_deny_non_host_netns"]; got != attempts {
		t.Errorf("kernel total of denied connects = %d, want exactly %d (totals %v)", got, attempts, x.Totals)
	}
	delivered := 0
	for _, ev := range d.Events() {
		if ev.PID == r.PID {
			delivered++
		}
	}
	if uint64(delivered)+x.EventsLost != attempts || x.EventsLost != w.LostTotal {
		t.Errorf("%d events delivered + %d lost (warning said %d), want %d attempts", delivered, x.EventsLost, w.LostTotal, attempts)
	}
}

// A start that cannot work says why in one line, exits non-zero and leaves
// nothing attached.
func TestStartFailuresAreOneClearLine(t *testing.T) {
	l := lab.New(t)
	badPolicy := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(badPolicy, []byte("mode: permissive\nblockNonHostNetns: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"run", "--cgroup", l.Cgroup, "--host-netns", l.NetnsPath(lab.Node)}
	tests := []struct {
		name     string
		args     []string
		nobody   bool
		wantCode int
		want     string
		env      []string
	}{
		{"unknown flag", append(base, "--bogus"), false, 2, "flag provided but not defined: -bogus", nil},
		{"bad mode", append(base, "--mode", "permissive"), false, 2, `--mode: "permissive" is not a mode`, nil},
		{"bad ring buffer size", append(base, "--ringbuf-bytes", "5000"), false, 2, "--ringbuf-bytes: 5000 is not a power of two", nil},
		{"stray argument", append(base, "extra"), false, 2, `unexpected argument "extra"`, nil},
		{"not a cgroup", []string{"run", "--cgroup", t.TempDir()}, false, 1, "is not a cgroup v2 directory", nil},
		{"no such netns", []string{"run", "--cgroup", l.Cgroup, "--host-netns", "/nonexistent/netns"}, false, 1, "host network namespace: opening /nonexistent/netns", nil},
		{"bad policy", append(base, "--policy", badPolicy), false, 1, badPolicy + `:1: mode: "permissive" is not a mode`, nil},
		{"missing policy", append(base, "--policy", badPolicy+".missing"), false, 1, "reading policy", nil},
		{"bad on-exit", append(base, "--on-exit", "maybe"), false, 2, `--on-exit: "maybe" is not keep or detach`, nil},
		{"relative pin dir", append(base, "--pin-dir", "pins"), false, 2, `--pin-dir: "pins" is not an absolute path`, nil},
		{"pin dir off bpffs", append(base, "--pin-dir", filepath.Join(t.TempDir(), "imdsguard")), false, 1, "is not on a BPF filesystem", nil},
		{"startup taint without node name", append(base, "--startup-taint", "imdsguard.io/not-ready"), false, 1, "--startup-taint: NODE_NAME is not set", nil},
		{"startup taint outside a pod", append(base, "--startup-taint", "imdsguard.io/not-ready"), false, 1, "--startup-taint: not running in a Kubernetes pod", []string{"NODE_NAME=node-1"}},
		{"bad startup taint", append(base, "--startup-taint", "imdsguard.io/not-ready:Sometimes"), false, 2, "--startup-taint: ", nil},
		{"not root", base, true, 1, "must run as root (missing CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN)", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bins.imdsguard, tt.args...)
			cmd.Env = append(os.Environ(), tt.env...)
			if tt.nobody {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			}
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tt.wantCode {
				t.Fatalf("exit: %v, want code %d; stderr:\n%s", err, tt.wantCode, stderr.String())
			}
			lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "imdsguard: ") || !strings.Contains(lines[0], tt.want) {
				t.Fatalf("stderr %q: want one line \"imdsguard: …%s…\"", stderr.String(), tt.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout not empty: %q", stdout.String())
			}
			if n := attachedPrograms(t, l.Cgroup); n != 0 {
				t.Fatalf("%d programs left attached after a failed start", n)
			}
		})
	}
}

// AWS's own IMDS mock, a third-party implementation, behind the guard.
func TestAgainstAmazonEC2MetadataMock(t *testing.T) {
	l := lab.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The mock listens in the imds namespace only; it is not in the lab cgroup.
	mock := exec.CommandContext(ctx, "nsenter", "--net="+l.NetnsPath(lab.IMDS), "--", bins.mock,
		"--hostname", lab.IMDSv4, "--port", "80", "--imdsv2")
	mock.Dir = t.TempDir() // it may write config files to its working directory
	mock.Env = append(os.Environ(), "HOME="+mock.Dir)
	var mockOut strings.Builder
	mock.Stdout, mock.Stderr = &mockOut, &mockOut
	if err := mock.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		mock.Wait()
	})

	// Wait until the mock serves, from the host side, before the guard starts.
	addr := net.JoinHostPort(lab.IMDSv4, "80")
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := runClient(t, l, lab.Node, "", "-mode", "http", "-addr", addr, "-fetch-token", "-path", "/latest/meta-data/instance-id")
		if r.Status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ec2-metadata-mock not serving after 20s (last: %+v); output:\n%s", r, mockOut.String())
		}
		time.Sleep(200 * time.Millisecond)
	}

	d := startDaemon(t, l)
	pod := runClient(t, l, lab.Pod, "", "-mode", "http", "-addr", addr, "-fetch-token", "-path", "/latest/meta-data/instance-id")
	if pod.TokenConnectErrno != "EPERM" || pod.ConnectErrno != "EPERM" || pod.Status != 0 {
		t.Fatalf("pod against the mock: token errno %q, errno %q, status %d; want EPERM for both", pod.TokenConnectErrno, pod.ConnectErrno, pod.Status)
	}
	host := runClient(t, l, lab.Node, "", "-mode", "http", "-addr", addr, "-fetch-token", "-path", "/latest/meta-data/instance-id")
	if host.TokenStatus != 200 || host.Status != 200 || !strings.HasPrefix(host.Body, "i-") {
		t.Fatalf("host against the mock: token status %d, status %d, body %q; want an instance id", host.TokenStatus, host.Status, host.Body)
	}
	d.WaitEvent("deny for the pod", func(e event) bool { return e.PID == pod.PID && e.Action == "deny" })
	d.WaitEvent("allow for the host", func(e event) bool { return e.PID == host.PID && e.Action == "allow" })
}
