package counters

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/imdsguard/imdsguard/bpf"
)

// slots of a host with a few verdicts and every bookkeeping counter set.
func sample() Totals {
	return From(map[uint32]uint64{
		bpf.CounterSlot(bpf.KindRequest, bpf.ActionDeny, bpf.ReasonIMDSv1NoToken): 3,
		bpf.CounterSlot(bpf.KindRequest, bpf.ActionAllow, bpf.ReasonNone):         10,
		bpf.CounterSlot(bpf.KindConnect, bpf.ActionDeny, bpf.ReasonNonHostNetns):  2,
		bpf.CounterSlot(bpf.KindConnect, bpf.ActionAudit, bpf.ReasonPolicyRule):   1,
		bpf.CounterEventsLost:                           5,
		bpf.CounterUnguarded:                            6,
		bpf.CounterAdopted:                              7,
		bpf.CounterCredential + uint32(bpf.ActionAllow): 8,
		bpf.CounterCredential + uint32(bpf.ActionDeny):  9,
	})
}

// From puts each value where Read would sum it, so every accessor reads
// back its own slot and nothing else.
func TestFromFillsTheSlotsTheAccessorsRead(t *testing.T) {
	c := sample()
	for _, tc := range []struct {
		name      string
		got, want uint64
	}{
		{"request deny imdsv1", c.Get(bpf.KindRequest, bpf.ActionDeny, bpf.ReasonIMDSv1NoToken), 3},
		{"request allow", c.Get(bpf.KindRequest, bpf.ActionAllow, bpf.ReasonNone), 10},
		{"connect deny netns", c.Get(bpf.KindConnect, bpf.ActionDeny, bpf.ReasonNonHostNetns), 2},
		{"unset verdict", c.Get(bpf.KindConnect, bpf.ActionDeny, bpf.ReasonIMDSv1NoToken), 0},
		{"events lost", c.EventsLost(), 5},
		{"unguarded", c.Unguarded(), 6},
		{"adopted", c.Adopted(), 7},
		{"credential allow", c.CredentialAccess(bpf.ActionAllow), 8},
		{"credential deny", c.CredentialAccess(bpf.ActionDeny), 9},
		{"credential audit", c.CredentialAccess(bpf.ActionAudit), 0},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	if (Totals{}).EventsLost() != 0 || len((Totals{}).Verdicts()) != 0 {
		t.Error("zero Totals are not all zero")
	}
}

// Verdicts lists only the non-zero verdict slots, connect before request,
// then by action and reason, and never the bookkeeping slots.
func TestVerdictsListsTheNonZeroVerdictsInOrder(t *testing.T) {
	want := []Verdict{
		{bpf.KindConnect, bpf.ActionDeny, bpf.ReasonNonHostNetns, 2},
		{bpf.KindConnect, bpf.ActionAudit, bpf.ReasonPolicyRule, 1},
		{bpf.KindRequest, bpf.ActionAllow, bpf.ReasonNone, 10},
		{bpf.KindRequest, bpf.ActionDeny, bpf.ReasonIMDSv1NoToken, 3},
	}
	if got := sample().Verdicts(); !reflect.DeepEqual(got, want) {
		t.Errorf("Verdicts:\n got %+v\nwant %+v", got, want)
	}
}

func TestVerdictNameLeavesOutAMissingReason(t *testing.T) {
	for v, want := range map[Verdict]string{
		{Kind: bpf.KindRequest, Action: bpf.ActionDeny, Reason: bpf.ReasonIMDSv1NoToken}: "request_deny_imdsv1_no_token",
		{Kind: bpf.KindConnect, Action: bpf.ActionAudit, Reason: bpf.ReasonPolicyRule}:   "connect_audit_policy_rule",
		{Kind: bpf.KindRequest, Action: bpf.ActionAllow}:                                 "request_allow",
	} {
		if got := v.Name(); got != want {
			t.Errorf("%+v: name %q, want %q", v, got, want)
		}
	}
}

// The view is what `imdsguard status --json` prints: verdicts and
// credential access by name, non-zero only, under stable keys.
func TestViewNamesTheNonZeroCounters(t *testing.T) {
	v := sample().View()
	want := &View{
		Verdicts: map[string]uint64{
			"connect_deny_non_host_netns":  2,
			"connect_audit_policy_rule":    1,
			"request_allow":                10,
			"request_deny_imdsv1_no_token": 3,
		},
		CredentialAccess: map[string]uint64{"allow": 8, "deny": 9},
		EventsLost:       5, Unguarded: 6, Adopted: 7,
	}
	if !reflect.DeepEqual(v, want) {
		t.Errorf("View:\n got %+v\nwant %+v", v, want)
	}
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"verdicts", "credential_access", "events_lost", "unguarded_connections", "adopted_connections"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("status JSON lacks %q: %s", k, data)
		}
	}
	if empty := (Totals{}).View(); empty.Verdicts == nil || empty.CredentialAccess == nil {
		t.Errorf("the view of no counters has nil maps (JSON null, not {}): %+v", empty)
	}
}
