package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
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
	if cfg.src.String() != "10.99.1.2" || cfg.dst.String() != "169.254.169.254:80" || cfg.timeout != 2*time.Second {
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

	for _, args := range [][]string{
		{},
		{"-src", "10.99.1.2"},
		{"-dst", "169.254.169.254:80"},
		{"-src", "fd00:99:1::2", "-dst", "169.254.169.254:80"},
		{"-src", "10.99.1.2", "-dst", "[fd00:ec2::254]:80"},
		{"-src", "10.99.1.2", "-dst", "169.254.169.254"},
		{"-src", "10.99.1.2", "-dst", "169.254.169.254:0"},
		{"-src", "10.99.1.2", "-dst", "169.254.169.254:99999"},
		{"-src", "host", "-dst", "169.254.169.254:80"},
		{"-src", "10.99.1.2", "-dst", "169.254.169.254:80", "-payload", ""},
		{"-src", "10.99.1.2", "-dst", "169.254.169.254:80", "-payload", `\q`},
		{"-src", "10.99.1.2", "-dst", "169.254.169.254:80", "-timeout", "0s"},
		{"-src", "10.99.1.2", "-dst", "169.254.169.254:80", "extra"},
		{"-bogus"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 || stdout.Len() != 0 {
			t.Errorf("run(%q) = %d, stdout %q; want 2 and no output", args, code, stdout.String())
		}
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
		{src: [4]byte{10, 99, 1, 2}, dst: [4]byte{169, 254, 169, 254}, sport: 40000, dport: 80, seq: 0xdeadbeef, flags: flagSYN, window: ourWindow, mss: ourMSS},
		{src: [4]byte{10, 99, 1, 2}, dst: [4]byte{169, 254, 169, 254}, sport: 40000, dport: 80, seq: 1, ack: 2, flags: flagPSH | flagACK, window: ourWindow, payload: []byte("odd")},
		{src: [4]byte{255, 255, 255, 255}, dst: [4]byte{255, 255, 255, 255}, sport: 65535, dport: 65535, seq: ^uint32(0), ack: ^uint32(0), flags: 0xff, window: 0xffff, payload: bytes.Repeat([]byte{0xff}, 1000)},
	} {
		b := s.marshal()
		if got := checksum(pseudoHeader(s.src, s.dst, len(b)), b); got != 0 {
			t.Errorf("segment %+v: checksum does not verify (%#04x)", s, got)
		}
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
	copy(p[12:16], s.src[:])
	copy(p[16:20], s.dst[:])
	copy(p[ihl:], tcp)
	return p
}

func TestMarshalParse(t *testing.T) {
	in := &segment{
		src: [4]byte{169, 254, 169, 254}, dst: [4]byte{10, 99, 1, 2}, sport: 80, dport: 41000,
		seq: 0x01020304, ack: 0xa0b0c0d0, flags: flagSYN | flagACK, window: 1234, mss: 1400,
		payload: []byte("data"),
	}
	for _, opts := range []int{0, 8} {
		got, err := parsePacket(ipv4(in, opts))
		if err != nil {
			t.Fatalf("ip options %d: %v", opts, err)
		}
		if got.src != in.src || got.dst != in.dst || got.sport != in.sport || got.dport != in.dport ||
			got.seq != in.seq || got.ack != in.ack || got.flags != in.flags || got.window != in.window ||
			got.mss != in.mss || string(got.payload) != "data" {
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

// suppressRSTs makes the kernel of ns drop the RSTs it sends in answer to
// segments of the hand-made connection (no socket of its own owns it), and
// removes the rule again when the test ends.
func suppressRSTs(t *testing.T, l *lab.Lab, ns lab.NS) {
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
	if err := nft("add", "table", "ip", "rawclient"); err != nil {
		t.Fatal("nft add table failed")
	}
	t.Cleanup(func() {
		if err := nft("delete", "table", "ip", "rawclient"); err != nil {
			t.Error("nft delete table failed")
		}
	})
	if err := nft("add", "chain", "ip", "rawclient", "out", "{ type filter hook output priority 0; }"); err != nil {
		t.Fatal("nft add chain failed")
	}
	if err := nft("add", "rule", "ip", "rawclient", "out", "tcp", "flags", "rst", "drop"); err != nil {
		t.Fatal("nft add rule failed")
	}
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

// TestRawReachesIMDS shows that, with nothing blocking it, a hand-made TCP
// connection from the pod reaches IMDS and gets credentials' role name.
func TestRawReachesIMDS(t *testing.T) {
	l := lab.New(t)
	srv := imdsserver.New(imdsserver.Options{})
	t.Cleanup(func() { srv.Close() })
	ln, err := l.Listen(lab.IMDS, "tcp4", lab.IMDSv4+":80")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	bin := buildRawclient(t)
	suppressRSTs(t, l, lab.Pod)

	res := runRawclient(t, l, bin, "-src", lab.PodV4, "-dst", lab.IMDSv4+":80", "-timeout", "5s")
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
	if r.Method != "GET" || r.URI != "/latest/meta-data/iam/security-credentials/" || r.Status != 200 ||
		!strings.HasPrefix(r.RemoteAddr, lab.PodV4+":") {
		t.Errorf("logged request %+v: want GET of the credentials listing from %s, answered 200", r, lab.PodV4)
	}
}

// TestRawRefused checks how a closed port shows up: the peer answers the
// SYN with a RST.
func TestRawRefused(t *testing.T) {
	l := lab.New(t)
	bin := buildRawclient(t)
	suppressRSTs(t, l, lab.Pod)

	res := runRawclient(t, l, bin, "-src", lab.PodV4, "-dst", lab.IMDSv4+":81", "-timeout", "5s")
	if res.SynAck || res.Sent || res.Response != "" || !strings.Contains(res.Error, "RST in reply to SYN") {
		t.Errorf("got %+v; want no SYN-ACK, nothing sent, error about a RST", res)
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
