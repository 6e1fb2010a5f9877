package bpf

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
)

// Results of uplink_parse_test (enum uplink_parse, +4 with payload).
const (
	parseCheck   = 0
	parseOther   = 1
	parseBad     = 2
	parseHasData = 4
)

// frame builds an Ethernet frame: tags VLAN tags, then an IP packet of
// etherType.
func frame(etherType uint16, tags int, ip []byte) []byte {
	b := make([]byte, 12, 64+len(ip))
	for range tags {
		b = binary.BigEndian.AppendUint16(b, 0x8100)
		b = binary.BigEndian.AppendUint16(b, 7)
	}
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, ip...)
}

// tcp is a TCP header to port 80 with flags and payload bytes of data.
func tcp(flags byte, payload int) []byte {
	h := make([]byte, 20, 20+payload)
	binary.BigEndian.PutUint16(h[0:], 40000)
	binary.BigEndian.PutUint16(h[2:], 80)
	h[12] = 5 << 4
	h[13] = flags
	return append(h, make([]byte, payload)...)
}

// ipv4 wraps l4 (protocol proto) with optWords words of options and the
// flags/fragment-offset field frag.
func ipv4(proto byte, frag uint16, optWords int, l4 []byte) []byte {
	hl := 20 + 4*optWords
	h := make([]byte, hl)
	h[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(h[2:], uint16(hl+len(l4)))
	binary.BigEndian.PutUint16(h[6:], frag)
	h[8] = 64
	h[9] = proto
	copy(h[12:], []byte{10, 99, 0, 1})
	copy(h[16:], []byte{169, 254, 169, 254})
	return append(h, l4...)
}

// ipv6 wraps l4 in an IPv6 header and the extension headers exts, each
// {type, bytes}; the last next header is proto.
func ipv6(proto byte, exts [][]byte, l4 []byte) []byte {
	var body []byte
	for i, x := range exts {
		next := proto
		if i+1 < len(exts) {
			next = exts[i+1][0]
		}
		e := append([]byte{next}, x[1:]...)
		body = append(body, e...)
	}
	body = append(body, l4...)
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(body)))
	h[6] = proto
	if len(exts) > 0 {
		h[6] = exts[0][0]
	}
	h[7] = 64
	a := netip.MustParseAddr("fd00:ec2::254").As16()
	copy(h[24:], a[:])
	return append(h, body...)
}

// ext is an 8-byte extension header of type t (its first byte, replaced by
// the next header when built); for a fragment header (44), frag is its
// offset/M field.
func ext(t byte, frag uint16) []byte {
	x := make([]byte, 8)
	x[0] = t
	if t == 44 {
		binary.BigEndian.PutUint16(x[2:], frag)
	}
	return x
}

func TestUplinkParserFindsTheTCPDestinationOfEveryFrame(t *testing.T) {
	if os.Geteuid() != 0 {
		requirePrivileged(t, "needs root to run BPF programs")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		requirePrivileged(t, "cannot raise the memlock limit: "+err.Error())
	}
	var objs JudgeTestObjects
	if err := LoadJudgeTestObjects(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()

	imds4 := netip.MustParseAddr("::ffff:169.254.169.254")
	imds6 := netip.MustParseAddr("fd00:ec2::254")
	for _, c := range []struct {
		name  string
		frame []byte
		want  int
		addr  netip.Addr // checked when want is a check
	}{
		{"IPv4 request", frame(0x0800, 0, ipv4(6, 0x4000, 0, tcp(0x18, 100))), parseCheck | parseHasData, imds4},
		{"IPv4 bare SYN", frame(0x0800, 0, ipv4(6, 0x4000, 0, tcp(0x02, 0))), parseCheck, imds4},
		{"IPv4 SYN with data", frame(0x0800, 0, ipv4(6, 0, 0, tcp(0x02, 10))), parseCheck | parseHasData, imds4},
		{"IPv4 options", frame(0x0800, 0, ipv4(6, 0, 3, tcp(0x18, 5))), parseCheck | parseHasData, imds4},
		{"IPv4 first fragment, header only", frame(0x0800, 0, ipv4(6, 0x2000, 0, tcp(0x18, 0))), parseCheck | parseHasData, imds4},
		{"IPv4 later fragment", frame(0x0800, 0, ipv4(6, 0x0003, 0, make([]byte, 40))), parseOther, netip.Addr{}},
		{"IPv4 UDP", frame(0x0800, 0, ipv4(17, 0, 0, make([]byte, 16))), parseOther, netip.Addr{}},
		{"one VLAN tag", frame(0x0800, 1, ipv4(6, 0, 0, tcp(0x18, 5))), parseCheck | parseHasData, imds4},
		{"two VLAN tags", frame(0x0800, 2, ipv4(6, 0, 0, tcp(0x18, 5))), parseCheck | parseHasData, imds4},
		{"three VLAN tags", frame(0x0800, 3, ipv4(6, 0, 0, tcp(0x18, 5))), parseBad, netip.Addr{}},
		{"IPv4 cut before the ports", frame(0x0800, 0, ipv4(6, 0, 0, tcp(0x18, 5))[:21]), parseBad, netip.Addr{}},
		{"IPv4 header length 4", frame(0x0800, 0, append([]byte{0x44}, ipv4(6, 0, 0, tcp(0x18, 5))[1:]...)), parseBad, netip.Addr{}},
		{"IPv6 request", frame(0x86dd, 0, ipv6(6, nil, tcp(0x18, 100))), parseCheck | parseHasData, imds6},
		{"IPv6 bare ACK", frame(0x86dd, 0, ipv6(6, nil, tcp(0x10, 0))), parseCheck, imds6},
		{"IPv6 hop-by-hop and destination options", frame(0x86dd, 0, ipv6(6, [][]byte{ext(0, 0), ext(60, 0)}, tcp(0x18, 5))), parseCheck | parseHasData, imds6},
		{"IPv6 first fragment", frame(0x86dd, 0, ipv6(6, [][]byte{ext(44, 1)}, tcp(0x18, 0))), parseCheck | parseHasData, imds6},
		{"IPv6 later fragment", frame(0x86dd, 0, ipv6(6, [][]byte{ext(44, 8)}, make([]byte, 24))), parseOther, netip.Addr{}},
		{"IPv6 five extension headers", frame(0x86dd, 0, ipv6(6, [][]byte{ext(0, 0), ext(60, 0), ext(43, 0), ext(60, 0), ext(60, 0)}, tcp(0x18, 5))), parseBad, netip.Addr{}},
		{"ICMPv6", frame(0x86dd, 0, ipv6(58, nil, make([]byte, 24))), parseOther, netip.Addr{}},
		{"ARP", frame(0x0806, 0, make([]byte, 28)), parseOther, netip.Addr{}},
		{"IPv4 ethertype, IPv6 packet", frame(0x0800, 0, ipv6(6, nil, tcp(0x18, 5))), parseBad, netip.Addr{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := objs.UplinkParseTest.Run(&ebpf.RunOptions{Data: c.frame})
			if err != nil {
				t.Fatal(err)
			}
			if int(got) != c.want {
				t.Fatalf("parse = %d, want %d", got, c.want)
			}
			if c.want&3 != parseCheck {
				return
			}
			var p JudgeTestUplinkPkt
			if err := objs.UplinkSeen.Lookup(uint32(0), &p); err != nil {
				t.Fatal(err)
			}
			if a := netip.AddrFrom16(p.Key.Addr); a != c.addr || binary.BigEndian.Uint16([]byte{byte(p.Key.Port), byte(p.Key.Port >> 8)}) != 80 {
				t.Fatalf("read destination %s port %#x, want %s port 80", a, p.Key.Port, c.addr)
			}
		})
	}
}
