package integration

import (
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// mptcpClient connects with IPPROTO_MPTCP and sends a token GET; it prints
// "refused <errno>" when connect fails, else the status line's code, or
// "timeout".
const mptcpClient = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.settimeout(5)
try:
    s.connect((sys.argv[1], 80))
except PermissionError as e:
    print("refused", e.errno); sys.exit(0)
except socket.timeout:
    print("timeout"); sys.exit(0)
try:
    s.sendall(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: t\r\n\r\n")
    print(s.recv(100).split(b" ")[1].decode())
except socket.timeout:
    print("timeout")
except OSError as e:
    print("error", e.errno)
`

// An MPTCP socket's subflows cannot be put under the request judge, so a
// connection to IMDS over MPTCP is refused at connect with EPERM, at once,
// rather than held back until the client times out.
func TestMPTCPIsRefusedAtConnect(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)
	out, stderr, code, took := runInLab(t, l, lab.Node, nil, "python3", "-c", mptcpClient, lab.IMDSv4)
	if code != 0 {
		t.Fatalf("python3: exit %d: %s", code, stderr)
	}
	if got := strings.TrimSpace(out); got != "refused 1" {
		t.Fatalf("MPTCP client got %q after %v, want connect refused with EPERM (1)", got, took)
	}
	if took.Seconds() > 2 {
		t.Errorf("refusal took %v, want at once", took)
	}
	ev := d.WaitEvent("the MPTCP connect", func(e event) bool { return e.Kind == "connect" && e.Comm == "python3" })
	if ev.Action != "deny" || ev.Reason != "unsupported_protocol" {
		t.Errorf("event %+v, want connect deny unsupported_protocol", ev)
	}
	if n := srv.ReceivedBytes(); n != 0 {
		t.Errorf("IMDS received %d bytes over MPTCP", n)
	}
}
