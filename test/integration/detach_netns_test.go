package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/lab"
)

// startDaemonInNode runs the daemon inside the lab's node namespace with
// that namespace as its own host (no --host-netns), as a daemon runs in
// the host's namespace on a real node, and stops it leaving its table and
// pins in place.
func startDaemonInNode(t *testing.T, l *lab.Lab) {
	t.Helper()
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		t.Skipf("nsenter: %v", err)
	}
	wrapper := filepath.Join(t.TempDir(), "imdsguard-in-node")
	script := fmt.Sprintf("#!/bin/sh\nexec %s --net=%s -- %s \"$@\"\n", nsenter, l.NetnsPath(lab.Node), bins.imdsguard)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d := daemon.Start(t, wrapper, l, "--host-netns=", "--on-exit", "keep")
	if code := d.Stop(); code != 0 {
		t.Fatalf("daemon exit %d", code)
	}
	d.WaitLog("enforcement stays pinned", time.Second)
	if out := nftIn(t, l, lab.Node, "list", "table", "inet", "imdsguard"); !strings.Contains(out, "table inet imdsguard") {
		t.Fatalf("no table in the node namespace after the daemon stopped:\n%s", out)
	}
}

// imdsguardIn runs imdsguard with the lab's pin directory in namespace ns.
func imdsguardIn(t *testing.T, l *lab.Lab, ns lab.NS, args ...string) (string, string, int) {
	t.Helper()
	pinDir, err := l.PinDir()
	if err != nil {
		t.Fatal(err)
	}
	out, stderr, code, _ := runInLab(t, l, ns, nil, bins.imdsguard, append(args, "--pin-dir", pinDir)...)
	return out, stderr, code
}

func tableInNode(t *testing.T, l *lab.Lab) bool {
	t.Helper()
	_, _, code, _ := runInLab(t, l, lab.Node, nil, "nft", "list", "table", "inet", "imdsguard")
	return code == 0
}

// `imdsguard detach` run from another network namespace (a privileged pod
// without hostNetwork, a shell entered with nsenter) finds the daemon's
// table by what the daemon recorded and removes it; status finds it too.
func TestDetachFromAnotherNetnsRemovesTheTable(t *testing.T) {
	l := lab.New(t)
	startDaemonInNode(t, l)

	out, stderr, code := imdsguardIn(t, l, lab.Pod, "status")
	if code != 0 || !strings.Contains(out, "table inet imdsguard present") {
		t.Errorf("status from the pod: exit %d, want 0 and the table present:\n%s%s", code, out, stderr)
	}
	out, stderr, code = imdsguardIn(t, l, lab.Pod, "detach")
	if code != 0 || !strings.Contains(out, "removed nftables table inet imdsguard") {
		t.Errorf("detach from the pod: exit %d, want 0 and the table named:\n%s%s", code, out, stderr)
	}
	if tableInNode(t, l) {
		t.Error("the table is still in the node namespace after detach")
	}
}

// When no path from where detach runs leads to the daemon's namespace
// (here: the pod's namespace, a PID namespace of its own and /run/netns
// hidden), detach removes what it can reach, says where the table is and
// how to remove it, and exits non-zero; that advice works.
func TestDetachThatCannotReachTheTableSaysWhereItIs(t *testing.T) {
	l := lab.New(t)
	startDaemonInNode(t, l)
	var st unix.Stat_t
	if err := unix.Stat(l.NetnsPath(lab.Node), &st); err != nil {
		t.Fatal(err)
	}
	pinDir, err := l.PinDir()
	if err != nil {
		t.Fatal(err)
	}
	hidden := `mount -t tmpfs tmpfs /run/netns && exec "$0" "$1" --pin-dir "$2"`
	run := func(cmd string) (string, string, int) {
		out, stderr, code, _ := runInLab(t, l, lab.Pod, nil, "unshare", "--mount", "--pid", "--fork", "--mount-proc",
			"sh", "-c", hidden, bins.imdsguard, cmd, pinDir)
		return out, stderr, code
	}
	where := fmt.Sprintf("are in the daemon's network namespace net:[%d]", st.Ino)
	out, _, _ := run("status")
	if !strings.Contains(out, "nftables:") || !strings.Contains(out, where) {
		t.Errorf("status out of reach: want the nftables line to say %q:\n%s", where, out)
	}
	out, stderr, code := run("detach")
	t.Logf("detach out of reach: exit %d\n%s%s", code, out, stderr)
	if code != 1 || !strings.Contains(stderr, where) || !strings.Contains(stderr, "nsenter --net=/proc/PID/ns/net imdsguard detach") ||
		!strings.Contains(out, "removed link connect4") {
		t.Errorf("detach out of reach: exit %d, want 1, the hooks removed and the table's namespace and the command named:\n%s%s", code, out, stderr)
	}
	if !tableInNode(t, l) {
		t.Fatal("the table is gone although detach said it left it")
	}
	// The advice: detach run in that namespace needs no record.
	out, stderr, code = imdsguardIn(t, l, lab.Node, "detach")
	if code != 0 || !strings.Contains(out, "removed nftables table inet imdsguard") || tableInNode(t, l) {
		t.Errorf("detach in the node namespace: exit %d, want 0 and the table removed:\n%s%s", code, out, stderr)
	}
}
