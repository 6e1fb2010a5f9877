package loader

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// NetnsCookie returns the cookie of a network namespace: the one this process
// runs in when path is empty, else the one bind-mounted or linked at path
// (e.g. /var/run/netns/NAME or /proc/1/ns/net). The programs compare socket
// cookies against it to tell the host from pods.
func NetnsCookie(path string) (uint64, error) {
	if path == "" {
		return socketNetnsCookie()
	}
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer unix.Close(target)

	var cookie uint64
	var inErr error
	done := make(chan struct{})
	// setns changes only the calling thread; do it on a locked thread that is
	// thrown away if it cannot be brought back.
	go func() {
		defer close(done)
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			inErr = fmt.Errorf("opening own network namespace: %w", err)
			runtime.UnlockOSThread()
			return
		}
		defer unix.Close(self)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			inErr = fmt.Errorf("entering network namespace %s: %w", path, err)
			runtime.UnlockOSThread()
			return
		}
		cookie, inErr = socketNetnsCookie()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			return // leave the thread locked: it dies with the goroutine
		}
		runtime.UnlockOSThread()
	}()
	<-done
	if inErr != nil {
		return 0, inErr
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
