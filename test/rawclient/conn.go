package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// errTimeout is returned by conn.recv when its deadline passes.
var errTimeout = errors.New("timeout")

// conn is rawclient's side of one hand-made TCP connection: the raw IP
// socket it receives on (and sends on, without -link) and, with -link, the
// packet socket it sends on.
type conn struct {
	fd           int           // raw IP socket
	to           unix.Sockaddr // -dst, for sends on fd
	pkt          int           // packet socket, -1 without -link
	ll           *unix.SockaddrLinklayer
	src, dst     netip.Addr
	sport, dport uint16
	buf, oob     []byte
}

// dial opens the sockets of the connection. Its errors are reported as
// they are in the result's "error" (tests match their prefixes).
func dial(cfg *config) (*conn, error) {
	c := &conn{
		fd:    -1,
		pkt:   -1,
		src:   cfg.src,
		dst:   cfg.dst.Addr(),
		sport: uint16(32768 + rand.IntN(61000-32768)), // Linux's default ephemeral range
		dport: cfg.dst.Port(),
		buf:   make([]byte, 65536),
	}
	err := c.openRaw()
	if err == nil && cfg.link != "" {
		err = c.openPacket(cfg)
	}
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *conn) close() {
	for _, fd := range []int{c.fd, c.pkt} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// openRaw opens the raw IP socket. On it the kernel builds the IP header
// but neither computes nor checks the TCP checksum (for IPv6, IPV6_CHECKSUM
// is off for TCP): marshal computes it over the pseudo-header.
func (c *conn) openRaw() error {
	family, name := unix.AF_INET, "AF_INET"
	var local unix.Sockaddr
	if c.src.Is4() {
		local, c.to = &unix.SockaddrInet4{Addr: c.src.As4()}, &unix.SockaddrInet4{Addr: c.dst.As4()}
	} else {
		family, name = unix.AF_INET6, "AF_INET6"
		local, c.to = &unix.SockaddrInet6{Addr: c.src.As16()}, &unix.SockaddrInet6{Addr: c.dst.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("socket(%s, SOCK_RAW, IPPROTO_TCP): %v", name, err)
	}
	c.fd = fd
	if c.src.Is6() {
		// An IPv6 raw socket delivers no IP header: the destination
		// address of what it receives comes from IPV6_PKTINFO.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
			return fmt.Errorf("setsockopt IPV6_RECVPKTINFO: %v", err)
		}
		c.oob = make([]byte, unix.CmsgSpace(unix.SizeofInet6Pktinfo))
	}
	// Binding makes the kernel use -src as the source address (and fails if
	// it is not an address of this namespace); connecting limits what the
	// socket receives to packets from -dst and makes ICMP errors for our
	// packets show up as socket errors.
	if err := unix.Bind(fd, local); err != nil {
		return fmt.Errorf("bind %s: %v", c.src, err)
	}
	if err := unix.Connect(fd, c.to); err != nil {
		return fmt.Errorf("connect %s: %v", c.dst, err)
	}
	return nil
}

// openPacket opens the packet socket -link sends on. Its protocol is 0:
// the socket only sends (each frame's EtherType is in the sockaddr_ll), so
// the kernel queues none of the namespace's traffic on it.
func (c *conn) openPacket(cfg *config) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket(AF_PACKET, SOCK_DGRAM): %v", err)
	}
	c.pkt = fd
	if cfg.qdiscBypass {
		if err := qdiscBypass(fd, cfg.compat); err != nil {
			return err
		}
	}
	ifi, err := net.InterfaceByName(cfg.link)
	if err != nil {
		return fmt.Errorf("interface %s: %v", cfg.link, err)
	}
	proto := uint16(unix.ETH_P_IP)
	if c.src.Is6() {
		proto = unix.ETH_P_IPV6
	}
	c.ll = &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: ifi.Index, Halen: uint8(len(cfg.dstMAC))}
	copy(c.ll.Addr[:], cfg.dstMAC)
	return nil
}

// qdiscBypass makes the packet socket hand its frames straight to the
// driver, past the interface's qdiscs and egress hooks (tc, netdev), where
// a guard could drop them; with compat by the 32-bit system call, which
// cgroup setsockopt programs do not see. Tests match the error's prefix.
func qdiscBypass(fd int, compat bool) error {
	if compat {
		if err := compatSetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			if errors.Is(err, errNoCompat) {
				return err
			}
			return fmt.Errorf("compat setsockopt PACKET_QDISC_BYPASS: %v", err)
		}
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		return fmt.Errorf("setsockopt PACKET_QDISC_BYPASS: %v", err)
	}
	return nil
}

// htons converts to network byte order, which sockaddr_ll's protocol is
// in (x/sys stores it as given).
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func (c *conn) send(flags uint8, seq, ack uint32, mss uint16, payload []byte) error {
	s := &segment{
		src: c.src, dst: c.dst, sport: c.sport, dport: c.dport,
		seq: seq, ack: ack, flags: flags, window: ourWindow, mss: mss, payload: payload,
	}
	fd, b, to := c.fd, s.marshal(), c.to
	if c.pkt >= 0 {
		fd, b, to = c.pkt, ipPacket(c.src, c.dst, b), c.ll
	}
	for {
		err := unix.Sendto(fd, b, 0, to)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("send: %w", err)
		}
		return nil
	}
}

// recv returns the next segment of this connection (from dst:dport to
// src:sport), skipping everything else, or errTimeout at deadline. A socket
// error (for example an ICMP error reported on the connected socket) is
// returned as is.
func (c *conn) recv(deadline time.Time) (*segment, error) {
	for {
		if err := c.wait(deadline); err != nil {
			return nil, err
		}
		for {
			s, err := c.read()
			if errors.Is(err, unix.EAGAIN) {
				break // drained: poll again, which re-checks the deadline
			}
			if err != nil {
				return nil, fmt.Errorf("recv: %w", err)
			}
			if c.ours(s) {
				// The buffer is reused: detach the payload.
				s.payload = append([]byte(nil), s.payload...)
				return s, nil
			}
		}
	}
}

// wait returns once the raw socket is readable (or has an error pending),
// or errTimeout at deadline.
func (c *conn) wait(deadline time.Time) error {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return errTimeout
		}
		ms := int((left + time.Millisecond - 1) / time.Millisecond)
		pfd := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if n > 0 {
			return nil
		}
	}
}

// ours reports whether s belongs to this connection. The socket's binding
// and connection filter by address already; rawclient checks again rather
// than rely on that, and the ports only it can check.
func (c *conn) ours(s *segment) bool {
	return s != nil && s.src == c.dst && s.dst == c.src && s.sport == c.dport && s.dport == c.sport
}

// read returns the next packet queued on the raw socket, without blocking:
// a segment, nil for a packet that is not a well-formed TCP segment, or
// unix.EAGAIN once the queue is empty.
func (c *conn) read() (*segment, error) {
	for {
		var s *segment
		var err error
		if c.src.Is4() {
			s, err = c.read4()
		} else {
			s, err = c.read6()
		}
		if !errors.Is(err, unix.EINTR) {
			return s, err
		}
	}
}

// read4 reads from the raw IPv4 socket, which delivers the IP header too.
func (c *conn) read4() (*segment, error) {
	n, _, err := unix.Recvfrom(c.fd, c.buf, unix.MSG_DONTWAIT)
	if err != nil {
		return nil, err
	}
	s, err := parsePacket(c.buf[:n])
	if err != nil {
		return nil, nil
	}
	return s, nil
}

// read6 reads from the raw IPv6 socket, which delivers the TCP segment
// alone: its source address is recvmsg's, its destination IPV6_PKTINFO's.
func (c *conn) read6() (*segment, error) {
	n, oobn, _, from, err := unix.Recvmsg(c.fd, c.buf, c.oob, unix.MSG_DONTWAIT)
	if err != nil {
		return nil, err
	}
	sa, ok := from.(*unix.SockaddrInet6)
	dst, found := pktinfoDst(c.oob[:oobn])
	if !ok || !found {
		return nil, nil
	}
	s, err := parseTCP(c.buf[:n])
	if err != nil {
		return nil, nil
	}
	s.src, s.dst = netip.AddrFrom16(sa.Addr), dst
	return s, nil
}

// pktinfoDst returns the destination address in an IPV6_PKTINFO control
// message among oob.
func pktinfoDst(oob []byte) (netip.Addr, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO &&
			len(m.Data) >= unix.SizeofInet6Pktinfo {
			return netip.AddrFrom16([16]byte(m.Data[:16])), true
		}
	}
	return netip.Addr{}, false
}
