package main

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"
)

// TCP flags.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagPSH = 0x08
	flagACK = 0x10
)

// segment is one TCP segment (header fields rawclient uses, and payload).
type segment struct {
	src, dst     netip.Addr // both IPv4 or both IPv6
	sport, dport uint16
	seq, ack     uint32
	flags        uint8
	window       uint16
	mss          uint16 // from the MSS option, 0 if absent
	payload      []byte
}

// checksum is the Internet checksum (RFC 1071) of the concatenation of
// parts, each of which but the last must have even length.
func checksum(parts ...[]byte) uint16 {
	var sum uint32
	for _, b := range parts {
		for len(b) >= 2 {
			sum += uint32(b[0])<<8 | uint32(b[1])
			b = b[2:]
		}
		if len(b) == 1 {
			sum += uint32(b[0]) << 8
		}
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// pseudoHeader is the pseudo-header covered by the checksum of a TCP
// segment of length n: RFC 9293's for IPv4, RFC 8200 §8.1's for IPv6.
func pseudoHeader(src, dst netip.Addr, n int) []byte {
	if src.Is4() {
		var ph [12]byte
		s, d := src.As4(), dst.As4()
		copy(ph[0:4], s[:])
		copy(ph[4:8], d[:])
		ph[9] = unix.IPPROTO_TCP
		binary.BigEndian.PutUint16(ph[10:12], uint16(n))
		return ph[:]
	}
	var ph [40]byte
	s, d := src.As16(), dst.As16()
	copy(ph[0:16], s[:])
	copy(ph[16:32], d[:])
	binary.BigEndian.PutUint32(ph[32:36], uint32(n))
	ph[39] = unix.IPPROTO_TCP
	return ph[:]
}

// marshal builds the TCP header (with an MSS option if s.mss is set), the
// payload and the checksum over the pseudo-header.
func (s *segment) marshal() []byte {
	hlen := 20
	if s.mss != 0 {
		hlen += 4
	}
	b := make([]byte, hlen+len(s.payload))
	binary.BigEndian.PutUint16(b[0:2], s.sport)
	binary.BigEndian.PutUint16(b[2:4], s.dport)
	binary.BigEndian.PutUint32(b[4:8], s.seq)
	binary.BigEndian.PutUint32(b[8:12], s.ack)
	b[12] = byte(hlen/4) << 4
	b[13] = s.flags
	binary.BigEndian.PutUint16(b[14:16], s.window)
	// b[16:18] checksum, b[18:20] urgent pointer: zero.
	if s.mss != 0 {
		b[20], b[21] = 2, 4 // kind MSS, length 4
		binary.BigEndian.PutUint16(b[22:24], s.mss)
	}
	copy(b[hlen:], s.payload)
	binary.BigEndian.PutUint16(b[16:18], checksum(pseudoHeader(s.src, s.dst, len(b)), b))
	return b
}

// parsePacket parses an IPv4 packet carrying TCP, as read from a raw
// AF_INET socket (IP header included). Fragments are rejected.
func parsePacket(p []byte) (*segment, error) {
	if len(p) < 20 || p[0]>>4 != 4 {
		return nil, errors.New("not an IPv4 packet")
	}
	ihl := int(p[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(p[2:4]))
	if ihl < 20 || total < ihl || total > len(p) {
		return nil, errors.New("bad IPv4 header")
	}
	if p[9] != unix.IPPROTO_TCP {
		return nil, errors.New("not TCP")
	}
	if binary.BigEndian.Uint16(p[6:8])&0x3fff != 0 { // MF or fragment offset
		return nil, errors.New("fragment")
	}
	s, err := parseTCP(p[ihl:total])
	if err != nil {
		return nil, err
	}
	s.src = netip.AddrFrom4([4]byte(p[12:16]))
	s.dst = netip.AddrFrom4([4]byte(p[16:20]))
	return s, nil
}

// parseTCP parses a TCP segment without its IP header, as read from a raw
// AF_INET6 socket; the caller fills in the addresses. It does not verify
// the checksum: on veths the kernel may hand over segments whose checksum
// is still to be completed by offload.
func parseTCP(t []byte) (*segment, error) {
	if len(t) < 20 {
		return nil, errors.New("short TCP header")
	}
	off := int(t[12]>>4) * 4
	if off < 20 || off > len(t) {
		return nil, errors.New("bad TCP data offset")
	}
	s := &segment{
		sport:   binary.BigEndian.Uint16(t[0:2]),
		dport:   binary.BigEndian.Uint16(t[2:4]),
		seq:     binary.BigEndian.Uint32(t[4:8]),
		ack:     binary.BigEndian.Uint32(t[8:12]),
		flags:   t[13],
		window:  binary.BigEndian.Uint16(t[14:16]),
		mss:     parseMSS(t[20:off]),
		payload: t[off:],
	}
	return s, nil
}

// parseMSS returns the MSS option's value among TCP options, 0 if absent.
// Malformed options end the walk: nothing after them can be trusted.
func parseMSS(opts []byte) uint16 {
	for len(opts) > 0 {
		kind := opts[0]
		if kind == 0 { // end of options
			break
		}
		if kind == 1 { // no-op
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || int(opts[1]) < 2 || int(opts[1]) > len(opts) {
			break
		}
		if kind == 2 && opts[1] == 4 {
			return binary.BigEndian.Uint16(opts[2:4])
		}
		opts = opts[opts[1]:]
	}
	return 0
}

// seqLT reports a < b in sequence-number arithmetic.
func seqLT(a, b uint32) bool { return int32(a-b) < 0 }

// seqLEQ reports a <= b in sequence-number arithmetic.
func seqLEQ(a, b uint32) bool { return int32(a-b) <= 0 }
