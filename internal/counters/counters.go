// Package counters reads the kernel's per-verdict counters (the counters
// map every program adds to) and renders them by name.
//
// It is separate from the loader so that what only reads counters (the
// metrics, `imdsguard status`, the daemon's lost-event watch, benchmarks)
// needs neither the loaded programs nor the code that attaches them, and
// can be tested with counters made up in Go.
package counters

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/imdsguard/imdsguard/bpf"
)

// Totals are the kernel's exact totals, summed over CPUs. They stay exact
// when the ring buffer overflows and events are lost.
type Totals struct {
	slots [bpf.CounterSlots]uint64
}

// Read sums the per-CPU counters map (the guard's own, or one opened from
// its pin).
func Read(m *ebpf.Map) (Totals, error) {
	var c Totals
	var perCPU []uint64
	for slot := range uint32(bpf.CounterSlots) {
		if err := m.Lookup(slot, &perCPU); err != nil {
			return Totals{}, fmt.Errorf("reading counter %d: %w", slot, err)
		}
		for _, v := range perCPU {
			c.slots[slot] += v
		}
	}
	return c, nil
}

// From makes Totals of slot values (bpf.CounterSlot and the bookkeeping
// slots), as Read sums them from the kernel: for what reads counters,
// tested without a kernel.
func From(slots map[uint32]uint64) Totals {
	var c Totals
	for k, v := range slots {
		c.slots[k] = v
	}
	return c
}

// Get returns the count for one verdict.
func (c Totals) Get(k bpf.Kind, a bpf.Action, r bpf.Reason) uint64 {
	return c.slots[bpf.CounterSlot(k, a, r)]
}

// EventsLost is how many events the ring buffer could not take.
func (c Totals) EventsLost() uint64 { return c.slots[bpf.CounterEventsLost] }

// Unguarded is how many IMDS sockets could not be put under the request
// judge (the socket map was full).
func (c Totals) Unguarded() uint64 { return c.slots[bpf.CounterUnguarded] }

// Adopted is how many connections opened before the guard were adopted.
func (c Totals) Adopted() uint64 { return c.slots[bpf.CounterAdopted] }

// CredentialAccess is how many credential-path requests got action a.
func (c Totals) CredentialAccess(a bpf.Action) uint64 {
	return c.slots[bpf.CounterCredential+uint32(a)]
}

// Verdict is one non-zero counter.
type Verdict struct {
	Kind   bpf.Kind
	Action bpf.Action
	Reason bpf.Reason
	Count  uint64
}

// Name is the counter's name in logs and status: kind_action, plus _reason
// when there is one ("request_deny_imdsv1_no_token").
func (v Verdict) Name() string {
	name := v.Kind.String() + "_" + v.Action.String()
	if v.Reason != 0 {
		name += "_" + v.Reason.String()
	}
	return name
}

// Verdicts lists the non-zero verdict counters.
func (c Totals) Verdicts() []Verdict {
	var out []Verdict
	for k := bpf.KindConnect; k <= bpf.KindRequest; k++ {
		for a := bpf.ActionAllow; a <= bpf.ActionAudit; a++ {
			for r := range bpf.Reason(bpf.ReasonMax) {
				if n := c.Get(k, a, r); n > 0 {
					out = append(out, Verdict{k, a, r, n})
				}
			}
		}
	}
	return out
}
