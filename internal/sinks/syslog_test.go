package sinks

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/imdsguard/imdsguard/internal/target"
)

var testTime = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

func TestRenderGolden(t *testing.T) {
	f := newFormatter(defaultFacility, "host-1", "imdsguard", 4242)
	tests := []struct {
		name string
		rec  Record
		want string
	}{
		{
			name: "deny request",
			rec: Record{
				Time: testTime, Severity: 4, MsgID: "request", SDID: "imdsguard@32473",
				SD:   [][2]string{{"action", "deny"}, {"comm", `cu"rl`}},
				JSON: []byte(`{"kind":"request","action":"deny"}`),
			},
			want: `<132>1 2024-05-06T07:08:09.123456Z host-1 imdsguard 4242 request [imdsguard@32473 action="deny" comm="cu\"rl"] {"kind":"request","action":"deny"}`,
		},
		{
			name: "allow, local time converted to UTC",
			rec: Record{
				Time: testTime.In(time.FixedZone("x", 2*3600)), Severity: 6, MsgID: "connect", SDID: "imdsguard@32473",
				JSON: []byte(`{}`),
			},
			want: `<134>1 2024-05-06T07:08:09.123456Z host-1 imdsguard 4242 connect [imdsguard@32473] {}`,
		},
		{
			name: "nil values, no MSG, severity clamped",
			rec:  Record{Time: testTime, Severity: 99},
			want: `<135>1 2024-05-06T07:08:09.123456Z host-1 imdsguard 4242 - -`,
		},
		{
			name: "header fields and names sanitised",
			rec: Record{
				Time: testTime, Severity: -1, MsgID: "req uest\n" + strings.Repeat("m", 40), SDID: "bad id]",
				SD: [][2]string{{"", "e"}, {"a=b\"c", "v"}, {strings.Repeat("n", 40), "long"}},
			},
			want: `<128>1 2024-05-06T07:08:09.123456Z host-1 imdsguard 4242 req_uest_mmmmmmmmmmmmmmmmmmmmmmm [bad_id_ _="e" a_b_c="v" ` + strings.Repeat("n", 32) + `="long"]`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, _ := f.render(&tt.rec, testTime, 0)
			got := string(msg)
			if got != tt.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tt.want)
			}
			if _, err := parse5424([]byte(got)); err != nil {
				t.Fatalf("own parser rejects it: %v", err)
			}
		})
	}
}

func TestRenderHostnameSanitised(t *testing.T) {
	f := newFormatter(4, "evil host\n<13>1", "app name", 1)
	msg, _ := f.render(&Record{Time: testTime}, testTime, 0)
	got := string(msg)
	want := `<32>1 2024-05-06T07:08:09.123456Z evil_host_<13>1 app_name 1 - -`
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// TestSDEscaping renders hostile values and parses them back with an
// independent RFC 5424 parser: each must come back as one value, the message
// must stay one line of valid UTF-8, and the JSON MSG must be intact.
func TestSDEscaping(t *testing.T) {
	tests := []struct{ in, want string }{
		{`plain`, `plain`},
		{`a"b`, `a"b`},
		{`a\b`, `a\b`},
		{`a]b`, `a]b`},
		{`"] [x@1 forged="1"]`, `"] [x@1 forged="1"]`},
		{`trailing\`, `trailing\`},
		{"line1\nline2\r\n<13>1 forged", `line1\nline2\r\n<13>1 forged`},
		{"tab\tnul\x00esc\x1bdel\x7f", `tab\tnul\u0000esc\u001bdel\u007f`},
		{"bad\xff\xfeutf8", "bad\ufffd\ufffdutf8"},
		{"ünïcode ✓ 😀", "ünïcode ✓ 😀"},
		{"nel\u0085ls\u2028rlo\u202e", `nel\u0085ls\u2028rlo\u202e`},
		{"", ""},
	}
	f := newFormatter(defaultFacility, "h", "imdsguard", 1)
	rec := Record{Time: testTime, Severity: 4, MsgID: "request", SDID: "imdsguard@32473", JSON: []byte("{\"comm\":\"x\\\"]\n\"}")}
	for i, tt := range tests {
		rec.SD = append(rec.SD, [2]string{"p" + strconv.Itoa(i), tt.in})
	}
	msg, _ := f.render(&rec, testTime, 0)
	if !utf8.Valid(msg) {
		t.Fatalf("message is not valid UTF-8: %q", msg)
	}
	for _, c := range msg {
		if c < 0x20 || c == 0x7f {
			t.Fatalf("control byte %#x in %q", c, msg)
		}
	}
	p, err := parse5424(msg)
	if err != nil {
		t.Fatalf("parse %q: %v", msg, err)
	}
	if p.sdID != "imdsguard@32473" || len(p.params) != len(tests) {
		t.Fatalf("parsed SD %q with %d params, want %d: %q", p.sdID, len(p.params), len(tests), msg)
	}
	for i, tt := range tests {
		if p.params[i][0] != "p"+strconv.Itoa(i) || p.params[i][1] != tt.want {
			t.Errorf("param %d: got %q=%q, want %q", i, p.params[i][0], p.params[i][1], tt.want)
		}
	}
	if p.msg != `{"comm":"x\"]\u000a"}` {
		t.Errorf("MSG %q", p.msg)
	}
}

// TestRenderTruncatesForUDP: over the limit the structured data goes
// first, then the message is cut at the limit on a UTF-8 boundary and the
// structured data says so; the largest datagram the kernel takes is the
// largest limit.
func TestRenderTruncatesForUDP(t *testing.T) {
	f := newFormatter(defaultFacility, "h", "imdsguard", 1)
	big := []byte(`{"path":"` + strings.Repeat("é", 40000) + `"}`)
	rec := Record{Time: testTime, SDID: "x@1", SD: [][2]string{{"a", "b"}}, JSON: big}
	msg, fitted := f.render(&rec, testTime, target.SyslogUDPMaxBytesMax)
	if len(msg) != target.SyslogUDPMaxBytesMax || fitted != fitTruncated {
		t.Fatalf("length %d (%v), want %d", len(msg), fitted, target.SyslogUDPMaxBytesMax)
	}
	p, err := parse5424(msg)
	if err != nil {
		t.Fatal(err)
	}
	// é is written as \u00e9 (6 octets): 40000 of them make the MSG.
	want := [][2]string{{"truncated", "true"}, {"msg_len", strconv.Itoa(len(`{"path":""}`) + 6*40000)}}
	if p.sdID != "x@1" || !equalParams(p.params, want) || !strings.HasPrefix(p.msg, `{"path":"\u00e9`) {
		t.Fatalf("unexpected %q %q / %.40q", p.sdID, p.params, p.msg)
	}

	// Structured data too large for a datagram, the JSON small: the
	// structured data is dropped, the JSON carries the same fields.
	rec.SD = [][2]string{{"a", strings.Repeat("x", 70000)}}
	rec.JSON = []byte(`{"a":"b"}`)
	msg, fitted = f.render(&rec, testTime, target.SyslogUDPMaxBytesDefault)
	if p, err = parse5424(msg); err != nil || p.sdID != "" || p.msg != `{"a":"b"}` || fitted != fitWithoutSD {
		t.Fatalf("parse: %v, sd %q, msg %q, %v", err, p.sdID, p.msg, fitted)
	}
}

// TestCutUTF8 cuts before a multi-byte character that straddles the
// limit, never inside it.
func TestCutUTF8(t *testing.T) {
	b := []byte("ab€d😀") // € is 3 bytes, 😀 4
	for n, want := range map[int]string{0: "", 1: "a", 2: "ab", 3: "ab", 4: "ab", 5: "ab€", 6: "ab€d", 7: "ab€d", 9: "ab€d", 10: "ab€d😀", 99: "ab€d😀"} {
		got := cutUTF8(b, n)
		if string(got) != want || !utf8.Valid(got) {
			t.Errorf("cutUTF8(%q, %d) = %q, want %q", b, n, got, want)
		}
	}
}

func TestOctetFraming(t *testing.T) {
	msgs := [][]byte{
		[]byte("<134>1 - - - - - - one"),
		[]byte("two\nwith newline 12 34\n"),
		bytes.Repeat([]byte("x"), 100000),
	}
	var stream []byte
	for _, m := range msgs {
		stream = appendOctetFrame(stream, m)
	}
	if !bytes.HasPrefix(stream, []byte("22 <134>1 - - - - - - one23 two\n")) {
		t.Fatalf("framing: %q", stream[:40])
	}
	br := bufio.NewReader(bytes.NewReader(stream))
	for i, want := range msgs {
		got, err := readFrame(br)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("frame %d: got %.40q, want %.40q", i, got, want)
		}
	}
	if _, err := readFrame(br); err != io.EOF {
		t.Fatalf("after last frame: %v", err)
	}
}

func TestNewSyslogRejectsBadOptions(t *testing.T) {
	for _, opts := range []SyslogOptions{
		{Network: "http", Addr: "127.0.0.1:514"},
		{Network: "tcp", Addr: "127.0.0.1"},
		{Network: "udp", Addr: "127.0.0.1:514", Facility: 24},
	} {
		if s, err := NewSyslog(opts, nil); err == nil {
			_ = s.Close()
			t.Errorf("%+v: no error", opts)
		}
	}
}

func TestSyslogTCPOutage(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	c1 := startCollector(t, "127.0.0.1:0", nil)
	addr := c1.addr
	s, err := NewSyslog(SyslogOptions{Network: "tcp", Addr: addr, QueueLen: 25, Hostname: "h", AppName: "imdsguard"}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	send := func(from, to int) {
		for i := from; i < to; i++ {
			s.Send(seqRecord(i))
		}
	}

	send(0, 10)
	c1.expectSeq(t, 0, 10)

	// Collector goes down; records queue.
	c1.stop()
	waitFor(t, "sender notices the outage", func() bool { return !s.connected() })
	send(10, 30)
	c2 := startCollector(t, addr, nil)
	c2.expectSeq(t, 10, 30)
	if d := s.Dropped(); d != 0 {
		t.Fatalf("dropped %d, want 0", d)
	}

	// Down again, and more records than the queue holds: the newest go.
	c2.stop()
	waitFor(t, "sender notices the outage", func() bool { return !s.connected() })
	send(30, 70)
	if d := s.Dropped(); d != 15 {
		t.Fatalf("dropped %d, want 15", d)
	}
	c3 := startCollector(t, addr, nil)
	c3.expectSeq(t, 30, 55)
	c3.expectNothing(t, 200*time.Millisecond)
	if n := s.Sent(); n != 55 {
		t.Fatalf("sent %d, want 55", n)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	full := logs.FilterMessage("syslog queue full, dropping newest records").All()
	if len(full) != 1 {
		t.Fatalf("%d drop logs, want 1 (rate limited)", len(full))
	}
	if n := full[0].ContextMap()["dropped_total"].(uint64); n < 1 || n > 15 {
		t.Fatalf("dropped_total %d", n)
	}
	if n := logs.FilterMessage("syslog collector unreachable, queueing records").Len(); n != 2 {
		t.Fatalf("%d outage logs, want 2", n)
	}
}

func TestSyslogTLS(t *testing.T) {
	pki := newTestPKI(t)
	c := startCollector(t, "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pki.server}})
	s, err := NewSyslog(SyslogOptions{
		Network: "tls", Addr: c.addr, TLS: &tls.Config{RootCAs: pki.pool},
		Hostname: "node-1", AppName: "imdsguard",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	rec := hostileRecord()
	s.Send(rec)
	s.Send(seqRecord(1))
	msgs := c.receive(t, 2)
	checkParsed(t, msgs[0], rec, "node-1")
	checkSeq(t, msgs[1], 1)
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// TestSyslogTLSUntrustedAndCloseBounded: a collector whose certificate does
// not chain to the configured CA gets nothing, and Close gives up within its
// bound, reporting the undelivered records.
func TestSyslogTLSUntrustedAndCloseBounded(t *testing.T) {
	pki, other := newTestPKI(t), newTestPKI(t)
	c := startCollector(t, "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pki.server}})
	s, err := NewSyslog(SyslogOptions{Network: "tls", Addr: c.addr, TLS: &tls.Config{RootCAs: other.pool}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		s.Send(seqRecord(i))
	}
	start := time.Now()
	err = s.Close()
	if took := time.Since(start); took > flushTimeout+time.Second {
		t.Fatalf("close took %v", took)
	}
	if !errors.Is(err, ErrUndelivered) {
		t.Fatalf("close: %v, want ErrUndelivered", err)
	}
	c.expectNothing(t, 0)
	if s.Sent() != 0 {
		t.Fatalf("sent %d", s.Sent())
	}
}

// TestSyslogCloseBoundedOnStuckCollector: a collector that accepts but
// never reads leaves the sender blocked in a write; Close still returns
// within its bound.
func TestSyslogCloseBoundedOnStuckCollector(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted sync.WaitGroup
	var conns []net.Conn
	accepted.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		accepted.Wait()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	s, err := NewSyslog(SyslogOptions{Network: "tcp", Addr: ln.Addr().String(), QueueLen: 400}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 400 records of 60 KiB: far more than the loopback socket buffers.
	rec := seqRecord(0)
	rec.JSON = []byte(`{"pad":"` + strings.Repeat("x", 60<<10) + `"}`)
	for range 400 {
		s.Send(rec)
	}
	waitFor(t, "the sender to write", func() bool { return s.Sent() > 0 })
	start := time.Now()
	err = s.Close()
	if took := time.Since(start); took > flushTimeout+time.Second {
		t.Fatalf("close took %v", took)
	}
	if !errors.Is(err, ErrUndelivered) {
		t.Fatalf("close: %v, want ErrUndelivered", err)
	}
}

func TestSyslogUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	s, err := NewSyslog(SyslogOptions{Network: "udp", Addr: pc.LocalAddr().String(), Hostname: "node-1", AppName: "imdsguard"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	rec := hostileRecord()
	s.Send(rec)
	big := seqRecord(2)
	big.JSON = []byte(`{"seq":2,"pad":"` + strings.Repeat("x", 70000) + `"}`)
	s.Send(big)

	buf := make([]byte, 70000)
	if err := pc.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	checkParsed(t, buf[:n], rec, "node-1")
	// One record per datagram, cut to the default limit.
	n, _, err = pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != target.SyslogUDPMaxBytesDefault || !bytes.Contains(buf[:n], []byte(`{"seq":2,"pad":"xxx`)) {
		t.Fatalf("truncated datagram: %d bytes", n)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// TestRsyslog delivers records over TCP and TLS to a real rsyslogd and
// compares what it parsed, field by field.
func TestRsyslog(t *testing.T) {
	bin := findRsyslog(t)
	dir := t.TempDir()
	pki := newTestPKI(t)
	for name, data := range map[string][]byte{"ca.pem": pki.caPEM, "server.pem": pki.certPEM, "server-key.pem": pki.keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o700); err != nil {
		t.Fatal(err)
	}
	tcpPort, tlsPort := freePort(t), freePort(t)
	outTCP, outTLS := filepath.Join(dir, "tcp.log"), filepath.Join(dir, "tls.log")
	// Properties are JSON-escaped so the test can split fields whatever
	// the values contain. imuxsock and imklog are not loaded: the test
	// instance must not take /dev/log or the kernel log from the host.
	conf := fmt.Sprintf(`
global(workDirectory=%[1]q
       maxMessageSize="64k"
       defaultNetstreamDriverCAFile=%[2]q
       defaultNetstreamDriverCertFile=%[3]q
       defaultNetstreamDriverKeyFile=%[4]q)
module(load="imtcp")
template(name="t" type="string" string="{\"ts\":\"%%timereported:::date-rfc3339,json%%\",\"pri\":\"%%pri%%\",\"host\":\"%%hostname:::json%%\",\"app\":\"%%app-name:::json%%\",\"procid\":\"%%procid:::json%%\",\"msgid\":\"%%msgid:::json%%\",\"sd\":\"%%structured-data:::json%%\",\"msg\":\"%%msg:::json%%\",\"raw\":\"%%rawmsg:::json%%\"}\n")
ruleset(name="plain") { action(type="omfile" file=%[5]q template="t") }
ruleset(name="tls") { action(type="omfile" file=%[6]q template="t") }
input(type="imtcp" address="127.0.0.1" port="%[7]d" ruleset="plain")
input(type="imtcp" address="127.0.0.1" port="%[8]d" ruleset="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
`, work, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"),
		outTCP, outTLS, tcpPort, tlsPort)
	confPath := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-N1", "-f", confPath).CombinedOutput(); err != nil {
		t.Fatalf("rsyslogd rejects the config: %v\n%s\n%s", err, out, conf)
	}

	var output lockedBuffer
	cmd := exec.Command(bin, "-n", "-f", confPath, "-i", filepath.Join(dir, "rsyslogd.pid"))
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Start(); err != nil {
		t.Fatalf("start rsyslogd: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		// Our child, by pid: SIGTERM, then SIGKILL if it lingers.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("rsyslogd output:\n%s", output.String())
		}
	})

	plain, err := NewSyslog(SyslogOptions{Network: "tcp", Addr: fmt.Sprintf("127.0.0.1:%d", tcpPort), Hostname: "node-1", AppName: "imdsguard"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plain.Close() })
	secure, err := NewSyslog(SyslogOptions{
		Network: "tls", Addr: fmt.Sprintf("127.0.0.1:%d", tlsPort), TLS: &tls.Config{RootCAs: pki.pool},
		Hostname: "node-1", AppName: "imdsguard",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = secure.Close() })

	recTCP := hostileRecord()
	recTLS := hostileRecord()
	recTLS.MsgID, recTLS.Severity = "connect", 6
	recTLS.SD = append(recTLS.SD, [2]string{"via", "tls"})
	plain.Send(recTCP)
	secure.Send(recTLS)

	for _, c := range []struct {
		name, path string
		rec        Record
	}{{"tcp", outTCP, recTCP}, {"tls", outTLS, recTLS}} {
		var line []byte
		waitFor(t, "rsyslogd writes the "+c.name+" record", func() bool {
			b, err := os.ReadFile(c.path)
			if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
				return false
			}
			line = bytes.TrimSuffix(b, []byte("\n"))
			return true
		})
		if bytes.Count(line, []byte("\n")) != 0 {
			t.Fatalf("%s: more than one line: %q", c.name, line)
		}
		checkRsyslogLine(t, c.name, line, c.rec)
	}
	if err := plain.Close(); err != nil {
		t.Errorf("close tcp sink: %v", err)
	}
	if err := secure.Close(); err != nil {
		t.Errorf("close tls sink: %v", err)
	}
}

func checkRsyslogLine(t *testing.T, name string, line []byte, rec Record) {
	t.Helper()
	var got struct {
		TS, Pri, Host, App, ProcID, MsgID, SD, Msg, Raw string
	}
	t.Logf("%s: rsyslogd wrote %s", name, line)
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("%s: rsyslog line %q: %v", name, line, err)
	}
	ts, err := time.Parse(time.RFC3339Nano, got.TS)
	if err != nil || !ts.Equal(rec.Time.Truncate(time.Microsecond)) {
		t.Errorf("%s: timestamp %q (%v), want %v", name, got.TS, err, rec.Time)
	}
	want := map[string]string{
		"pri":    strconv.Itoa(defaultFacility*8 + rec.Severity),
		"host":   "node-1",
		"app":    "imdsguard",
		"procid": strconv.Itoa(os.Getpid()),
		"msgid":  rec.MsgID,
	}
	for k, v := range map[string]string{"pri": got.Pri, "host": got.Host, "app": got.App, "procid": got.ProcID, "msgid": got.MsgID} {
		if v != want[k] {
			t.Errorf("%s: %s %q, want %q", name, k, v, want[k])
		}
	}
	id, params, rest, err := parseSD([]byte(got.SD))
	if err != nil || len(rest) != 0 {
		t.Fatalf("%s: structured data %q: %v (rest %q)", name, got.SD, err, rest)
	}
	if id != rec.SDID {
		t.Errorf("%s: SD-ID %q, want %q", name, id, rec.SDID)
	}
	checkParams(t, params, rec.SD)
	checkMsg(t, got.Msg, rec.JSON)
	// The bytes rsyslogd received are exactly the rendered message: the
	// framing delivered one whole message, nothing more.
	f := newFormatter(defaultFacility, "node-1", "imdsguard", os.Getpid())
	if want, _ := f.render(&rec, time.Now(), 0); got.Raw != string(want) {
		t.Errorf("%s: raw message\n%q\nwant\n%q", name, got.Raw, want)
	}
}

// seqRecord is a record numbered i, for checking order.
func seqRecord(i int) Record {
	return Record{
		Time: testTime.Add(time.Duration(i) * time.Millisecond), Severity: 6, MsgID: "connect", SDID: "imdsguard@32473",
		SD:   [][2]string{{"seq", strconv.Itoa(i)}},
		JSON: fmt.Appendf(nil, `{"seq":%d}`, i),
	}
}

// hostileRecord carries workload-chosen bytes that try to break framing,
// structured data and the JSON MSG.
func hostileRecord() Record {
	return Record{
		Time: testTime, Severity: 4, MsgID: "request", SDID: "imdsguard@32473",
		SD: [][2]string{
			{"action", "deny"},
			{"comm", "cu\"rl] [x@1 a=\"b\"]\\"},
			{"path", "/latest/meta-data/iam/security-credentials/x\n<13>1 2024-01-01T00:00:00Z forged - - - - hi"},
			{"cgroup", "bad\xff\xfeutf8 ünï ✓"},
			{"empty", ""},
		},
		JSON: []byte(`{"kind":"request","action":"deny","comm":"cu\"rl] [x@1 a=\"b\"]\\","path":"/x\n<13>1 forged","cgroup":"\ufffd\ufffdutf8 ünï ✓ 😀"}`),
	}
}

// sdDisplay is how an RFC 5424 parser shows a value our sink escaped:
// control characters come back as their escape text.
func sdDisplay(v string) string {
	return string(appendSDValueDisplay(nil, v))
}

func appendSDValueDisplay(dst []byte, v string) []byte {
	// Ranging over a string yields U+FFFD per invalid byte, as the sink
	// replaces them.
	for _, r := range v {
		switch {
		case r == '\n':
			dst = append(dst, `\n`...)
		case r == '\r':
			dst = append(dst, `\r`...)
		case r == '\t':
			dst = append(dst, `\t`...)
		case r < 0x20 || r == 0x7f || isDangerousRune(r):
			dst = fmt.Appendf(dst, `\u%04x`, r)
		default:
			dst = utf8.AppendRune(dst, r)
		}
	}
	return dst
}

func checkParams(t *testing.T, got, want [][2]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d params %q, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i][0] != want[i][0] || got[i][1] != sdDisplay(want[i][1]) {
			t.Errorf("param %d: got %q=%q, want %q=%q", i, got[i][0], got[i][1], want[i][0], sdDisplay(want[i][1]))
		}
	}
}

// checkMsg compares the MSG with the record's JSON: byte for byte with what
// the sink promises (ASCII escapes), and as a decoded JSON value.
func checkMsg(t *testing.T, got string, want []byte) {
	t.Helper()
	if got != string(cleanJSON(nil, want, true)) {
		t.Errorf("MSG %q, want %q", got, cleanJSON(nil, want, true))
	}
	var a, b any
	if err := json.Unmarshal([]byte(got), &a); err != nil {
		t.Fatalf("MSG is not JSON: %v: %q", err, got)
	}
	if err := json.Unmarshal(want, &b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("MSG value %v, want %v", a, b)
	}
}

func checkParsed(t *testing.T, msg []byte, rec Record, host string) {
	t.Helper()
	p, err := parse5424(msg)
	if err != nil {
		t.Fatalf("parse %q: %v", msg, err)
	}
	if p.pri != defaultFacility*8+rec.Severity || p.host != host || p.app != "imdsguard" ||
		p.procID != strconv.Itoa(os.Getpid()) || p.msgID != rec.MsgID || p.ts != "2024-05-06T07:08:09.123456Z" || p.sdID != rec.SDID {
		t.Errorf("header %+v", p)
	}
	checkParams(t, p.params, rec.SD)
	checkMsg(t, p.msg, rec.JSON)
}

func checkSeq(t *testing.T, msg []byte, want int) {
	t.Helper()
	p, err := parse5424(msg)
	if err != nil {
		t.Fatalf("parse %q: %v", msg, err)
	}
	if len(p.params) != 1 || p.params[0] != [2]string{"seq", strconv.Itoa(want)} || p.msg != fmt.Sprintf(`{"seq":%d}`, want) {
		t.Fatalf("got %q, want seq %d", msg, want)
	}
}

// parsed5424 is a message as an RFC 5424 receiver sees it.
type parsed5424 struct {
	pri                          int
	ts, host, app, procID, msgID string
	sdID                         string
	params                       [][2]string
	msg                          string
}

// parse5424 is a strict RFC 5424 parser written from the RFC's ABNF,
// independent of the renderer. It accepts at most one SD-ELEMENT, which is
// all the sink writes.
func parse5424(b []byte) (parsed5424, error) {
	var p parsed5424
	if !utf8.Valid(b) {
		return p, errors.New("not UTF-8")
	}
	if len(b) == 0 || b[0] != '<' {
		return p, errors.New("no PRI")
	}
	end := bytes.IndexByte(b, '>')
	if end < 2 || end > 4 {
		return p, errors.New("bad PRI")
	}
	pri, err := strconv.Atoi(string(b[1:end]))
	if err != nil || pri > 191 {
		return p, fmt.Errorf("bad PRI %q", b[1:end])
	}
	p.pri = pri
	b = b[end+1:]
	if !bytes.HasPrefix(b, []byte("1 ")) {
		return p, errors.New("bad VERSION")
	}
	b = b[2:]
	fields := []*string{&p.ts, &p.host, &p.app, &p.procID, &p.msgID}
	limits := []int{64, maxHostname, maxAppName, maxProcID, maxMsgID}
	for i, f := range fields {
		sp := bytes.IndexByte(b, ' ')
		if sp < 1 || sp > limits[i] {
			return p, fmt.Errorf("header field %d", i)
		}
		for _, c := range b[:sp] {
			if c < 33 || c > 126 {
				return p, fmt.Errorf("header field %d: byte %#x", i, c)
			}
		}
		*f = string(b[:sp])
		b = b[sp+1:]
	}
	if _, err := time.Parse(time.RFC3339Nano, p.ts); err != nil {
		return p, fmt.Errorf("timestamp: %w", err)
	}
	if len(b) > 0 && b[0] == '-' {
		b = b[1:]
	} else {
		p.sdID, p.params, b, err = parseSD(b)
		if err != nil {
			return p, err
		}
	}
	if len(b) > 0 {
		if b[0] != ' ' {
			return p, errors.New("no SP before MSG")
		}
		p.msg = string(b[1:])
	}
	return p, nil
}

// parseSD parses one SD-ELEMENT and returns what follows it.
func parseSD(b []byte) (id string, params [][2]string, rest []byte, err error) {
	if len(b) == 0 || b[0] != '[' {
		return "", nil, nil, errors.New("no SD-ELEMENT")
	}
	b = b[1:]
	name := func() (string, error) {
		i := 0
		for i < len(b) && b[i] >= 33 && b[i] <= 126 && b[i] != '=' && b[i] != ']' && b[i] != '"' {
			i++
		}
		if i == 0 || i > maxSDName {
			return "", fmt.Errorf("bad SD-NAME at %q", b)
		}
		n := string(b[:i])
		b = b[i:]
		return n, nil
	}
	if id, err = name(); err != nil {
		return "", nil, nil, err
	}
	for {
		if len(b) == 0 {
			return "", nil, nil, errors.New("unterminated SD-ELEMENT")
		}
		if b[0] == ']' {
			return id, params, b[1:], nil
		}
		if b[0] != ' ' {
			return "", nil, nil, fmt.Errorf("want SP or ] at %q", b)
		}
		b = b[1:]
		pn, err := name()
		if err != nil {
			return "", nil, nil, err
		}
		if !bytes.HasPrefix(b, []byte(`="`)) {
			return "", nil, nil, fmt.Errorf("want =\" at %q", b)
		}
		b = b[2:]
		var v []byte
		for {
			if len(b) == 0 {
				return "", nil, nil, errors.New("unterminated PARAM-VALUE")
			}
			c := b[0]
			b = b[1:]
			if c == '"' {
				break
			}
			if c == ']' {
				return "", nil, nil, errors.New("unescaped ] in PARAM-VALUE")
			}
			// RFC 5424 6.3.3: only \" \\ \] are escapes; a backslash
			// before anything else is kept.
			if c == '\\' && len(b) > 0 && (b[0] == '"' || b[0] == '\\' || b[0] == ']') {
				c = b[0]
				b = b[1:]
			}
			v = append(v, c)
		}
		params = append(params, [2]string{pn, string(v)})
	}
}

// readFrame reads one RFC 6587 octet-counted frame.
func readFrame(br *bufio.Reader) ([]byte, error) {
	var n int
	for digits := 0; ; digits++ {
		c, err := br.ReadByte()
		if err != nil {
			if err == io.EOF && digits > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if c == ' ' && digits > 0 {
			break
		}
		// MSG-LEN = NONZERO-DIGIT *DIGIT
		if c < '0' || c > '9' || (digits == 0 && c == '0') || digits > 9 {
			return nil, fmt.Errorf("bad frame length byte %q", c)
		}
		n = n*10 + int(c-'0')
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(br, msg); err != nil {
		return nil, fmt.Errorf("read frame: %w", err)
	}
	return msg, nil
}

// collector is a TCP or TLS syslog receiver on loopback.
type collector struct {
	addr  string
	ln    net.Listener
	msgs  chan []byte
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
	once  sync.Once
}

func startCollector(t *testing.T, addr string, conf *tls.Config) *collector {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	if conf != nil {
		ln = tls.NewListener(ln, conf)
	}
	c := &collector{addr: ln.Addr().String(), ln: ln, msgs: make(chan []byte, 1000)}
	c.wg.Go(c.accept)
	t.Cleanup(c.stop)
	return c
}

func (c *collector) accept() {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.mu.Lock()
		c.conns = append(c.conns, conn)
		c.mu.Unlock()
		c.wg.Go(func() {
			br := bufio.NewReader(conn)
			for {
				m, err := readFrame(br)
				if err != nil {
					return
				}
				c.msgs <- m
			}
		})
	}
}

// stop closes the listener and every accepted connection: the collector
// is gone, as when rsyslogd restarts.
func (c *collector) stop() {
	c.once.Do(func() {
		_ = c.ln.Close()
		c.mu.Lock()
		for _, conn := range c.conns {
			_ = conn.Close()
		}
		c.mu.Unlock()
		c.wg.Wait()
	})
}

func (c *collector) receive(t *testing.T, n int) [][]byte {
	t.Helper()
	var out [][]byte
	timeout := time.After(15 * time.Second)
	for len(out) < n {
		select {
		case m := <-c.msgs:
			out = append(out, m)
		case <-timeout:
			t.Fatalf("received %d of %d messages", len(out), n)
		}
	}
	return out
}

func (c *collector) expectSeq(t *testing.T, from, to int) {
	t.Helper()
	for i, m := range c.receive(t, to-from) {
		checkSeq(t, m, from+i)
	}
}

func (c *collector) expectNothing(t *testing.T, wait time.Duration) {
	t.Helper()
	select {
	case m := <-c.msgs:
		t.Fatalf("unexpected message %q", m)
	case <-time.After(wait):
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// findRsyslog returns rsyslogd's path, skipping the test when rsyslog or its
// TLS driver is missing unless the environment demands it (CI installs
// both).
func findRsyslog(t *testing.T) string {
	t.Helper()
	missing := func(what string) {
		msg := what + " not installed (apt-get install -y rsyslog rsyslog-gnutls)"
		if os.Getenv("CI") == "true" || os.Getenv("IMDSGUARD_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	bin, err := exec.LookPath("rsyslogd")
	if err != nil {
		// /usr/sbin is often not on a non-root PATH.
		bin = "/usr/sbin/rsyslogd"
		if _, err := os.Stat(bin); err != nil {
			missing("rsyslogd")
		}
	}
	var found bool
	for _, pattern := range []string{"/usr/lib/*/rsyslog/lmnsd_gtls.so", "/usr/lib/rsyslog/lmnsd_gtls.so", "/usr/lib64/rsyslog/lmnsd_gtls.so"} {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			found = true
			break
		}
	}
	if !found {
		missing("rsyslog's GnuTLS driver (lmnsd_gtls)")
	}
	return bin
}

// testPKI is a throwaway CA and a server certificate for 127.0.0.1.
type testPKI struct {
	caPEM, certPEM, keyPEM []byte
	pool                   *x509.CertPool
	server                 tls.Certificate
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "imdsguard test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p := testPKI{
		caPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pool:    x509.NewCertPool(),
	}
	p.pool.AddCert(ca)
	if p.server, err = tls.X509KeyPair(p.certPEM, p.keyPEM); err != nil {
		t.Fatal(err)
	}
	return p
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
