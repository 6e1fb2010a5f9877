package loader

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/internal/netnsexec"
)

// NetnsCookie returns the cookie of a network namespace: the one this process
// runs in when path is empty, else the one bind-mounted or linked at path
// (e.g. /var/run/netns/NAME or /proc/1/ns/net). The programs compare socket
// cookies against it to tell the host from pods.
func NetnsCookie(path string) (uint64, error) {
	if path == "" {
		return socketNetnsCookie()
	}
	var cookie uint64
	err := netnsexec.Do(path, func() error {
		var err error
		cookie, err = socketNetnsCookie()
		return err
	})
	if err != nil {
		return 0, err
	}
	return cookie, nil
}

func socketNetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("creating socket: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		if errors.Is(err, unix.ENOPROTOOPT) {
			return 0, fmt.Errorf("kernel %s cannot report network namespace cookies (SO_NETNS_COOKIE, Linux 5.14+): %w", kernelRelease(), err)
		}
		return 0, fmt.Errorf("reading network namespace cookie: %w", err)
	}
	return c, nil
}
