package eventreader

import (
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
)

type capture struct{ evs []events.Event }

func (c *capture) Emit(ev *events.Event) { c.evs = append(c.evs, *ev) }

func TestFolderFoldsRepeats(t *testing.T) {
	var c capture
	clock := time.Unix(1000, 0)
	f := NewFolder(&c, 10*time.Second)
	f.now = func() time.Time { return clock }
	ev := func(path string, pid uint32) *events.Event {
		return &events.Event{Kind: bpf.KindRequest, Action: bpf.ActionDeny, Reason: bpf.ReasonIMDSv1NoToken,
			CgroupID: 7, Comm: "curl", Path: path, PID: pid}
	}
	for i := range 5 {
		f.Emit(ev("/a", uint32(100+i))) // new pids: still the same workload
	}
	f.Emit(ev("/b", 200))
	if len(c.evs) != 2 || c.evs[0].Path != "/a" || c.evs[0].Count != 1 || c.evs[1].Path != "/b" {
		t.Fatalf("first of each at once: %+v", c.evs)
	}
	f.Flush(false) // window still open
	if len(c.evs) != 2 {
		t.Fatalf("flushed early: %+v", c.evs)
	}
	clock = clock.Add(11 * time.Second)
	f.Flush(false)
	if len(c.evs) != 3 || c.evs[2].Path != "/a" || c.evs[2].Count != 4 || c.evs[2].PID != 104 {
		t.Fatalf("after the window: %+v", c.evs)
	}
	// a new window starts with a fresh first event
	f.Emit(ev("/a", 300))
	if len(c.evs) != 4 || c.evs[3].Count != 1 {
		t.Fatalf("new window: %+v", c.evs)
	}
	f.Emit(ev("/a", 301))
	f.Flush(true)
	if len(c.evs) != 5 || c.evs[4].Count != 1 {
		t.Fatalf("flush at exit: %+v", c.evs)
	}
}

func TestFolderOff(t *testing.T) {
	var c capture
	f := NewFolder(&c, 0)
	for range 3 {
		f.Emit(&events.Event{Path: "/a"})
	}
	if len(c.evs) != 3 {
		t.Fatalf("window 0 must pass everything: %d", len(c.evs))
	}
}

// Events that differ in what a SIEM rule selects on are not repeats: a
// token-less credential read among token reads stays an event of its own
// (in audit mode both are allowed, with the same reason).
func TestFolderKeepsATokenlessReadApart(t *testing.T) {
	var c capture
	f := NewFolder(&c, 10*time.Second)
	read := func(token bool) *events.Event {
		return &events.Event{Kind: bpf.KindRequest, Action: bpf.ActionAudit, Reason: bpf.ReasonIMDSv1NoToken, CgroupID: 7, Comm: "python3",
			Method: "GET", Path: "/latest/meta-data/iam/security-credentials/role", CredentialAccess: true, HasToken: token}
	}
	f.Emit(read(true))
	f.Emit(read(false))
	f.Emit(read(true))
	f.Flush(true)
	var tokenless, withToken uint64
	for _, ev := range c.evs {
		if ev.HasToken {
			withToken += ev.Count
		} else {
			tokenless += ev.Count
		}
	}
	if tokenless != 1 || withToken != 2 {
		t.Fatalf("reported %d token-less and %d token reads (%+v), want 1 and 2", tokenless, withToken, c.evs)
	}
}
