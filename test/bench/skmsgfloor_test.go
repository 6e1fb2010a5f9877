package bench

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/imdsguard/imdsguard/test/lab"
)

// skMsgFloor is the sk_msg hook's floor: an empty program (SK_PASS at once)
// on a sockhash of its own holding one loopback TCP connection in the lab's
// node namespace, run by n writes of benchclient's request, back to back or
// one every gap. It returns the program's ns per run from the kernel's
// statistics: what any sk_msg program pays per write (the psock's redirect
// into the program, the message set-up), with statistics on.
func skMsgFloor(b *testing.B, l *lab.Lab, n int, gap time.Duration) float64 {
	b.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_empty_msg", Type: ebpf.SkMsg, AttachType: ebpf.AttachSkMsgVerdict, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		b.Fatalf("loading the empty sk_msg program: %v", err)
	}
	defer p.Close()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SockHash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		b.Fatalf("creating the floor's sockhash: %v", err)
	}
	defer m.Close()
	opts := link.RawAttachProgramOptions{Target: m.FD(), Program: p, Attach: ebpf.AttachSkMsgVerdict}
	if err := link.RawAttachProgram(opts); err != nil {
		b.Fatalf("attaching the empty sk_msg program: %v", err)
	}
	defer link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: p, Attach: ebpf.AttachSkMsgVerdict})

	conn := floorConn(b, l, m)
	defer conn.Close()
	msg := []byte("GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token: " +
		strings.Repeat("A", 56) + "\r\n\r\n")
	before := stat(p)
	for range n {
		if _, err := conn.Write(msg); err != nil {
			b.Fatalf("writing on the floor's connection: %v", err)
		}
		if gap > 0 {
			time.Sleep(gap)
		}
	}
	after := stat(p)
	if after.runs == before.runs {
		b.Fatalf("the empty sk_msg program never ran (%d writes)", n)
	}
	return float64(after.ns-before.ns) / float64(after.runs-before.runs)
}

// floorConn dials a reading-and-dropping listener on the node namespace's
// loopback and puts the client socket in m.
func floorConn(b *testing.B, l *lab.Lab, m *ebpf.Map) net.Conn {
	b.Helper()
	addr := listen(b, l, lab.Node, "tcp4", "127.0.0.1:0", discard)
	var conn net.Conn
	if err := l.Do(lab.Node, func() (err error) {
		conn, err = net.Dial("tcp4", addr)
		return err
	}); err != nil {
		b.Fatalf("dialing the floor's listener: %v", err)
	}
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	var uerr error
	if err := raw.Control(func(fd uintptr) { uerr = m.Update(uint32(0), uint32(fd), ebpf.UpdateAny) }); err != nil || uerr != nil {
		conn.Close()
		b.Fatalf("putting the floor's socket in its sockhash: %v %v", err, uerr)
	}
	return conn
}
