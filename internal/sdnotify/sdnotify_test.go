package sdnotify

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listen plays systemd: a unixgram socket at name (a path or "@abstract").
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listening on %s: %v", name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// receive returns the next datagram, exactly as sent.
func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _, err := conn.ReadFromUnix(buf)
	if err != nil {
		t.Fatalf("reading a notification: %v", err)
	}
	return string(buf[:n])
}

func abstractName(t *testing.T) string {
	t.Helper()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "@imdsguard-sdnotify-test-" + hex.EncodeToString(b[:])
}

func monotonicUsec(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}

func TestDatagrams(t *testing.T) {
	for _, tc := range []struct {
		name   string
		socket func(t *testing.T) string
	}{
		{"path", func(t *testing.T) string { return filepath.Join(t.TempDir(), "notify") }},
		{"abstract", abstractName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := tc.socket(t)
			conn := listen(t, name)
			t.Setenv(EnvSocket, name)
			n := FromEnv()
			if n == nil {
				t.Fatalf("FromEnv with %s=%s returned nil", EnvSocket, name)
			}
			if v, ok := os.LookupEnv(EnvSocket); ok {
				t.Errorf("FromEnv left %s=%q in the environment; children would inherit it", EnvSocket, v)
			}

			if err := n.Ready("enforcing; policy sha256:ab12"); err != nil {
				t.Fatalf("Ready: %v", err)
			}
			if got, want := receive(t, conn), "READY=1\nSTATUS=enforcing; policy sha256:ab12\n"; got != want {
				t.Errorf("Ready sent %q, want %q", got, want)
			}
			if err := n.Ready(""); err != nil {
				t.Fatalf("Ready: %v", err)
			}
			if got, want := receive(t, conn), "READY=1\n"; got != want {
				t.Errorf("Ready(\"\") sent %q, want %q", got, want)
			}

			before := monotonicUsec(t)
			if err := n.Reloading(); err != nil {
				t.Fatalf("Reloading: %v", err)
			}
			after := monotonicUsec(t)
			got := receive(t, conn)
			usec, ok := strings.CutPrefix(got, "RELOADING=1\nMONOTONIC_USEC=")
			usec, nl := strings.CutSuffix(usec, "\n")
			if !ok || !nl {
				t.Fatalf("Reloading sent %q, want \"RELOADING=1\\nMONOTONIC_USEC=<µs>\\n\"", got)
			}
			v, err := strconv.ParseUint(usec, 10, 64)
			if err != nil || v < before || v > after {
				t.Errorf("Reloading sent MONOTONIC_USEC=%s, want CLOCK_MONOTONIC in µs between %d and %d", usec, before, after)
			}

			if err := n.Status("reload refused: policy.yaml:3: mode: bad\nsecond line"); err != nil {
				t.Fatalf("Status: %v", err)
			}
			if got, want := receive(t, conn), "STATUS=reload refused: policy.yaml:3: mode: bad second line\n"; got != want {
				t.Errorf("Status sent %q, want %q (one line)", got, want)
			}
			if err := n.Stopping(); err != nil {
				t.Fatalf("Stopping: %v", err)
			}
			if got, want := receive(t, conn), "STOPPING=1\n"; got != want {
				t.Errorf("Stopping sent %q, want %q", got, want)
			}
		})
	}
}

// Without NOTIFY_SOCKET the daemon calls the same methods and nothing
// happens.
func TestNoSocketIsNoOp(t *testing.T) {
	for _, set := range []bool{false, true} {
		if set {
			t.Setenv(EnvSocket, "")
		} else {
			t.Setenv(EnvSocket, "x") // restored after the test
			os.Unsetenv(EnvSocket)
		}
		n := FromEnv()
		if n != nil {
			t.Fatalf("FromEnv with %s unset or empty: %+v, want nil", EnvSocket, n)
		}
		for name, err := range map[string]error{
			"Ready":     n.Ready("up"),
			"Reloading": n.Reloading(),
			"Stopping":  n.Stopping(),
			"Status":    n.Status("x"),
			"Notify":    n.Notify("A=1"),
		} {
			if err != nil {
				t.Errorf("%s on a nil Notifier: %v", name, err)
			}
		}
	}
}

func TestErrors(t *testing.T) {
	t.Run("missing socket", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "gone")
		err := New(path).Ready("")
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
			t.Fatalf("Ready to a missing socket: %v, want an error naming %s that wraps ENOENT", err, path)
		}
	})
	t.Run("bad address", func(t *testing.T) {
		t.Setenv(EnvSocket, "relative/notify")
		n := FromEnv()
		err := n.Ready("")
		if err == nil || !strings.Contains(err.Error(), `"relative/notify"`) {
			t.Fatalf("Ready with a relative NOTIFY_SOCKET: %v, want an error naming it", err)
		}
		if _, ok := os.LookupEnv(EnvSocket); ok {
			t.Errorf("FromEnv left an unusable %s in the environment", EnvSocket)
		}
	})
	t.Run("bad assignment", func(t *testing.T) {
		conn := listen(t, abstractName(t))
		n := New(conn.LocalAddr().String())
		for _, a := range []string{"READY=1\nSTATUS=x", "READY"} {
			if err := n.Notify(a); err == nil {
				t.Errorf("Notify(%q): no error, want one (not one KEY=VALUE)", a)
			}
		}
	})
}
