// Package imdsserver is imdsguard's own stand-in for the EC2 instance
// metadata service (IMDS), for tests that run inside network namespaces.
//
// It implements the parts of IMDS that credential-fetching clients
// (aws-sdk-go-v2, botocore) touch, with AWS's IMDSv2 token semantics, and it
// keeps two independent logs so tests can assert what got through a guard:
//
//   - Requests: every HTTP request it answered, with the status it answered.
//   - Conns: every byte read from every accepted TCP connection, recorded
//     below HTTP parsing, so "not one byte of a refused request reached the
//     server" can be asserted even for requests that never parse.
package imdsserver

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Options.
const (
	DefaultInstanceID = "i-0123456789abcdef0"
	DefaultRole       = "imdsguard-test-role"
)

// Options configures a Server. The zero value is usable.
type Options struct {
	// RequireToken makes the server refuse token-less (IMDSv1) requests, as an
	// instance with HttpTokens=required does. It can be changed later with
	// SetRequireToken.
	RequireToken bool
	// InstanceID defaults to DefaultInstanceID.
	InstanceID string
	// Role is the IAM role whose credentials are served; defaults to DefaultRole.
	Role string
	// Now is the clock used for token expiry and timestamps; defaults to
	// time.Now. Tests inject a fake clock to expire tokens without sleeping.
	Now func() time.Time
}

// Request is one HTTP request the server answered.
type Request struct {
	Time       time.Time
	Method     string
	URI        string // the raw request URI, as sent on the request line
	Proto      string
	Header     http.Header
	RemoteAddr string
	Status     int // the status the server answered with
}

// ConnRecord is what the server read from one accepted connection.
type ConnRecord struct {
	RemoteAddr string
	Accepted   time.Time
	// Received holds the bytes read, in order, up to MaxConnRecord bytes.
	Received []byte
	// Total counts every byte read, including any beyond MaxConnRecord.
	Total int
}

// MaxConnRecord caps ConnRecord.Received so a misbehaving client cannot make
// a test's memory grow without bound.
const MaxConnRecord = 1 << 20

// Server is a fake IMDS. All methods are safe for concurrent use.
type Server struct {
	instanceID string
	role       string
	now        func() time.Time
	started    time.Time
	routes     map[string]route

	requireToken atomic.Bool
	// One http.Server for every listener: Close then stops them all, and
	// closes their active connections, in one call.
	http *http.Server

	mu       sync.Mutex
	tokens   map[string]time.Time // token -> expiry
	requests []Request
	conns    []*connRecord // listed records, in accept (or post-Reset first read) order
}

// New returns a Server. It serves nothing until Serve is called, but
// ServeHTTP can be used directly (e.g. with httptest) without listeners.
func New(opts Options) *Server {
	s := &Server{
		instanceID: opts.InstanceID,
		role:       opts.Role,
		now:        opts.Now,
		tokens:     make(map[string]time.Time),
	}
	if s.instanceID == "" {
		s.instanceID = DefaultInstanceID
	}
	if s.role == "" {
		s.role = DefaultRole
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.started = s.now()
	s.routes = s.buildRoutes()
	s.requireToken.Store(opts.RequireToken)
	s.http = &http.Server{
		Handler: s,
		// Bounds a stuck client. Long: a test opens connections before
		// the daemon starts and writes on them once it enforces, and on an
		// emulated kernel sharing its cores with other VMs a start takes
		// over 30 s (the value this had: the server then closed the idle
		// connections, and the test found them no longer open to adopt).
		ReadHeaderTimeout: 10 * time.Minute,
	}
	return s
}

// SetRequireToken switches between IMDSv1+v2 (false) and IMDSv2 only (true).
func (s *Server) SetRequireToken(require bool) { s.requireToken.Store(require) }

// Serve accepts connections on ln until Close, recording the bytes read from
// each. It may be called for several listeners at once (e.g. IPv4 and IPv6).
// It returns nil after Close, and closes ln in every case.
func (s *Server) Serve(ln net.Listener) error {
	err := s.http.Serve(&recordingListener{Listener: ln, s: s})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serve imds on %s: %w", ln.Addr(), err)
}

// Close closes every listener passed to Serve and every active connection.
// The logs stay readable.
func (s *Server) Close() error {
	if err := s.http.Close(); err != nil {
		return fmt.Errorf("close imds server: %w", err)
	}
	return nil
}

// Requests returns a copy of the request log, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		r.Header = r.Header.Clone() // callers must not be able to edit the log
		out[i] = r
	}
	return out
}

// Conns returns a copy of the connection records, oldest first.
func (s *Server) Conns() []ConnRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ConnRecord, len(s.conns))
	for i, c := range s.conns {
		out[i] = ConnRecord{
			RemoteAddr: c.remoteAddr,
			Accepted:   c.accepted,
			Received:   append([]byte(nil), c.received...),
			Total:      c.total,
		}
	}
	return out
}

// ReceivedBytes returns how many bytes were read from all listed connections.
func (s *Server) ReceivedBytes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.conns {
		n += c.total
	}
	return n
}

// Reset clears the request log and the connection records. Issued tokens stay
// valid. A connection still open (e.g. an idle keep-alive one) reappears in
// Conns, with only the new bytes, as soon as it delivers another byte, so
// after Reset both logs describe only what happened after it.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
	for _, c := range s.conns {
		c.listed = false
		c.received = nil
		c.total = 0
	}
	s.conns = nil
}

// logRequest must run before the response is written: a client that has its
// answer must find its request in the log.
func (s *Server) logRequest(r *http.Request, at time.Time, status int) {
	rec := Request{
		Time:       at,
		Method:     r.Method,
		URI:        r.RequestURI,
		Proto:      r.Proto,
		Header:     r.Header.Clone(),
		RemoteAddr: r.RemoteAddr,
		Status:     status,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, rec)
}
