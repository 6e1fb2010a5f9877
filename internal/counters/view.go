package counters

import "github.com/imdsguard/imdsguard/bpf"

// View renders the counters for people and scripts (`imdsguard status`,
// its --json): by name, so a reader needs no slot layout.
type View struct {
	Verdicts         map[string]uint64 `json:"verdicts"`
	CredentialAccess map[string]uint64 `json:"credential_access"`
	EventsLost       uint64            `json:"events_lost"`
	Unguarded        uint64            `json:"unguarded_connections"`
	Adopted          uint64            `json:"adopted_connections"`
}

// View renders the non-zero counters by name ("request_deny_imdsv1_no_token").
func (c Totals) View() *View {
	v := &View{Verdicts: map[string]uint64{}, CredentialAccess: map[string]uint64{},
		EventsLost: c.EventsLost(), Unguarded: c.Unguarded(), Adopted: c.Adopted()}
	for _, vd := range c.Verdicts() {
		v.Verdicts[vd.Name()] = vd.Count
	}
	for a := bpf.ActionAllow; a <= bpf.ActionAudit; a++ {
		if n := c.CredentialAccess(a); n > 0 {
			v.CredentialAccess[a.String()] = n
		}
	}
	return v
}
