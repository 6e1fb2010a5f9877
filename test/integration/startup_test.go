package integration

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/lab"
)

// A SIGTERM while the daemon is still starting (here: reading its
// instance id from an IMDS that accepts and never answers, after the
// guard is loaded) ends it the way --on-exit says: with detach nothing
// stays attached, pinned or in nftables, and it exits 0 saying so.
func TestSignalDuringStartUpEndsTheDaemonAsOnExitSays(t *testing.T) {
	l := lab.New(t)
	ln, err := l.Listen(lab.IMDS, "tcp", imdsAddr)
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 16) // accepted and never answered
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	}()
	d := daemon.Launch(t, bins.imdsguard, l, "--instance-id", "auto", "--on-exit", "detach")
	waitFor(t, 20*time.Second, "the guard to be attached", func() bool { return attachedPrograms(t, l.Cgroup) > 0 })
	if err := d.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := d.Wait(); code != 0 {
		t.Fatalf("exit %d after SIGTERM during start-up, want 0; stderr:\n%s", code, d.Stderr())
	}
	if !strings.Contains(d.Stderr(), `"msg":"detached; exiting"`) {
		t.Errorf("no orderly detach in the log:\n%s", d.Stderr())
	}
	if strings.Contains(d.Stderr(), `"msg":"enforcing"`) {
		t.Errorf("a daemon stopped during start-up still announced that it enforces:\n%s", d.Stderr())
	}
	if n := attachedPrograms(t, l.Cgroup); n != 0 {
		t.Errorf("%d programs still attached", n)
	}
	if st := readStatus(t, l); st.Pinned {
		t.Errorf("still pinned: %+v", st)
	}
	if out, _, code, _ := runInLab(t, l, lab.Node, nil, "nft", "list", "table", "inet", "imdsguard"); code == 0 {
		t.Errorf("the nftables table is still there:\n%s", out)
	}
	ln.Close()
	for {
		select {
		case c := <-held:
			c.Close()
		default:
			return
		}
	}
}
