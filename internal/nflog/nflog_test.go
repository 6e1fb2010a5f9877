package nflog

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ---- helpers for building messages ----

// ipv4UDP returns an IPv4+UDP packet src:sport -> dst:dport with a 1-byte payload.
func ipv4UDP(src, dst netip.Addr, sport, dport uint16) []byte {
	b := make([]byte, 20+8+1)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8] = 64
	b[9] = unix.IPPROTO_UDP
	copy(b[12:16], src.AsSlice())
	copy(b[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(b[20:], sport)
	binary.BigEndian.PutUint16(b[22:], dport)
	binary.BigEndian.PutUint16(b[24:], 9)
	b[28] = 'x'
	return b
}

type testAttrs struct {
	prefix      *string // nil: attribute absent
	inIf, outIf uint32
	payload     []byte
}

// packetMessageData builds the body (nfgenmsg + attributes) of an
// NFULNL_MSG_PACKET message the way the kernel does.
func packetMessageData(t *testing.T, family uint8, group uint16, a testAttrs) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Bytes(attrPacketHdr, []byte{0x08, 0x00, 3, 0}) // hw_protocol ETH_P_IP, hook LOCAL_OUT
	ae.Uint32(2, 0x1234)                              // NFULA_MARK
	if a.inIf != 0 {
		ae.Uint32(attrIfIndexIn, a.inIf)
	}
	if a.outIf != 0 {
		ae.Uint32(attrIfIndexOut, a.outIf)
	}
	ae.Uint32(11, 1000) // NFULA_UID, ignored
	if a.payload != nil {
		ae.Bytes(attrPayload, a.payload)
	}
	if a.prefix != nil {
		ae.Bytes(attrPrefix, append([]byte(*a.prefix), 0))
	}
	ae.Uint32(12, 42) // NFULA_SEQ, ignored
	attrs, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	h := []byte{family, 0, 0, 0}
	binary.BigEndian.PutUint16(h[2:], group)
	return append(h, attrs...)
}

// nlmsg wraps data in a netlink header.
func nlmsg(typ uint16, flags uint16, seq uint32, data []byte) []byte {
	l := nlmsgHdrLen + len(data)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint32(b[0:], uint32(l))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	copy(b[nlmsgHdrLen:], data)
	return b
}

func ptr[T any](v T) *T { return &v }

// ---- unit tests (no privileges) ----

func TestParsePacketMessageIPv4UDP(t *testing.T) {
	src, dst := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("169.254.169.254")
	data := packetMessageData(t, unix.AF_INET, 7777, testAttrs{
		prefix:  ptr("imdsguard-drop"),
		inIf:    3,
		outIf:   7,
		payload: ipv4UDP(src, dst, 40000, 80),
	})
	p, group, err := parsePacketMessage(data)
	if err != nil {
		t.Fatal(err)
	}
	want := Packet{Prefix: "imdsguard-drop", InIfIndex: 3, OutIfIndex: 7, Src: src, Dst: dst, Proto: 17, SrcPort: 40000, DstPort: 80}
	if group != 7777 || p != want {
		t.Fatalf("got group %d %+v\nwant group 7777 %+v", group, p, want)
	}
}

func TestParsePacketMessageEdgeCases(t *testing.T) {
	v4 := ipv4UDP(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 1, 2)

	t.Run("no prefix, no payload", func(t *testing.T) {
		p, _, err := parsePacketMessage(packetMessageData(t, unix.AF_INET, 1, testAttrs{outIf: 2}))
		if err != nil {
			t.Fatal(err)
		}
		if p != (Packet{OutIfIndex: 2}) {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("truncated transport header", func(t *testing.T) {
		p, _, err := parsePacketMessage(packetMessageData(t, unix.AF_INET, 1, testAttrs{payload: v4[:22]}))
		if err != nil {
			t.Fatal(err)
		}
		if p.Proto != 17 || p.SrcPort != 0 || p.DstPort != 0 || !p.Dst.IsValid() {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("truncated IP header", func(t *testing.T) {
		p, _, err := parsePacketMessage(packetMessageData(t, unix.AF_INET, 1, testAttrs{payload: v4[:19]}))
		if err != nil {
			t.Fatal(err)
		}
		if p.Src.IsValid() || p.Proto != 0 {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("non-first fragment", func(t *testing.T) {
		frag := append([]byte(nil), v4...)
		binary.BigEndian.PutUint16(frag[6:], 185) // offset 1480
		p, _, err := parsePacketMessage(packetMessageData(t, unix.AF_INET, 1, testAttrs{payload: frag}))
		if err != nil {
			t.Fatal(err)
		}
		if p.Proto != 17 || p.SrcPort != 0 || p.DstPort != 0 {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("IPv4 options", func(t *testing.T) {
		opt := make([]byte, 0, len(v4)+4)
		opt = append(opt, v4[:20]...)
		opt = append(opt, 1, 1, 1, 0) // NOP NOP NOP EOL
		opt = append(opt, v4[20:]...)
		opt[0] = 0x46
		p, _, err := parsePacketMessage(packetMessageData(t, unix.AF_INET, 1, testAttrs{payload: opt}))
		if err != nil {
			t.Fatal(err)
		}
		if p.SrcPort != 1 || p.DstPort != 2 {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("IPv6 TCP behind hop-by-hop and fragment headers", func(t *testing.T) {
		src, dst := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00:ec2::254")
		b := make([]byte, 40+8+8+20)
		b[0] = 0x60
		b[6] = unix.IPPROTO_HOPOPTS
		copy(b[8:24], src.AsSlice())
		copy(b[24:40], dst.AsSlice())
		b[40] = unix.IPPROTO_FRAGMENT // hop-by-hop: next, len 0 (8 bytes)
		b[48] = unix.IPPROTO_TCP      // fragment header, offset 0
		binary.BigEndian.PutUint16(b[56:], 51000)
		binary.BigEndian.PutUint16(b[58:], 80)
		p, _, err := parsePacketMessage(packetMessageData(t, unix.AF_INET6, 1, testAttrs{payload: b}))
		if err != nil {
			t.Fatal(err)
		}
		want := Packet{Src: src, Dst: dst, Proto: 6, SrcPort: 51000, DstPort: 80}
		if p != want {
			t.Fatalf("got %+v want %+v", p, want)
		}
		// The same packet cut inside the extension header chain.
		p, _, _ = parsePacketMessage(packetMessageData(t, unix.AF_INET6, 1, testAttrs{payload: b[:44]}))
		if p.Proto != unix.IPPROTO_FRAGMENT || p.DstPort != 0 || p.Dst != dst {
			t.Fatalf("truncated: got %+v", p)
		}
	})
	t.Run("malformed attributes", func(t *testing.T) {
		data := packetMessageData(t, unix.AF_INET, 1, testAttrs{outIf: 2})
		data = append(data, 0xff, 0xff, 0, 0) // attribute length beyond the message
		if _, _, err := parsePacketMessage(data); err == nil {
			t.Fatal("expected an error")
		}
		if _, _, err := parsePacketMessage([]byte{2, 0}); err == nil {
			t.Fatal("expected an error for a short message")
		}
	})
	t.Run("interface index must be 4 bytes", func(t *testing.T) {
		ae := netlink.NewAttributeEncoder()
		ae.Uint16(attrIfIndexOut, 1)
		attrs, _ := ae.Encode()
		if _, _, err := parsePacketMessage(append([]byte{2, 0, 0, 1}, attrs...)); err == nil {
			t.Fatal("expected an error")
		}
	})
}

func TestHandleDatagram(t *testing.T) {
	r := newReader(nil, nil, 7777)
	now := time.Now()
	v4 := ipv4UDP(netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.1"), 5, 9999)
	var dgram []byte
	// A batch as sent when the rule sets a queue threshold: NLM_F_MULTI
	// packets terminated by NLMSG_DONE (whose body is an nfgenmsg, not an errno).
	dgram = append(dgram, nlmsg(msgPacket, unix.NLM_F_MULTI, 0, packetMessageData(t, unix.AF_INET, 7777, testAttrs{prefix: ptr("a"), payload: v4}))...)
	dgram = append(dgram, nlmsg(msgPacket, unix.NLM_F_MULTI, 0, packetMessageData(t, unix.AF_INET, 7778, testAttrs{prefix: ptr("other group")}))...)
	dgram = append(dgram, nlmsg(msgPacket, unix.NLM_F_MULTI, 0, []byte{1})...) // malformed, dropped
	dgram = append(dgram, nlmsg(msgPacket, unix.NLM_F_MULTI, 0, packetMessageData(t, unix.AF_INET, 7777, testAttrs{prefix: ptr("b")}))...)
	dgram = append(dgram, nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, 0, []byte{0, 0, 0x1e, 0x61})...)
	dgram = append(dgram, nlmsg(unix.NLMSG_ERROR, 0, 99, []byte{0xef, 0xff, 0xff, 0xff})...) // -17 for seq 99

	acked, err := r.handle(dgram, now, 0)
	if acked || err != nil {
		t.Fatalf("unexpected ack %v %v", acked, err)
	}
	if len(r.pending) != 2 || r.pending[0].Prefix != "a" || r.pending[1].Prefix != "b" || r.pending[0].DstPort != 9999 || !r.pending[0].Time.Equal(now) {
		t.Fatalf("pending = %+v", r.pending)
	}
	acked, err = r.handle(dgram, now, 99)
	if !acked || !errors.Is(err, unix.EEXIST) {
		t.Fatalf("ack for seq 99: %v %v", acked, err)
	}
	acked, err = r.handle(nlmsg(unix.NLMSG_ERROR, 0, 5, []byte{0, 0, 0, 0}), now, 5)
	if !acked || err != nil {
		t.Fatalf("ack for seq 5: %v %v", acked, err)
	}
}

func TestConfigMessage(t *testing.T) {
	m := configMessage(unix.AF_UNSPEC, 7777, cmdBind, true, netlink.Request|netlink.Acknowledge)
	if m.Header.Type != 0x0401 {
		t.Fatalf("type %#x", m.Header.Type)
	}
	want := []byte{
		0, 0, 0x1e, 0x61, // nfgenmsg: AF_UNSPEC, v0, res_id 7777 big endian
		5, 0, 1, 0, cmdBind, 0, 0, 0, // NFULA_CFG_CMD, padded
		10, 0, 2, 0, 0, 0, 0, copyRange, copyPacket, 0, 0, 0, // NFULA_CFG_MODE, padded
		8, 0, 4, 0, 0, 0, 0, flushTimeout, // NFULA_CFG_TIMEOUT
	}
	if string(m.Data) != string(want) {
		t.Fatalf("data\n% x\nwant\n% x", m.Data, want)
	}
}

func TestKernelVersion(t *testing.T) {
	for _, tc := range []struct {
		in           string
		major, minor int
		ok           bool
	}{
		{"6.18.44-fc-v669", 6, 18, true},
		{"3.16-rc1", 3, 16, true},
		{"4.14.355-275.570.amzn2.x86_64", 4, 14, true},
		{"garbage", 0, 0, false},
	} {
		major, minor, ok := kernelVersion(tc.in)
		if ok != tc.ok || ok && (major != tc.major || minor != tc.minor) {
			t.Errorf("%q: got %d.%d %v", tc.in, major, minor, ok)
		}
	}
}

// loopbackReader builds a Reader on a NETLINK_USERSOCK socket (which gets
// nothing from the kernel, and which unprivileged sockets may unicast to) and
// returns a function that injects a datagram into it from a second socket.
func loopbackReader(t *testing.T, group uint16) (*Reader, func([]byte)) {
	t.Helper()
	conn, err := netlink.Dial(unix.NETLINK_USERSOCK, nil)
	if err != nil {
		t.Skipf("cannot open a netlink socket: %v", err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	r := newReader(conn, raw, group)
	t.Cleanup(func() { r.Close() })

	var pid uint32
	var serr error
	if err := raw.Control(func(fd uintptr) {
		var sa unix.Sockaddr
		sa, serr = unix.Getsockname(int(fd))
		if serr == nil {
			pid = sa.(*unix.SockaddrNetlink).Pid
		}
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	sender, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_USERSOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(sender) })
	if err := unix.Bind(sender, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatal(err)
	}
	return r, func(b []byte) {
		t.Helper()
		if err := unix.Sendto(sender, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: pid}); err != nil {
			t.Fatalf("injecting message: %v", err)
		}
	}
}

type readResult struct {
	p   Packet
	err error
}

func readAsync(r *Reader) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		p, err := r.Read()
		ch <- readResult{p, err}
	}()
	return ch
}

func readWithTimeout(t *testing.T, r *Reader, d time.Duration) (Packet, error) {
	t.Helper()
	select {
	case res := <-readAsync(r):
		return res.p, res.err
	case <-time.After(d):
		r.Close() // unblocks the pending Read
		t.Fatalf("no packet within %v", d)
		return Packet{}, nil
	}
}

// TestReadPath drives Read through a real socket with hand-built kernel-style
// messages, including interface name resolution in the caller's namespace.
func TestReadPath(t *testing.T) {
	r, inject := loopbackReader(t, 7777)
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skipf("no lo interface: %v", err)
	}
	v4 := ipv4UDP(netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("169.254.169.254"), 33333, 80)
	var dgram []byte
	dgram = append(dgram, nlmsg(msgPacket, unix.NLM_F_MULTI, 0, packetMessageData(t, unix.AF_INET, 7777, testAttrs{prefix: ptr("one"), inIf: uint32(lo.Index), payload: v4}))...)
	dgram = append(dgram, nlmsg(msgPacket, unix.NLM_F_MULTI, 0, packetMessageData(t, unix.AF_INET, 7777, testAttrs{prefix: ptr("two"), outIf: 1}))...)
	dgram = append(dgram, nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, 0, []byte{0, 0, 0x1e, 0x61})...)
	start := time.Now()
	inject(dgram)

	p, err := readWithTimeout(t, r, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if p.Prefix != "one" || p.InIfName != "lo" || p.InIfIndex != uint32(lo.Index) || p.DstPort != 80 || p.Dst != netip.MustParseAddr("169.254.169.254") || p.Time.Before(start) {
		t.Fatalf("first packet %+v", p)
	}
	p, err = readWithTimeout(t, r, 5*time.Second)
	if err != nil || p.Prefix != "two" || p.InIfName != "" || p.OutIfIndex != 1 {
		t.Fatalf("second packet %+v %v", p, err)
	}
	// A datagram bigger than the initial buffer.
	big := make([]byte, 0, 40<<10)
	for i := 0; len(big) < 30<<10; i++ {
		big = append(big, nlmsg(msgPacket, 0, 0, packetMessageData(t, unix.AF_INET, 7777, testAttrs{prefix: ptr(strconv.Itoa(i)), payload: v4}))...)
	}
	n := 0
	for b := big; len(b) > 0; n++ {
		b = b[(binary.NativeEndian.Uint32(b)+3)&^3:]
	}
	inject(big)
	for i := range n {
		p, err := readWithTimeout(t, r, 5*time.Second)
		if err != nil || p.Prefix != strconv.Itoa(i) {
			t.Fatalf("big datagram message %d: %+v %v", i, p, err)
		}
	}
}

func TestCloseUnblocksReadUnprivileged(t *testing.T) {
	r, _ := loopbackReader(t, 1)
	testCloseUnblocksRead(t, r)
}

func testCloseUnblocksRead(t *testing.T, r *Reader) {
	t.Helper()
	ch := readAsync(r)
	select {
	case res := <-ch:
		t.Fatalf("Read returned before Close: %+v %v", res.p, res.err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case res := <-ch:
		if !errors.Is(res.err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", res.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
	if _, err := r.Read(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Read after Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	r.mu.Lock()
	leaked := r.rtnl != nil || r.netns != nil
	r.mu.Unlock()
	if leaked {
		t.Fatal("Close left the rtnetlink socket or namespace file open")
	}
}

// ---- privileged tests (network namespaces, nftables) ----

func requirePrivileged(t *testing.T) {
	t.Helper()
	var reason string
	if os.Geteuid() != 0 {
		reason = "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create a network namespace and bind an NFLOG group"
	} else {
		for _, tool := range []string{"ip", "nft", "nsenter"} {
			if _, err := exec.LookPath(tool); err != nil {
				reason = "needs " + tool + " in PATH"
				break
			}
		}
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") == "true" || os.Getenv("IMDSGUARD_REQUIRE_PRIVILEGED") == "1" {
		t.Fatalf("%s (privileged tests are required because CI=true or IMDSGUARD_REQUIRE_PRIVILEGED=1)", reason)
	}
	t.Skipf("skipping: %s; run as root (set IMDSGUARD_REQUIRE_PRIVILEGED=1 to make this a failure)", reason)
}

func run(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

type testNS struct {
	name, path string
}

// newNetns creates a throw-away network namespace with lo up and the given
// nftables ruleset loaded, removed again when the test ends.
func newNetns(t *testing.T, ruleset string) testNS {
	t.Helper()
	requirePrivileged(t)
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	ns := testNS{name: "igNFLOG" + hex.EncodeToString(suffix)}
	run(t, "", "ip", "netns", "add", ns.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns.name, err, out)
		}
	})
	ns.path = "/var/run/netns/" + ns.name
	if _, err := os.Stat(ns.path); err != nil {
		ns.path = "/run/netns/" + ns.name
	}
	run(t, "", "ip", "-n", ns.name, "link", "set", "lo", "up")
	run(t, ruleset, "nsenter", "--net="+ns.path, "nft", "-f", "-")
	return ns
}

func (ns testNS) linkIndex(t *testing.T, name string) uint32 {
	t.Helper()
	out := run(t, "", "ip", "-n", ns.name, "-o", "link", "show", "dev", name)
	idx, err := strconv.ParseUint(strings.TrimSpace(strings.SplitN(out, ":", 2)[0]), 10, 32)
	if err != nil {
		t.Fatalf("parsing %q: %v", out, err)
	}
	return uint32(idx)
}

// sendUDP sends count datagrams to dst (which must be a loopback address)
// from inside the namespace. The sending thread enters the namespace and is
// never unlocked, so the Go runtime discards it afterwards.
func sendUDP(t *testing.T, ns testNS, dst netip.AddrPort, count int) {
	t.Helper()
	if !dst.Addr().Is4() || !dst.Addr().IsLoopback() {
		t.Fatalf("refusing to send test traffic to non-loopback %v", dst)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // deliberately not unlocked: the thread is tainted
		f, err := os.Open(ns.path)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
		for range count {
			if err := unix.Sendto(fd, []byte("imdsguard nflog test"), 0, sa); err != nil {
				errc <- fmt.Errorf("sendto: %w", err)
				return
			}
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

const testRuleset = `
table inet imdsguard_nflog_test {
	chain out {
		type filter hook output priority 0; policy accept;
		ip daddr 127.0.0.1 udp dport 9999 log prefix "imdsguard-test" group 7777
	}
	chain in {
		type filter hook input priority 0; policy accept;
		ip daddr 127.0.0.1 udp dport 9998 log prefix "imdsguard-in" group 7777
	}
}
`

func openInNS(t *testing.T, group uint16, ns testNS) *Reader {
	t.Helper()
	r, err := Open(group, ns.path)
	if err != nil {
		t.Fatalf("Open(%d, %s): %v", group, ns.path, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestNFTablesLog(t *testing.T) {
	ns := newNetns(t, testRuleset)
	r := openInNS(t, 7777, ns)
	lo := ns.linkIndex(t, "lo")

	start := time.Now()
	sendUDP(t, ns, netip.MustParseAddrPort("127.0.0.1:9999"), 1)
	p, err := readWithTimeout(t, r, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("output hook: %+v", p)
	loopback := netip.MustParseAddr("127.0.0.1")
	if p.Prefix != "imdsguard-test" || p.Dst != loopback || p.Src != loopback || p.DstPort != 9999 || p.SrcPort == 0 ||
		p.Proto != unix.IPPROTO_UDP || p.OutIfIndex != lo || p.InIfIndex != 0 || p.InIfName != "" || p.Time.Before(start) {
		t.Fatalf("unexpected packet %+v (lo is %d)", p, lo)
	}

	// The input hook reports the input interface, named in the namespace.
	sendUDP(t, ns, netip.MustParseAddrPort("127.0.0.1:9998"), 1)
	p, err = readWithTimeout(t, r, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("input hook: %+v", p)
	if p.Prefix != "imdsguard-in" || p.InIfIndex != lo || p.InIfName != "lo" || p.DstPort != 9998 || p.OutIfIndex != 0 {
		t.Fatalf("unexpected packet %+v (lo is %d)", p, lo)
	}

	// A burst is delivered by the kernel as one batch (NLM_F_MULTI messages
	// closed by NLMSG_DONE); every packet must come out.
	const burst = 25
	sendUDP(t, ns, netip.MustParseAddrPort("127.0.0.1:9999"), burst)
	for i := range burst {
		p, err := readWithTimeout(t, r, 5*time.Second)
		if err != nil || p.Prefix != "imdsguard-test" || p.DstPort != 9999 {
			t.Fatalf("burst packet %d: %+v %v", i, p, err)
		}
	}

	// Names are resolved inside the reader's namespace, not the caller's:
	// a bridge that exists only in the test namespace.
	br := "igbr" + ns.name[len(ns.name)-8:]
	run(t, "", "ip", "-n", ns.name, "link", "add", br, "type", "bridge")
	idx := ns.linkIndex(t, br)
	r.mu.Lock()
	name := r.ifName(idx, time.Now())
	r.mu.Unlock()
	if name != br {
		t.Fatalf("ifName(%d) = %q, want %q", idx, name, br)
	}
}

func TestOpenGroupBusy(t *testing.T) {
	ns := newNetns(t, testRuleset)
	openInNS(t, 7777, ns)
	if r, err := Open(7777, ns.path); err == nil {
		r.Close()
		t.Fatal("second Open of the same group succeeded")
	} else if !errors.Is(err, unix.EPERM) {
		t.Fatalf("second Open: %v, want EPERM", err)
	} else {
		t.Logf("second Open: %v", err)
	}
	// Close releases the group.
	r3 := openInNS(t, 7778, ns)
	r3.Close()
	openInNS(t, 7778, ns)
}

func TestCloseUnblocksRead(t *testing.T) {
	ns := newNetns(t, testRuleset)
	testCloseUnblocksRead(t, openInNS(t, 7777, ns))
}

func TestOverrun(t *testing.T) {
	ns := newNetns(t, testRuleset)
	r := openInNS(t, 7777, ns)
	// Shrink the receive buffer to the kernel minimum so a burst overflows it.
	if err := r.conn.SetReadBuffer(1); err != nil {
		t.Fatal(err)
	}
	const burst = 200
	sendUDP(t, ns, netip.MustParseAddrPort("127.0.0.1:9999"), burst)

	packets, overruns, afterOverrun := 0, 0, 0
	for afterOverrun == 0 {
		p, err := readWithTimeout(t, r, 5*time.Second)
		switch {
		case errors.Is(err, ErrOverrun):
			overruns++
			// The Reader keeps working: newer packets still arrive.
			sendUDP(t, ns, netip.MustParseAddrPort("127.0.0.1:9999"), 1)
		case err != nil:
			t.Fatal(err)
		default:
			if p.Prefix != "imdsguard-test" || p.DstPort != 9999 {
				t.Fatalf("unexpected packet %+v", p)
			}
			packets++
			if overruns > 0 {
				afterOverrun++
			}
		}
		if packets > burst+overruns {
			t.Fatalf("read %d packets but never saw ErrOverrun", packets)
		}
	}
	t.Logf("burst of %d: %d packets read, %d overrun reports", burst, packets, overruns)
}
