package pindir

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Lock is an exclusive flock on the pin directory, held for the daemon's
// lifetime: two daemons writing the same maps would undo each other's
// policy. The kernel drops it when the holder dies, however it dies.
type Lock struct{ fd int }

func openDir(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening pin directory: %w", err)
	}
	return fd, nil
}

// TakeLock takes the lock, waiting up to wait for a previous daemon (a pod
// being replaced, a unit being restarted) to let go, or until ctx ends (the
// daemon was told to stop meanwhile). waiting, if not nil, is told once
// that the wait began and which pid (from the meta; 0 if unknown) holds it.
func TakeLock(ctx context.Context, dir string, wait time.Duration, waiting func(holder int)) (*Lock, error) {
	fd, err := openDir(dir)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	told := false
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &Lock{fd: fd}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			unix.Close(fd)
			return nil, fmt.Errorf("locking pin directory %s: %w", dir, err)
		}
		holder := 0
		if m, _ := ReadMeta(dir); m != nil {
			holder = m.PID
		}
		if time.Now().After(deadline) {
			unix.Close(fd)
			return nil, fmt.Errorf("another imdsguard (pid %d) holds %s: stop it first", holder, dir)
		}
		if !told && waiting != nil {
			waiting(holder)
			told = true
		}
		select {
		case <-ctx.Done():
			unix.Close(fd)
			return nil, fmt.Errorf("stopped while waiting for the imdsguard (pid %d) that holds %s: %w", holder, dir, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Release lets the lock go. It may be called on a nil Lock (a guard that
// pins nothing holds none) and more than once.
func (l *Lock) Release() {
	if l != nil && l.fd >= 0 {
		unix.Close(l.fd)
		l.fd = -1
	}
}

// DaemonHolds reports whether a live daemon holds the pin directory's lock.
func DaemonHolds(dir string) (bool, error) {
	fd, err := openDir(dir)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	err = unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("probing the lock on %s: %w", dir, err)
	}
	return false, nil
}
