package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// oobClient sends an allowed request, reads its answer, then a second
// allowed request whose last byte goes as urgent data (MSG_OOB): the judge
// sees it whole, a server without SO_OOBINLINE never reads that byte in its
// stream, so what it parses next is not what the judge judged. Then one more
// write. It prints what each step returned.
const oobClient = `
import json, socket, sys
out = {}
s = socket.create_connection((sys.argv[1], 80), timeout=3)
req = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: t\r\n\r\n"
s.sendall(req)
out["first"] = s.recv(100).split(b" ")[1].decode()
def step(name, f):
    try:
        f()
        out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
step("body", lambda: s.sendall(req[:-1]))
step("oob", lambda: s.send(req[-1:], socket.MSG_OOB))
step("later", lambda: s.sendall(req))
print(json.dumps(out))
`

// Urgent data parts the server's stream from the judge's (a server reads
// the urgent byte out of band, or drops it): the socket is poisoned. No
// byte from the urgent one on reaches IMDS, every later write is refused,
// and one event says so.
func TestUrgentDataPoisonsTheSocket(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)
	var r map[string]any
	runPythonReport(t, l, &r, oobClient, lab.IMDSv4)
	if r["first"] != "401" && r["first"] != "200" {
		t.Fatalf("first request: %v, want an answer", r)
	}
	if r["oob"] != "ok" || r["later"] != float64(13) {
		t.Errorf("client %v: want the urgent byte accepted, the write after it refused with EACCES (13)", r)
	}
	ev := d.WaitEvent("the poisoning", func(e event) bool { return e.Reason == "urgent_data" })
	if ev.Action != "deny" || ev.Comm != "python3" {
		t.Errorf("event %+v, want deny urgent_data naming python3", ev)
	}
	time.Sleep(300 * time.Millisecond) // retransmissions, had any gone out
	var got []byte
	for _, c := range srv.Conns() {
		got = append(got, c.Received...)
	}
	if strings.Count(string(got), "GET") != 1 {
		t.Fatalf("server received %q, want only the first request", got)
	}
}
