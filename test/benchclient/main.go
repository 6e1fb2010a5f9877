// Command benchclient times IMDS requests for `make bench`: n GETs with an
// IMDSv2 token header, over one keep-alive connection or a new connection
// each, and prints every round trip in nanoseconds as a JSON array.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	addr := flag.String("addr", "169.254.169.254:80", "IMDS address")
	n := flag.Int("n", 1000, "requests")
	keepAlive := flag.Bool("keepalive", true, "reuse one connection")
	interval := flag.Duration("interval", 0, "start a request every interval (0: back to back)")
	flag.Parse()
	samples, err := run(*addr, *n, *keepAlive, *interval)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchclient:", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(samples)
}

func run(addr string, n int, keepAlive bool, interval time.Duration) ([]int64, error) {
	token, err := fetchToken(addr)
	if err != nil {
		return nil, err
	}
	req := "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token: " + token + "\r\n\r\n"
	samples := make([]int64, 0, n)
	var conn net.Conn
	var rd *bufio.Reader
	next := time.Now()
	for range n {
		if interval > 0 {
			time.Sleep(time.Until(next))
			next = next.Add(interval)
		}
		start := time.Now()
		if conn == nil {
			if conn, err = net.Dial("tcp", addr); err != nil {
				return nil, err
			}
			rd = bufio.NewReader(conn)
		}
		if _, err := io.WriteString(conn, req); err != nil {
			return nil, fmt.Errorf("writing: %w", err)
		}
		resp, err := http.ReadResponse(rd, nil)
		if err != nil {
			return nil, fmt.Errorf("reading: %w", err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return nil, err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("status %d", resp.StatusCode)
		}
		if !keepAlive {
			conn.Close()
			conn = nil
		}
		samples = append(samples, time.Since(start).Nanoseconds())
	}
	if conn != nil {
		conn.Close()
	}
	return samples, nil
}

func fetchToken(addr string) (string, error) {
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
	resp, err := http.DefaultClient.Do(req)
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
