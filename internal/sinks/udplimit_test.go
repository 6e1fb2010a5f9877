package sinks

import (
	"encoding/json"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
	"github.com/imdsguard/imdsguard/internal/ocsf"
)

// rfc5426Limit is the size RFC 5426 section 3.2 says every receiver should
// accept: the sink's default limit for UDP.
const rfc5426Limit = 2048

// udpReceiver is a syslog receiver on loopback UDP: one message per
// datagram, as RFC 5426 has it.
type udpReceiver struct {
	pc net.PacketConn
}

func listenUDP(t *testing.T) *udpReceiver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	return &udpReceiver{pc: pc}
}

func (u *udpReceiver) addr() string { return u.pc.LocalAddr().String() }

// next returns the next datagram's payload, whole: the buffer is larger
// than any UDP payload, so a longer datagram cannot hide behind a cut read.
func (u *udpReceiver) next(t *testing.T) []byte {
	t.Helper()
	buf := make([]byte, 1<<16)
	if err := u.pc.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, _, err := u.pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no datagram: %v", err)
	}
	return buf[:n]
}

// podCredentialRead is a credential read from a pod's container, audited:
// credentials left the node. Every name is as long as real ones get, so
// its OCSF record is as large as they come (the issue measured 1.4 to
// 2.4 KB).
func podCredentialRead() *events.Event {
	return &events.Event{
		Time: testTime, Kind: bpf.KindRequest, Action: bpf.ActionAudit, Reason: bpf.ReasonNonHostNetns,
		Endpoint: netip.MustParseAddrPort("169.254.169.254:80"), Method: "GET",
		Path:             "/latest/meta-data/iam/security-credentials/eks-node-role-prod-eu-west-1",
		CredentialAccess: true, HasToken: true, PID: 4242, PPID: 4200, Comm: "python3", UID: 1000, GID: 1000,
		Cgroup:      "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
		CgroupID:    4711,
		ContainerID: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Runtime: "containerd",
		PodUID: "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901", Pod: "checkout-api-7d9f8c6b5-x2x9q", Namespace: "shop", Container: "api",
		Image: "123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop/checkout-api:2024.05.06-1a2b3c4", Exe: "/usr/local/bin/python3.12",
		// 256 bytes: the most eventreader copies (MaxCmdline).
		Cmdline:  "/usr/local/bin/python3.12 -m gunicorn --workers 4 --bind 0.0.0.0:8080 --access-logfile - --error-logfile - --timeout 30 --keep-alive 5 --graceful-timeout 20 --max-requests 1000 --max-requests-jitter 50 checkout.api.wsgi:application --log-level info --chdir /ap",
		Hostname: "ip-10-0-3-17.eu-west-1.compute.internal", InstanceID: "i-0abc123def4567890", Cloud: "aws", Count: 1, NetnsCookie: 4101,
	}
}

// ocsfRecord renders ev as the output pipeline does for a syslog target in
// OCSF format: the OCSF object as MSG, the event's fields as structured
// data.
func ocsfRecord(t *testing.T, ev *events.Event) Record {
	t.Helper()
	js, err := ocsf.Render(ev, ocsf.Product{Name: "imdsguard", VendorName: "imdsguard", Version: "0.0.0-test"})
	if err != nil {
		t.Fatal(err)
	}
	return Record{
		Time: ev.Time, JSON: js, MsgID: ev.Kind.String(), Severity: 5, SDID: "imdsguard@32473",
		SD: [][2]string{
			{"action", ev.Action.String()}, {"reason", ev.Reason.String()}, {"endpoint", ev.Endpoint.String()},
			{"pid", strconv.FormatUint(uint64(ev.PID), 10)}, {"comm", ev.Comm}, {"uid", strconv.FormatUint(uint64(ev.UID), 10)},
			{"cgroup", ev.Cgroup}, {"container_id", ev.ContainerID}, {"pod_uid", ev.PodUID},
			{"method", ev.Method}, {"path", ev.Path}, {"credential_access", strconv.FormatBool(ev.CredentialAccess)},
			{"rule", ev.Rule},
		},
	}
}

// hostCredentialRead is a token-less credential read from a service on
// the host, audited.
func hostCredentialRead(cmdline string) *events.Event {
	ev := podCredentialRead()
	ev.Reason, ev.HasToken, ev.HostNetns = bpf.ReasonIMDSv1NoToken, false, true
	ev.Cgroup, ev.CgroupID, ev.NetnsCookie = "/system.slice/checkout.service", 88, 3
	ev.ContainerID, ev.Runtime, ev.PodUID, ev.Pod, ev.Namespace, ev.Container, ev.Image = "", "", "", "", "", "", ""
	ev.Cmdline = cmdline
	return ev
}

// fitting grows the command line of hostCredentialRead until its OCSF
// record with its structured data is over limit while without it it fits
// with room to spare: the case where dropping the structured data is
// enough.
func fitting(t *testing.T, limit int) Record {
	t.Helper()
	f := newFormatter(defaultFacility, "node-1", "imdsguard", 1)
	full := podCredentialRead().Cmdline
	for n := 0; n <= len(full); n += 8 {
		rec := ocsfRecord(t, hostCredentialRead(full[:n]))
		with, _ := f.appendMessage(nil, &rec, testTime, rec.SDID, rec.SD)
		without, _ := f.appendMessage(nil, &rec, testTime, "", nil)
		if len(without) <= limit-16 && len(with) > limit {
			return rec
		}
	}
	t.Fatalf("fixture: no command line makes the record fit in %d only without its structured data", limit)
	return Record{}
}

// TestSyslogUDPLimit sends OCSF records too large for RFC 5426's 2048
// octets over UDP with the default options: each datagram the receiver
// gets is at most 2048 octets. The structured data goes first (the JSON
// carries the same fields), so a record that fits without it arrives with
// its JSON whole; one that does not is cut at the limit, says so in its
// structured data, and stays valid UTF-8.
func TestSyslogUDPLimit(t *testing.T) {
	recv := listenUDP(t)
	s, err := NewSyslog(SyslogOptions{Network: "udp", Addr: recv.addr(), Hostname: "node-1", AppName: "imdsguard"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })

	small := seqRecord(1)
	fits := fitting(t, rfc5426Limit)
	big := ocsfRecord(t, podCredentialRead())
	if n := len(big.JSON); n <= rfc5426Limit {
		t.Fatalf("fixture: the OCSF record is %d bytes, want one over %d", n, rfc5426Limit)
	}
	for _, r := range []Record{small, fits, big} {
		s.Send(r)
	}

	checkSeq(t, recv.next(t), 1)

	got := recv.next(t)
	if len(got) > rfc5426Limit {
		t.Fatalf("record that fits without its structured data: datagram of %d octets, over %d", len(got), rfc5426Limit)
	}
	p, err := parse5424(got)
	if err != nil {
		t.Fatalf("parse %q: %v", got, err)
	}
	if p.sdID != "" || p.msg != string(fits.JSON) || !json.Valid([]byte(p.msg)) {
		t.Fatalf("want no structured data and the whole JSON; got SD %q %q, MSG of %d bytes (want %d)", p.sdID, p.params, len(p.msg), len(fits.JSON))
	}

	got = recv.next(t)
	if len(got) != rfc5426Limit {
		t.Fatalf("record too large even without structured data: datagram of %d octets, want %d", len(got), rfc5426Limit)
	}
	if p, err = parse5424(got); err != nil {
		t.Fatalf("parse %q: %v", got, err)
	}
	want := [][2]string{{"truncated", "true"}, {"msg_len", strconv.Itoa(len(big.JSON))}}
	if p.sdID != "imdsguard@32473" || !equalParams(p.params, want) {
		t.Fatalf("truncated record: SD %q %q, want %q", p.sdID, p.params, want)
	}
	if !strings.HasPrefix(string(big.JSON), p.msg) || len(p.msg) < rfc5426Limit/2 {
		t.Fatalf("MSG is not the start of the record's JSON: %.80q", p.msg)
	}
	if p.pri != defaultFacility*8+5 || p.msgID != "request" {
		t.Fatalf("header changed by the cut: %+v", p)
	}
}

func equalParams(a, b [][2]string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSyslogUDPLimitCountedAndLogged: each record shrunk to the limit is
// counted, and the daemon's log says so (once per interval, with the
// totals and what to do about it).
func TestSyslogUDPLimitCountedAndLogged(t *testing.T) {
	recv := listenUDP(t)
	core, logs := observer.New(zap.WarnLevel)
	s, err := NewSyslog(SyslogOptions{Network: "udp", Addr: recv.addr(), Hostname: "node-1"}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	s.Send(fitting(t, rfc5426Limit))
	s.Send(ocsfRecord(t, podCredentialRead()))
	s.Send(seqRecord(3))
	for range 3 {
		recv.next(t)
	}
	if sd, cut := s.Oversize(); sd != 1 || cut != 1 {
		t.Fatalf("Oversize() = %d without structured data, %d cut; want 1 and 1", sd, cut)
	}
	waitFor(t, "the log line", func() bool {
		return logs.FilterMessageSnippet("over the UDP size limit").Len() > 0
	})
	e := logs.FilterMessageSnippet("over the UDP size limit").All()[0]
	f := e.ContextMap()
	if f["limit"] != int64(rfc5426Limit) || f["truncated_total"] == nil || !strings.Contains(e.Message, "syslog+tcp or syslog+tls") {
		t.Fatalf("log line %q %v", e.Message, f)
	}
}

// TestSyslogUDPLimitConfigured: a larger limit lets the large record
// through whole, structured data and all; a smaller one cuts at it; a limit
// RFC 5426 gives no receiver a reason to accept, or one no datagram can
// carry, is refused.
func TestSyslogUDPLimitConfigured(t *testing.T) {
	big := ocsfRecord(t, podCredentialRead())
	for _, limit := range []int{8192, 1200} {
		recv := listenUDP(t)
		s, err := NewSyslog(SyslogOptions{Network: "udp", Addr: recv.addr(), Hostname: "node-1", UDPMaxBytes: limit}, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Send(big)
		got := recv.next(t)
		_ = s.Close()
		p, err := parse5424(got)
		if err != nil {
			t.Fatalf("limit %d: parse: %v", limit, err)
		}
		switch limit {
		case 8192:
			if p.sdID != big.SDID || len(p.params) != len(big.SD) || p.msg != string(big.JSON) {
				t.Fatalf("limit %d: want the whole message (%d octets), got %d", limit, len(big.JSON), len(got))
			}
		default:
			if len(got) != limit || p.params[0] != [2]string{"truncated", "true"} {
				t.Fatalf("limit %d: datagram of %d octets, SD %q", limit, len(got), p.params)
			}
		}
	}
	for _, bad := range []int{-1, 100, 479, 65508, 1 << 20} {
		_, err := NewSyslog(SyslogOptions{Network: "udp", Addr: "127.0.0.1:514", UDPMaxBytes: bad}, nil)
		if err == nil || !strings.Contains(err.Error(), "480 to 65507") {
			t.Errorf("UDPMaxBytes %d: err %v, want a refusal naming the range", bad, err)
		}
	}
}

// TestSyslogTCPNotLimited: over TCP (octet counting) the large record
// arrives whole with its structured data, however small the UDP limit.
func TestSyslogTCPNotLimited(t *testing.T) {
	c := startCollector(t, "127.0.0.1:0", nil)
	s, err := NewSyslog(SyslogOptions{Network: "tcp", Addr: c.addr, Hostname: "node-1", UDPMaxBytes: 480}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	big := ocsfRecord(t, podCredentialRead())
	big.JSON = append(big.JSON[:len(big.JSON)-1:len(big.JSON)-1], `,"pad":"`+strings.Repeat("x", 70000)+`"}`...)
	s.Send(big)
	got := c.receive(t, 1)[0]
	p, err := parse5424(got)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) <= 70000 || p.sdID != big.SDID || !equalParams(p.params, big.SD) || p.msg != string(big.JSON) {
		t.Fatalf("TCP message of %d octets, SD %q: want it whole", len(got), p.sdID)
	}
	if sd, cut := s.Oversize(); sd != 0 || cut != 0 {
		t.Fatalf("Oversize() = %d, %d over TCP", sd, cut)
	}
}
