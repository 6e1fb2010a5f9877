// Package daemon runs `imdsguard run` for tests and benchmarks: it guards a
// lab's cgroup with the lab's node namespace as the host, and collects the
// events the daemon prints and its log.
package daemon

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/lab"
)

// Event is the subset of the daemon's JSON event the tests check.
type Event struct {
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
	Rule             string `json:"rule"`
	ContainerID      string `json:"container_id"`
	Runtime          string `json:"runtime"`
	PodUID           string `json:"pod_uid"`
	Hostname         string `json:"hostname"`
	Pod              string `json:"pod"`
	Namespace        string `json:"namespace"`
	Container        string `json:"container"`
	Image            string `json:"image"`
	Exe              string `json:"exe"`
	Cmdline          string `json:"cmdline"`
	InstanceID       string `json:"instance_id"`
	Cloud            string `json:"cloud"`
	Count            int    `json:"count"`
	// policy, nftables and packet events
	Result      string `json:"result"`
	Error       string `json:"error"`
	Src         string `json:"src"`
	InInterface string `json:"in_interface"`
}

// Daemon is a running `imdsguard run` guarding the lab's cgroup, with the
// lab's node namespace as its host.
type Daemon struct {
	t    testing.TB
	cmd  *exec.Cmd
	done chan struct{}

	mu     sync.Mutex
	events []Event
	raw    []string // stdout lines
	stderr bytes.Buffer
	err    error // exit status once done
}

// Start runs the imdsguard binary at bin and waits until it enforces. The
// test's cleanup stops it (by its pid) if the test did not.
func Start(t testing.TB, bin string, l *lab.Lab, args ...string) *Daemon {
	t.Helper()
	return start(t, bin, l, false, args...)
}

// StartDiscardingEvents is Start with the daemon's events sent to
// /dev/null: benchmarks must not pay for the test parsing them.
func StartDiscardingEvents(t testing.TB, bin string, l *lab.Lab, args ...string) *Daemon {
	t.Helper()
	return start(t, bin, l, true, args...)
}

// Launch starts the daemon like Start but returns at once, without
// waiting for it to enforce: for tests of its start-up itself.
func Launch(t testing.TB, bin string, l *lab.Lab, args ...string) *Daemon {
	t.Helper()
	d, _ := launch(t, bin, l, false, args...)
	return d
}

func start(t testing.TB, bin string, l *lab.Lab, discard bool, args ...string) *Daemon {
	t.Helper()
	d, ready := launch(t, bin, l, discard, args...)
	select {
	case <-ready:
	case <-d.done:
		t.Fatalf("imdsguard exited before enforcing: %v\nstderr:\n%s", d.exitErr(), d.Stderr())
	case <-time.After(lab.Patience(20 * time.Second)):
		t.Fatalf("imdsguard not enforcing after %s; stderr:\n%s", lab.Patience(20*time.Second), d.Stderr())
	}
	return d
}

// launch starts the daemon; ready closes when it logs that it enforces.
func launch(t testing.TB, bin string, l *lab.Lab, discard bool, args ...string) (*Daemon, <-chan struct{}) {
	t.Helper()
	// Tests count events one by one: no folding unless a test asks for it
	// (a later --fold-window wins).
	// Pins go to the lab's own BPF filesystem; the daemon removes them at
	// exit unless a test asks to keep them (a later --on-exit wins).
	pinDir, err := l.PinDir()
	if err != nil {
		t.Fatal(err)
	}
	// The node is an EC2 instance unless a test says otherwise (a later
	// --dmi-dir wins): its firmware strings are what cloud: auto reads.
	argv := append([]string{"run", "--cgroup", l.Cgroup, "--host-netns", l.NetnsPath(lab.Node), "--fold-window", "0",
		"--pin-dir", pinDir, "--on-exit", "detach", "--dmi-dir", FakeDMI(t, "Amazon EC2")}, args...)
	d := &Daemon{t: t, cmd: exec.Command(bin, argv...), done: make(chan struct{})}
	var stdout io.Reader = strings.NewReader("")
	if discard {
		devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer devnull.Close()
		d.cmd.Stdout = devnull
	} else {
		pipe, err := d.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout = pipe
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
			var ev Event
			jerr := json.Unmarshal([]byte(line), &ev)
			d.mu.Lock()
			d.raw = append(d.raw, line)
			switch {
			case jerr == nil:
				d.events = append(d.events, ev)
			case json.Valid([]byte(line)):
				// another schema (--format ocsf): kept in Lines only
			default:
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
			case <-time.After(lab.Patience(10 * time.Second)):
				d.cmd.Process.Kill()
				<-d.done
			}
		}
	})
	return d, ready
}

func (d *Daemon) exitErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// Stderr is the daemon's log so far.
func (d *Daemon) Stderr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

// PID is the daemon's process id.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// Exited reports whether the daemon has exited.
func (d *Daemon) Exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and returns the exit code.
func (d *Daemon) Stop() int {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatalf("signalling imdsguard: %v", err)
	}
	return d.Wait()
}

// Wait waits up to 15 s (times lab.Patience) for the daemon to exit and returns the exit code
// (-1 when a signal ended it).
func (d *Daemon) Wait() int {
	d.t.Helper()
	select {
	case <-d.done:
	case <-time.After(lab.Patience(15 * time.Second)):
		d.t.Fatalf("imdsguard did not exit within %s; stderr:\n%s", lab.Patience(15*time.Second), d.Stderr())
	}
	var ee *exec.ExitError
	if err := d.exitErr(); errors.As(err, &ee) {
		return ee.ExitCode()
	} else if err != nil {
		d.t.Fatalf("waiting for imdsguard: %v", err)
	}
	return 0
}

// WaitEvent waits up to 5 s (times lab.Patience) for an event matching match.
func (d *Daemon) WaitEvent(desc string, match func(Event) bool) Event {
	d.t.Helper()
	timeout := lab.Patience(5 * time.Second)
	deadline := time.Now().Add(timeout)
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
			d.t.Fatalf("no event %s within %s; %d events:\n%s", desc, timeout, n, raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Events returns a copy of the events so far.
func (d *Daemon) Events() []Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Event(nil), d.events...)
}

// Lines returns the daemon's stdout lines so far.
func (d *Daemon) Lines() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.raw...)
}

// Signal sends sig to the daemon.
func (d *Daemon) Signal(sig os.Signal) error { return d.cmd.Process.Signal(sig) }

// WaitLog waits for a log line containing msg and returns it.
func (d *Daemon) WaitLog(msg string, timeout time.Duration) string {
	d.t.Helper()
	timeout = lab.Patience(timeout)
	deadline := time.Now().Add(timeout)
	for {
		for _, line := range strings.Split(d.Stderr(), "\n") {
			if strings.Contains(line, msg) {
				return line
			}
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("no log line %q within %s; stderr:\n%s", msg, timeout, d.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// FakeDMI writes a DMI directory whose sys_vendor is vendor (what cloud:
// auto reads to name the cloud: "Amazon EC2", "Google", "Alibaba Cloud",
// ...) and returns its path.
func FakeDMI(t testing.TB, vendor string, more ...string) string {
	t.Helper()
	dir := t.TempDir()
	files := append([]string{"sys_vendor", vendor}, more...)
	for i := 0; i+1 < len(files); i += 2 {
		if err := os.WriteFile(filepath.Join(dir, files[i]), []byte(files[i+1]+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
