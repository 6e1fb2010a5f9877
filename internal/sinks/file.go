package sinks

import (
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// fileMode keeps security events away from other local users: the group
// (e.g. adm) may read them, nobody else. The umask can only tighten it.
const fileMode = 0o640

// errorLogInterval bounds how often a failing sink logs, so a full disk or a
// dead collector cannot flood the daemon's own log.
const errorLogInterval = 10 * time.Second

// File appends JSON lines to a file. Reopen reopens the path, for logrotate
// (the daemon calls it on SIGHUP).
type File struct {
	path string
	log  *zap.Logger

	mu  sync.Mutex
	f   *os.File
	buf []byte
	// partial is set when a write stopped mid-line (e.g. ENOSPC): the next
	// record then starts with a newline so it is not glued to the fragment.
	partial   bool
	lastErrAt time.Time
	closed    bool
}

// NewFile opens path for appending, creating it with mode 0640.
func NewFile(path string, log *zap.Logger) (*File, error) {
	if log == nil {
		log = zap.NewNop()
	}
	f, err := openAppend(path)
	if err != nil {
		return nil, fmt.Errorf("open event file: %w", err)
	}
	return &File{path: path, log: log, f: f}, nil
}

// openAppend opens path with O_APPEND: every write lands at the current end
// even if logrotate truncated the file (copytruncate), and one write of a
// whole line is not interleaved with other appenders on a local filesystem.
func openAppend(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, fileMode)
}

// Send appends r.JSON and a newline with a single write. It writes to the
// page cache without fsync, so it waits only as long as the local filesystem
// does; a queue here would just move the loss from the kernel's event ring
// to ours.
func (s *File) Send(r Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.buf = s.buf[:0]
	if s.partial {
		s.buf = append(s.buf, '\n')
	}
	s.buf = appendJSONLine(s.buf, r.JSON, false)
	n, err := s.f.Write(s.buf)
	if err != nil {
		// A short write leaves a fragment; nothing written leaves the
		// previous state (including a pending separator) as it was.
		if n > 0 {
			s.partial = true
		}
		s.logError(err)
		return
	}
	s.partial = false
}

// logError logs a write failure at most once per errorLogInterval. The
// caller holds s.mu.
func (s *File) logError(err error) {
	now := time.Now()
	if now.Sub(s.lastErrAt) < errorLogInterval {
		return
	}
	s.lastErrAt = now
	s.log.Error("cannot write event file", zap.String("path", s.path), zap.Error(err))
}

// Reopen opens the path again and switches to it, for logrotate's
// rename-and-create scheme. If the path cannot be opened, writing continues
// to the old file, which keeps events on disk under the rotated name rather
// than losing them.
func (s *File) Reopen() error {
	f, err := openAppend(s.path)
	if err != nil {
		return fmt.Errorf("reopen event file: %w", err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = f.Close()
		return fmt.Errorf("reopen event file %s: %w", s.path, os.ErrClosed)
	}
	old := s.f
	s.f = f
	// The fragment stays in the old file; the new one starts clean.
	s.partial = false
	s.mu.Unlock()
	if err := old.Close(); err != nil {
		return fmt.Errorf("close rotated event file: %w", err)
	}
	return nil
}

// Close closes the file. Writes are unbuffered, so there is nothing to flush.
func (s *File) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("close event file: %w", err)
	}
	return nil
}
