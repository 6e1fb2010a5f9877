// Package nflog reads packets logged by the nftables/iptables NFLOG target
// ("log group N") over nfnetlink_log, on top of github.com/mdlayher/netlink.
//
// Only what imdsguard needs is implemented: binding one group in copy-packet
// mode, and decoding the prefix, interface indexes and the IP/TCP/UDP header
// of each logged packet.
//
// Privileges: binding a group needs CAP_NET_ADMIN in the namespace's owning
// user namespace; opening a Reader in another network namespace (netnsPath)
// additionally needs CAP_SYS_ADMIN to setns(2) into it.
package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Packet is one logged packet.
type Packet struct {
	Prefix     string // the log statement's prefix
	InIfName   string // input interface name, resolved in the namespace the reader runs in ("" if unknown)
	InIfIndex  uint32
	OutIfIndex uint32
	Src, Dst   netip.Addr // from the payload's IPv4/IPv6 header
	Proto      uint8      // 6 TCP, 17 UDP, ...
	// SrcPort and DstPort are set for TCP, UDP (and UDP-Lite, SCTP, DCCP,
	// which share the layout) when the payload holds the transport header
	// and the packet is not a non-first fragment.
	SrcPort, DstPort uint16
	Time             time.Time // when received
}

// ErrOverrun is returned by Read when the kernel reported that the socket's
// receive buffer overflowed (ENOBUFS) and log messages were dropped. The
// Reader stays usable: count the loss and keep calling Read.
var ErrOverrun = errors.New("nflog: receive buffer overrun, log messages were lost")

// Protocol constants from linux/netfilter/nfnetlink.h and nfnetlink_log.h.
const (
	nfnlSubsysULOG = 4

	msgPacket = nfnlSubsysULOG<<8 | 0 // NFULNL_MSG_PACKET
	msgConfig = nfnlSubsysULOG<<8 | 1 // NFULNL_MSG_CONFIG

	cfgAttrCmd     = 1 // NFULA_CFG_CMD
	cfgAttrMode    = 2 // NFULA_CFG_MODE
	cfgAttrTimeout = 4 // NFULA_CFG_TIMEOUT, be32, 1/100 s (3 is NFULA_CFG_NLBUFSIZ)

	cmdBind    = 1 // NFULNL_CFG_CMD_BIND
	cmdUnbind  = 2 // NFULNL_CFG_CMD_UNBIND
	cmdPFBind  = 3 // NFULNL_CFG_CMD_PF_BIND
	copyPacket = 2 // NFULNL_COPY_PACKET

	attrPacketHdr  = 1  // NFULA_PACKET_HDR
	attrIfIndexIn  = 4  // NFULA_IFINDEX_INDEV
	attrIfIndexOut = 5  // NFULA_IFINDEX_OUTDEV
	attrPayload    = 9  // NFULA_PAYLOAD
	attrPrefix     = 10 // NFULA_PREFIX

	nlmsgHdrLen = 16 // sizeof(struct nlmsghdr)
	nfgenHdrLen = 4  // sizeof(struct nfgenmsg)
)

// Tunables.
const (
	// copyRange is how many payload bytes the kernel copies per packet:
	// enough for an IPv4 header with options (60) or an IPv6 header with a
	// few extension headers, plus a TCP header.
	copyRange = 128
	// flushTimeout (in 1/100 s) bounds how long the kernel holds logged
	// packets to batch them into one datagram (default 1 s; the batch is
	// also sent once it holds 100 packets or fills the kernel's buffer).
	// Batching keeps the receive buffer efficient under bursts; 100 ms keeps
	// Packet.Time close to the drop.
	flushTimeout = 10
	// recvBufferSize is the socket receive buffer. The kernel never blocks on
	// a full buffer; it drops the message and we report ErrOverrun.
	recvBufferSize = 1 << 20
	// configTimeout bounds waiting for the kernel's answer to a config request.
	configTimeout = 5 * time.Second
	// ifNameTTL / ifNameNegTTL bound how long a resolved (or unresolvable)
	// interface index is cached; interfaces can be renamed or re-created.
	ifNameTTL    = 30 * time.Second
	ifNameNegTTL = 5 * time.Second
	// maxIfNames bounds the interface name cache.
	maxIfNames = 4096
	// linkQueryTimeout bounds one rtnetlink interface lookup.
	linkQueryTimeout = 2 * time.Second
)

// Reader receives the packets logged to one NFLOG group.
type Reader struct {
	group uint16
	conn  *netlink.Conn
	raw   syscall.RawConn

	// netns is the namespace file Open was given (nil for the caller's own
	// namespace); kept so the rtnetlink socket can be re-dialed.
	netns *os.File

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	// mu serializes Read (and everything below).
	mu      sync.Mutex
	buf     []byte
	pending []Packet // decoded, not yet returned: pending[head:]
	head    int
	overrun bool // an ENOBUFS seen while configuring, reported by the next Read

	rtnl    *netlink.Conn // NETLINK_ROUTE socket in the same namespace, for interface names
	ifNames map[uint32]ifName
}

type ifName struct {
	name    string
	expires time.Time
}

// Open subscribes to NFLOG group in the network namespace netnsPath ("" =
// the caller's own). It binds the group with copy mode "packet", copying the
// first 128 bytes of each packet.
//
// Only one socket can bind a group in a namespace; if another socket (for
// example ulogd's) holds it, Open fails with an error wrapping syscall.EPERM.
func Open(group uint16, netnsPath string) (*Reader, error) {
	cfg := &netlink.Config{}
	var nsFile *os.File
	if netnsPath != "" {
		f, err := os.Open(netnsPath)
		if err != nil {
			return nil, fmt.Errorf("nflog: opening network namespace: %w", err)
		}
		nsFile = f
		cfg.NetNS = int(f.Fd())
	}
	closeNS := func() {
		if nsFile != nil {
			nsFile.Close()
		}
	}

	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		closeNS()
		return nil, fmt.Errorf("nflog: dialing netfilter netlink: %w", err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		closeNS()
		return nil, fmt.Errorf("nflog: %w", err)
	}
	r := newReader(conn, raw, group)
	r.netns = nsFile
	// Name lookups are best effort: without the rtnetlink socket InIfName
	// stays empty, so a failure here is not fatal (it is retried lazily).
	r.rtnl, _ = r.dialRoute()

	setRecvBuffer(conn, raw, recvBufferSize)

	if needPFBind() {
		// Kernels before 3.17 hand a packet to the logger bound to its
		// family, not to the one the rule asked for. On newer kernels
		// PF_BIND is not a no-op: it makes nfnetlink_log the namespace's
		// default logger (net.netfilter.nf_log.N), which would divert e.g.
		// conntrack's invalid-packet logging, so it is only sent where needed.
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			_ = r.config(family, 0, cmdPFBind, false) // EEXIST/EBUSY: someone bound it already
		}
	}
	// BIND, MODE and TIMEOUT in one request, so no packet is ever logged to
	// us with the default settings. Packets logged before the kernel's
	// acknowledgement arrives are queued for Read by config.
	if err := r.config(unix.AF_UNSPEC, group, cmdBind, true); err != nil {
		r.Close()
		if errors.Is(err, unix.EPERM) {
			// The kernel answers EPERM both without CAP_NET_ADMIN and when
			// another socket (ulogd, a second daemon) holds the group.
			return nil, fmt.Errorf("nflog: binding group %d: group is bound by another socket, or CAP_NET_ADMIN is missing: %w", group, err)
		}
		return nil, fmt.Errorf("nflog: binding group %d: %w", group, err)
	}
	return r, nil
}

func newReader(conn *netlink.Conn, raw syscall.RawConn, group uint16) *Reader {
	return &Reader{
		group:   group,
		conn:    conn,
		raw:     raw,
		buf:     make([]byte, 16<<10),
		ifNames: make(map[uint32]ifName),
	}
}

// errClosed is returned by Read after Close.
var errClosed = fmt.Errorf("nflog: reader closed: %w", net.ErrClosed)

// Read returns the next logged packet, blocking until one arrives. It returns
// ErrOverrun (and can be called again) when messages were lost, and an error
// wrapping net.ErrClosed once Close has been called. Read may be called from
// several goroutines; calls are serialized.
func (r *Reader) Read() (Packet, error) {
	r.mu.Lock()
	defer r.unlock()
	for {
		if r.closed.Load() {
			return Packet{}, errClosed
		}
		if r.overrun {
			r.overrun = false
			return Packet{}, ErrOverrun
		}
		if r.head < len(r.pending) {
			p := r.pending[r.head]
			r.head++
			if r.head == len(r.pending) {
				r.pending, r.head = r.pending[:0], 0
			}
			p.InIfName = r.ifName(p.InIfIndex, p.Time)
			return p, nil
		}
		b, err := r.recv()
		if err != nil {
			if r.closed.Load() {
				return Packet{}, errClosed
			}
			if errors.Is(err, unix.ENOBUFS) {
				return Packet{}, ErrOverrun
			}
			return Packet{}, fmt.Errorf("nflog: receive: %w", err)
		}
		r.handle(b, time.Now(), 0)
	}
}

// Close unbinds the group and closes the socket, unblocking a pending Read.
func (r *Reader) Close() error {
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		// Best effort and without an acknowledgement (a concurrent Read owns
		// the receive side); closing the socket releases the group anyway.
		_, _ = r.conn.Send(configMessage(unix.AF_UNSPEC, r.group, cmdUnbind, false, netlink.Request))
		r.closeErr = r.conn.Close()
		// The rtnetlink socket and the namespace file belong to whoever holds
		// r.mu. If a Read holds it, that Read releases them on its way out
		// (see unlock).
		if r.mu.TryLock() {
			r.unlock()
		}
	})
	return r.closeErr
}

// unlock releases r.mu and, once the Reader is closed, the resources guarded
// by it. Close sets r.closed before trying the lock, so whichever of Close and
// a concurrent lock holder comes last frees them.
func (r *Reader) unlock() {
	r.mu.Unlock()
	if !r.closed.Load() || !r.mu.TryLock() {
		return
	}
	defer r.mu.Unlock()
	if r.rtnl != nil {
		r.rtnl.Close()
		r.rtnl = nil
	}
	if r.netns != nil {
		r.netns.Close()
		r.netns = nil
	}
	r.pending, r.head = nil, 0
}

// configMessage builds an NFULNL_MSG_CONFIG request carrying command cmd and,
// if withMode, the copy mode and flush timeout.
func configMessage(family uint8, group uint16, cmd uint8, withMode bool, flags netlink.HeaderFlags) netlink.Message {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Bytes(cfgAttrCmd, []byte{cmd}) // struct nfulnl_msg_config_cmd
	if withMode {
		// struct nfulnl_msg_config_mode { __be32 copy_range; __u8 copy_mode; __u8 _pad; } __packed
		mode := make([]byte, 6)
		binary.BigEndian.PutUint32(mode, copyRange)
		mode[4] = copyPacket
		ae.Bytes(cfgAttrMode, mode)
		ae.Uint32(cfgAttrTimeout, flushTimeout)
	}
	attrs, _ := ae.Encode() // cannot fail: no nested encoders
	data := make([]byte, nfgenHdrLen, nfgenHdrLen+len(attrs))
	data[0] = family                            // nfgen_family
	data[1] = 0                                 // NFNETLINK_V0
	binary.BigEndian.PutUint16(data[2:], group) // res_id
	return netlink.Message{
		Header: netlink.Header{Type: msgConfig, Flags: flags},
		Data:   append(data, attrs...),
	}
}

// config sends a config request and waits for the kernel's acknowledgement.
// Packets that arrive meanwhile are queued for Read.
func (r *Reader) config(family uint8, group uint16, cmd uint8, withMode bool) error {
	r.mu.Lock()
	defer r.unlock()
	req, err := r.conn.Send(configMessage(family, group, cmd, withMode, netlink.Request|netlink.Acknowledge))
	if err != nil {
		return err
	}
	if err := r.conn.SetReadDeadline(time.Now().Add(configTimeout)); err != nil {
		return err
	}
	defer r.conn.SetReadDeadline(time.Time{})
	for {
		b, err := r.recv()
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				r.overrun = true
				continue
			}
			return err
		}
		if acked, ackErr := r.handle(b, time.Now(), req.Header.Sequence); acked {
			return ackErr
		}
	}
}

// recv reads one datagram from the netfilter socket into r.buf, growing it
// as needed; the returned slice is valid until the next call. It blocks in
// the runtime poller, so Close (or a read deadline) interrupts it.
func (r *Reader) recv() ([]byte, error) {
	var n int
	var sysErr error
	err := r.raw.Read(func(fd uintptr) bool {
		for {
			// Peek with MSG_TRUNC to learn the datagram's full length.
			n, _, sysErr = unix.Recvfrom(int(fd), r.buf, unix.MSG_PEEK|unix.MSG_TRUNC|unix.MSG_DONTWAIT)
			if sysErr == unix.EINTR {
				continue
			}
			if sysErr == unix.EAGAIN {
				return false // wait until readable
			}
			if sysErr != nil {
				return true
			}
			if n > len(r.buf) {
				r.buf = make([]byte, n)
			}
			n, _, sysErr = unix.Recvfrom(int(fd), r.buf, unix.MSG_DONTWAIT)
			if sysErr == unix.EINTR {
				continue
			}
			return sysErr != unix.EAGAIN
		}
	})
	if err != nil {
		return nil, err
	}
	if sysErr != nil {
		return nil, os.NewSyscallError("recvfrom", sysErr)
	}
	return r.buf[:n], nil
}

// handle processes one datagram of netlink messages received at now: packets
// of our group are queued, and if ackSeq is non-zero the NLMSG_ERROR answering
// that sequence number is reported as acked together with its error.
func (r *Reader) handle(b []byte, now time.Time, ackSeq uint32) (acked bool, ackErr error) {
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < nlmsgHdrLen || l > len(b) {
			return // malformed; drop the rest of the datagram
		}
		typ := binary.NativeEndian.Uint16(b[4:6])
		seq := binary.NativeEndian.Uint32(b[8:12])
		data := b[nlmsgHdrLen:l]
		switch typ {
		case msgPacket:
			if p, group, err := parsePacketMessage(data); err == nil && group == r.group {
				p.Time = now
				r.pending = append(r.pending, p)
			}
		case unix.NLMSG_ERROR:
			if ackSeq != 0 && seq == ackSeq && len(data) >= 4 {
				acked = true
				if errno := int32(binary.NativeEndian.Uint32(data[0:4])); errno != 0 {
					ackErr = syscall.Errno(-errno)
				}
			}
		}
		// NLMSG_DONE (ends a batch when the rule sets a queue threshold) and
		// anything else carries nothing for us.
		adv := (l + 3) &^ 3
		if adv > len(b) {
			break
		}
		b = b[adv:]
	}
	return acked, ackErr
}

// parsePacketMessage decodes the payload of an NFULNL_MSG_PACKET message (the
// nfgenmsg header followed by NFULA_* attributes) and returns the group it
// was logged to. Time and InIfName are left for the caller.
func parsePacketMessage(data []byte) (Packet, uint16, error) {
	var p Packet
	if len(data) < nfgenHdrLen {
		return p, 0, errors.New("nflog: short packet message")
	}
	group := binary.BigEndian.Uint16(data[2:4])
	ad, err := netlink.NewAttributeDecoder(data[nfgenHdrLen:])
	if err != nil {
		return p, group, err
	}
	ad.ByteOrder = binary.BigEndian
	var payload []byte
	for ad.Next() {
		switch ad.Type() {
		case attrPrefix:
			p.Prefix = ad.String() // NUL-terminated
		case attrIfIndexIn:
			p.InIfIndex = ad.Uint32()
		case attrIfIndexOut:
			p.OutIfIndex = ad.Uint32()
		case attrPayload:
			payload = ad.Bytes()
		}
	}
	if err := ad.Err(); err != nil {
		return Packet{}, group, err
	}
	parseIP(payload, &p)
	return p, group, nil
}

// parseIP fills addresses, protocol and ports from a (possibly truncated)
// IPv4 or IPv6 packet.
func parseIP(b []byte, p *Packet) {
	if len(b) == 0 {
		return
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 {
			return
		}
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		p.Proto = b[9]
		if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
			return // non-first fragment: no transport header
		}
		if ihl <= len(b) {
			parsePorts(b[ihl:], p)
		}
	case 6:
		if len(b) < 40 {
			return
		}
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		next, off := b[6], 40
		// Walk extension headers to the upper-layer protocol. If the chain
		// is cut off by the copy range, Proto is the last header type seen.
		for range 8 {
			switch next {
			case unix.IPPROTO_HOPOPTS, unix.IPPROTO_ROUTING, unix.IPPROTO_DSTOPTS:
				if off+2 > len(b) {
					p.Proto = next
					return
				}
				next, off = b[off], off+(int(b[off+1])+1)*8
				continue
			case unix.IPPROTO_AH:
				if off+2 > len(b) {
					p.Proto = next
					return
				}
				next, off = b[off], off+(int(b[off+1])+2)*4
				continue
			case unix.IPPROTO_FRAGMENT:
				if off+8 > len(b) {
					p.Proto = next
					return
				}
				fragOff := binary.BigEndian.Uint16(b[off+2:off+4]) &^ 7
				next, off = b[off], off+8
				if fragOff != 0 {
					p.Proto = next
					return
				}
				continue
			}
			break
		}
		p.Proto = next
		if off <= len(b) {
			parsePorts(b[off:], p)
		}
	}
}

func parsePorts(l4 []byte, p *Packet) {
	switch p.Proto {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_UDPLITE, unix.IPPROTO_SCTP, unix.IPPROTO_DCCP:
		if len(l4) >= 4 {
			p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
			p.DstPort = binary.BigEndian.Uint16(l4[2:4])
		}
	}
}

// ifName resolves an interface index in the Reader's namespace, with a
// small TTL cache. Called with r.mu held.
func (r *Reader) ifName(index uint32, now time.Time) string {
	if index == 0 {
		return ""
	}
	if e, ok := r.ifNames[index]; ok && now.Before(e.expires) {
		return e.name
	}
	name, err := r.lookupLink(index)
	ttl := ifNameTTL
	if err != nil {
		name, ttl = "", ifNameNegTTL
	}
	if len(r.ifNames) >= maxIfNames {
		clear(r.ifNames)
	}
	r.ifNames[index] = ifName{name: name, expires: now.Add(ttl)}
	return name
}

// dialRoute opens a NETLINK_ROUTE socket in the Reader's namespace.
func (r *Reader) dialRoute() (*netlink.Conn, error) {
	cfg := &netlink.Config{}
	if r.netns != nil {
		cfg.NetNS = int(r.netns.Fd())
	}
	return netlink.Dial(unix.NETLINK_ROUTE, cfg)
}

// lookupLink asks rtnetlink for the name of interface index.
func (r *Reader) lookupLink(index uint32) (string, error) {
	if r.closed.Load() {
		return "", net.ErrClosed
	}
	if r.rtnl == nil {
		c, err := r.dialRoute()
		if err != nil {
			return "", err
		}
		r.rtnl = c
	}
	// struct ifinfomsg { u8 family; u8 pad; u16 type; s32 index; u32 flags; u32 change; }
	req := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(req[4:8], index)
	if err := r.rtnl.SetReadDeadline(time.Now().Add(linkQueryTimeout)); err != nil {
		return "", err
	}
	msgs, err := r.rtnl.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request},
		Data:   req,
	})
	if err != nil {
		if !errors.Is(err, unix.ENODEV) {
			// Timeout or similar: a late reply would desynchronize the
			// next request, so start over with a fresh socket.
			r.rtnl.Close()
			r.rtnl = nil
		}
		return "", err
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < unix.SizeofIfInfomsg {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[unix.SizeofIfInfomsg:])
		if err != nil {
			return "", err
		}
		for ad.Next() {
			if ad.Type() == unix.IFLA_IFNAME {
				return ad.String(), nil
			}
		}
	}
	return "", fmt.Errorf("nflog: no name for interface %d", index)
}

// setRecvBuffer sets the receive buffer, bypassing net.core.rmem_max when
// privileged (SO_RCVBUFFORCE) and falling back to SO_RCVBUF.
func setRecvBuffer(conn *netlink.Conn, raw syscall.RawConn, size int) {
	var sysErr error
	if err := raw.Control(func(fd uintptr) {
		sysErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
	}); err == nil && sysErr == nil {
		return
	}
	_ = conn.SetReadBuffer(size)
}

// needPFBind reports whether the running kernel predates per-type logger
// selection (Linux 3.17), where PF_BIND is required for "log group" rules.
func needPFBind() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	major, minor, ok := kernelVersion(unix.ByteSliceToString(u.Release[:]))
	return ok && (major < 3 || major == 3 && minor < 17)
}

// kernelVersion parses "6.18.44-foo" or "3.16-rc1" into major and minor.
func kernelVersion(release string) (major, minor int, ok bool) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(leadingDigits(parts[1]))
	return major, minor, err1 == nil && err2 == nil
}

func leadingDigits(s string) string {
	for i, c := range s {
		if c < '0' || c > '9' {
			return s[:i]
		}
	}
	return s
}
