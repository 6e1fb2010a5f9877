package integration

import (
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// shutClient writes on IMDS sockets in three ways and prints the errno
// each write got ("ok" when it succeeded): after shutdown(SHUT_WR); after
// SHUT_WR when the first half of a request is already written (held back
// by the judge); and a token-less credential request (refused).
const shutClient = `
import json, socket, sys
out = {}
req = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: t\r\n\r\n"
def conn():
    return socket.create_connection((sys.argv[1], 80), timeout=3)
def step(name, f):
    try:
        f()
        out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
s = conn()
s.shutdown(socket.SHUT_WR)
step("after_shutdown", lambda: s.send(req, socket.MSG_NOSIGNAL))
s = conn()
step("first_half", lambda: s.send(req[:30]))
s.shutdown(socket.SHUT_WR)
step("second_half", lambda: s.send(req[30:], socket.MSG_NOSIGNAL))
s = conn()
step("refused", lambda: s.send(b"GET /latest/meta-data/iam/security-credentials/role HTTP/1.1\r\nHost: x\r\n\r\n"))
print(json.dumps(out))
`

// A write on a socket the client shut for writing fails with the kernel's
// own EPIPE, not the guard's EACCES, and sends nothing; refusals still get
// EACCES.
func TestWriteAfterShutdownGetsEPIPE(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	startDaemon(t, l)
	var got map[string]any
	runPythonReport(t, l, &got, shutClient, lab.IMDSv4)
	const epipe, eacces = float64(32), float64(13)
	want := map[string]any{"after_shutdown": epipe, "first_half": "ok", "second_half": epipe, "refused": eacces}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: got %v, want %v (EPIPE 32, EACCES 13)", k, got[k], w)
		}
	}
	time.Sleep(300 * time.Millisecond) // retransmissions, had any gone out
	for _, c := range srv.Conns() {
		if len(c.Received) > 0 {
			t.Errorf("server received %q, want nothing: no request was complete and allowed", c.Received)
		}
	}
}
