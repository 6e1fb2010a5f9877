package eventreader

import (
	"net/netip"
	"sync"
	"time"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
)

// foldKey is what makes two events repeats of each other: the same
// workload (cgroup, network namespace, comm, uid) doing the same thing
// (kind, verdict and the rule that gave it, target, and whether it carried
// a token and read credentials). A field a SIEM rule may select on is in
// the key: a token-less credential read folded into token reads would
// vanish from a search for token-less reads.
type foldKey struct {
	kind       bpf.Kind
	action     bpf.Action
	reason     bpf.Reason
	rule       uint16
	gen        uint8
	cgroupID   uint64
	netns      uint64
	comm       string
	uid        uint32
	endpoint   netip.AddrPort
	method     string
	path       string
	hasToken   bool
	credential bool
}

type fold struct {
	opened  time.Time
	repeats uint64
	last    events.Event
}

// Folder passes the first event of each kind of repeat at once and folds
// the repeats that follow within the window into one event whose count
// says how many there were, sent when the window closes. A loop hammering
// IMDS yields two lines per window instead of thousands; the kernel's
// counters stay exact either way.
type Folder struct {
	next   Sink
	window time.Duration
	now    func() time.Time

	mu   sync.Mutex
	open map[foldKey]*fold
}

// NewFolder folds repeats within window (0 passes every event through).
func NewFolder(next Sink, window time.Duration) *Folder {
	return &Folder{next: next, window: window, now: time.Now, open: map[foldKey]*fold{}}
}

// Emit implements Sink.
func (f *Folder) Emit(ev *events.Event) {
	if f.window <= 0 {
		f.next.Emit(ev)
		return
	}
	key := foldKey{ev.Kind, ev.Action, ev.Reason, ev.RuleIndex, ev.Gen, ev.CgroupID, ev.NetnsCookie, ev.Comm, ev.UID,
		ev.Endpoint, ev.Method, ev.Path, ev.HasToken, ev.CredentialAccess}
	now := f.now()
	f.mu.Lock()
	if fd, ok := f.open[key]; ok && now.Sub(fd.opened) < f.window {
		fd.repeats++
		fd.last = *ev
		f.mu.Unlock()
		return
	}
	f.open[key] = &fold{opened: now}
	f.mu.Unlock()
	ev.Count = 1
	f.next.Emit(ev)
}

// Flush sends the folded repeats of every window that has closed, or of
// all windows when all is set (at exit).
func (f *Folder) Flush(all bool) {
	now := f.now()
	var out []events.Event
	f.mu.Lock()
	for k, fd := range f.open {
		if !all && now.Sub(fd.opened) < f.window {
			continue
		}
		if fd.repeats > 0 {
			ev := fd.last
			ev.Count = fd.repeats
			out = append(out, ev)
		}
		delete(f.open, k)
	}
	f.mu.Unlock()
	for i := range out {
		f.next.Emit(&out[i])
	}
}
