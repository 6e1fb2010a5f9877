package events

import (
	"go.uber.org/zap/zapcore"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/cloud"
)

// Severity ranks an event for triage. Its values are OCSF's severity_id
// (1 Informational to 4 High), so that an OCSF record and the syslog
// message of the same event say the same thing; Syslog gives the RFC 5424
// severity. The mapping is the table in docs/siem.md ("Severity").
type Severity uint8

// The severities events get. OCSF's 5 Critical and 6 Fatal are not used:
// nothing imdsguard sees means the node is lost beyond what a credential
// leak already says.
const (
	SeverityInformational Severity = 1
	SeverityLow           Severity = 2
	SeverityMedium        Severity = 3
	SeverityHigh          Severity = 4
)

// OCSF returns the OCSF severity_id and its caption.
func (s Severity) OCSF() (int, string) {
	switch s {
	case SeverityInformational:
		return 1, "Informational"
	case SeverityLow:
		return 2, "Low"
	case SeverityMedium:
		return 3, "Medium"
	case SeverityHigh:
		return 4, "High"
	}
	return 0, "Unknown"
}

// Syslog returns the RFC 5424 severity: High is 3 (err), Medium 4
// (warning), Low 5 (notice), Informational 6 (info). One step per level
// keeps the order, so a collector's "*.err" (severity <= 3) selects what
// needs action now, "*.warning" adds what needs a look; emerg, alert and
// crit are left to the system's own failures.
func (s Severity) Syslog() int {
	switch s {
	case SeverityHigh:
		return 3
	case SeverityMedium:
		return 4
	case SeverityLow:
		return 5
	}
	return 6
}

// String is the lowercase name, for logs.
func (s Severity) String() string {
	switch s {
	case SeverityInformational:
		return "informational"
	case SeverityLow:
		return "low"
	case SeverityMedium:
		return "medium"
	case SeverityHigh:
		return "high"
	}
	return "unknown"
}

// SeverityOf ranks any event this package defines (*Event, *PacketEvent,
// *PolicyEvent, *TableEvent); anything else is Medium, so that an event
// type added without a rank here is still looked at rather than filed as
// routine.
//
// It ranks what happened to the node's credentials, not whether the policy
// expected it: a rule that lets a pod read the node role's credentials is
// a decision the SIEM sees in the event's rule, and suppresses by it.
func SeverityOf(ev zapcore.ObjectMarshaler) Severity {
	switch e := ev.(type) {
	case *Event:
		return e.severity()
	case *PacketEvent:
		// Routed from another network namespace without passing a socket
		// of the host: crafted by hand (a raw socket in a pod) or a VM. A
		// drop stopped it; in audit mode it reached IMDS unjudged.
		if e.Action == bpf.ActionAudit {
			return SeverityHigh
		}
		return SeverityMedium
	case *PolicyEvent:
		// A reload that did not take leaves the previous policy in force:
		// someone meant to change the guard and did not. A loaded one
		// changed a security control's configuration: worth a note.
		if e.Result == "loaded" {
			return SeverityLow
		}
		return SeverityMedium
	case *TableEvent:
		// The nftables table was deleted or flushed (by an attacker with
		// CAP_NET_ADMIN, or a firewall reload that flushes the ruleset)
		// and put back: routed packets were unguarded for up to ~2 s.
		return SeverityMedium
	}
	return SeverityMedium
}

// severity ranks a connect or request event: the higher of what it says
// about credentials and what its reason says about the workload.
func (e *Event) severity() Severity {
	return max(e.credentialSeverity(), e.reasonSeverity())
}

// credentialSeverity ranks a credential read. One that went through is
// High when credentials reached a pod-like source (outside the host's
// network namespace, or in a container's cgroup: a hostNetwork pod), when
// it carried no token where the cloud asks for one (the SSRF shape: IMDSv1
// through a tricked application), or when enforce mode would have refused it (audit).
// Otherwise it is an SDK on the host doing what it should. A refused one
// is an attack, or a legacy client, that was stopped: nothing left the
// node, but someone should look.
func (e *Event) credentialSeverity() Severity {
	if !e.CredentialAccess {
		return SeverityInformational
	}
	switch e.Action {
	case bpf.ActionDeny:
		return SeverityMedium
	case bpf.ActionAudit:
		return SeverityHigh
	}
	if e.podLike() || (!e.HasToken && proofExpected(e.Cloud)) {
		return SeverityHigh
	}
	return SeverityInformational
}

// proofExpected says whether the cloud's metadata service asks clients for
// a proof (a token, a Metadata-Flavor header): where it asks for none
// (OpenStack, generic), every request lacks one and that says nothing. An
// event that names no cloud, or one unknown here, is taken to expect one,
// as AWS does.
func proofExpected(name string) bool {
	p, ok := cloud.Lookup(name)
	return !ok || p.HasProof()
}

// podLike says whether the event's process is in a pod or container:
// outside the host's network namespace, or in a container's cgroup.
func (e *Event) podLike() bool {
	return !e.HostNetns || e.ContainerID != "" || e.PodUID != ""
}

// reasonSeverity ranks a refusal (or, in audit mode, what would have been
// one) by its reason.
func (e *Event) reasonSeverity() Severity {
	if e.Action == bpf.ActionAllow {
		return SeverityInformational
	}
	switch e.Reason {
	case bpf.ReasonUnjudgedWrite, bpf.ReasonUrgentData, bpf.ReasonRawPacket, bpf.ReasonEgressBypass, bpf.ReasonParseError:
		// Bytes the judge could not read: no SDK sends them, a client
		// trying to get around the judge does. Refused, it was stopped;
		// audited, they reached IMDS, and they may have held a
		// token-less credential read.
		if e.Action == bpf.ActionAudit {
			return SeverityHigh
		}
		return SeverityMedium
	case bpf.ReasonForwardedRequest, bpf.ReasonConnectionLimit:
		// A proxy relaying to IMDS (SSRF through it), or a workload
		// holding its share of IMDS connections (no client needs more
		// than one or two): hostile shapes, whatever was asked for.
		return SeverityMedium
	}
	// A pod's SDK probing IMDS, a token-less request for something other
	// than credentials, a deny rule, a connection from before start, a
	// TTL over the cap, MPTCP: routine refusals.
	return SeverityLow
}
