package imdsserver_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/imdsserver"
)

// These tests use real sockets, but only on 127.0.0.1.

// listen opens a loopback listener on an ephemeral port.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return ln
}

// serve runs s.Serve(ln) in the background; the returned channel yields its
// result.
func serve(s *imdsserver.Server, ln net.Listener) <-chan error {
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	return done
}

// start serves a new Server on a loopback listener until the test ends and
// returns it with its base URL.
func start(t *testing.T, opts imdsserver.Options) (*imdsserver.Server, string) {
	t.Helper()
	s := imdsserver.New(opts)
	ln := listen(t)
	done := serve(s, ln)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, "http://" + ln.Addr().String()
}

// newClient returns a client that never uses a proxy from the environment.
func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatalf("set deadline: %v", err)
	}
	return c
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRawBytesRecorded(t *testing.T) {
	tests := []struct {
		name       string
		payload    string
		wantStatus string // prefix of the response
		wantLogged int    // HTTP requests that reach the request log
	}{
		{
			name:       "http/1.1 get",
			payload:    "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: imds.test\r\nConnection: close\r\n\r\n",
			wantStatus: "HTTP/1.1 200 ",
			wantLogged: 1,
		},
		{
			name:       "http/1.0 token put",
			payload:    "PUT /latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
			wantStatus: "HTTP/1.0 200 ",
			wantLogged: 1,
		},
		{
			name:       "not http",
			payload:    "\x00\x01\xffnot http at all\r\n\r\n",
			wantStatus: "HTTP/1.1 400 ",
			wantLogged: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, base := start(t, imdsserver.Options{})
			c := dial(t, base[len("http://"):])
			if _, err := io.WriteString(c, tt.payload); err != nil {
				t.Fatalf("write: %v", err)
			}
			// The server closes after answering; every byte it read was
			// recorded before it answered.
			resp, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read response: %v", err)
			}
			if !bytes.HasPrefix(resp, []byte(tt.wantStatus)) {
				t.Fatalf("response %q, want prefix %q", resp, tt.wantStatus)
			}

			conns := s.Conns()
			if len(conns) != 1 {
				t.Fatalf("got %d conn records, want 1: %+v", len(conns), conns)
			}
			got := conns[0]
			if string(got.Received) != tt.payload || got.Total != len(tt.payload) {
				t.Errorf("received %q (total %d), want %q", got.Received, got.Total, tt.payload)
			}
			if got.RemoteAddr != c.LocalAddr().String() {
				t.Errorf("RemoteAddr = %q, want %q", got.RemoteAddr, c.LocalAddr())
			}
			if got.Accepted.IsZero() {
				t.Error("Accepted not set")
			}
			if n := s.ReceivedBytes(); n != len(tt.payload) {
				t.Errorf("ReceivedBytes = %d, want %d", n, len(tt.payload))
			}
			reqs := s.Requests()
			if len(reqs) != tt.wantLogged {
				t.Fatalf("logged %d requests, want %d", len(reqs), tt.wantLogged)
			}
			if tt.wantLogged == 1 && reqs[0].RemoteAddr != c.LocalAddr().String() {
				t.Errorf("request RemoteAddr = %q, want %q", reqs[0].RemoteAddr, c.LocalAddr())
			}
		})
	}
}

func TestConnWithoutBytes(t *testing.T) {
	s, base := start(t, imdsserver.Options{})
	c := dial(t, base[len("http://"):])
	eventually(t, "the connection to be accepted", func() bool { return len(s.Conns()) == 1 })
	c.Close()
	if got := s.Conns()[0]; len(got.Received) != 0 || got.RemoteAddr != c.LocalAddr().String() {
		t.Errorf("record = %+v, want an empty one from %s", got, c.LocalAddr())
	}
	if n := s.ReceivedBytes(); n != 0 {
		t.Errorf("ReceivedBytes = %d, want 0", n)
	}
}

// A keep-alive connection that outlives Reset must show only what it sent
// after the Reset.
func TestResetWithOpenConn(t *testing.T) {
	s, base := start(t, imdsserver.Options{})
	c := dial(t, base[len("http://"):])
	br := bufio.NewReader(c)
	roundTrip := func(raw string) {
		t.Helper()
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatalf("write: %v", err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatalf("read body: %v", err)
		}
	}

	roundTrip("GET /latest/meta-data/ HTTP/1.1\r\nHost: imds.test\r\n\r\n")
	s.Reset()
	if n, conns, reqs := s.ReceivedBytes(), s.Conns(), s.Requests(); n != 0 || len(conns) != 0 || len(reqs) != 0 {
		t.Fatalf("after Reset: %d bytes, conns %+v, requests %+v", n, conns, reqs)
	}

	second := "GET /latest/meta-data/placement/region HTTP/1.1\r\nHost: imds.test\r\n\r\n"
	roundTrip(second)
	conns := s.Conns()
	if len(conns) != 1 || string(conns[0].Received) != second {
		t.Fatalf("conns = %+v, want one holding only %q", conns, second)
	}
	if reqs := s.Requests(); len(reqs) != 1 || reqs[0].URI != "/latest/meta-data/placement/region" {
		t.Errorf("requests = %+v", reqs)
	}
}

func TestServeSeveralListenersAndClose(t *testing.T) {
	s := imdsserver.New(imdsserver.Options{})
	ln1, ln2 := listen(t), listen(t)
	done1, done2 := serve(s, ln1), serve(s, ln2)
	client := newClient(t)

	for _, ln := range []net.Listener{ln1, ln2} {
		resp, err := client.Get("http://" + ln.Addr().String() + "/latest/meta-data/instance-id")
		if err != nil {
			t.Fatalf("GET via %s: %v", ln.Addr(), err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || string(body) != imdsserver.DefaultInstanceID {
			t.Fatalf("GET via %s: status %d, body %q, err %v", ln.Addr(), resp.StatusCode, body, err)
		}
	}

	// An accepted connection that is mid-request must be closed too.
	idle := dial(t, ln1.Addr().String())
	if _, err := io.WriteString(idle, "GET /latest/"); err != nil {
		t.Fatalf("write: %v", err)
	}
	eventually(t, "the partial request to be read", func() bool { return s.ReceivedBytes() > 0 })

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i, done := range []<-chan error{done1, done2} {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve %d returned %v, want nil", i+1, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Serve %d did not return after Close", i+1)
		}
	}
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Error("active connection still open after Close")
	}
	for _, ln := range []net.Listener{ln1, ln2} {
		if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts after Close", ln.Addr())
		}
	}

	// Serve after Close returns at once and releases the listener.
	ln3 := listen(t)
	if err := s.Serve(ln3); err != nil {
		t.Errorf("Serve after Close = %v, want nil", err)
	}
	if _, err := ln3.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listener after Serve-after-Close: Accept err = %v, want net.ErrClosed", err)
	}

	// The logs outlive Close.
	if n := len(s.Requests()); n != 2 {
		t.Errorf("logged %d requests after Close, want 2", n)
	}
}

func TestConcurrentClients(t *testing.T) {
	s, base := start(t, imdsserver.Options{RequireToken: true})
	client := newClient(t)
	const clients = 32

	get := func(method, path string, header http.Header) (int, error) {
		req, err := http.NewRequest(method, base+path, nil)
		if err != nil {
			return 0, fmt.Errorf("build %s %s: %w", method, path, err)
		}
		req.Header = header
		resp, err := client.Do(req)
		if err != nil {
			return 0, fmt.Errorf("%s %s: %w", method, path, err)
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return 0, fmt.Errorf("%s %s: read body: %w", method, path, err)
		}
		return resp.StatusCode, nil
	}

	// Readers and a toggler run alongside the clients so -race sees every
	// accessor contend with request handling.
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() {
		for require := false; ; require = !require {
			select {
			case <-stop:
				return
			default:
			}
			s.SetRequireToken(require)
			_, _, _ = s.Requests(), s.Conns(), s.ReceivedBytes()
			time.Sleep(time.Millisecond)
		}
	})

	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Go(func() {
			tok, err := fetchToken(client, base)
			if err != nil {
				errs <- err
				return
			}
			// With a token every path must pass, whatever RequireToken is.
			for _, path := range []string{"/latest/meta-data/instance-id", "/latest/meta-data/iam/security-credentials/" + imdsserver.DefaultRole} {
				status, err := get(http.MethodGet, path, http.Header{imdsserver.TokenHeader: {tok}})
				if err == nil && status != http.StatusOK {
					err = fmt.Errorf("GET %s with token: status %d", path, status)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			// Without one, the answer depends on the toggler's last word.
			status, err := get(http.MethodGet, "/latest/meta-data/instance-id", http.Header{})
			if err == nil && status != http.StatusOK && status != http.StatusUnauthorized {
				err = fmt.Errorf("GET without token: status %d", status)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Per client: one PUT and three GETs.
	if got, want := len(s.Requests()), clients*4; got != want {
		t.Errorf("logged %d requests, want %d", got, want)
	}
	total := 0
	for _, c := range s.Conns() {
		total += len(c.Received)
	}
	if total == 0 || total != s.ReceivedBytes() {
		t.Errorf("conn records hold %d bytes, ReceivedBytes = %d", total, s.ReceivedBytes())
	}
}

func fetchToken(client *http.Client, base string) (string, error) {
	req, err := http.NewRequest(http.MethodPut, base+imdsserver.TokenPath, nil)
	if err != nil {
		return "", fmt.Errorf("build token request: %w", err)
	}
	req.Header.Set(imdsserver.TokenTTLHeader, "60")
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("put token: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("put token: status %d", resp.StatusCode)
	}
	return string(body), nil
}
