package bpf

// Values shared with imdsguard.h. The C enums do not reach the object's BTF
// (the compiler folds them to literals), so they are mirrored here by hand;
// the integration tests catch a mismatch, because every event they check is
// decoded through these names.

// Action is the verdict a program reached.
type Action uint8

const (
	ActionAllow Action = 0
	ActionDeny  Action = 1
	ActionAudit Action = 2
	actionMax          = 3
)

func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "allow"
	case ActionDeny:
		return "deny"
	case ActionAudit:
		return "audit"
	}
	return "unknown"
}

// Reason says why a connection or request was (or would have been) refused.
type Reason uint8

const (
	ReasonNone             Reason = 0
	ReasonNonHostNetns     Reason = 1
	ReasonIMDSv1NoToken    Reason = 2
	ReasonParseError       Reason = 3
	ReasonForwardedRequest Reason = 4
	ReasonPolicyRule       Reason = 5
	ReasonUnjudgedWrite    Reason = 6
	ReasonUnsupportedProto Reason = 7
	ReasonAdoptedConn      Reason = 8
	ReasonUrgentData       Reason = 9
	ReasonConnectionLimit  Reason = 10
	ReasonRawPacket        Reason = 11
	ReasonEgressBypass     Reason = 12
	// ReasonMax bounds the reasons: counter slots are laid out by it.
	ReasonMax = 16
)

func (r Reason) String() string {
	switch r {
	case ReasonNone:
		return ""
	case ReasonNonHostNetns:
		return "non_host_netns"
	case ReasonIMDSv1NoToken:
		return "imdsv1_no_token"
	case ReasonParseError:
		return "parse_error"
	case ReasonForwardedRequest:
		return "forwarded_request"
	case ReasonPolicyRule:
		return "policy_rule"
	case ReasonUnjudgedWrite:
		return "unjudged_write"
	case ReasonUnsupportedProto:
		return "unsupported_protocol"
	case ReasonAdoptedConn:
		return "adopted_connection"
	case ReasonUrgentData:
		return "urgent_data"
	case ReasonConnectionLimit:
		return "connection_limit"
	case ReasonRawPacket:
		return "raw_packet"
	case ReasonEgressBypass:
		return "egress_bypass"
	}
	return "unknown"
}

// Kind says which hook produced an event.
type Kind uint8

const (
	KindConnect Kind = 0
	KindRequest Kind = 1
	kindMax          = 2
)

func (k Kind) String() string {
	switch k {
	case KindConnect:
		return "connect"
	case KindRequest:
		return "request"
	}
	return "unknown"
}

// Mode values of config.mode.
const (
	ModeEnforce uint32 = 0
	ModeAudit   uint32 = 1
)

// Bits of config.flags.
const (
	ConfigBlockNonHostNetns uint32 = 1 << 0
	ConfigRequireToken      uint32 = 1 << 1
	ConfigRefuseForwarded   uint32 = 1 << 2
)

// PrefixMax is the longest credential prefix the kernel matches (PREFIX_MAX).
const PrefixMax = 64

// Bits of event.flags.
const (
	EventHostNetns        uint8 = 1 << 0
	EventHasToken         uint8 = 1 << 1
	EventCredentialAccess uint8 = 1 << 2
)

// CounterSlot is the index in the counters map for one (kind, action, reason).
func CounterSlot(k Kind, a Action, r Reason) uint32 {
	return uint32(k)*actionMax*ReasonMax + uint32(a)*ReasonMax + uint32(r)
}

// CounterEventsLost counts events dropped because the ring buffer was full.
const CounterEventsLost uint32 = kindMax * actionMax * ReasonMax

// CounterUnguarded counts IMDS sockets sockops could not put under sk_msg.
const CounterUnguarded uint32 = CounterEventsLost + 1

// CounterAdopted counts connections adopted at start.
const CounterAdopted uint32 = CounterEventsLost + 2

// CounterCredential is the first of three slots counting credential-path
// requests by action.
const CounterCredential uint32 = CounterEventsLost + 3

// CounterSlots is the size of the counters map.
const CounterSlots = 128
