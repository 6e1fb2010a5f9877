package events

import (
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/imdsguard/imdsguard/bpf"
)

// Event shapes for the severity table, each a change to a host process
// on AWS (the most common source).
func hostReq(a bpf.Action, r bpf.Reason, credential, token bool) *Event {
	return &Event{Kind: bpf.KindRequest, Action: a, Reason: r, Method: "GET", CredentialAccess: credential,
		HasToken: token, HostNetns: true, Cgroup: "/system.slice/app.service", Cloud: "aws"}
}

func inPod(e *Event) *Event {
	e.HostNetns, e.ContainerID, e.PodUID = false, "0123abcd", "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"
	return e
}

func hostNetworkPod(e *Event) *Event {
	e.ContainerID, e.PodUID = "0123abcd", "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"
	return e
}

func onCloud(name string, e *Event) *Event { e.Cloud = name; return e }

func connect(a bpf.Action, r bpf.Reason) *Event {
	return inPod(&Event{Kind: bpf.KindConnect, Action: a, Reason: r})
}

// TestSeverityOf is the table of docs/siem.md, row by row: what a SIEM
// engineer triages first comes first.
func TestSeverityOf(t *testing.T) {
	const (
		info   = SeverityInformational
		low    = SeverityLow
		medium = SeverityMedium
		high   = SeverityHigh
	)
	none := bpf.ReasonNone
	tests := []struct {
		name string
		ev   zapcore.ObjectMarshaler
		want Severity
	}{
		// Credentials that went out.
		{"audited credential read from a pod", inPod(hostReq(bpf.ActionAudit, bpf.ReasonNonHostNetns, true, true)), high},
		{"audited credential read on the host, with a token (a deny rule)", hostReq(bpf.ActionAudit, bpf.ReasonPolicyRule, true, true), high},
		{"audited token-less credential read on the host", hostReq(bpf.ActionAudit, bpf.ReasonIMDSv1NoToken, true, false), high},
		{"allowed credential read from a pod (a rule allows it)", inPod(hostReq(bpf.ActionAllow, none, true, true)), high},
		{"allowed credential read from a hostNetwork pod's container", hostNetworkPod(hostReq(bpf.ActionAllow, none, true, true)), high},
		{"allowed token-less credential read on the host (requireToken off)", hostReq(bpf.ActionAllow, none, true, false), high},
		{"allowed token-less credential read where the cloud asks no proof", onCloud("openstack", hostReq(bpf.ActionAllow, none, true, false)), info},
		{"allowed proof-less credential read, cloud unnamed", onCloud("", hostReq(bpf.ActionAllow, none, true, false)), high},
		{"allowed credential read on the host with a token (an SDK)", hostReq(bpf.ActionAllow, none, true, true), info},
		// Credential reads refused: stopped, someone should look.
		{"refused token-less credential read", hostReq(bpf.ActionDeny, bpf.ReasonIMDSv1NoToken, true, false), medium},
		{"refused credential read from a pod", inPod(hostReq(bpf.ActionDeny, bpf.ReasonNonHostNetns, true, true)), medium},
		{"credential read over the per-minute bound", hostReq(bpf.ActionDeny, bpf.ReasonCredentialLimit, true, true), medium},
		{"refused forwarded credential read", hostReq(bpf.ActionDeny, bpf.ReasonForwardedRequest, true, true), medium},
		// Getting around the judge.
		{"refused unjudged write", hostReq(bpf.ActionDeny, bpf.ReasonUnjudgedWrite, false, false), medium},
		{"audited unjudged write", hostReq(bpf.ActionAudit, bpf.ReasonUnjudgedWrite, false, false), high},
		{"refused urgent data", hostReq(bpf.ActionDeny, bpf.ReasonUrgentData, false, false), medium},
		{"refused raw packet", hostReq(bpf.ActionDeny, bpf.ReasonRawPacket, false, false), medium},
		{"audited raw packet", hostReq(bpf.ActionAudit, bpf.ReasonRawPacket, false, false), high},
		{"refused egress bypass", hostReq(bpf.ActionDeny, bpf.ReasonEgressBypass, false, false), medium},
		{"refused unparseable request", hostReq(bpf.ActionDeny, bpf.ReasonParseError, false, true), medium},
		{"audited unparseable request", hostReq(bpf.ActionAudit, bpf.ReasonParseError, false, true), high},
		// Hostile shapes.
		{"refused forwarded request", hostReq(bpf.ActionDeny, bpf.ReasonForwardedRequest, false, true), medium},
		{"audited forwarded request", hostReq(bpf.ActionAudit, bpf.ReasonForwardedRequest, false, true), medium},
		{"connection limit", connect(bpf.ActionDeny, bpf.ReasonConnectionLimit), medium},
		// Routine refusals.
		{"refused pod connect (an SDK probing)", connect(bpf.ActionDeny, bpf.ReasonNonHostNetns), low},
		{"audited pod connect", connect(bpf.ActionAudit, bpf.ReasonNonHostNetns), low},
		{"refused token-less metadata read", hostReq(bpf.ActionDeny, bpf.ReasonIMDSv1NoToken, false, false), low},
		{"deny rule", hostReq(bpf.ActionDeny, bpf.ReasonPolicyRule, false, true), low},
		{"connection from before start", hostReq(bpf.ActionDeny, bpf.ReasonAdoptedConn, false, false), low},
		{"token TTL over the cap", hostReq(bpf.ActionDeny, bpf.ReasonTokenTTLOverCap, false, false), low},
		{"MPTCP", connect(bpf.ActionDeny, bpf.ReasonUnsupportedProto), low},
		// Allowed.
		{"allowed pod connect (a rule allows it)", connect(bpf.ActionAllow, none), info},
		{"allowed token PUT", hostReq(bpf.ActionAllow, none, false, false), info},
		{"allowed metadata read", hostReq(bpf.ActionAllow, none, false, true), info},
		// Packets the nftables layer saw.
		{"routed packet dropped", &PacketEvent{Action: bpf.ActionDeny}, medium},
		{"routed packet passed in audit mode", &PacketEvent{Action: bpf.ActionAudit}, high},
		// The guard itself.
		{"table restored", &TableEvent{Result: "restored", Table: "imdsguard"}, medium},
		{"policy invalid", &PolicyEvent{Result: "invalid"}, medium},
		{"policy refused by the kernel", &PolicyEvent{Result: "failed"}, medium},
		{"policy loaded", &PolicyEvent{Result: "loaded"}, low},
		{"a type without a rank", unranked{}, medium},
	}
	for _, tt := range tests {
		if got := SeverityOf(tt.ev); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

type unranked struct{}

func (unranked) MarshalLogObject(zapcore.ObjectEncoder) error { return nil }

// TestSeverityScales: OCSF severity_id and caption, and the RFC 5424
// severity, keep the same order.
func TestSeverityScales(t *testing.T) {
	tests := []struct {
		s       Severity
		id      int
		caption string
		syslog  int
	}{
		{SeverityInformational, 1, "Informational", 6},
		{SeverityLow, 2, "Low", 5},
		{SeverityMedium, 3, "Medium", 4},
		{SeverityHigh, 4, "High", 3},
		{0, 0, "Unknown", 6},
	}
	for _, tt := range tests {
		id, caption := tt.s.OCSF()
		if id != tt.id || caption != tt.caption || tt.s.Syslog() != tt.syslog {
			t.Errorf("%v: OCSF %d %q, syslog %d; want %d %q, %d", tt.s, id, caption, tt.s.Syslog(), tt.id, tt.caption, tt.syslog)
		}
	}
}
