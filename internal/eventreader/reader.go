// Package eventreader reads the kernel's event records from the ring
// buffer, enriches them (cgroup paths, containers, pods, process details),
// folds repeats, and hands them to a sink.
package eventreader

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/containerid"
	"github.com/imdsguard/imdsguard/internal/events"
)

// Sink receives enriched events. The event is the reader's to reuse once
// Emit returns: a sink copies what it keeps.
type Sink interface {
	Emit(*events.Event)
}

// Reader drains the kernel's ring buffer into a sink.
type Reader struct {
	rb         *ringbuf.Reader
	opts       ReaderOptions
	sink       Sink
	bootOffset time.Duration
	procs      *procCache
	log        *zap.Logger
	// ev is the event being handled: a field, not a local, so that passing
	// it to the sink (an interface) does not allocate it anew each time.
	ev events.Event
}

// ReaderOptions say how events are enriched. Every source is optional and
// best effort: what it cannot tell stays empty, never guessed.
type ReaderOptions struct {
	Cgroups    *CgroupResolver
	Rules      RuleNamer
	Names      func(containerID string) (PodNames, bool) // CRI
	Hostname   string
	InstanceID string
	Cloud      func() string // the cloud profile of the policy in force
}

// MaxCmdline bounds the command line copied into an event.
const MaxCmdline = 256

// RuleNamer names rule idx of policy generation gen.
type RuleNamer func(gen uint8, idx uint16) string

// NewReader reads events from the ring buffer map.
func NewReader(ring *ebpf.Map, opts ReaderOptions, sink Sink, log *zap.Logger) (*Reader, error) {
	rb, err := ringbuf.NewReader(ring)
	if err != nil {
		return nil, fmt.Errorf("opening ring buffer: %w", err)
	}
	return newReader(rb, opts, sink, log), nil
}

func newReader(rb *ringbuf.Reader, opts ReaderOptions, sink Sink, log *zap.Logger) *Reader {
	return &Reader{rb: rb, opts: opts, sink: sink, bootOffset: events.MonotonicOffset(),
		procs: newProcCache(maxCachedProcs, procMaxAge), log: log}
}

// pollInterval is how often Run reads the ring buffer. The programs submit
// events without waking the reader (a wake-up costs the writer microseconds)
// unless the buffer is a quarter full, so events reach the sinks within this
// interval. It also bounds how long Run takes to notice its stop channel.
const pollInterval = 100 * time.Millisecond

// Run delivers events until stop is closed, then delivers what is still in
// the buffer and returns.
func (r *Reader) Run(stop <-chan struct{}) {
	var raw bpf.ImdsguardEvent
	draining := false
	for {
		if !draining {
			select {
			case <-stop:
				draining = true
			default:
			}
		}
		deadline := time.Now().Add(pollInterval)
		if draining {
			deadline = time.Now()
		}
		r.rb.SetDeadline(deadline)
		rec, err := r.rb.Read()
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) || (draining && errors.Is(err, os.ErrDeadlineExceeded)) {
				return
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				r.log.Warn("reading ring buffer", zap.Error(err))
			}
			continue
		}
		r.handle(rec.RawSample, &raw)
	}
}

// handle decodes, enriches and emits one ring buffer record; raw is the
// caller's scratch space, reused from record to record.
func (r *Reader) handle(sample []byte, raw *bpf.ImdsguardEvent) {
	if err := decodeRecord(sample, raw); err != nil {
		r.log.Warn("decoding event", zap.Error(err), zap.Int("bytes", len(sample)))
		return
	}
	r.ev = events.Decode(raw, r.bootOffset)
	r.enrich(&r.ev, raw.TsNs)
	r.sink.Emit(&r.ev)
}

// PodNames are what the container runtime says of a container.
type PodNames struct {
	Pod, Namespace, Container, Image string
}

// Close releases the ring buffer; call it after Run has returned.
func (r *Reader) Close() error {
	r.procs.close()
	return r.rb.Close()
}

// enrich adds what the kernel record, stamped at ts, does not carry. Best
// effort: a process or cgroup that is already gone leaves its field empty,
// never guessed.
func (r *Reader) enrich(ev *events.Event, ts uint64) {
	if r.opts.Cgroups != nil {
		ev.Cgroup = r.opts.Cgroups.Path(ev.CgroupID)
	}
	if ev.Cgroup != "" {
		ci := containerid.Parse(strings.TrimSuffix(ev.Cgroup, " (deleted)"))
		ev.ContainerID, ev.Runtime, ev.PodUID = ci.ContainerID, ci.Runtime, ci.PodUID
	}
	if ev.ContainerID != "" && r.opts.Names != nil {
		if n, ok := r.opts.Names(ev.ContainerID); ok {
			ev.Pod, ev.Namespace, ev.Container, ev.Image = n.Pod, n.Namespace, n.Container, n.Image
		}
	}
	ev.Hostname, ev.InstanceID = r.opts.Hostname, r.opts.InstanceID
	if r.opts.Cloud != nil {
		ev.Cloud = r.opts.Cloud()
	}
	if ev.RuleIndex > 0 && r.opts.Rules != nil {
		ev.Rule = r.opts.Rules(ev.Gen, ev.RuleIndex-1)
	}
	if ev.PID != 0 {
		ev.Exe, ev.Cmdline = r.procs.lookup(ev.PID, ev.Comm, ts)
	}
}

// processInfo reads a process's executable and command line from /proc.
// The process may have exited already: then both stay empty. It reads with
// plain system calls into stack buffers: os.Open would also stat the file
// and try to register it with the poller, and only the first MaxCmdline
// bytes of the command line are kept anyway.
func processInfo(pid uint32) (exe, cmdline string) {
	dir := "/proc/" + strconv.FormatUint(uint64(pid), 10)
	exe = strings.TrimSuffix(readlink(dir+"/exe"), " (deleted)")
	var buf [MaxCmdline]byte
	n, err := readPrefix(dir+"/cmdline", buf[:])
	if err == nil {
		args := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
		cmdline = strings.Join(redactTokens(args), " ")
	}
	return exe, cmdline
}

// readlink is os.Readlink ("" on error) without its growing heap buffer:
// procfs links are at most a page less one byte long.
func readlink(path string) string {
	var buf [4096]byte
	for {
		n, err := unix.Readlink(path, buf[:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return ""
		case n == len(buf):
			// cannot happen on procfs; os.Readlink copes anyway
			s, _ := os.Readlink(path)
			return s
		}
		return string(buf[:n])
	}
}

// readPrefix reads the file at path until buf is full or the file ends.
func readPrefix(path string, buf []byte) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening %s: %w", path, err)
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return n, fmt.Errorf("reading %s: %w", path, err)
		case m == 0:
			return n, nil
		}
		n += m
	}
	return n, nil
}

// tokenHeader is how a client names the session token, as an argument
// (curl -H "X-aws-ec2-metadata-token: $TOKEN", the usual way in scripts).
const tokenHeader = "x-aws-ec2-metadata-token:"

// redactTokens replaces the value of every token header in a command line:
// the token's value is never logged, also when the client put it in its
// arguments and is still running when its event is read.
func redactTokens(args []string) []string {
	for i, a := range args {
		if at := strings.Index(strings.ToLower(a), tokenHeader); at >= 0 {
			args[i] = a[:at+len(tokenHeader)] + " <redacted>"
		}
	}
	return args
}
