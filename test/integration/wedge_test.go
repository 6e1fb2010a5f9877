package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// Replacing the policy file with a FIFO (which blocks open() until a writer
// comes) must not wedge the daemon: the reload fails at once, naming the
// problem, the policy in force stays, rescans go on (a cgroup made afterwards
// gets its rule), /readyz and status report a fresh rescan, and SIGTERM ends
// the daemon.
func TestPolicyReplacedByAFIFODoesNotWedgeTheDaemon(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	dir := t.TempDir()
	pol := writePolicy(t, dir, "policy.yaml", fmt.Sprintf(`
rules:
  - name: late-jobs
    match: {cgroup: "%s/late"}
    deny: true
`, l.CgroupRel))
	d := startDaemon(t, l, "--policy", pol, "--metrics-addr", "127.0.0.1:0")
	base := metricsBase(t, d)

	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(fifo, pol); err != nil {
		t.Fatal(err)
	}
	if err := d.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ev := d.WaitEvent("the refused reload", func(e event) bool { return e.Kind == "policy" && e.Result == "invalid" })
	if !strings.Contains(ev.Error, "is not a regular file") {
		t.Errorf("reload event %+v, want an error naming a file that is not regular", ev)
	}

	// rescans go on: a cgroup made now gets the rule of the policy in force
	late, _ := l.NewSubCgroup(t, "late")
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := runClient(t, l, lab.Node, late, "-mode", "connect", "-addr", imdsAddr)
		if r.ConnectErrno == "EPERM" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a cgroup made after the FIFO swap: %+v, want EPERM by late-jobs within 5 s", r)
		}
		time.Sleep(100 * time.Millisecond)
	}

	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "last cgroup rescan") {
		t.Errorf("/readyz: %d %q, want 200 with the rescan's age", resp.StatusCode, body)
	}
	out, stderr, code := imdsguardCmd(t, l, "status", "--json")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	var st struct {
		LastRescanAge *float64 `json:"last_rescan_age_seconds"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.LastRescanAge == nil || *st.LastRescanAge > 5 {
		t.Errorf("status --json: %v %s, want last_rescan_age_seconds under 5", err, out)
	}

	stopped := make(chan int, 1)
	go func() { stopped <- d.Stop() }()
	select {
	case code := <-stopped:
		if code != 0 {
			t.Errorf("SIGTERM: exit %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SIGTERM did not end the daemon within 10 s")
	}
}
