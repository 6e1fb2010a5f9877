// Package instance reads the EC2 instance id once at start, over IMDSv2
// only, from the host's network namespace.
package instance

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/imdsguard/imdsguard/internal/netnsexec"
)

// Fetch gets /latest/meta-data/instance-id from the IMDS at addr
// ("169.254.169.254:80") with a session token, on one connection opened
// in the network namespace at netnsPath ("" for the caller's own).
func Fetch(ctx context.Context, addr, netnsPath string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := dialIn(ctx, addr, netnsPath)
	if err != nil {
		return "", fmt.Errorf("connecting to IMDS: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// a daemon told to stop meanwhile does not wait for a silent server
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	rd := bufio.NewReader(conn)
	do := func(method, path string, hdr map[string]string) (string, error) {
		req, err := http.NewRequest(method, "http://"+addr+path, nil)
		if err != nil {
			return "", err
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		if err := req.Write(conn); err != nil {
			return "", fmt.Errorf("%s %s: %w", method, path, err)
		}
		resp, err := http.ReadResponse(rd, req)
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", method, path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", method, path, err)
		}
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%s %s: status %d", method, path, resp.StatusCode)
		}
		return strings.TrimSpace(string(body)), nil
	}
	token, err := do(http.MethodPut, "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"})
	if err != nil {
		return "", err
	}
	id, err := do(http.MethodGet, "/latest/meta-data/instance-id", map[string]string{"X-aws-ec2-metadata-token": token})
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(id, "i-") || len(id) > 32 {
		return "", fmt.Errorf("unexpected instance id %q", id)
	}
	return id, nil
}

// dialIn opens a TCP connection whose socket lives in the network namespace
// at path: the socket is created inside it, and keeps it afterwards.
func dialIn(ctx context.Context, addr, path string) (net.Conn, error) {
	var d net.Dialer
	if path == "" {
		return d.DialContext(ctx, "tcp", addr)
	}
	var conn net.Conn
	err := netnsexec.Do(path, func() error {
		var err error
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil && conn != nil {
		conn.Close()
		conn = nil
	}
	return conn, err
}
