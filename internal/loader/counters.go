package loader

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/imdsguard/imdsguard/bpf"
)

// Counters are the kernel's exact totals, summed over CPUs. They stay exact
// when the ring buffer overflows and events are lost.
type Counters struct {
	slots [bpf.CounterSlots]uint64
}

// ReadCounters sums the per-CPU counters map.
func ReadCounters(m *ebpf.Map) (Counters, error) {
	var c Counters
	var perCPU []uint64
	for slot := range uint32(bpf.CounterSlots) {
		if err := m.Lookup(slot, &perCPU); err != nil {
			return Counters{}, fmt.Errorf("reading counter %d: %w", slot, err)
		}
		for _, v := range perCPU {
			c.slots[slot] += v
		}
	}
	return c, nil
}

// CountersFrom makes Counters of slot values (bpf.CounterSlot and the
// bookkeeping slots), as ReadCounters sums them from the kernel: for what
// reads counters, tested without a kernel.
func CountersFrom(slots map[uint32]uint64) Counters {
	var c Counters
	for k, v := range slots {
		c.slots[k] = v
	}
	return c
}

// Get returns the count for one verdict.
func (c Counters) Get(k bpf.Kind, a bpf.Action, r bpf.Reason) uint64 {
	return c.slots[bpf.CounterSlot(k, a, r)]
}

// EventsLost is how many events the ring buffer could not take.
func (c Counters) EventsLost() uint64 { return c.slots[bpf.CounterEventsLost] }

// Unguarded is how many IMDS sockets could not be put under the request
// judge (the socket map was full).
func (c Counters) Unguarded() uint64 { return c.slots[bpf.CounterUnguarded] }

// Adopted is how many connections opened before the guard were adopted.
func (c Counters) Adopted() uint64 { return c.slots[bpf.CounterAdopted] }

// CredentialAccess is how many credential-path requests got action a.
func (c Counters) CredentialAccess(a bpf.Action) uint64 {
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
func (c Counters) Verdicts() []Verdict {
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
