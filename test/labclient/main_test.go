package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/test/escape"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		``:                                      ``,
		`plain`:                                 `plain`,
		`GET / HTTP/1.1\r\n\r\n`:                "GET / HTTP/1.1\r\n\r\n",
		`a\tb\\c`:                               "a\tb\\c",
		`say "hi"`:                              `say "hi"`,
		`esc \"q\"`:                             `esc "q"`,
		`it\'s`:                                 `it's`,
		`\x00\xff`:                              "\x00\xff",
		`\u00e9\101`:                            "éA",
		"unicode é":                             "unicode é",
		`X-aws-ec2-metadata-token: ` + "\\r\\n": "X-aws-ec2-metadata-token: \r\n",
	} {
		got, err := escape.Unescape(in)
		if err != nil || got != want {
			t.Errorf("unescape(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`\`, `\q`, `\x4`, `abc\`} {
		if got, err := escape.Unescape(bad); err == nil {
			t.Errorf("unescape(%q) = %q, want error", bad, got)
		}
	}
}

func TestSockaddr(t *testing.T) {
	fam, sa, mapped, err := sockaddr("169.254.169.254:80")
	if err != nil || fam != unix.AF_INET || mapped {
		t.Fatalf("v4: %v %v %v", fam, mapped, err)
	}
	if a := sa.(*unix.SockaddrInet4); a.Port != 80 || a.Addr != [4]byte{169, 254, 169, 254} {
		t.Errorf("v4 sockaddr %+v", a)
	}
	fam, sa, mapped, err = sockaddr("[fd00:ec2::254]:8080")
	if err != nil || fam != unix.AF_INET6 || mapped {
		t.Fatalf("v6: %v %v %v", fam, mapped, err)
	}
	if a := sa.(*unix.SockaddrInet6); a.Port != 8080 || a.Addr[0] != 0xfd || a.Addr[15] != 0x54 {
		t.Errorf("v6 sockaddr %+v", a)
	}
	fam, sa, mapped, err = sockaddr("[::ffff:169.254.169.254]:80")
	if err != nil || fam != unix.AF_INET6 || !mapped {
		t.Fatalf("mapped: %v %v %v", fam, mapped, err)
	}
	want := [16]byte{10: 0xff, 11: 0xff, 12: 169, 13: 254, 14: 169, 15: 254}
	if a := sa.(*unix.SockaddrInet6); a.Addr != want {
		t.Errorf("mapped sockaddr %+v", a)
	}
	for _, bad := range []string{"169.254.169.254", "localhost:80", "1.2.3.4:99999", "[fd00::1]:x", "fd00::1:80"} {
		if _, _, _, err := sockaddr(bad); err == nil {
			t.Errorf("sockaddr(%q): no error", bad)
		}
	}
}

func TestParseArgs(t *testing.T) {
	cfg, err := parseArgs([]string{"-addr", "1.2.3.4:80"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.mode != "connect" || cfg.timeout != 5*time.Second || cfg.host != "1.2.3.4:80" ||
		cfg.method != "GET" || cfg.path != "/latest/meta-data/instance-id" || cfg.pause != 20*time.Millisecond || cfg.tokenTTL != 21600 {
		t.Errorf("defaults: %+v", cfg)
	}
	cfg, err = parseArgs([]string{"-addr", "1.2.3.4:80", "-mode", "raw", "-write", `a\r\n`, "-write", "b"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.writes) != 2 || cfg.writes[0] != "a\r\n" || cfg.writes[1] != "b" {
		t.Errorf("writes %q", cfg.writes)
	}
	cfg, err = parseArgs([]string{"-addr", "1.2.3.4:80", "-mode", "http", "-header", "A: b", "-header", "C:d", "-host", "h"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.headers) != 2 || cfg.host != "h" {
		t.Errorf("headers %q host %q", cfg.headers, cfg.host)
	}
	for _, bad := range [][]string{
		{},
		{"-addr", "nohost"},
		{"-addr", "1.2.3.4:80", "-mode", "udp"},
		{"-addr", "1.2.3.4:80", "-write", "x"},
		{"-addr", "1.2.3.4:80", "-mode", "raw", "-write", `\q`},
		{"-addr", "1.2.3.4:80", "-mode", "http", "-header", "novalue"},
		{"-addr", "1.2.3.4:80", "-token", "t"},
		{"-addr", "1.2.3.4:80", "-timeout", "0s"},
		{"-addr", "1.2.3.4:80", "extra"},
		{"-bogus"},
	} {
		if code := run(bad, io.Discard, io.Discard); code != 2 {
			t.Errorf("run(%q) = %d, want 2", bad, code)
		}
	}
}

func TestBuildRequest(t *testing.T) {
	got := string(buildRequest("PUT", "/latest/api/token", "169.254.169.254:80",
		[]string{"X-aws-ec2-metadata-token-ttl-seconds: 21600"}))
	want := "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254:80\r\nUser-Agent: labclient\r\n" +
		"X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
	if got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// The tests below talk to servers on the loopback interface only.

type output = result

func runClient(t *testing.T, args ...string) (output, []string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run(%q) = %d: %s", args, code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var out output
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &out); err != nil {
		t.Fatalf("decode %q: %v", stdout.String(), err)
	}
	return out, lines
}

func TestHTTPLoopback(t *testing.T) {
	const token = "tok-123"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "PUT" && r.URL.Path == "/latest/api/token":
			if r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") != "21600" {
				http.Error(w, "no ttl", http.StatusBadRequest)
				return
			}
			fmt.Fprint(w, token)
		case r.Header.Get("X-aws-ec2-metadata-token") != "" && r.Header.Get("X-aws-ec2-metadata-token") != token:
			http.Error(w, "bad token", http.StatusUnauthorized)
		default:
			w.Header().Set("X-Seen-Token", r.Header.Get("X-aws-ec2-metadata-token"))
			fmt.Fprintf(w, "%s %s host=%s x=%s tok=%s", r.Method, r.URL.Path, r.Host, r.Header.Get("X-Test"), r.Header.Get("X-aws-ec2-metadata-token"))
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	out, _ := runClient(t, "-mode", "http", "-addr", addr, "-header", "X-Test: yes")
	if out.ConnectErrno != "" || out.Status != 200 || out.Error != "" ||
		out.Body != "GET /latest/meta-data/instance-id host="+addr+" x=yes tok=" {
		t.Errorf("plain: %+v", out)
	}
	if out.PID != os.Getpid() || len(out.Writes) != 1 || out.Writes[0].Errno != "" || out.LocalAddr == "" {
		t.Errorf("plain: %+v", out)
	}

	out, _ = runClient(t, "-mode", "http", "-addr", addr, "-fetch-token", "-path", "/p", "-host", "imds")
	if out.TokenStatus != 200 || out.Status != 200 || out.Body != "GET /p host=imds x= tok="+token {
		t.Errorf("fetch-token: %+v", out)
	}

	out, _ = runClient(t, "-mode", "http", "-addr", addr, "-token", "wrong")
	if out.Status != 401 || !strings.Contains(out.Body, "bad token") {
		t.Errorf("bad token: %+v", out)
	}

	// IPv4-mapped destination over an AF_INET6 socket.
	port := addr[strings.LastIndex(addr, ":")+1:]
	out, _ = runClient(t, "-mode", "http", "-addr", "[::ffff:127.0.0.1]:"+port, "-host", "m")
	if out.ConnectErrno != "" || out.Status != 200 || !strings.HasPrefix(out.LocalAddr, "[::ffff:127.0.0.1]:") {
		t.Errorf("mapped: %+v", out)
	}
}

func TestConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	out, _ := runClient(t, "-addr", addr)
	if out.ConnectErrno != "ECONNREFUSED" || out.Error == "" || out.LocalAddr != "" {
		t.Errorf("got %+v", out)
	}
	out, _ = runClient(t, "-mode", "http", "-addr", addr, "-fetch-token")
	if out.ConnectErrno != "ECONNREFUSED" || out.TokenConnectErrno != "ECONNREFUSED" {
		t.Errorf("got %+v", out)
	}
}

// rawServer accepts one connection, records each read until EOF, then
// sends reply and closes.
func rawServer(t *testing.T, reply string) (addr string, got <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- err.Error()
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		c.Write([]byte(reply))
		ch <- string(b)
	}()
	return ln.Addr().String(), ch
}

func TestRawLoopback(t *testing.T) {
	addr, got := rawServer(t, "HTTP/1.0 200 OK\r\n\r\nbody")
	out, _ := runClient(t, "-mode", "raw", "-addr", addr, "-pause", "1ms",
		"-write", `GET / HTTP/1.1\r\n`, "-write", `Host: x\r\n\r\n`)
	if len(out.Writes) != 2 || out.Writes[0] != (writeResult{N: 16}) || out.Writes[1] != (writeResult{N: 11}) {
		t.Errorf("writes %+v", out.Writes)
	}
	if out.Response != "HTTP/1.0 200 OK\r\n\r\nbody" || out.ReadErrno != "" || out.Error != "" || out.ShutdownErrno != "" {
		t.Errorf("got %+v", out)
	}
	if s := <-got; s != "GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
		t.Errorf("server got %q", s)
	}
}

func TestReadTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		time.Sleep(2 * time.Second) // never answers in time
	}()
	start := time.Now()
	out, _ := runClient(t, "-mode", "raw", "-addr", ln.Addr().String(), "-timeout", "200ms", "-write", "x")
	if out.ReadErrno != "ETIMEDOUT" || out.Error == "" {
		t.Errorf("got %+v", out)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("took %v", d)
	}
}

func TestWaitFile(t *testing.T) {
	addr, got := rawServer(t, "ok")
	file := filepath.Join(t.TempDir(), "go")
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"-mode", "raw", "-addr", addr, "-wait-file", file, "-write", "hello"}, pw, io.Discard)
		pw.Close()
	}()
	br := bufio.NewReader(pr)
	line, err := br.ReadString('\n')
	if err != nil || line != "{\"connected\":true}\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	select {
	case <-done:
		t.Fatal("client did not wait for the file")
	case <-time.After(100 * time.Millisecond):
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(br)
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	var out output
	if err := json.Unmarshal(rest, &out); err != nil {
		t.Fatalf("decode %q: %v", rest, err)
	}
	if out.Response != "ok" || out.WaitFileTimeout || <-got != "hello" {
		t.Errorf("got %+v", out)
	}

	// With -keepalive-wait as the bound, a missing file times out.
	addr, _ = rawServer(t, "ok")
	out, lines := runClient(t, "-mode", "raw", "-addr", addr, "-wait-file", file+".never", "-keepalive-wait", "50ms", "-write", "x")
	if !out.WaitFileTimeout || len(lines) != 2 || out.Response != "ok" {
		t.Errorf("got %+v, lines %q", out, lines)
	}
}
