package sinks

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/internal/target"
)

const (
	// defaultFacility is local0. The auth/authpriv facilities would land
	// every event in Debian's /var/log/auth.log, mixed with logins and read
	// by tools such as fail2ban that expect sshd/PAM lines; events are high
	// volume JSON for a SIEM. local0 is free for site use, so a collector
	// routes it with one selector ("local0.*") without touching system logs.
	defaultFacility = 16
	defaultQueueLen = 10000
	defaultAppName  = "imdsguard"

	// flushTimeout bounds Close: the daemon's shutdown must not hang on a
	// collector that is down.
	flushTimeout = 2 * time.Second
	backoffMin   = 100 * time.Millisecond
	backoffMax   = 5 * time.Second
	dialTimeout  = 5 * time.Second
	// writeTimeout declares a collector that stopped reading dead, so the
	// records go to a new connection instead of waiting forever.
	writeTimeout = 15 * time.Second
	// tcpUserTimeout makes the kernel give up on a connection whose data
	// stays unacknowledged (the collector's host vanished without a FIN)
	// after this long, instead of retransmitting for about 15 minutes.
	tcpUserTimeout = 30 * time.Second
	// maxBatch and maxBatchBytes bound one write of queued records, so a
	// backlog goes out in few syscalls (and TLS records) after an outage.
	maxBatch      = 256
	maxBatchBytes = 64 << 10
)

// ErrUndelivered reports records still queued when Close gave up.
var ErrUndelivered = errors.New("records not delivered")

// SyslogOptions configures a syslog sink.
type SyslogOptions struct {
	Network string      // "udp", "tcp" (RFC 6587) or "tls" (RFC 5425)
	Addr    string      // host:port
	TLS     *tls.Config // for "tls"; nil uses the system roots
	// Hostname and AppName fill the RFC 5424 header; empty means the
	// kernel's hostname and "imdsguard".
	Hostname, AppName string
	// QueueLen bounds the records buffered while the collector is down
	// (default 10000).
	QueueLen int
	// Facility is the syslog facility, 1..23; 0 selects local0 (16). Kern
	// (0) cannot be chosen: it is reserved for the kernel's own messages.
	Facility int
	// UDPMaxBytes bounds a message sent over UDP, in octets, 480..65507;
	// 0 selects 2048, what RFC 5426 says every receiver should accept.
	// A larger message loses its structured data, then its end (see
	// render). TCP and TLS are not bounded by it.
	UDPMaxBytes int
}

// Syslog sends records to a syslog collector as RFC 5424 messages from a
// sender goroutine, through a bounded FIFO queue. While the collector is
// unreachable it retries with backoff and keeps records queued; they are
// delivered in order once it is back.
//
// When the queue is full the newest record is dropped. Records already
// queued are never discarded, so what reaches the collector after an outage
// is a gap-free run starting where the connection was lost: the start of an
// incident stays intact, and a workload cannot flush evidence of what it
// did out of the queue by generating a burst of events afterwards. The file
// sink keeps the complete record locally.
//
// Plain TCP and TLS syslog have no acknowledgements: records handed to the
// kernel just before the collector dies can be lost. The sender narrows the
// window by watching the connection for the collector's close before each
// write.
type Syslog struct {
	network string
	addr    string
	tlsConf *tls.Config
	fmt     formatter
	log     *zap.Logger
	limit   int // message size limit (UDP), 0 for none

	mu      sync.Mutex
	ring    [][]byte
	head, n int
	closing bool

	wake       chan struct{} // a record was queued
	quit       chan struct{} // Close was called: flush, then stop
	done       chan struct{} // the sender stopped
	note       chan struct{} // a record was dropped, or shrunk to the limit
	reportDone chan struct{} // the reporter stopped
	ctx        context.Context
	cancel     context.CancelFunc
	closeOnce  sync.Once
	closeErr   error

	sent          atomic.Uint64
	dropped       atomic.Uint64
	droppedLogged atomic.Uint64
	// Records over the UDP limit: sent without structured data, or cut.
	sdDropped atomic.Uint64
	truncated atomic.Uint64
	cur       atomic.Pointer[conn]
}

// NewSyslog validates opts and starts the sender. It does not wait for the
// collector: the daemon must start and queue events even while the collector
// is down.
func NewSyslog(opts SyslogOptions, log *zap.Logger) (*Syslog, error) {
	if log == nil {
		log = zap.NewNop()
	}
	host, _, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("syslog address %q: %w", opts.Addr, err)
	}
	s := &Syslog{network: opts.Network, addr: opts.Addr, log: log.With(zap.String("syslog", opts.Network+"://"+opts.Addr))}
	switch opts.Network {
	case "udp":
		s.limit = target.SyslogUDPMaxBytesDefault
		if opts.UDPMaxBytes != 0 {
			if err := target.CheckSyslogUDPMaxBytes(opts.UDPMaxBytes); err != nil {
				return nil, fmt.Errorf("syslog UDP size limit: %w", err)
			}
			s.limit = opts.UDPMaxBytes
		}
	case "tcp":
	case "tls":
		s.tlsConf = &tls.Config{}
		if opts.TLS != nil {
			// A clone, so the caller can keep using its config.
			s.tlsConf = opts.TLS.Clone()
		}
		if s.tlsConf.ServerName == "" {
			s.tlsConf.ServerName = host
		}
	default:
		return nil, fmt.Errorf("syslog network %q: want udp, tcp or tls", opts.Network)
	}
	facility := opts.Facility
	if facility == 0 {
		facility = defaultFacility
	}
	if facility < 1 || facility > 23 {
		return nil, fmt.Errorf("syslog facility %d: want 1..23", opts.Facility)
	}
	queueLen := opts.QueueLen
	if queueLen <= 0 {
		queueLen = defaultQueueLen
	}
	hostname := opts.Hostname
	if hostname == "" {
		// On failure the header gets NILVALUE; the collector still records
		// the sender's address.
		hostname, _ = os.Hostname()
	}
	appName := opts.AppName
	if appName == "" {
		appName = defaultAppName
	}
	s.fmt = newFormatter(facility, hostname, appName, os.Getpid())
	s.ring = make([][]byte, queueLen)
	s.wake = make(chan struct{}, 1)
	s.quit = make(chan struct{})
	s.done = make(chan struct{})
	s.note = make(chan struct{}, 1)
	s.reportDone = make(chan struct{})
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.run()
	go s.report()
	return s, nil
}

// Send renders r and queues it. It never blocks: when the queue is full the
// record is dropped and counted. Records sent after Close are discarded.
func (s *Syslog) Send(r Record) {
	msg, fitted := s.fmt.render(&r, time.Now(), s.limit)
	switch fitted {
	case fitWithoutSD:
		s.sdDropped.Add(1)
		s.notify()
	case fitTruncated:
		s.truncated.Add(1)
		s.notify()
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	if s.n == len(s.ring) {
		s.mu.Unlock()
		s.dropped.Add(1)
		s.notify()
		return
	}
	s.ring[(s.head+s.n)%len(s.ring)] = msg
	s.n++
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// notify wakes the reporter without waiting for it.
func (s *Syslog) notify() {
	select {
	case s.note <- struct{}{}:
	default:
	}
}

// Dropped returns how many records were lost because the queue was full.
func (s *Syslog) Dropped() uint64 { return s.dropped.Load() }

// Oversize returns how many records were over the UDP size limit: sent
// without their structured data (their JSON whole), or also cut at the
// limit.
func (s *Syslog) Oversize() (sdDropped, truncated uint64) {
	return s.sdDropped.Load(), s.truncated.Load()
}

// Sent returns how many records were written to the collector's connection.
func (s *Syslog) Sent() uint64 { return s.sent.Load() }

// Close stops accepting records, gives the sender up to 2s to deliver the
// queue, then stops it. It returns an error wrapping ErrUndelivered if
// records were left.
func (s *Syslog) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		close(s.quit)
		t := time.NewTimer(flushTimeout)
		select {
		case <-s.done:
		case <-t.C:
			// Cancelling aborts a dial or backoff and closes the socket
			// under a blocked write, so the sender returns promptly.
			s.cancel()
			<-s.done
		}
		t.Stop()
		s.cancel()
		<-s.reportDone

		s.mu.Lock()
		left := s.n
		s.mu.Unlock()
		dropped := s.dropped.Load()
		if left > 0 || dropped > s.droppedLogged.Load() {
			s.log.Warn("syslog sink closed with records lost",
				zap.Int("undelivered", left), zap.Uint64("dropped_total", dropped), zap.Uint64("sent_total", s.sent.Load()))
		}
		if left > 0 {
			s.closeErr = fmt.Errorf("close syslog sink: %d queued: %w", left, ErrUndelivered)
		}
	})
	return s.closeErr
}

// report logs drops and records shrunk to the UDP limit at most once per
// errorLogInterval, with the running counts, so a flood of events against
// a dead collector (or of records too large for a datagram) produces a
// handful of log lines rather than one per event. It runs apart from Send
// so that Send never waits on the daemon's own log.
func (s *Syslog) report() {
	defer close(s.reportDone)
	var last time.Time
	var logged struct{ sdDropped, truncated uint64 }
	for {
		select {
		case <-s.note:
		case <-s.ctx.Done():
			return
		}
		if wait := errorLogInterval - time.Since(last); !last.IsZero() && wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
		}
		if n := s.dropped.Load(); n != s.droppedLogged.Load() {
			s.droppedLogged.Store(n)
			last = time.Now()
			s.log.Warn("syslog queue full, dropping newest records",
				zap.Uint64("dropped_total", n), zap.Int("queue_len", len(s.ring)))
		}
		if sd, cut := s.Oversize(); sd != logged.sdDropped || cut != logged.truncated {
			logged.sdDropped, logged.truncated = sd, cut
			last = time.Now()
			s.log.Warn("syslog records over the UDP size limit: sent without structured data, or cut at the limit (use syslog+tcp or syslog+tls for OCSF, or raise --syslog-udp-max-bytes, output.syslogUDPMaxBytes)",
				zap.Int("limit", s.limit), zap.Uint64("without_structured_data_total", sd), zap.Uint64("truncated_total", cut))
		}
	}
}

// run is the sender: it takes records from the head of the queue and
// removes them only once written, so a failed write is retried on the next
// connection and order is kept.
func (s *Syslog) run() {
	defer close(s.done)
	var (
		c       *conn
		backoff time.Duration
		batch   [][]byte
		buf     []byte
		down    bool
	)
	defer func() {
		if c != nil {
			s.dropConn(c, s.ctx.Err() == nil)
		}
	}()
	for {
		batch = s.peek(batch[:0])
		if len(batch) == 0 {
			return
		}
		if c != nil && c.isDead() {
			// The collector closed the connection while we were idle;
			// writing would only feed a socket nobody reads.
			s.noteDown(&down, fmt.Errorf("collector closed the connection: %w", c.deadErr))
			s.dropConn(c, false)
			c = nil
		}
		if c == nil {
			var err error
			if c, err = s.dial(); err != nil {
				if s.ctx.Err() != nil {
					// Close gave up; this is not an outage.
					return
				}
				s.noteDown(&down, err)
				backoff = nextBackoff(backoff)
				if !s.sleep(backoff) {
					return
				}
				continue
			}
			s.cur.Store(c)
			if down {
				down = false
				s.log.Info("syslog collector reachable again", zap.Int("queued", s.queued()))
			}
		}
		n, err := s.write(c, batch, &buf)
		if n > 0 {
			s.pop(n)
			s.sent.Add(uint64(n))
			backoff = 0
		}
		if err != nil {
			s.noteDown(&down, err)
			s.dropConn(c, false)
			c = nil
			backoff = nextBackoff(backoff)
			if !s.sleep(backoff) {
				return
			}
		}
	}
}

// noteDown logs the first failure of an outage; later ones would repeat it
// every backoff step.
func (s *Syslog) noteDown(down *bool, err error) {
	if *down {
		return
	}
	*down = true
	s.log.Warn("syslog collector unreachable, queueing records", zap.Error(err), zap.Int("queued", s.queued()))
}

func nextBackoff(d time.Duration) time.Duration {
	return min(max(2*d, backoffMin), backoffMax)
}

// sleep waits d, or until Close gives up; it reports whether to go on.
func (s *Syslog) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// peek appends up to maxBatch records (maxBatchBytes, at least one) from the
// head of the queue to dst, waiting for one. It returns none once Close was
// called and the queue is empty, or Close gave up.
func (s *Syslog) peek(dst [][]byte) [][]byte {
	for s.ctx.Err() == nil {
		s.mu.Lock()
		if s.n > 0 {
			size := 0
			for i := 0; i < s.n && i < maxBatch; i++ {
				m := s.ring[(s.head+i)%len(s.ring)]
				if i > 0 && size+len(m) > maxBatchBytes {
					break
				}
				dst = append(dst, m)
				size += len(m)
			}
			s.mu.Unlock()
			return dst
		}
		closing := s.closing
		s.mu.Unlock()
		if closing {
			return dst
		}
		select {
		case <-s.wake:
		case <-s.quit:
		case <-s.ctx.Done():
		}
	}
	return dst
}

// pop removes n records from the head of the queue.
func (s *Syslog) pop(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.ring[s.head] = nil
		s.head = (s.head + 1) % len(s.ring)
		s.n--
	}
}

func (s *Syslog) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// connected reports whether the sender holds a connection the collector has
// not closed. Tests use it to wait until an outage has been noticed.
func (s *Syslog) connected() bool {
	c := s.cur.Load()
	return c != nil && !c.isDead()
}

// conn is one connection to the collector.
type conn struct {
	w   net.Conn // what records are written to: raw, or TLS over raw
	raw net.Conn
	// dead is closed by the watcher when the collector closes the
	// connection or it fails; deadErr says why. Nil for UDP.
	dead      chan struct{}
	deadErr   error
	watchDone chan struct{}
	// stopAbort unregisters the close-on-cancel hook.
	stopAbort func() bool
}

func (c *conn) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// watch reads until the connection fails. A collector never sends syslog
// data back, so a read returning means it closed or reset the connection:
// noticing that before the next write keeps those records queued instead of
// handing them to a socket whose peer is gone.
func (c *conn) watch() {
	defer close(c.watchDone)
	buf := make([]byte, 512)
	for {
		if _, err := c.w.Read(buf); err != nil {
			c.deadErr = err
			close(c.dead)
			return
		}
	}
}

func (s *Syslog) dial() (*conn, error) {
	d := &net.Dialer{
		Timeout: dialTimeout,
		// Keepalives find a dead collector on an idle connection.
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3},
		Control:         setUserTimeout,
	}
	network := s.network
	if network == "tls" {
		network = "tcp"
	}
	raw, err := d.DialContext(s.ctx, network, s.addr)
	if err != nil {
		return nil, fmt.Errorf("dial syslog collector: %w", err)
	}
	c := &conn{w: raw, raw: raw}
	if s.network == "tls" {
		tc := tls.Client(raw, s.tlsConf)
		ctx, cancel := context.WithTimeout(s.ctx, dialTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("tls handshake with syslog collector: %w", err)
		}
		c.w = tc
	}
	// Closing the socket is what unblocks a write stuck on a collector
	// that stopped reading when Close gives up.
	c.stopAbort = context.AfterFunc(s.ctx, func() { _ = raw.Close() })
	if network == "tcp" {
		c.dead = make(chan struct{})
		c.watchDone = make(chan struct{})
		go c.watch()
	}
	return c, nil
}

// setUserTimeout sets TCP_USER_TIMEOUT on TCP sockets. It is best effort: a
// kernel without it still has keepalives and the write deadline.
func setUserTimeout(network, _ string, rc syscall.RawConn) error {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(tcpUserTimeout/time.Millisecond))
	})
	return nil
}

// dropConn closes c and waits for its watcher. graceful sends TLS
// close_notify, so the collector can tell a clean end from a cut; Close
// bounds it by cancelling, which closes the socket.
func (s *Syslog) dropConn(c *conn, graceful bool) {
	s.cur.CompareAndSwap(c, nil)
	if graceful {
		// Still under the close-on-cancel hook: close_notify is a write
		// and may block on a collector that stopped reading.
		_ = c.w.Close()
	}
	c.stopAbort()
	_ = c.raw.Close()
	if c.watchDone != nil {
		<-c.watchDone
	}
}

// write sends batch on c and returns how many records went out whole. On
// TCP and TLS each record is octet-counted and the batch is one write; a
// record cut by a failed write is resent whole on the next connection (a
// receiver drops the torn frame with the connection). On UDP each record is
// one datagram.
func (s *Syslog) write(c *conn, batch [][]byte, buf *[]byte) (int, error) {
	if err := c.w.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		return 0, fmt.Errorf("set write deadline: %w", err)
	}
	if s.network == "udp" {
		for i, m := range batch {
			if _, err := c.w.Write(m); err != nil {
				return i, fmt.Errorf("send syslog datagram: %w", err)
			}
		}
		return len(batch), nil
	}
	b := (*buf)[:0]
	ends := make([]int, 0, len(batch))
	for _, m := range batch {
		b = appendOctetFrame(b, m)
		ends = append(ends, len(b))
	}
	*buf = b
	n, err := c.w.Write(b)
	if err == nil {
		return len(batch), nil
	}
	whole := 0
	for whole < len(ends) && ends[whole] <= n {
		whole++
	}
	return whole, fmt.Errorf("write to syslog collector: %w", err)
}
