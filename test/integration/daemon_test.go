package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/lab"
)

type event = daemon.Event

func startDaemon(t testing.TB, l *lab.Lab, args ...string) *daemon.Daemon {
	t.Helper()
	return daemon.Start(t, bins.imdsguard, l, args...)
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
