// Command benchclient is the traffic generator of `make bench`
// (test/bench). The bench runs it inside the lab's namespaces and guarded
// cgroup, so every socket it opens is one imdsguard's programs see; it
// measures on its own side (no process start-up in the figures) and prints
// one JSON object (Result) on stdout.
//
// Modes:
//
//	latency         n GETs with an IMDSv2 token (fetched first with PUT), over one
//	                keep-alive connection or a new connection each; samples are
//	                round trips in ns
//	connrate        connect and close (RST, so no TIME_WAIT piles up) for -duration;
//	                count is connections
//	connect         the same, exactly -n times (for the kernel's per-run cost)
//	bulk            one connection sending -bytes, then waiting for the server's
//	                one-byte acknowledgement; count is bytes
//	refuse-connect  -n connects with -timeout; samples are the time until connect
//	                returned, outcomes count how it ended (ok, EPERM, timeout, …)
//	refuse-request  -n token-less GETs for credentials, each on a new connection;
//	                samples are the time from the start of the write until the
//	                write failed or, if it did not, the response arrived
//	flood           token-carrying GETs, one per write, on -conns connections at
//	                -rate per second in total (0: as fast as possible) for
//	                -duration, never reading a response (the server discards);
//	                count is requests written
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Result is what every mode prints.
type Result struct {
	Samples  []int64        `json:"samples,omitempty"`  // ns
	Count    int64          `json:"count"`              // connections, bytes or requests
	Seconds  float64        `json:"seconds"`            // measured interval
	Outcomes map[string]int `json:"outcomes,omitempty"` // refuse-*: how attempts ended
}

func main() {
	mode := flag.String("mode", "latency", "latency, connrate, connect, bulk, refuse-connect, refuse-request or flood")
	addr := flag.String("addr", "169.254.169.254:80", "server address")
	n := flag.Int("n", 1000, "requests or connections")
	keepAlive := flag.Bool("keepalive", true, "latency: reuse one connection")
	interval := flag.Duration("interval", 0, "latency, connect, refuse-connect: start one every interval (0: back to back)")
	duration := flag.Duration("duration", 2*time.Second, "connrate, flood: how long")
	size := flag.Int64("bytes", 1<<30, "bulk: bytes to send")
	timeout := flag.Duration("timeout", time.Second, "refuse-connect: connect timeout (botocore's default IMDS timeout is 1 s)")
	rate := flag.Int("rate", 0, "flood: requests per second in total (0: unpaced)")
	conns := flag.Int("conns", 4, "flood: connections")
	flag.Parse()

	var res Result
	var err error
	switch *mode {
	case "latency":
		res, err = latency(*addr, *n, *keepAlive, *interval)
	case "connrate":
		res, err = connect(*addr, 0, *duration, 0)
	case "connect":
		res, err = connect(*addr, *n, 0, *interval)
	case "bulk":
		res, err = bulk(*addr, *size)
	case "refuse-connect":
		res, err = refuseConnect(*addr, *n, *timeout, *interval)
	case "refuse-request":
		res, err = refuseRequest(*addr, *n)
	case "flood":
		res, err = flood(*addr, *rate, *conns, *duration)
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchclient:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "benchclient:", err)
		os.Exit(1)
	}
}

// The token value is never checked by the guard (only its presence); the
// imds test server checks it, so latency fetches a real one.
const fakeToken = "AQAEAFakeTokenForTheFloodModeOnlyXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX=="

func getRequest(token string) string {
	return "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token: " + token + "\r\n\r\n"
}

// latency times n requests. A request that fails (a write refused with
// EACCES would be a token-carrying request the guard wrongly judged) is
// not a sample: it is counted in Outcomes, the connection is replaced and
// the run goes on, so the bench can report it next to the figures. More
// than n/100 failures end the run.
func latency(addr string, n int, keepAlive bool, interval time.Duration) (Result, error) {
	token, err := fetchToken(addr)
	if err != nil {
		return Result{}, err
	}
	req := getRequest(token)
	res := Result{Samples: make([]int64, 0, n), Outcomes: map[string]int{}}
	var conn net.Conn
	var rd *bufio.Reader
	failures := 0
	fail := func(what string, err error) error {
		failures++
		res.Outcomes[what+" "+outcome(err)]++
		if conn != nil {
			conn.Close()
			conn = nil
		}
		if failures > n/100 {
			return fmt.Errorf("%d of %d requests failed: %v", failures, len(res.Samples)+failures, res.Outcomes)
		}
		return nil
	}
	next := time.Now()
	begin := time.Now()
	for range n {
		if interval > 0 {
			time.Sleep(time.Until(next))
			next = next.Add(interval)
		}
		start := time.Now()
		if conn == nil {
			if conn, err = net.Dial("tcp", addr); err != nil {
				if ferr := fail("connect", err); ferr != nil {
					return Result{}, ferr
				}
				continue
			}
			rd = bufio.NewReader(conn)
		}
		if _, err := io.WriteString(conn, req); err != nil {
			if ferr := fail("write", err); ferr != nil {
				return Result{}, ferr
			}
			continue
		}
		resp, err := http.ReadResponse(rd, nil)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != 200 {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		if err != nil {
			if ferr := fail("read", err); ferr != nil {
				return Result{}, ferr
			}
			continue
		}
		if !keepAlive {
			conn.Close()
			conn = nil
		}
		res.Samples = append(res.Samples, time.Since(start).Nanoseconds())
	}
	if conn != nil {
		conn.Close()
	}
	res.Count, res.Seconds = int64(len(res.Samples)), time.Since(begin).Seconds()
	if len(res.Outcomes) == 0 {
		res.Outcomes = nil
	}
	return res, nil
}

func fetchToken(addr string) (string, error) {
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
	// Not DefaultClient: its idle connection would stay open next to the
	// measured one.
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return "", fmt.Errorf("token: status %d %v", resp.StatusCode, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// closeRST closes with SO_LINGER 0: the kernel sends a reset and keeps no
// TIME_WAIT socket, so tens of thousands of connections a second do not
// run out of ephemeral ports.
func closeRST(c net.Conn) error {
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.SetLinger(0); err != nil {
			return err
		}
	}
	return c.Close()
}

// connect opens and closes connections: n of them, or as many as fit in d,
// one every interval if it is not 0.
func connect(addr string, n int, d, interval time.Duration) (Result, error) {
	var count int64
	start := time.Now()
	next := start
	for {
		if n > 0 && count >= int64(n) {
			break
		}
		if n == 0 && time.Since(start) >= d {
			break
		}
		if interval > 0 {
			time.Sleep(time.Until(next))
			next = next.Add(interval)
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return Result{}, err
		}
		if err := closeRST(c); err != nil {
			return Result{}, err
		}
		count++
	}
	return Result{Count: count, Seconds: time.Since(start).Seconds()}, nil
}

// bulk sends size bytes over one connection; the time ends when the server,
// having read them all, answers one byte.
func bulk(addr string, size int64) (Result, error) {
	buf := make([]byte, 256<<10)
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	var sent int64
	for sent < size {
		chunk := buf
		if rest := size - sent; rest < int64(len(chunk)) {
			chunk = chunk[:rest]
		}
		w, err := c.Write(chunk)
		sent += int64(w)
		if err != nil {
			return Result{}, fmt.Errorf("writing: %w", err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return Result{}, err
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return Result{}, fmt.Errorf("waiting for the acknowledgement: %w", err)
	}
	return Result{Count: sent, Seconds: time.Since(start).Seconds()}, nil
}

// outcome names how a connect or write ended.
func outcome(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, syscall.EPERM):
		return "EPERM"
	case errors.Is(err, syscall.EACCES):
		return "EACCES"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "ECONNREFUSED"
	case errors.Is(err, syscall.ECONNRESET):
		return "ECONNRESET"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	default:
		return err.Error()
	}
}

func refuseConnect(addr string, n int, timeout, interval time.Duration) (Result, error) {
	res := Result{Outcomes: map[string]int{}}
	d := net.Dialer{Timeout: timeout}
	begin := time.Now()
	next := begin
	for range n {
		if interval > 0 {
			time.Sleep(time.Until(next))
			next = next.Add(interval)
		}
		start := time.Now()
		c, err := d.Dial("tcp", addr)
		res.Samples = append(res.Samples, time.Since(start).Nanoseconds())
		res.Outcomes[outcome(err)]++
		if c != nil {
			closeRST(c)
		}
	}
	res.Count, res.Seconds = int64(n), time.Since(begin).Seconds()
	return res, nil
}

// refuseRequest times a token-less credentials request (the SSRF of the
// Capital One breach) from the moment it is written.
func refuseRequest(addr string, n int) (Result, error) {
	const req = "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
	res := Result{Outcomes: map[string]int{}}
	begin := time.Now()
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return Result{}, err
		}
		start := time.Now()
		_, err = io.WriteString(c, req)
		if err == nil {
			// Not refused: the answer is what the client gets.
			resp, rerr := http.ReadResponse(bufio.NewReader(c), nil)
			if rerr != nil {
				err = rerr
			} else {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				res.Outcomes[fmt.Sprintf("HTTP %d", resp.StatusCode)]++
			}
		}
		res.Samples = append(res.Samples, time.Since(start).Nanoseconds())
		if err != nil {
			res.Outcomes[outcome(err)]++
		}
		closeRST(c)
	}
	res.Count, res.Seconds = int64(n), time.Since(begin).Seconds()
	return res, nil
}

// flood writes judged requests at a fixed total rate, one request per
// write (so one sk_msg run and one event each), never reading.
func flood(addr string, rate, conns int, d time.Duration) (Result, error) {
	req := []byte(getRequest(fakeToken))
	var mu sync.Mutex
	var total int64
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return Result{}, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			// Each connection sends its share of the rate.
			perConn := float64(rate) / float64(conns)
			var sent int64
			var err error
			for {
				el := time.Since(start)
				if el >= d {
					break
				}
				target := int64(el.Seconds() * perConn)
				if rate == 0 {
					target = sent + 64
				}
				for sent < target {
					if _, err = c.Write(req); err != nil {
						break
					}
					sent++
				}
				if err != nil {
					break
				}
				if rate > 0 {
					time.Sleep(200 * time.Microsecond)
				}
			}
			mu.Lock()
			total += sent
			if err != nil && firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return Result{}, fmt.Errorf("writing: %w", firstErr)
	}
	return Result{Count: total, Seconds: time.Since(start).Seconds()}, nil
}
