package main

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"

	"golang.org/x/sys/unix"
)

// hopLimit is the TTL (IPv4) or hop limit (IPv6) of the packets rawclient
// builds itself, Linux's default for both.
const hopLimit = 64

// ipPacket wraps a marshalled TCP segment into the IP header the kernel
// would have built on a raw IP socket: a packet socket sends what it is
// given, so in -link mode rawclient must build it.
func ipPacket(src, dst netip.Addr, tcp []byte) []byte {
	if src.Is4() {
		return ipv4Packet(src, dst, tcp)
	}
	return ipv6Packet(src, dst, tcp)
}

// ipv4Packet prefixes tcp with a 20-byte IPv4 header: DF set (as Linux does
// for TCP, which does its own path MTU discovery), a random ID, TTL 64.
func ipv4Packet(src, dst netip.Addr, tcp []byte) []byte {
	p := make([]byte, 20+len(tcp))
	p[0] = 4<<4 | 20/4 // version, IHL
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:6], uint16(rand.Uint32()))
	binary.BigEndian.PutUint16(p[6:8], 0x4000) // DF, fragment offset 0
	p[8] = hopLimit
	p[9] = unix.IPPROTO_TCP
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:12], checksum(p[:20]))
	copy(p[20:], tcp)
	return p
}

// ipv6Packet prefixes tcp with a 40-byte IPv6 header: traffic class and
// flow label 0, hop limit 64, no extension headers.
func ipv6Packet(src, dst netip.Addr, tcp []byte) []byte {
	p := make([]byte, 40+len(tcp))
	p[0] = 6 << 4 // version
	binary.BigEndian.PutUint16(p[4:6], uint16(len(tcp)))
	p[6] = unix.IPPROTO_TCP // next header
	p[7] = hopLimit
	s, d := src.As16(), dst.As16()
	copy(p[8:24], s[:])
	copy(p[24:40], d[:])
	copy(p[40:], tcp)
	return p
}
