// Package sdnotify tells systemd about the daemon's state over the
// sd_notify(3) protocol: one datagram of newline-separated KEY=VALUE
// assignments, sent to the unix socket named in $NOTIFY_SOCKET.
//
// It is written by hand because the protocol is a few lines and the daemon
// needs nothing else from libsystemd. The unit (deploy/systemd) is
// Type=notify so that units ordered after imdsguard (containerd, kubelet)
// start only once READY=1 says IMDS is guarded.
//
// Every method is safe on a nil *Notifier and then does nothing, so the
// daemon calls them unconditionally whether or not systemd started it.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// EnvSocket is the variable systemd sets to the notification socket.
const EnvSocket = "NOTIFY_SOCKET"

// sendTimeout bounds one send: systemd reads its socket promptly, but the
// daemon must never stall enforcement on a wedged service manager.
const sendTimeout = time.Second

// Notifier sends state changes to the service manager's socket.
type Notifier struct {
	addr *net.UnixAddr
	err  error // NOTIFY_SOCKET was set but unusable: reported by every send
}

// FromEnv returns a Notifier for $NOTIFY_SOCKET, or nil when it is unset or
// empty (not started by systemd, or a unit type that does not listen).
// It unsets the variable so that processes the daemon starts do not
// inherit it and talk to systemd on the daemon's behalf.
func FromEnv() *Notifier {
	name, ok := os.LookupEnv(EnvSocket)
	if !ok {
		return nil
	}
	os.Unsetenv(EnvSocket) //nolint:errcheck // cannot fail for a valid name
	if name == "" {
		return nil
	}
	return New(name)
}

// New returns a Notifier for the socket name: an absolute path, or '@'
// followed by a name in the abstract namespace (how systemd passes it). An
// unusable name is not an error here: every send reports it, so the daemon
// logs it where it logs other notification failures.
func New(name string) *Notifier {
	if !strings.HasPrefix(name, "/") && !strings.HasPrefix(name, "@") {
		// systemd ≥254 also sends vsock: addresses (for VMs); a host
		// service does not get them.
		return &Notifier{err: fmt.Errorf("%s=%q: not an absolute path or an abstract socket name (@NAME)", EnvSocket, name)}
	}
	if len(name) < 2 {
		return &Notifier{err: fmt.Errorf("%s=%q: empty socket name", EnvSocket, name)}
	}
	// Go's net package maps a leading '@' to the abstract namespace
	// (a leading NUL byte in sun_path), as sd_notify does.
	return &Notifier{addr: &net.UnixAddr{Name: name, Net: "unixgram"}}
}

// Ready says the service is up: for imdsguard, that its programs are
// attached and the policy is in force. status, if not empty, is shown by
// `systemctl status`.
func (n *Notifier) Ready(status string) error {
	lines := []string{"READY=1"}
	if status != "" {
		lines = append(lines, "STATUS="+oneLine(status))
	}
	return n.Notify(lines...)
}

// Reloading says a reload started; send Ready when it is done (whether the
// new policy was taken or refused: the service is up either way).
// MONOTONIC_USEC carries CLOCK_MONOTONIC, which systemd ≥253 requires with
// RELOADING=1 for Type=notify-reload and older versions ignore.
func (n *Notifier) Reloading() error {
	if n == nil {
		return nil
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return fmt.Errorf("sd_notify: reading CLOCK_MONOTONIC: %w", err)
	}
	usec := uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
	return n.Notify("RELOADING=1", "MONOTONIC_USEC="+strconv.FormatUint(usec, 10))
}

// Stopping says the service is shutting down.
func (n *Notifier) Stopping() error { return n.Notify("STOPPING=1") }

// Status sets the free-form status line `systemctl status` shows.
func (n *Notifier) Status(status string) error { return n.Notify("STATUS=" + oneLine(status)) }

// Notify sends the assignments (KEY=VALUE, without newlines) in one
// datagram.
func (n *Notifier) Notify(assignments ...string) error {
	if n == nil || len(assignments) == 0 {
		return nil
	}
	if n.err != nil {
		return fmt.Errorf("sd_notify: %w", n.err)
	}
	for _, a := range assignments {
		if strings.ContainsRune(a, '\n') || !strings.Contains(a, "=") {
			return fmt.Errorf("sd_notify: %q is not one KEY=VALUE assignment", a)
		}
	}
	msg := strings.Join(assignments, "\n") + "\n"
	// A fresh socket per message, as sd_notify(3) does: nothing to keep
	// open, and a restarted service manager is found again by name.
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: connecting to %s: %w", n.addr.Name, err)
	}
	defer conn.Close()
	if err := conn.SetWriteDeadline(time.Now().Add(sendTimeout)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	written, err := conn.Write([]byte(msg))
	if err != nil {
		return fmt.Errorf("sd_notify: sending to %s: %w", n.addr.Name, err)
	}
	if written != len(msg) { // a datagram goes whole or not at all; never reached
		return fmt.Errorf("sd_notify: sending to %s: short write (%d of %d bytes)", n.addr.Name, written, len(msg))
	}
	return nil
}

// oneLine keeps a status on one line: a newline would start a new
// assignment.
func oneLine(s string) string {
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
}
