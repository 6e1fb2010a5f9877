package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
	"github.com/imdsguard/imdsguard/test/testbin"

	"github.com/imdsguard/imdsguard/test/escape"
)

func TestParseArgs(t *testing.T) {
	cfg, err := parseArgs([]string{"-src", "10.99.1.2", "-dst", "169.254.169.254:80"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.src.String() != "10.99.1.2" || cfg.dst.String() != "169.254.169.254:80" || cfg.timeout != 2*time.Second ||
		cfg.link != "" || cfg.dstMAC != nil || cfg.qdiscBypass {
		t.Errorf("parsed %+v", cfg)
	}
	want := "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"
	if string(cfg.payload) != want {
		t.Errorf("default payload %q, want %q", cfg.payload, want)
	}
	cfg, err = parseArgs([]string{"-src", "10.0.0.1", "-dst", "10.0.0.2:8080", "-payload", `a\r\nb\x00`, "-timeout", "3s"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg.payload) != "a\r\nb\x00" || cfg.timeout != 3*time.Second || cfg.dst.Port() != 8080 {
		t.Errorf("parsed %+v", cfg)
	}
	cfg, err = parseArgs([]string{"-src", "fd00:99:1::2", "-dst", "[fd00:ec2::254]:80"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.src.Is6() || cfg.src.String() != "fd00:99:1::2" || cfg.dst.String() != "[fd00:ec2::254]:80" || cfg.link != "" {
		t.Errorf("parsed %+v", cfg)
	}
	for _, args := range [][]string{
		{"-src", "10.99.1.2", "-dst", "169.254.169.254:80", "-link", "eth0", "-dst-mac", "02:00:00:00:00:01"},
		{"-src", "fd00:99:1::2", "-dst", "[fd00:ec2::254]:80", "-link", "eth0", "-dst-mac", "02-00-00-00-00-01", "-qdisc-bypass"},
	} {
		cfg, err = parseArgs(args, &bytes.Buffer{})
		if err != nil {
			t.Fatalf("parseArgs(%q): %v", args, err)
		}
		if cfg.link != "eth0" || cfg.dstMAC.String() != "02:00:00:00:00:01" || cfg.qdiscBypass != (len(args) == 9) {
			t.Errorf("parseArgs(%q): parsed %+v", args, cfg)
		}
	}

	const v4, v6 = "10.99.1.2", "fd00:99:1::2"
	const imds4, imds6 = "169.254.169.254:80", "[fd00:ec2::254]:80"
	for _, args := range [][]string{
		{},
		{"-src", v4},
		{"-dst", imds4},
		{"-src", v6, "-dst", imds4},
		{"-src", v4, "-dst", imds6},
		{"-src", "::ffff:10.99.1.2", "-dst", imds4},
		{"-src", v6, "-dst", "[::ffff:169.254.169.254]:80"},
		{"-src", "fe80::1%eth0", "-dst", "[fe80::2]:80"},
		{"-src", v6, "-dst", "fd00:ec2::254:80"},
		{"-src", v6, "-dst", "[fd00:ec2::254]:0"},
		{"-src", v4, "-dst", "169.254.169.254"},
		{"-src", v4, "-dst", "169.254.169.254:0"},
		{"-src", v4, "-dst", "169.254.169.254:99999"},
		{"-src", "host", "-dst", imds4},
		{"-src", v4, "-dst", imds4, "-payload", ""},
		{"-src", v4, "-dst", imds4, "-payload", `\q`},
		{"-src", v4, "-dst", imds4, "-timeout", "0s"},
		{"-src", v4, "-dst", imds4, "extra"},
		{"-src", v4, "-dst", imds4, "-link", "eth0"},
		{"-src", v4, "-dst", imds4, "-dst-mac", "02:00:00:00:00:01"},
		{"-src", v4, "-dst", imds4, "-link", "eth0", "-dst-mac", "02:00:00:00:00"},
		{"-src", v4, "-dst", imds4, "-link", "eth0", "-dst-mac", "nonsense"},
		{"-src", v4, "-dst", imds4, "-link", "eth0", "-dst-mac", "02:00:00:00:00:00:00:01"},
		{"-src", v4, "-dst", imds4, "-link", "a/b", "-dst-mac", "02:00:00:00:00:01"},
		{"-src", v4, "-dst", imds4, "-link", "sixteen-chars-xx", "-dst-mac", "02:00:00:00:00:01"},
		{"-src", v4, "-dst", imds4, "-qdisc-bypass"},
		{"-src", v4, "-dst", imds4, "-qdisc-bypass", "-dst-mac", "02:00:00:00:00:01"},
		{"-src", v4, "-dst", imds4, "-link", "eth0", "-qdisc-bypass"},
		{"-bogus"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 || stdout.Len() != 0 {
			t.Errorf("run(%q) = %d, stdout %q; want 2 and no output", args, code, stdout.String())
		}
	}
}

func TestParseArgsErrors(t *testing.T) {
	const base = "-src 10.99.1.2 -dst 169.254.169.254:80 "
	for args, want := range map[string]string{
		"-src fd00:99:1::2 -dst 169.254.169.254:80": "-src fd00:99:1::2 and -dst 169.254.169.254: mixed address families",
		"-src 10.99.1.2 -dst [fd00:ec2::254]:80":    "-src 10.99.1.2 and -dst fd00:ec2::254: mixed address families",
		base + "-link eth0":                         "-link requires -dst-mac",
		base + "-dst-mac 02:00:00:00:00:01":         "-dst-mac requires -link",
		base + "-qdisc-bypass":                      "-qdisc-bypass requires -link",
		base + "-compat":                            "-compat requires -qdisc-bypass",
		base + "-link eth0 -dst-mac 02:00":          `-dst-mac "02:00": want an Ethernet MAC address (6 bytes, e.g. 02:00:00:00:00:01)`,
	} {
		if _, err := parseArgs(strings.Fields(args), &bytes.Buffer{}); err == nil || err.Error() != want {
			t.Errorf("parseArgs(%q): %v, want %q", args, err, want)
		}
	}
}

func TestQdiscBypassError(t *testing.T) {
	// On a bad descriptor the setsockopt fails without any privilege;
	// tests of imdsguard match the prefix when it refuses the option.
	err := qdiscBypass(-1, false)
	if err == nil || err.Error() != "setsockopt PACKET_QDISC_BYPASS: bad file descriptor" {
		t.Errorf("qdiscBypass(-1) = %v", err)
	}
	// the same by the 32-bit system call, where the kernel takes them
	err = qdiscBypass(-1, true)
	if err == nil || (err.Error() != "compat setsockopt PACKET_QDISC_BYPASS: bad file descriptor" && !errors.Is(err, errNoCompat)) {
		t.Errorf("qdiscBypass(-1, compat) = %v", err)
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		``:                       ``,
		`GET / HTTP/1.1\r\n\r\n`: "GET / HTTP/1.1\r\n\r\n",
		`a\tb\\c`:                "a\tb\\c",
		`say "hi"`:               `say "hi"`,
		`it\'s`:                  `it's`,
		`\x00\xff`:               "\x00\xff",
		`\u00e9\101`:             "éA",
	} {
		if got, err := escape.Unescape(in); err != nil || got != want {
			t.Errorf("unescape(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`\`, `\q`, `\x4`} {
		if _, err := escape.Unescape(bad); err == nil {
			t.Errorf("unescape(%q): want error", bad)
		}
	}
}

func TestChecksum(t *testing.T) {
	// RFC 1071's worked example: the one's-complement sum of these words
	// is 0xddf2, so the checksum is ^0xddf2.
	if got := checksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); got != ^uint16(0xddf2) {
		t.Errorf("RFC 1071 example: %#04x, want %#04x", got, ^uint16(0xddf2))
	}
	// Odd length: the last byte is padded with a zero.
	if checksum([]byte{0x12, 0x34, 0x56}) != checksum([]byte{0x12, 0x34, 0x56, 0x00}) {
		t.Error("odd length not zero-padded")
	}
	// The defining property: the checksum over the pseudo-header and the
	// segment, checksum field included, verifies to zero. (The privileged
	// tests show the receiving kernel accepts the segments too.)
	for _, s := range []*segment{
		{src: pod4, dst: imds4, sport: 40000, dport: 80, seq: 0xdeadbeef, flags: flagSYN, window: ourWindow, mss: ourMSS4},
		{src: pod4, dst: imds4, sport: 40000, dport: 80, seq: 1, ack: 2, flags: flagPSH | flagACK, window: ourWindow, payload: []byte("odd")},
		{src: ones4, dst: ones4, sport: 65535, dport: 65535, seq: ^uint32(0), ack: ^uint32(0), flags: 0xff, window: 0xffff, payload: bytes.Repeat([]byte{0xff}, 1000)},
		{src: pod6, dst: imds6, sport: 40000, dport: 80, seq: 0xdeadbeef, flags: flagSYN, window: ourWindow, mss: ourMSS6},
		{src: pod6, dst: imds6, sport: 40000, dport: 80, seq: 1, ack: 2, flags: flagPSH | flagACK, window: ourWindow, payload: []byte("odd")},
		{src: ones6, dst: ones6, sport: 65535, dport: 65535, seq: ^uint32(0), ack: ^uint32(0), flags: 0xff, window: 0xffff, payload: bytes.Repeat([]byte{0xff}, 1000)},
	} {
		b := s.marshal()
		if got := checksum(pseudoHeader(s.src, s.dst, len(b)), b); got != 0 {
			t.Errorf("segment %+v: checksum does not verify (%#04x)", s, got)
		}
	}
}

var (
	pod4  = netip.MustParseAddr("10.99.1.2")
	imds4 = netip.MustParseAddr("169.254.169.254")
	ones4 = netip.MustParseAddr("255.255.255.255")
	pod6  = netip.MustParseAddr("fd00:99:1::2")
	imds6 = netip.MustParseAddr("fd00:ec2::254")
	ones6 = netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
)

func TestPseudoHeader(t *testing.T) {
	// RFC 9293 §3.1: source, destination, zero, protocol, TCP length.
	want4 := []byte{10, 99, 1, 2, 169, 254, 169, 254, 0, 6, 0x01, 0x02}
	if got := pseudoHeader(pod4, imds4, 0x0102); !bytes.Equal(got, want4) {
		t.Errorf("IPv4 pseudo-header % x, want % x", got, want4)
	}
	// RFC 8200 §8.1: source, destination, 32-bit upper-layer length,
	// three zero bytes, next header.
	s, d := pod6.As16(), imds6.As16()
	want6 := append(append(s[:], d[:]...), 0, 0, 0x01, 0x02, 0, 0, 0, 6)
	if got := pseudoHeader(pod6, imds6, 0x0102); !bytes.Equal(got, want6) {
		t.Errorf("IPv6 pseudo-header % x, want % x", got, want6)
	}
}

// ipv4 wraps a TCP segment into an IPv4 header as a raw socket returns it.
func ipv4(s *segment, options int) []byte {
	tcp := s.marshal()
	ihl := 20 + options
	p := make([]byte, ihl+len(tcp))
	p[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	binary.BigEndian.PutUint16(p[6:8], 0x4000) // DF
	p[8] = 64
	p[9] = 6
	src, dst := s.src.As4(), s.dst.As4()
	copy(p[12:16], src[:])
	copy(p[16:20], dst[:])
	copy(p[ihl:], tcp)
	return p
}

func sameSegment(got, want *segment) bool {
	return got.src == want.src && got.dst == want.dst && got.sport == want.sport && got.dport == want.dport &&
		got.seq == want.seq && got.ack == want.ack && got.flags == want.flags && got.window == want.window &&
		got.mss == want.mss && bytes.Equal(got.payload, want.payload)
}

func TestMarshalParse(t *testing.T) {
	in := &segment{
		src: imds4, dst: pod4, sport: 80, dport: 41000,
		seq: 0x01020304, ack: 0xa0b0c0d0, flags: flagSYN | flagACK, window: 1234, mss: 1400,
		payload: []byte("data"),
	}
	for _, opts := range []int{0, 8} {
		got, err := parsePacket(ipv4(in, opts))
		if err != nil {
			t.Fatalf("ip options %d: %v", opts, err)
		}
		if !sameSegment(got, in) {
			t.Errorf("ip options %d: parsed %+v, want %+v", opts, got, in)
		}
	}
	// Trailing bytes beyond the IP total length (link padding) are ignored.
	p := append(ipv4(in, 0), 0, 0, 0)
	if got, err := parsePacket(p); err != nil || string(got.payload) != "data" {
		t.Errorf("padded packet: %+v, %v", got, err)
	}

	good := ipv4(in, 0)
	for name, mutate := range map[string]func([]byte) []byte{
		"short":         func(p []byte) []byte { return p[:10] },
		"ipv6":          func(p []byte) []byte { p[0] = 0x60; return p },
		"udp":           func(p []byte) []byte { p[9] = 17; return p },
		"fragment":      func(p []byte) []byte { p[6] |= 0x20; return p },
		"frag offset":   func(p []byte) []byte { p[7] = 1; return p },
		"total > len":   func(p []byte) []byte { binary.BigEndian.PutUint16(p[2:4], uint16(len(p)+1)); return p },
		"bad ihl":       func(p []byte) []byte { p[0] = 0x44; return p },
		"bad data off":  func(p []byte) []byte { p[20+12] = 0xf0; return p },
		"tiny data off": func(p []byte) []byte { p[20+12] = 0x40; return p },
	} {
		if _, err := parsePacket(mutate(append([]byte(nil), good...))); err == nil {
			t.Errorf("%s: parsed, want error", name)
		}
	}
}

// TestParseTCP covers what a raw IPv6 socket returns: the segment alone.
func TestParseTCP(t *testing.T) {
	in := &segment{
		src: imds6, dst: pod6, sport: 80, dport: 41000,
		seq: 0x01020304, ack: 0xa0b0c0d0, flags: flagSYN | flagACK, window: 1234, mss: 1400,
		payload: []byte("data"),
	}
	got, err := parseTCP(in.marshal())
	if err != nil {
		t.Fatal(err)
	}
	got.src, got.dst = in.src, in.dst // not in the segment: the caller's
	if !sameSegment(got, in) {
		t.Errorf("parsed %+v, want %+v", got, in)
	}
	// Options before the MSS are skipped; a truncated option ends the walk.
	opts := []byte{1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 2, 4, 0x05, 0xb4}
	if got := parseMSS(opts); got != 1460 {
		t.Errorf("MSS after NOP and timestamps: %d, want 1460", got)
	}
	if got := parseMSS([]byte{1, 2, 4, 0x05}); got != 0 {
		t.Errorf("truncated MSS option: %d, want 0", got)
	}
	for name, mutate := range map[string]func([]byte) []byte{
		"short":         func(b []byte) []byte { return b[:19] },
		"bad data off":  func(b []byte) []byte { b[12] = 0xf0; return b },
		"tiny data off": func(b []byte) []byte { b[12] = 0x40; return b },
	} {
		if _, err := parseTCP(mutate(in.marshal())); err == nil {
			t.Errorf("%s: parsed, want error", name)
		}
	}
}

// TestIPPacket checks the IP headers -link mode builds.
func TestIPPacket(t *testing.T) {
	seg := &segment{src: pod4, dst: imds4, sport: 41000, dport: 80, seq: 7, ack: 9, flags: flagPSH | flagACK, window: ourWindow, payload: []byte("GET")}
	tcp := seg.marshal()
	p := ipPacket(pod4, imds4, tcp)
	if len(p) != 20+len(tcp) || p[0] != 0x45 || binary.BigEndian.Uint16(p[2:4]) != uint16(len(p)) ||
		binary.BigEndian.Uint16(p[6:8]) != 0x4000 || p[8] != 64 || p[9] != 6 {
		t.Errorf("IPv4 header % x: want version 4, IHL 5, total length %d, DF, TTL 64, TCP", p[:20], len(p))
	}
	if checksum(p[:20]) != 0 {
		t.Errorf("IPv4 header % x: checksum does not verify", p[:20])
	}
	if got, err := parsePacket(p); err != nil || !sameSegment(got, seg) {
		t.Errorf("parsed %+v, %v; want %+v", got, err, seg)
	}
	ids := map[uint16]bool{}
	for range 8 {
		ids[binary.BigEndian.Uint16(ipPacket(pod4, imds4, tcp)[4:6])] = true
	}
	if len(ids) < 2 {
		t.Errorf("8 packets, IDs %v: want random IDs", ids)
	}

	seg.src, seg.dst = pod6, imds6
	tcp = seg.marshal()
	p = ipPacket(pod6, imds6, tcp)
	s, d := pod6.As16(), imds6.As16()
	if len(p) != 40+len(tcp) || p[0] != 0x60 || p[1] != 0 || p[2] != 0 || p[3] != 0 ||
		binary.BigEndian.Uint16(p[4:6]) != uint16(len(tcp)) || p[6] != 6 || p[7] != 64 ||
		!bytes.Equal(p[8:24], s[:]) || !bytes.Equal(p[24:40], d[:]) || !bytes.Equal(p[40:], tcp) {
		t.Errorf("IPv6 packet % x: want version 6, payload length %d, TCP, hop limit 64, the addresses, the segment", p, len(tcp))
	}
}

func TestSeq(t *testing.T) {
	if !seqLT(0xffffffff, 0) || seqLT(0, 0xffffffff) || !seqLEQ(5, 5) || seqLT(5, 5) || !seqLT(1, 2) {
		t.Error("sequence arithmetic wrong around wrap-around")
	}
}

// Privileged tests: everything below runs only inside a test lab.

func buildRawclient(t *testing.T) string {
	t.Helper()
	out, err := testbin.Build("github.com/imdsguard/imdsguard/test/rawclient", t.TempDir())
	if err != nil {
		t.Fatalf("build rawclient: %v", err)
	}
	return out
}

// nftDrop adds, in ns, an inet table (so it covers IPv4 and IPv6) whose
// output chain drops what matches rule, and removes it when the test ends.
func nftDrop(t *testing.T, l *lab.Lab, ns lab.NS, table string, rule ...string) {
	t.Helper()
	nft := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := l.Command(ctx, ns, "nft", args...).CombinedOutput()
		if err != nil {
			t.Logf("nft %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return err
	}
	if err := nft("add", "table", "inet", table); err != nil {
		t.Fatal("nft add table failed")
	}
	t.Cleanup(func() {
		if err := nft("delete", "table", "inet", table); err != nil {
			t.Error("nft delete table failed")
		}
	})
	if err := nft("add", "chain", "inet", table, "out", "{ type filter hook output priority 0; }"); err != nil {
		t.Fatal("nft add chain failed")
	}
	if err := nft(append([]string{"add", "rule", "inet", table, "out"}, append(rule, "drop")...)...); err != nil {
		t.Fatal("nft add rule failed")
	}
}

// suppressRSTs makes the kernel of ns drop the RSTs it sends in answer to
// segments of the hand-made connection (no socket of its own owns it), for
// IPv4 and IPv6, and removes the rule again when the test ends.
func suppressRSTs(t *testing.T, l *lab.Lab, ns lab.NS) {
	t.Helper()
	nftDrop(t, l, ns, "rawclient", "tcp", "flags", "rst")
}

func runRawclient(t *testing.T, l *lab.Lab, bin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := l.Command(ctx, lab.Pod, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("rawclient %q: %v\nstdout: %s\nstderr: %s", args, err, stdout.String(), stderr.String())
	}
	t.Logf("rawclient %q: %s", args, strings.TrimSpace(stdout.String()))
	var res result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("rawclient output %q: %v", stdout.String(), err)
	}
	return res
}

// serveIMDS serves the fake IMDS on port 80 of both its lab addresses.
func serveIMDS(t *testing.T, l *lab.Lab) *imdsserver.Server {
	t.Helper()
	srv := imdsserver.New(imdsserver.Options{})
	t.Cleanup(func() { srv.Close() })
	for network, addr := range map[string]string{"tcp4": lab.IMDSv4 + ":80", "tcp6": "[" + lab.IMDSv6 + "]:80"} {
		ln, err := l.Listen(lab.IMDS, network, addr)
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
	}
	return srv
}

// nodeSideMAC is the MAC of the node's end of the pod's link: the next hop
// of the pod's frames, for -dst-mac.
func nodeSideMAC(t *testing.T, l *lab.Lab) string {
	t.Helper()
	var mac string
	err := l.Do(lab.Node, func() error {
		ifi, err := net.InterfaceByName(l.NodePodLink)
		if err != nil {
			return err
		}
		mac = ifi.HardwareAddr.String()
		return nil
	})
	if err != nil {
		t.Fatalf("node: %s: %v", l.NodePodLink, err)
	}
	return mac
}

// podArgs are rawclient's flags for an exchange from the pod with IMDS on
// port 80, over IPv6 if v6, and on a packet socket of the pod's link if mac
// is set.
func podArgs(l *lab.Lab, v6 bool, mac string, extra ...string) []string {
	args := []string{"-src", lab.PodV4, "-dst", lab.IMDSv4 + ":80", "-timeout", "5s"}
	if v6 {
		args = []string{"-src", lab.PodV6, "-dst", "[" + lab.IMDSv6 + "]:80", "-timeout", "5s"}
	}
	if mac != "" {
		args = append(args, "-link", l.PodLink, "-dst-mac", mac)
	}
	return append(args, extra...)
}

// checkServed checks that the exchange got the credentials listing (the
// default role) and that the server logged exactly that request, from src.
func checkServed(t *testing.T, srv *imdsserver.Server, res result, src string) {
	t.Helper()
	if !res.SynAck || !res.Sent {
		t.Fatalf("syn_ack %v, sent %v, error %q; want both true", res.SynAck, res.Sent, res.Error)
	}
	if res.Error != "" {
		t.Errorf("error %q, want none (the server closes with FIN)", res.Error)
	}
	if !strings.HasPrefix(res.Response, "HTTP/1.1 200") || !strings.Contains(res.Response, imdsserver.DefaultRole) {
		t.Errorf("response %q: want HTTP/1.1 200 naming %q", res.Response, imdsserver.DefaultRole)
	}
	reqs := srv.Requests()
	if len(reqs) != 1 {
		t.Fatalf("server logged %d requests, want 1: %+v", len(reqs), reqs)
	}
	r := reqs[0]
	from, err := netip.ParseAddrPort(r.RemoteAddr)
	if r.Method != "GET" || r.URI != "/latest/meta-data/iam/security-credentials/" || r.Status != 200 ||
		err != nil || from.Addr().String() != src {
		t.Errorf("logged request %+v: want GET of the credentials listing from %s, answered 200", r, src)
	}
}

// TestRawReachesIMDS shows that, with nothing blocking it, a hand-made TCP
// connection from the pod reaches IMDS and gets credentials' role name, over
// IPv4 and IPv6, sent on the raw IP socket or on a packet socket (with and
// without PACKET_QDISC_BYPASS, which nothing refuses here).
func TestRawReachesIMDS(t *testing.T) {
	l := lab.New(t)
	srv := serveIMDS(t, l)
	bin := buildRawclient(t)
	suppressRSTs(t, l, lab.Pod)
	mac := nodeSideMAC(t, l)

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"ipv4", podArgs(l, false, "")},
		{"ipv6", podArgs(l, true, "")},
		{"ipv4 packet socket", podArgs(l, false, mac)},
		{"ipv6 packet socket", podArgs(l, true, mac)},
		{"ipv4 qdisc bypass", podArgs(l, false, mac, "-qdisc-bypass")},
		{"ipv6 qdisc bypass", podArgs(l, true, mac, "-qdisc-bypass")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.Reset()
			checkServed(t, srv, runRawclient(t, l, bin, tc.args...), tc.args[1])
		})
	}
}

// TestPacketSocketSkipsOutput shows what -link changes: with the pod's
// nftables output chain dropping everything to port 80, the raw IP socket
// cannot send its SYN, while the packet socket's packets, which never pass
// the pod's IP output path, get answered.
func TestPacketSocketSkipsOutput(t *testing.T) {
	l := lab.New(t)
	srv := serveIMDS(t, l)
	bin := buildRawclient(t)
	suppressRSTs(t, l, lab.Pod)
	nftDrop(t, l, lab.Pod, "block80", "tcp", "dport", "80")
	mac := nodeSideMAC(t, l)

	for _, v6 := range []bool{false, true} {
		srv.Reset()
		res := runRawclient(t, l, bin, podArgs(l, v6, "")...)
		if res.SynAck || res.Sent || !strings.Contains(res.Error, "operation not permitted") {
			t.Errorf("raw IP socket, v6 %v: got %+v; want the SYN refused by the output chain (EPERM)", v6, res)
		}
		args := podArgs(l, v6, mac)
		checkServed(t, srv, runRawclient(t, l, bin, args...), args[1])
	}
}

// TestRawRefused checks how a closed port shows up: the peer answers the
// SYN with a RST, whichever family and socket the SYN went out on.
func TestRawRefused(t *testing.T) {
	l := lab.New(t)
	bin := buildRawclient(t)
	suppressRSTs(t, l, lab.Pod)
	mac := nodeSideMAC(t, l)

	for _, args := range [][]string{
		{"-src", lab.PodV4, "-dst", lab.IMDSv4 + ":81"},
		{"-src", lab.PodV6, "-dst", "[" + lab.IMDSv6 + "]:81"},
		{"-src", lab.PodV4, "-dst", lab.IMDSv4 + ":81", "-link", l.PodLink, "-dst-mac", mac},
		{"-src", lab.PodV6, "-dst", "[" + lab.IMDSv6 + "]:81", "-link", l.PodLink, "-dst-mac", mac},
	} {
		res := runRawclient(t, l, bin, append(args, "-timeout", "5s")...)
		if res.SynAck || res.Sent || res.Response != "" || !strings.Contains(res.Error, "RST in reply to SYN") {
			t.Errorf("%q: got %+v; want no SYN-ACK, nothing sent, error about a RST", args, res)
		}
	}
}

// TestSetupError checks that a socket that cannot be set up is reported in
// the result, with exit status 0 (runRawclient fails the test otherwise).
func TestSetupError(t *testing.T) {
	l := lab.New(t)
	bin := buildRawclient(t)
	res := runRawclient(t, l, bin, "-src", lab.PodV4, "-dst", lab.IMDSv4+":80", "-link", "nosuchif", "-dst-mac", "02:00:00:00:00:01")
	if res.SynAck || res.Sent || !strings.HasPrefix(res.Error, "interface nosuchif: ") {
		t.Errorf("got %+v; want nothing sent and an error about the interface", res)
	}
	res = runRawclient(t, l, bin, "-src", "10.99.1.3", "-dst", lab.IMDSv4+":80")
	if res.SynAck || res.Sent || !strings.HasPrefix(res.Error, "bind 10.99.1.3: ") {
		t.Errorf("got %+v; want nothing sent and an error about the bind", res)
	}
}

// TestRawTimeout checks that a destination that never answers ends in a
// timeout that respects -timeout.
func TestRawTimeout(t *testing.T) {
	l := lab.New(t)
	bin := buildRawclient(t)
	// 10.99.1.3 is on the pod's link but nobody has it: with no neighbour
	// entry the SYNs go nowhere.
	start := time.Now()
	res := runRawclient(t, l, bin, "-src", lab.PodV4, "-dst", "10.99.1.3:80", "-timeout", "1s")
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("took %v with -timeout 1s", el)
	}
	if res.SynAck || res.Sent || res.Error == "" {
		t.Errorf("got %+v; want no SYN-ACK, nothing sent, an error", res)
	}
}
