package integration

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// syslogCollector accepts octet-counted RFC 5424 messages on a loopback
// port and collects them.
type syslogCollector struct {
	ln   net.Listener
	msgs safeBuffer // one message per line
}

func newCollector(t testing.TB, addr string) *syslogCollector {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &syslogCollector{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				rd := bufio.NewReader(conn)
				for {
					lenStr, err := rd.ReadString(' ')
					if err != nil {
						return
					}
					n, err := strconv.Atoi(strings.TrimSpace(lenStr))
					if err != nil {
						return
					}
					buf := make([]byte, n)
					if _, err := ioReadFull(rd, buf); err != nil {
						return
					}
					c.msgs.Write(append(buf, '\n'))
				}
			}()
		}
	}()
	return c
}

func (c *syslogCollector) lines() []string {
	s := strings.TrimSpace(c.msgs.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// Events reach a file (reopened on SIGHUP, as logrotate needs) and a syslog
// collector; a collector that is down gets the events once it is back; the
// OCSF format loads as OCSF.
func TestOutputsFileSyslogOutageAndOCSF(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	dir := t.TempDir()
	logFile := filepath.Join(dir, "events.log")
	// a free port, with nothing listening yet: the collector is "down"
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Close()

	d := startDaemon(t, l, "--output", "stdout,file:"+logFile, "--output", "syslog+tcp://"+addr, "--format", "ocsf")
	deny := func() {
		t.Helper()
		if _, _, code, _ := runInLab(t, l, lab.Node, nil, "curl", "-sS", "-m", "5", "http://"+imdsAddr+credPath); code != 55 {
			t.Fatalf("curl exit %d", code)
		}
	}
	deny()
	deny()
	time.Sleep(300 * time.Millisecond)
	coll := newCollector(t, addr) // the collector comes back
	waitFor(t, 10*time.Second, "the queued events at the collector", func() bool { return len(coll.lines()) >= 4 })

	// OCSF on stdout and in the file: HTTP Activity for the requests
	for _, line := range d.Lines() {
		var o map[string]any
		if err := json.Unmarshal([]byte(line), &o); err != nil {
			t.Fatalf("stdout line is not JSON: %q", line)
		}
		if o["class_uid"] == float64(4002) {
			hr, _ := o["http_request"].(map[string]any)
			if hr == nil || hr["http_method"] != "GET" {
				t.Errorf("OCSF HTTP Activity without its request: %v", o)
			}
		}
	}
	data, err := os.ReadFile(logFile)
	if err != nil || !strings.Contains(string(data), `"class_uid":4002`) {
		t.Fatalf("file output: %v %q", err, data)
	}
	for _, m := range coll.lines() {
		if !strings.HasPrefix(m, "<") || !strings.Contains(m, " imdsguard ") {
			t.Errorf("not an RFC 5424 message from imdsguard: %q", m)
		}
	}
	if !strings.Contains(strings.Join(coll.lines(), "\n"), `path="`+credPath+`"`) {
		t.Errorf("the collector did not get the request's path in structured data:\n%s", strings.Join(coll.lines(), "\n"))
	}

	// logrotate: move the file away, SIGHUP, the next event goes to a new file
	if err := os.Rename(logFile, logFile+".1"); err != nil {
		t.Fatal(err)
	}
	if err := d.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	deny()
	waitFor(t, 3*time.Second, "the reopened file", func() bool {
		b, err := os.ReadFile(logFile)
		return err == nil && strings.Contains(string(b), `"class_uid":4002`)
	})
}

// The policy's output section chooses the outputs when no flag does.
func TestOutputFromPolicy(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	dir := t.TempDir()
	logFile := filepath.Join(dir, "events.log")
	pol := writePolicy(t, dir, "policy.yaml", "output:\n  format: json\n  targets: [\"file:"+logFile+"\"]\n  foldWindow: 0s\n")
	d := startDaemon(t, l, "--policy", pol)
	if _, _, code, _ := runInLab(t, l, lab.Node, nil, "curl", "-sS", "-m", "5", "http://"+imdsAddr+credPath); code != 55 {
		t.Fatalf("curl exit %d", code)
	}
	waitFor(t, 3*time.Second, "the event in the policy's file", func() bool {
		b, err := os.ReadFile(logFile)
		return err == nil && strings.Contains(string(b), `"reason":"imdsv1_no_token"`)
	})
	if len(d.Lines()) != 0 {
		t.Errorf("stdout is not a target, yet got %d lines", len(d.Lines()))
	}
}
