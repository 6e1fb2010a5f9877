// Command labclient is the client program imdsguard's privileged
// integration tests run inside the test lab (see test/lab). It is the
// process whose pid and comm ("labclient") the daemon reports, so it makes
// the socket system calls itself (golang.org/x/sys/unix: socket, connect,
// write, read) and reports the exact errno of each.
//
// Usage:
//
//	labclient -addr HOST:PORT [-mode connect|http|raw] [-timeout 5s] ...
//
// HOST is an IPv4 or bracketed IPv6 literal. An IPv4-mapped IPv6 address
// ([::ffff:169.254.169.254]:80) is dialled from an AF_INET6 socket with
// IPV6_V6ONLY off, so the kernel's connect6 path sees it.
//
// Modes:
//
//	connect  connect, then close.
//	http     send one HTTP/1.1 request (-method, -path, -token, -header,
//	         -host) with "Connection: close" in one write(), read the
//	         response to EOF and report status and body. With -fetch-token
//	         it first gets a token with PUT /latest/api/token (TTL
//	         -token-ttl, default 21600) over a separate connection; if that
//	         fails the request is still sent (with -token, if given), like
//	         SDKs falling back to IMDSv1.
//	raw      one write() per -write flag (Go string escapes such as \r\n
//	         are interpreted), -pause between writes, then shutdown(SHUT_WR)
//	         and read to EOF.
//
// -keepalive-wait D and -wait-file PATH (any mode): after a successful
// connect, print the line {"connected":true} and wait before sending
// anything: for D, or until PATH exists (at most D when D > 0; without
// limit otherwise).
//
// The result is one JSON object on the last line of stdout (see result).
// The exit status is 0 whenever the client ran, even if the connection
// failed, and 2 for bad flags. Client-side timeouts are reported as the
// errno "ETIMEDOUT".
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/test/escape"
	"github.com/imdsguard/imdsguard/test/labclient/report"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// maxResponse bounds how much of a response is read.
const maxResponse = 8 << 20

type config struct {
	addr          string
	timeout       time.Duration
	mode          string
	method        string
	path          string
	token         string
	fetchToken    bool
	tokenTTL      int
	headers       []string
	host          string
	writes        []string // already unescaped
	preWrite      string   // written right after connect, before any wait
	pause         time.Duration
	keepaliveWait time.Duration
	waitFile      string
	repeat        int
	comm          string

	family int
	sa     unix.Sockaddr
	mapped bool // IPv4-mapped IPv6 destination
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ", ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func parseArgs(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("labclient", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var headers, writes stringList
	var preWrite string
	fs.StringVar(&cfg.addr, "addr", "", "destination `HOST:PORT` (IPv4, [IPv6], or [::ffff:a.b.c.d])")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Second, "connect timeout, and read timeout")
	fs.StringVar(&cfg.mode, "mode", "connect", "connect, http or raw")
	fs.StringVar(&cfg.method, "method", "GET", "http: request method")
	fs.StringVar(&cfg.path, "path", "/latest/meta-data/instance-id", "http: request path")
	fs.StringVar(&cfg.token, "token", "", "http: X-aws-ec2-metadata-token value")
	fs.BoolVar(&cfg.fetchToken, "fetch-token", false, "http: first PUT /latest/api/token on a separate connection and use the token")
	fs.IntVar(&cfg.tokenTTL, "token-ttl", 21600, "http: X-aws-ec2-metadata-token-ttl-seconds for -fetch-token")
	fs.Var(&headers, "header", "http: extra `'Name: value'` header (repeatable)")
	fs.StringVar(&cfg.host, "host", "", "http: Host header (default: -addr)")
	fs.Var(&writes, "write", "raw: bytes for one write() call, Go escapes allowed (repeatable)")
	fs.StringVar(&preWrite, "pre-write", "", "raw: bytes for one write() right after connect, before -wait-file (an adopted connection's past), Go escapes allowed")
	fs.DurationVar(&cfg.pause, "pause", 20*time.Millisecond, "raw: pause between writes")
	fs.DurationVar(&cfg.keepaliveWait, "keepalive-wait", 0, "after connect, wait this long before sending (maximum wait with -wait-file)")
	fs.StringVar(&cfg.waitFile, "wait-file", "", "after connect, wait until this file exists before sending")
	fs.StringVar(&cfg.comm, "comm", "", "set the process name (prctl PR_SET_NAME) first, Go escapes allowed: what the daemon reports as comm")
	fs.IntVar(&cfg.repeat, "repeat", 1, "connect: make this many connections one after another; connect_errnos counts the outcomes")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if cfg.repeat < 1 || (cfg.repeat > 1 && cfg.mode != "connect") {
		return nil, errors.New("-repeat must be at least 1, and above 1 only with -mode connect")
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if cfg.addr == "" {
		return nil, errors.New("-addr is required")
	}
	if cfg.timeout <= 0 {
		return nil, errors.New("-timeout must be positive")
	}
	if cfg.pause < 0 || cfg.keepaliveWait < 0 {
		return nil, errors.New("-pause and -keepalive-wait must not be negative")
	}
	switch cfg.mode {
	case "connect", "http", "raw":
	default:
		return nil, fmt.Errorf("-mode must be connect, http or raw, not %q", cfg.mode)
	}
	if len(writes) > 0 && cfg.mode != "raw" {
		return nil, errors.New("-write needs -mode raw")
	}
	if cfg.mode != "http" && (len(headers) > 0 || cfg.fetchToken || cfg.token != "") {
		return nil, errors.New("-header, -token and -fetch-token need -mode http")
	}
	for _, h := range headers {
		name, _, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(name) == "" || strings.ContainsAny(h, "\r\n") {
			return nil, fmt.Errorf("-header %q: want 'Name: value'", h)
		}
	}
	cfg.headers = headers
	for _, w := range writes {
		b, err := escape.Unescape(w)
		if err != nil {
			return nil, fmt.Errorf("-write %q: %v", w, err)
		}
		cfg.writes = append(cfg.writes, b)
	}
	pre, err := escape.Unescape(preWrite)
	if err != nil {
		return nil, fmt.Errorf("-pre-write %q: %v", preWrite, err)
	}
	cfg.preWrite = pre
	if cfg.host == "" {
		cfg.host = cfg.addr
	}
	if cfg.comm != "" {
		c, err := escape.Unescape(cfg.comm)
		if err != nil {
			return nil, fmt.Errorf("-comm %q: %v", cfg.comm, err)
		}
		cfg.comm = c
	}
	cfg.family, cfg.sa, cfg.mapped, err = sockaddr(cfg.addr)
	if err != nil {
		return nil, fmt.Errorf("-addr: %v", err)
	}
	return cfg, nil
}

// sockaddr parses HOST:PORT into a socket family and address.
func sockaddr(hostport string) (family int, sa unix.Sockaddr, mapped bool, err error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return 0, nil, false, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return 0, nil, false, fmt.Errorf("bad port %q", portStr)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return 0, nil, false, fmt.Errorf("host must be an IP address: %v", err)
	}
	if ip.Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(port), Addr: ip.As4()}, false, nil
	}
	sa6 := &unix.SockaddrInet6{Port: int(port), Addr: ip.As16()}
	if z := ip.Zone(); z != "" {
		if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			sa6.ZoneId = uint32(n)
		} else {
			ifi, err := net.InterfaceByName(z)
			if err != nil {
				return 0, nil, false, fmt.Errorf("zone %q: %v", z, err)
			}
			sa6.ZoneId = uint32(ifi.Index)
		}
	}
	return unix.AF_INET6, sa6, ip.Is4In6(), nil
}

// result and writeResult are the report's types, shared with the tests
// that read it.
type (
	result      = report.Report
	writeResult = report.Write
)

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseArgs(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "labclient:", err)
		return 2
	}
	res := execute(cfg, stdout)
	b, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintln(stderr, "labclient:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", b)
	return 0
}

func execute(cfg *config, stdout io.Writer) *result {
	res := &result{PID: os.Getpid(), Mode: cfg.mode, Addr: cfg.addr, Writes: []writeResult{}}
	if cfg.comm != "" {
		// comm is per thread: name this one and keep running on it, as the
		// socket calls below do (the whole client is one goroutine).
		runtime.LockOSThread()
		if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(unsafe.StringData(cfg.comm+"\x00"))), 0, 0, 0); err != nil {
			res.AddError("prctl: %v", err)
		}
	}
	if cfg.mode == "http" && cfg.fetchToken {
		fetchToken(cfg, res)
	}
	if cfg.repeat > 1 {
		res.ConnectErrnos = map[string]int{}
		for range cfg.repeat {
			c := dial(cfg)
			res.ConnectErrnos[c.errno]++
			if c.fd >= 0 {
				unix.Close(c.fd)
			}
		}
		return res
	}
	c := dial(cfg)
	res.ConnectErrno, res.ConnectMS = c.errno, c.ms
	if c.fd < 0 {
		res.AddError("%s", c.err)
		return res
	}
	defer unix.Close(c.fd)
	if sa, err := unix.Getsockname(c.fd); err == nil {
		res.LocalAddr = sockaddrString(sa)
	}
	if cfg.preWrite != "" {
		res.PreWrite = writeOnce(c.fd, []byte(cfg.preWrite), cfg.timeout)
	}
	if cfg.keepaliveWait > 0 || cfg.waitFile != "" {
		fmt.Fprintln(stdout, `{"connected":true}`)
		res.WaitFileTimeout = wait(cfg.keepaliveWait, cfg.waitFile)
	}
	switch cfg.mode {
	case "connect":
	case "http":
		doHTTP(cfg, c.fd, res)
	case "raw":
		doRaw(cfg, c.fd, res)
	}
	return res
}

// wait sleeps for d, or until file exists (bounded by d if d > 0). It
// reports whether d ran out before file appeared.
func wait(d time.Duration, file string) bool {
	if file == "" {
		time.Sleep(d)
		return false
	}
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(file); err == nil {
			return false
		}
		if d > 0 && time.Now().After(deadline) {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func errnoName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
		return fmt.Sprintf("errno %d", int(errno))
	}
	return err.Error()
}

func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return ""
}

type conn struct {
	fd    int // -1 when the connection failed
	errno string
	ms    float64
	err   string
}

// dial connects a non-blocking TCP socket, waiting at most cfg.timeout.
func dial(cfg *config) conn {
	fd, err := unix.Socket(cfg.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return conn{fd: -1, errno: errnoName(err), err: fmt.Sprintf("socket: %v", err)}
	}
	fail := func(errno, msg string, start time.Time) conn {
		unix.Close(fd)
		return conn{fd: -1, errno: errno, ms: msSince(start), err: msg}
	}
	if cfg.family == unix.AF_INET6 && cfg.mapped {
		// Dual-stack socket so the IPv4-mapped destination is allowed.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return fail(errnoName(err), fmt.Sprintf("setsockopt IPV6_V6ONLY: %v", err), time.Now())
		}
	}
	start := time.Now()
	err = unix.Connect(fd, cfg.sa)
	if err == nil {
		return conn{fd: fd, ms: msSince(start)}
	}
	if !errors.Is(err, unix.EINPROGRESS) {
		return fail(errnoName(err), fmt.Sprintf("connect: %v", err), start)
	}
	deadline := start.Add(cfg.timeout)
	if err := pollFD(fd, unix.POLLOUT, deadline); err != nil {
		return fail(errnoName(err), fmt.Sprintf("connect: %v", describe(err, cfg.timeout)), start)
	}
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return fail(errnoName(err), fmt.Sprintf("getsockopt SO_ERROR: %v", err), start)
	}
	if soErr != 0 {
		e := unix.Errno(soErr)
		return fail(errnoName(e), fmt.Sprintf("connect: %v", e), start)
	}
	return conn{fd: fd, ms: msSince(start)}
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

func describe(err error, timeout time.Duration) string {
	if errors.Is(err, unix.ETIMEDOUT) {
		return fmt.Sprintf("timed out after %v", timeout)
	}
	return err.Error()
}

// pollFD waits until fd has one of events (or an error/hangup), returning
// ETIMEDOUT at deadline.
func pollFD(fd int, events int16, deadline time.Time) error {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		ms := int(left / time.Millisecond)
		if left%time.Millisecond != 0 {
			ms++
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// writeOnce makes exactly one successful-or-failing write() of b: it only
// retries when the kernel did not take any byte (EAGAIN on the non-blocking
// socket, or EINTR).
func writeOnce(fd int, b []byte, timeout time.Duration) writeResult {
	deadline := time.Now().Add(timeout)
	for {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			if perr := pollFD(fd, unix.POLLOUT, deadline); perr != nil {
				return writeResult{N: 0, Errno: errnoName(perr)}
			}
			continue
		}
		if err != nil {
			return writeResult{N: 0, Errno: errnoName(err)}
		}
		return writeResult{N: n}
	}
}

// readAll reads until EOF, an error, maxResponse bytes, or timeout without
// the connection finishing. It returns the bytes and the errno ("" at EOF).
func readAll(fd int, timeout time.Duration) ([]byte, string) {
	var out []byte
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(timeout)
	for len(out) < maxResponse {
		n, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			if perr := pollFD(fd, unix.POLLIN, deadline); perr != nil {
				return out, errnoName(perr)
			}
			continue
		case err != nil:
			return out, errnoName(err)
		case n == 0:
			return out, ""
		}
		out = append(out, buf[:n]...)
	}
	return out, ""
}

func buildRequest(method, path, host string, headers []string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", method, path)
	fmt.Fprintf(&b, "Host: %s\r\n", host)
	fmt.Fprintf(&b, "User-Agent: labclient\r\n")
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		fmt.Fprintf(&b, "%s: %s\r\n", strings.TrimSpace(name), strings.TrimSpace(value))
	}
	switch method {
	case "PUT", "POST", "PATCH":
		b.WriteString("Content-Length: 0\r\n")
	}
	b.WriteString("Connection: close\r\n\r\n")
	return b.Bytes()
}

// parseResponse parses an HTTP response (handling chunked bodies).
func parseResponse(raw []byte) (status int, body string, err error) {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
	if err != nil {
		return 0, "", fmt.Errorf("parse response: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, string(b), fmt.Errorf("read response body: %v", err)
	}
	return resp.StatusCode, string(b), nil
}

func fetchToken(cfg *config, res *result) {
	c := dial(cfg)
	res.TokenConnectErrno = c.errno
	if c.fd < 0 {
		res.TokenError = c.err
		return
	}
	defer unix.Close(c.fd)
	req := buildRequest("PUT", "/latest/api/token", cfg.host,
		[]string{"X-aws-ec2-metadata-token-ttl-seconds: " + strconv.Itoa(cfg.tokenTTL)})
	if w := writeOnce(c.fd, req, cfg.timeout); w.Errno != "" || w.N != len(req) {
		res.TokenError = fmt.Sprintf("write: n=%d errno=%s", w.N, w.Errno)
		return
	}
	raw, rerr := readAll(c.fd, cfg.timeout)
	status, body, err := parseResponse(raw)
	res.TokenStatus = status
	if err != nil {
		res.TokenError = err.Error()
		if rerr != "" {
			res.TokenError += " (read: " + rerr + ")"
		}
		return
	}
	if status == http.StatusOK {
		cfg.token = strings.TrimSpace(body)
	} else {
		res.TokenError = fmt.Sprintf("token request: status %d", status)
	}
}

func doHTTP(cfg *config, fd int, res *result) {
	headers := cfg.headers
	if cfg.token != "" {
		headers = append([]string{"X-aws-ec2-metadata-token: " + cfg.token}, headers...)
	}
	req := buildRequest(cfg.method, cfg.path, cfg.host, headers)
	w := writeOnce(fd, req, cfg.timeout)
	res.Writes = append(res.Writes, w)
	if w.Errno != "" {
		res.AddError("write: %s", w.Errno)
		return
	}
	if w.N != len(req) {
		res.AddError("short write: %d of %d bytes", w.N, len(req))
	}
	raw, rerr := readAll(fd, cfg.timeout)
	res.ReadErrno = rerr
	if rerr != "" {
		res.AddError("read: %s", rerr)
	}
	status, body, err := parseResponse(raw)
	res.Status, res.Body = status, body
	if err != nil {
		res.AddError("%v", err)
	}
}

func doRaw(cfg *config, fd int, res *result) {
	for i, s := range cfg.writes {
		if i > 0 && cfg.pause > 0 {
			time.Sleep(cfg.pause)
		}
		w := writeOnce(fd, []byte(s), cfg.timeout)
		res.Writes = append(res.Writes, w)
		if w.Errno != "" {
			res.AddError("write %d: %s", i+1, w.Errno)
		}
	}
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		res.ShutdownErrno = errnoName(err)
	}
	raw, rerr := readAll(fd, cfg.timeout)
	res.Response = string(raw)
	res.ReadErrno = rerr
	if rerr != "" {
		res.AddError("read: %s", rerr)
	}
}
