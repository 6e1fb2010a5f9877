// Package instance reads the EC2 instance id once at start, over IMDSv2
// only, from the host's network namespace.
package instance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
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
// at path: the socket is created on a thread that entered the namespace,
// and keeps it afterwards.
func dialIn(ctx context.Context, addr, path string) (net.Conn, error) {
	var d net.Dialer
	if path == "" {
		return d.DialContext(ctx, "tcp", addr)
	}
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	defer unix.Close(target)
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer unix.Close(self)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("entering %s: %w", path, err)}
			return
		}
		c, derr := d.DialContext(ctx, "tcp", addr)
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			// the thread stays locked and dies with this goroutine
			ch <- result{c, errors.Join(derr, err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{c, derr}
	}()
	r := <-ch
	return r.c, r.err
}
