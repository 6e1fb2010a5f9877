package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// TCP Fast Open hands the request to the TCP stack inside connect, before
// sockops can put the socket under sk_msg: without the egress guard this
// token-less request reached IMDS and got the role name back.
func TestFastOpenDataIsNotABypass(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)

	script := `
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# a blocking socket (Python's settimeout would make it non-blocking, and
# MSG_FASTOPEN then sends nothing); SO_RCVTIMEO bounds the wait for a reply
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 3, 0))
try:
    s.sendto(b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", socket.MSG_FASTOPEN, ("169.254.169.254", 80))
    print("response", s.recv(4096))
except Exception as e:
    print("error", type(e).__name__)
`
	out, stderr, code, _ := runInLab(t, l, lab.Node, nil, "/usr/bin/python3", "-c", script)
	if code != 0 || strings.Contains(out, imdsserver.DefaultRole) {
		t.Fatalf("Fast Open client: exit %d out %q stderr %q; it must get nothing", code, out, stderr)
	}
	if n := srv.ReceivedBytes(); n != 0 {
		t.Fatalf("IMDS received %d bytes of an unjudged Fast Open request", n)
	}
	ev := d.WaitEvent("unjudged write", func(e event) bool { return e.Reason == "unjudged_write" })
	if ev.Action != "deny" || ev.Endpoint != "169.254.169.254:80" || ev.Cgroup != l.CgroupRel {
		t.Fatalf("event %+v, want deny unjudged_write on 169.254.169.254:80 in the lab cgroup", ev)
	}
}

// The egress guard counts judged bytes; a judged write must not lift it
// over bytes the judge never saw. Fast Open data (a token-less credentials
// request, held back), then a judged request with a token and a body larger
// than it: before, the count rose past the held bytes and their
// retransmission reached IMDS. Now the socket's queued bytes and the
// judged count disagree at that write, and the socket is poisoned.
func TestJudgedWriteDoesNotReleaseUnjudgedBytes(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)

	script := `
import errno, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 2, 0))
s.sendto(b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\n\r\n", socket.MSG_FASTOPEN, ("169.254.169.254", 80))
body = b"x" * 4000
try:
    s.sendall(b"POST /latest/x HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: fake\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    print("sent")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
try:
    print("response", s.recv(4096))
except Exception as e:
    print("no response", type(e).__name__)
`
	out, stderr, code, _ := runInLab(t, l, lab.Node, nil, "/usr/bin/python3", "-c", script)
	if code != 0 {
		t.Fatalf("client: exit %d: %s", code, stderr)
	}
	if !strings.HasPrefix(out, "EACCES") {
		t.Errorf("client printed %q, want the judged write refused (EACCES)", out)
	}
	time.Sleep(time.Second) // TCP's retransmissions of the held bytes, had the guard let them go
	for _, r := range srv.Requests() {
		t.Errorf("IMDS got %s %s", r.Method, r.URI)
	}
	if n := srv.ReceivedBytes(); n != 0 {
		t.Errorf("IMDS received %d bytes", n)
	}
	ev := d.WaitEvent("the poisoning", func(e event) bool { return e.Reason == "unjudged_write" && e.Kind == "request" && e.Comm == "python3" })
	if ev.Action != "deny" {
		t.Errorf("event %+v, want deny unjudged_write", ev)
	}
}

// A blocking write issued while a non-blocking connect is still in progress
// waits inside the TCP stack and continues there once connected, outside
// sk_msg. The IMDS side holds back its SYN-ACK for a moment (nftables in the
// imds namespace) so the write is certain to start before the connection is
// established.
func TestWriteRacingConnectIsNotABypass(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)

	nft := func(args ...string) {
		t.Helper()
		out, stderr, code, _ := runInLab(t, l, lab.IMDS, nil, "nft", args...)
		if code != 0 {
			t.Fatalf("nft %v: exit %d %s %s", args, code, out, stderr)
		}
	}
	nft("add", "table", "inet", "holdsynack")
	t.Cleanup(func() { runInLab(t, l, lab.IMDS, nil, "nft", "delete", "table", "inet", "holdsynack") })
	nft("add", "chain", "inet", "holdsynack", "out", "{ type filter hook output priority 0 ; }")
	nft("add", "rule", "inet", "holdsynack", "out", "tcp", "flags", "&", "(syn|ack)", "==", "syn|ack", "drop")

	script := `
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setblocking(False)
s.connect_ex(("169.254.169.254", 80))
s.setblocking(True)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 3, 0))
print("writing", flush=True)
try:
    s.sendall(b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    print("response", s.recv(4096))
except Exception as e:
    print("error", type(e).__name__)
`
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := l.Command(ctx, lab.Node, "/usr/bin/python3", "-c", script)
	var out safeBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "writing") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the write is now waiting for the connection
	nft("delete", "table", "inet", "holdsynack")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client: %v: %s", err, out.String())
	}
	if strings.Contains(out.String(), imdsserver.DefaultRole) {
		t.Fatalf("a write racing connect got the role: %s", out.String())
	}
	if n := srv.ReceivedBytes(); n != 0 {
		t.Fatalf("IMDS received %d bytes of a token-less request", n)
	}
	d.WaitEvent("unjudged write", func(e event) bool { return e.Reason == "unjudged_write" && e.Action == "deny" })
}
