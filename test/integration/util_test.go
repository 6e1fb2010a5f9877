package integration

import (
	"bufio"
	"bytes"
	"io"
	"sync"
	"syscall"
)

// safeBuffer is a bytes.Buffer a child process writes while a test reads.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const syscallSIGHUP = syscall.SIGHUP

func ioReadFull(r *bufio.Reader, b []byte) (int, error) { return io.ReadFull(r, b) }
