package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/lab"
)

// event is the subset of the daemon's JSON event the tests check.
type event struct {
	Time             string `json:"time"`
	Kind             string `json:"kind"`
	Action           string `json:"action"`
	Reason           string `json:"reason"`
	Endpoint         string `json:"endpoint"`
	Method           string `json:"method"`
	Path             string `json:"path"`
	HasToken         *bool  `json:"has_token"`
	CredentialAccess bool   `json:"credential_access"`
	PID              int    `json:"pid"`
	PPID             int    `json:"ppid"`
	Comm             string `json:"comm"`
	UID              int    `json:"uid"`
	Cgroup           string `json:"cgroup"`
	CgroupID         uint64 `json:"cgroup_id"`
	NetnsCookie      string `json:"netns_cookie"`
	HostNetns        bool   `json:"host_netns"`
}

// daemon is a running `imdsguard run` guarding the lab's cgroup, with the
// lab's node namespace as its host.
type daemon struct {
	t    testing.TB
	cmd  *exec.Cmd
	done chan struct{}

	mu     sync.Mutex
	events []event
	raw    []string // stdout lines
	stderr bytes.Buffer
	err    error // exit status once done
}

func startDaemon(t testing.TB, l *lab.Lab, args ...string) *daemon {
	t.Helper()
	argv := append([]string{"run", "--cgroup", l.Cgroup, "--host-netns", l.NetnsPath(lab.Node)}, args...)
	d := &daemon{t: t, cmd: exec.Command(bins.imdsguard, argv...), done: make(chan struct{})}
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("starting imdsguard: %v", err)
	}
	ready := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			var ev event
			jerr := json.Unmarshal([]byte(line), &ev)
			d.mu.Lock()
			d.raw = append(d.raw, line)
			if jerr == nil {
				d.events = append(d.events, ev)
			} else {
				t.Errorf("daemon printed a non-JSON line on stdout: %q", line)
			}
			d.mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			d.mu.Lock()
			d.stderr.WriteString(line + "\n")
			d.mu.Unlock()
			if strings.Contains(line, `"msg":"enforcing"`) {
				once.Do(func() { close(ready) })
			}
		}
	}()
	go func() {
		wg.Wait()
		err := d.cmd.Wait()
		d.mu.Lock()
		d.err = err
		d.mu.Unlock()
		close(d.done)
	}()
	// Kill by pid only the daemon this test started, if a test failed before stopping it.
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(10 * time.Second):
				d.cmd.Process.Kill()
				<-d.done
			}
		}
	})
	select {
	case <-ready:
	case <-d.done:
		t.Fatalf("imdsguard exited before enforcing: %v\nstderr:\n%s", d.exitErr(), d.stderrText())
	case <-time.After(20 * time.Second):
		t.Fatalf("imdsguard not enforcing after 20s; stderr:\n%s", d.stderrText())
	}
	return d
}

func (d *daemon) exitErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

func (d *daemon) stderrText() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

// stop sends SIGTERM and returns the exit code.
func (d *daemon) stop() int {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatalf("signalling imdsguard: %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		d.t.Fatalf("imdsguard did not exit 15s after SIGTERM; stderr:\n%s", d.stderrText())
	}
	var ee *exec.ExitError
	if err := d.exitErr(); errors.As(err, &ee) {
		return ee.ExitCode()
	} else if err != nil {
		d.t.Fatalf("waiting for imdsguard: %v", err)
	}
	return 0
}

// waitEvent waits for an event matching match.
func (d *daemon) waitEvent(desc string, match func(event) bool) event {
	d.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d.mu.Lock()
		for _, ev := range d.events {
			if match(ev) {
				d.mu.Unlock()
				return ev
			}
		}
		n := len(d.events)
		raw := strings.Join(d.raw, "\n")
		d.mu.Unlock()
		if time.Now().After(deadline) {
			d.t.Fatalf("no event %s within 5s; %d events:\n%s", desc, n, raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// allEvents returns a copy of the events so far.
func (d *daemon) allEvents() []event {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]event(nil), d.events...)
}

// clientResult is labclient's JSON report.
type clientResult struct {
	PID          int     `json:"pid"`
	ConnectErrno string  `json:"connect_errno"`
	ConnectMS    float64 `json:"connect_ms"`
	Writes       []struct {
		N     int    `json:"n"`
		Errno string `json:"errno"`
	} `json:"writes"`
	Status            int            `json:"status"`
	Body              string         `json:"body"`
	Response          string         `json:"response"`
	ReadErrno         string         `json:"read_errno"`
	TokenStatus       int            `json:"token_status"`
	TokenConnectErrno string         `json:"token_connect_errno"`
	ConnectErrnos     map[string]int `json:"connect_errnos"`
	Error             string         `json:"error"`
}

// runClient runs labclient in ns inside the lab's cgroup (or cgroupDir).
func runClient(t testing.TB, l *lab.Lab, ns lab.NS, cgroupDir string, args ...string) clientResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var cmd *exec.Cmd
	if cgroupDir == "" {
		cmd = l.Command(ctx, ns, bins.labclient, args...)
	} else {
		cmd = l.CommandInCgroup(ctx, ns, cgroupDir, bins.labclient, args...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("labclient %v in %s: %v\nstderr: %s", args, ns, err, stderr.String())
	}
	return parseClient(t, stdout.Bytes())
}

func parseClient(t testing.TB, out []byte) clientResult {
	t.Helper()
	// The last JSON line is the report (earlier lines are progress markers).
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var r clientResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("labclient output is not JSON: %v\n%s", err, out)
	}
	return r
}
