package imdsserver

import (
	"errors"
	"net"
	"time"
)

// connRecord is the mutable record behind a ConnRecord; guarded by Server.mu.
type connRecord struct {
	remoteAddr string
	accepted   time.Time
	received   []byte
	total      int
	listed     bool // present in Server.conns; false after Reset until the next read
}

// recordingListener wraps every accepted connection so that the bytes read
// from it are recorded before net/http parses them.
type recordingListener struct {
	net.Listener
	s *Server
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		// Returned unwrapped: net/http type-asserts net.Error to decide
		// whether to retry.
		return nil, err
	}
	return l.s.track(c), nil
}

// track starts recording c.
func (s *Server) track(c net.Conn) net.Conn {
	rec := &connRecord{
		remoteAddr: c.RemoteAddr().String(),
		accepted:   s.now(),
		listed:     true,
	}
	s.mu.Lock()
	s.conns = append(s.conns, rec)
	s.mu.Unlock()
	return &recordingConn{Conn: c, s: s, rec: rec}
}

type recordingConn struct {
	net.Conn
	s   *Server
	rec *connRecord
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.s.record(c.rec, p[:n])
	}
	return n, err
}

// CloseWrite lets net/http half-close before closing, as it does on a bare
// *net.TCPConn; without it a client can see a reset instead of the response.
func (c *recordingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (s *Server) record(rec *connRecord, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !rec.listed {
		rec.listed = true
		s.conns = append(s.conns, rec)
	}
	rec.total += len(b)
	if room := MaxConnRecord - len(rec.received); room > 0 {
		rec.received = append(rec.received, b[:min(room, len(b))]...)
	}
}
