package integration

import (
	"bytes"
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/lab"
	"github.com/imdsguard/imdsguard/test/labclient/report"
)

type event = daemon.Event

func startDaemon(t testing.TB, l *lab.Lab, args ...string) *daemon.Daemon {
	t.Helper()
	return daemon.Start(t, bins.imdsguard, l, args...)
}

// clientResult is labclient's report.
type clientResult = report.Report

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
	r, err := report.Parse(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return r
}
