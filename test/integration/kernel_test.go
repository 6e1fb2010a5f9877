package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/imdsguard/imdsguard/internal/loader"
	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// kernelExpectEnv is set by the kernel matrix (test/kernels) to what the
// kernel it booted must give: "supported" or "refused". Unset (a developer's
// machine), the kernel's own probes decide which half of the test runs.
const kernelExpectEnv = "IMDSGUARD_KERNEL_EXPECT"

// refusalLine is the one line an unsupported kernel gets: the missing
// feature, the release that brought it, and the supported minimum.
var refusalLine = regexp.MustCompile(`^imdsguard: kernel \S+ lacks .+ \((Linux \d+\.\d+|a newer kernel)\); imdsguard supports Linux ` +
	regexp.QuoteMeta(loader.MinKernel) + ` and newer$`)

// TestKernelSupport: on a kernel imdsguard supports, the daemon starts and
// enforces; on one it does not (the matrix boots Debian 11's 5.10 for
// this), `imdsguard run` exits 1 with one line naming what is missing, and
// leaves nothing behind: no program on any hook, no pin, no nftables table.
func TestKernelSupport(t *testing.T) {
	l := lab.New(t)
	probeErr := loader.CheckKernel()
	supported := probeErr == nil
	switch want := os.Getenv(kernelExpectEnv); want {
	case "":
	case "supported", "refused":
		if supported != (want == "supported") {
			t.Fatalf("%s=%s, but the kernel's probes say supported=%v (%v)", kernelExpectEnv, want, supported, probeErr)
		}
	default:
		t.Fatalf("%s=%q: want supported or refused", kernelExpectEnv, want)
	}
	if supported {
		startIMDS(t, l, imdsserver.Options{})
		startDaemon(t, l)
		r := runClient(t, l, lab.Pod, "", "-mode", "http", "-addr", imdsAddr, "-timeout", "5s", "-path", credPath)
		if r.ConnectErrno != "EPERM" {
			t.Fatalf("supported kernel: pod connect errno %q (status %d), want EPERM", r.ConnectErrno, r.Status)
		}
		return
	}

	pinDir, err := l.PinDir()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.imdsguard, "run", "--cgroup", l.Cgroup, "--host-netns", l.NetnsPath(lab.Node),
		"--pin-dir", pinDir)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("unsupported kernel: exit %v, want 1; stderr:\n%s", err, stderr.String())
	}
	line := strings.TrimRight(stderr.String(), "\n")
	if strings.Contains(line, "\n") || !refusalLine.MatchString(line) {
		t.Fatalf("stderr %q: want one line matching %s", stderr.String(), refusalLine)
	}
	t.Logf("refused: %s", line)
	if stdout.Len() != 0 {
		t.Errorf("stdout not empty: %q", stdout.String())
	}
	n, err := lab.ProgramsOn(l.Cgroup, ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
		ebpf.AttachCGroupSockOps, ebpf.AttachCGroupInetEgress)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d programs attached after a refused start", n)
	}
	if entries, err := os.ReadDir(pinDir); err == nil && len(entries) > 0 {
		t.Errorf("pins left in %s after a refused start: %v", pinDir, entries)
	}
	if tables := nftIn(t, l, lab.Node, "list", "tables"); strings.Contains(tables, "imdsguard") {
		t.Errorf("nftables table left after a refused start:\n%s", tables)
	}
}
