package eventreader

import (
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// maxCachedProcs bounds the process cache. Each entry holds a pidfd, so the
// bound is also the number of descriptors the cache may keep open.
const maxCachedProcs = 512

// maxCommsPerProc bounds the thread names remembered per process (threads
// of one process may name themselves apart, e.g. a JVM's worker pools).
const maxCommsPerProc = 8

// procMaxAge is how long details read from /proc are reused. It bounds how
// late the cache notices what it cannot see otherwise: an exec that keeps
// the thread's name, or a process rewriting its own argv (setproctitle).
const procMaxAge = time.Second

// procCache remembers the exe and command line of the processes events come
// from: reading them from /proc costs more than everything else an event
// needs, and a process that calls IMDS once usually calls it again (SDK
// credential refreshes, retry loops).
//
// Soundness against pid reuse rests on a pidfd per entry, opened before
// /proc is read and polled after: a pidfd refers to one process, not to a
// number, and reports that process's exit; as long as it has not exited
// its pid cannot belong to another, so /proc/PID is still that process.
// Polling it costs one system call, far less than reading the start time
// from /proc/PID/stat (which sums every thread's times) would. And an event
// the kernel stamped before the last poll that found the process alive
// needs none: the process held the pid then too. Events are read in
// batches, so a busy process costs one poll per batch.
//
// A pidfd does not see exec. An exec renames the thread to the new
// program, so an event's kernel comm that the entry has not seen makes the
// cache read /proc again; threads named apart read it once each. An exec
// that keeps the name goes unnoticed for at most procMaxAge.
//
// Reader.Run's goroutine is its only user; it is not safe for concurrent use.
type procCache struct {
	max    int
	maxAge time.Duration
	now    func() time.Time
	mono   func() uint64                          // CLOCK_MONOTONIC ns, the clock of the events' stamps
	read   func(pid uint32) (exe, cmdline string) // processInfo
	procs  map[uint32]*procEntry
}

type procEntry struct {
	pidfd        int
	exe, cmdline string
	comms        []string // kernel comms whose events these details were confirmed for
	readAt       time.Time
	aliveAt      uint64 // CLOCK_MONOTONIC ns at or before a poll that found the process alive
}

func newProcCache(max int, maxAge time.Duration) *procCache {
	return &procCache{max: max, maxAge: maxAge, now: time.Now, mono: monotonicClock(), read: processInfo, procs: map[uint32]*procEntry{}}
}

// monotonicClock reads CLOCK_MONOTONIC through the runtime's clock (a vDSO
// call, not the system call unix.ClockGettime makes): the clock's value
// once, plus the monotonic time since, which Go's runtime takes from
// CLOCK_MONOTONIC too. Read in that order it never runs ahead of the
// clock, so an event is never taken for older than it is. Without the
// clock it says 0: every event is then newer, and polls.
func monotonicClock() func() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return func() uint64 { return 0 }
	}
	base, start := uint64(ts.Nano()), time.Now()
	return func() uint64 { return base + uint64(time.Since(start)) }
}

// lookup returns what processInfo(pid) returns for an event the kernel
// stamped at ts from a thread named comm: from the cache when the process
// is the one that was read and comm a name it was seen under.
func (c *procCache) lookup(pid uint32, comm string, ts uint64) (exe, cmdline string) {
	e := c.procs[pid]
	if e == nil {
		return c.fill(pid, comm)
	}
	if ts > e.aliveAt {
		at := c.mono()
		if !alive(e.pidfd) {
			c.drop(pid, e)
			return c.fill(pid, comm)
		}
		e.aliveAt = at
	}
	if slices.Contains(e.comms, comm) && c.now().Sub(e.readAt) < c.maxAge {
		return e.exe, e.cmdline
	}
	return c.refresh(pid, e, comm)
}

// fill reads a process not in the cache and keeps what it read if the
// process outlived the reading. Without a pidfd (the process is gone, or
// descriptors ran out) it reads /proc as the reader always did, uncached.
func (c *procCache) fill(pid uint32, comm string) (exe, cmdline string) {
	fd, err := unix.PidfdOpen(int(pid), 0)
	if err != nil {
		return c.read(pid)
	}
	exe, cmdline = c.read(pid)
	at := c.mono()
	if !alive(fd) || !complete(exe, cmdline) {
		// Exited meanwhile (the pid may be another's by now), or caught
		// halfway through an exec.
		unix.Close(fd)
		return exe, cmdline
	}
	c.makeRoom()
	c.procs[pid] = &procEntry{pidfd: fd, exe: exe, cmdline: cmdline, comms: []string{comm}, readAt: c.now(), aliveAt: at}
	return exe, cmdline
}

// refresh reads a cached live process again: its details are too old, or
// comm is a name they were not confirmed for (another thread, or an exec).
func (c *procCache) refresh(pid uint32, e *procEntry, comm string) (exe, cmdline string) {
	exe, cmdline = c.read(pid)
	at := c.mono()
	if !alive(e.pidfd) || !complete(exe, cmdline) {
		c.drop(pid, e)
		return exe, cmdline
	}
	e.aliveAt = at
	if exe != e.exe || cmdline != e.cmdline || len(e.comms) >= maxCommsPerProc {
		// A new program (or argv): the names seen before were the old one's.
		e.exe, e.cmdline, e.comms = exe, cmdline, e.comms[:0]
	}
	if !slices.Contains(e.comms, comm) {
		e.comms = append(e.comms, comm)
	}
	e.readAt = c.now()
	return exe, cmdline
}

// makeRoom keeps the cache below its bound: first by forgetting processes
// that have exited, and if all still run, one of them.
func (c *procCache) makeRoom() {
	if len(c.procs) < c.max {
		return
	}
	for pid, e := range c.procs {
		if !alive(e.pidfd) {
			c.drop(pid, e)
		}
	}
	for pid, e := range c.procs {
		if len(c.procs) < c.max {
			break
		}
		c.drop(pid, e)
	}
}

func (c *procCache) drop(pid uint32, e *procEntry) {
	unix.Close(e.pidfd)
	delete(c.procs, pid)
}

// close releases every pidfd.
func (c *procCache) close() {
	for pid, e := range c.procs {
		c.drop(pid, e)
	}
}

// complete reports whether details are worth keeping. A process halfway
// through an exec already has its new exe but no command line yet (the
// kernel maps the arguments after switching the executable), and only
// kernel threads, which do not call IMDS, have neither for good.
func complete(exe, cmdline string) bool {
	return exe != "" && cmdline != ""
}

// alive reports whether the process of a pidfd has not exited yet (a pidfd
// polls readable once it has). An error counts as exited: the caller then
// reads /proc again rather than trust the cache.
func alive(pidfd int) bool {
	fds := [1]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds[:], 0)
	return err == nil && n == 0
}
