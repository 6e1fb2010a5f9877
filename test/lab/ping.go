package lab

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/test/testbin"
)

// Ping sends an ICMP (v4 or v6) echo request from inside ns to addr, again
// every 500 ms, and waits up to timeout for a matching reply. It uses a raw
// socket created in ns, so it needs no ping binary.
func (l *Lab) Ping(ns NS, addr string, timeout time.Duration) error {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return err
	}
	ip = ip.Unmap()
	family, proto, echoReq, echoReply := unix.AF_INET, unix.IPPROTO_ICMP, byte(8), byte(0)
	if ip.Is6() {
		family, proto, echoReq, echoReply = unix.AF_INET6, unix.IPPROTO_ICMPV6, 128, 129
	}
	fd := -1
	if err := l.Do(ns, func() error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		return err
	}); err != nil {
		return fmt.Errorf("icmp socket in %s: %w", ns, err)
	}
	defer unix.Close(fd)

	var rnd [2]byte
	_, _ = rand.Read(rnd[:])
	id := binary.BigEndian.Uint16(rnd[:])
	const seq = 1
	msg := make([]byte, 8, 8+16)
	msg[0] = echoReq
	binary.BigEndian.PutUint16(msg[4:], id)
	binary.BigEndian.PutUint16(msg[6:], seq)
	msg = append(msg, "imdsguard-lab..."...)
	var sa unix.Sockaddr
	if family == unix.AF_INET {
		binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		sa = &unix.SockaddrInet4{Addr: ip.As4()}
	} else {
		// The kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets.
		sa = &unix.SockaddrInet6{Addr: ip.As16()}
	}
	if err := unix.Sendto(fd, msg, 0, sa); err != nil {
		return fmt.Errorf("send echo to %s from %s: %w", addr, ns, err)
	}

	// Re-send every 500 ms until the timeout: on a busy machine the kernel's
	// global ICMP rate limit can drop a reply, which says nothing about the
	// lab's routes or neighbours.
	deadline := time.Now().Add(timeout)
	resend := time.Now().Add(500 * time.Millisecond)
	buf := make([]byte, 1500)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("no echo reply from %s in %s within %v", addr, ns, timeout)
		}
		if time.Now().After(resend) {
			if err := unix.Sendto(fd, msg, 0, sa); err != nil {
				return fmt.Errorf("send echo to %s from %s: %w", addr, ns, err)
			}
			resend = time.Now().Add(500 * time.Millisecond)
		}
		wait := min(left, time.Until(resend))
		if wait <= 0 {
			wait = time.Millisecond
		}
		tv := unix.NsecToTimeval(wait.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive echo reply: %w", err)
		}
		pkt := buf[:n]
		var src netip.Addr
		switch f := from.(type) {
		case *unix.SockaddrInet4:
			src = netip.AddrFrom4(f.Addr)
			// Raw IPv4 sockets deliver the IP header too.
			if len(pkt) < 20 {
				continue
			}
			pkt = pkt[int(pkt[0]&0x0f)*4:]
		case *unix.SockaddrInet6:
			src = netip.AddrFrom16(f.Addr)
		}
		if src != ip || len(pkt) < 8 || pkt[0] != echoReply ||
			binary.BigEndian.Uint16(pkt[4:]) != id || binary.BigEndian.Uint16(pkt[6:]) != seq {
			continue
		}
		return nil
	}
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// LabclientPackage is the import path BuildLabclient builds.
const LabclientPackage = "github.com/imdsguard/imdsguard/test/labclient"

// BuildLabclient builds test/labclient into t.TempDir() and returns the
// binary's path (its base name is "labclient", which is what the daemon
// reports as comm). It builds afresh for every call rather than caching in
// package state: the Go build cache makes repeated builds cheap, and it
// keeps the package free of mutable globals.
func BuildLabclient(t testing.TB) string {
	t.Helper()
	out, err := testbin.Build(LabclientPackage, t.TempDir())
	if err != nil {
		t.Fatalf("build labclient: %v", err)
	}
	return out
}
