// Command rawclient plays an attacker in a pod that holds CAP_NET_RAW and
// bypasses every socket-level hook (connect, sendmsg, ...): it hand-crafts a
// TCP connection on a raw IP socket, the way a packet-crafting tool would,
// and can send it on a packet socket instead, past the IP stack of its own
// namespace. imdsguard's tests run it inside the test lab (see test/lab) to
// show which layer stops such traffic; it must never run outside a lab
// namespace.
//
// Usage:
//
//	rawclient -src IP -dst IP:PORT [-payload STRING] [-timeout 2s]
//	          [-link IFACE -dst-mac MAC [-qdisc-bypass [-compat]]]
//
// -src and -dst are both IPv4 (-dst 169.254.169.254:80) or both IPv6
// (-dst "[fd00:ec2::254]:80").
//
// It opens socket(AF_INET, SOCK_RAW, IPPROTO_TCP), or AF_INET6 for IPv6,
// bound to -src and connected to the -dst address. rawclient builds the TCP
// header and its checksum over the IPv4 or IPv6 pseudo-header (RFC 9293
// §3.1, RFC 8200 §8.1): the kernel computes none on raw TCP sockets. Where
// the segments go out depends on -link:
//
//   - without it, on the raw IP socket: the kernel adds the IP header and
//     routes the packet like any other of the namespace (through its
//     nftables output chain, for example);
//   - with -link IFACE -dst-mac MAC, on socket(AF_PACKET, SOCK_DGRAM):
//     rawclient builds the IP header too (IPv4: TTL 64, DF, a random ID and
//     the header checksum; IPv6: hop limit 64) and the kernel puts it in an
//     Ethernet frame to MAC out of IFACE, past this namespace's routing,
//     neighbour lookup and IP netfilter hooks (output, postrouting); the
//     interface's qdiscs and egress hooks (tc, netdev) still see it. MAC is
//     the next hop's, for example the node side of the pod's link;
//   - -qdisc-bypass (only with -link) also sets PACKET_QDISC_BYPASS on the
//     packet socket, so that frames go straight to the driver, past the
//     interface's qdiscs and egress hooks too. If that setsockopt fails
//     (imdsguard refuses it with EPERM), nothing is sent and "error" is
//     "setsockopt PACKET_QDISC_BYPASS: " and the errno text, for example
//     "setsockopt PACKET_QDISC_BYPASS: operation not permitted";
//   - -compat (only with -qdisc-bypass) makes that setsockopt by the 32-bit
//     system call (int 0x80), which cgroup setsockopt programs do not see;
//     its error starts with "compat setsockopt PACKET_QDISC_BYPASS: ", or
//     is "compat syscalls unavailable: ..." on a kernel without them.
//
// Receiving is always on the raw IP socket. An IPv4 raw socket delivers the
// IP header with each segment, an IPv6 one the segment alone (its
// destination address comes from IPV6_PKTINFO); either way rawclient keeps
// only segments from -dst to -src between the two ports.
//
// rawclient picks a random source port and initial sequence number, and
// then:
//
//  1. sends a SYN (re-sent every synInterval) and waits for the SYN-ACK,
//     ignoring every packet that is not from -dst to -src between the two
//     ports;
//  2. sends the ACK, then the payload (Go string escapes such as \r\n are
//     interpreted) in PSH|ACK segments of at most the peer's MSS, re-sent
//     until the peer acknowledges them;
//  3. reads the peer's data segments in order, acknowledging each, until a
//     FIN (answered with FIN|ACK), a RST, an ICMP error, or the timeout.
//
// -timeout bounds the whole exchange.
//
// The kernel of rawclient's own namespace knows nothing of the connection:
// it answers the peer's SYN-ACK (and data) with a RST. rawclient does not
// suppress that; the caller must, for example with an nftables rule in the
// namespace that drops outgoing RSTs (an inet table covers IPv4 and IPv6;
// see the self-test).
//
// The result is one JSON line on stdout (see result):
//
//	{"syn_ack":true,"sent":true,"response":"HTTP/1.1 200 OK\r\n...","error":""}
//
// The exit status is 0 whenever rawclient ran (whatever happened on the
// wire or in setting up its sockets; see "error") and 2 for bad flags.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/imdsguard/imdsguard/test/escape"
)

const defaultPayload = `GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n`

const (
	// synInterval is how often an unanswered SYN is sent again.
	synInterval = 500 * time.Millisecond
	// dataRTO is the first retransmission timeout for the payload; it
	// doubles on every retransmission.
	dataRTO = 300 * time.Millisecond
	// ourMSS4 and ourMSS6 are the MSS rawclient announces in its SYN: a
	// 1500-byte MTU less the IPv4 (20) or IPv6 (40) and TCP (20) headers,
	// so that in -link mode no segment exceeds the link's MTU.
	ourMSS4 = 1460
	ourMSS6 = 1440
	// defaultMSS4 and defaultMSS6 are used when the SYN-ACK carries no
	// MSS option (RFC 9293 §3.7.1).
	defaultMSS4 = 536
	defaultMSS6 = 1220
	// ourWindow is the receive window rawclient advertises.
	ourWindow = 65535
	// maxResponse bounds how much of the response is kept.
	maxResponse = 1 << 20
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
	// (socket setup, timeout, RST, ICMP error, socket error); empty
	// otherwise.
	Error string `json:"error"`
}

type config struct {
	src     netip.Addr
	dst     netip.AddrPort // same family as src
	payload []byte
	timeout time.Duration
	// link, if set, is the interface the packet socket sends on, to
	// dstMAC; qdiscBypass is only set with it.
	link        string
	dstMAC      net.HardwareAddr
	qdiscBypass bool
	compat      bool // the bypass by the 32-bit setsockopt
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
	src := fs.String("src", "", "source `IP`, IPv4 or IPv6: an address of this namespace (e.g. the pod's)")
	dst := fs.String("dst", "", "destination `IP:PORT`, IPv4 or [IPv6]:PORT, of the same family as -src")
	payload := fs.String("payload", defaultPayload, "bytes to send once connected, Go escapes allowed")
	timeout := fs.Duration("timeout", 2*time.Second, "bound on the whole exchange")
	link := fs.String("link", "", "send on an AF_PACKET socket out of interface `IFACE` (rawclient builds the IP header), not on the raw IP socket; needs -dst-mac")
	dstMAC := fs.String("dst-mac", "", "destination `MAC` of the frames sent with -link: the next hop's (e.g. the node side of the pod's link)")
	bypass := fs.Bool("qdisc-bypass", false, "with -link: set PACKET_QDISC_BYPASS on the packet socket, so frames skip the interface's qdiscs and egress hooks")
	compat := fs.Bool("compat", false, "with -qdisc-bypass: make that setsockopt by the 32-bit (int 0x80) system call")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *compat && !*bypass {
		return nil, errors.New("-compat requires -qdisc-bypass")
	}
	cfg := &config{timeout: *timeout, link: *link, qdiscBypass: *bypass, compat: *compat}
	var err error
	if cfg.src, cfg.dst, err = parseAddrs(*src, *dst); err != nil {
		return nil, err
	}
	if cfg.dstMAC, err = parseLink(*link, *dstMAC, *bypass); err != nil {
		return nil, err
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

// parseAddrs checks -src and -dst. Zones and IPv4-mapped IPv6 addresses
// are refused: a raw socket of either family could not use them as given.
func parseAddrs(src, dst string) (netip.Addr, netip.AddrPort, error) {
	if src == "" || dst == "" {
		return netip.Addr{}, netip.AddrPort{}, errors.New("-src and -dst are required")
	}
	s, err := netip.ParseAddr(src)
	if err != nil || s.Zone() != "" || s.Is4In6() {
		return netip.Addr{}, netip.AddrPort{}, fmt.Errorf("-src %q: want an IPv4 or IPv6 address", src)
	}
	d, err := netip.ParseAddrPort(dst)
	if err != nil || d.Addr().Zone() != "" || d.Addr().Is4In6() || d.Port() == 0 {
		return netip.Addr{}, netip.AddrPort{}, fmt.Errorf("-dst %q: want IPv4:PORT or [IPv6]:PORT with a non-zero port", dst)
	}
	if s.Is4() != d.Addr().Is4() {
		return netip.Addr{}, netip.AddrPort{}, fmt.Errorf("-src %s and -dst %s: mixed address families", s, d.Addr())
	}
	return s, d, nil
}

// parseLink checks -link, -dst-mac and -qdisc-bypass, and returns the MAC.
func parseLink(link, mac string, bypass bool) (net.HardwareAddr, error) {
	switch {
	case link == "" && mac == "" && !bypass:
		return nil, nil
	case link == "" && mac != "":
		return nil, errors.New("-dst-mac requires -link")
	case link == "":
		return nil, errors.New("-qdisc-bypass requires -link")
	case mac == "":
		return nil, errors.New("-link requires -dst-mac")
	}
	if !validIfname(link) {
		return nil, fmt.Errorf("-link %q: not an interface name", link)
	}
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return nil, fmt.Errorf("-dst-mac %q: want an Ethernet MAC address (6 bytes, e.g. 02:00:00:00:00:01)", mac)
	}
	return hw, nil
}

// validIfname is the kernel's rule for interface names (dev_valid_name).
func validIfname(name string) bool {
	return name != "" && len(name) < 16 && name != "." && name != ".." &&
		!strings.ContainsAny(name, "/: \t\n\v\f\r")
}
