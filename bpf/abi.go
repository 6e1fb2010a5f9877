package bpf

// Go names for the values of abi.h. Every value comes from the
// enums bpf2go generates (abi.h keeps them in the object's BTF), so
// C and Go cannot disagree; only the names, and the strings events carry,
// are written here.

// Action is the verdict a program reached.
type Action uint8

const (
	ActionAllow = Action(ImdsguardActionACTION_ALLOW)
	ActionDeny  = Action(ImdsguardActionACTION_DENY)
	ActionAudit = Action(ImdsguardActionACTION_AUDIT)
	actionMax   = uint32(ImdsguardActionACTION_MAX)
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
	ReasonNone             = Reason(ImdsguardReasonREASON_NONE)
	ReasonNonHostNetns     = Reason(ImdsguardReasonREASON_NON_HOST_NETNS)
	ReasonIMDSv1NoToken    = Reason(ImdsguardReasonREASON_IMDSV1NO_TOKEN)
	ReasonParseError       = Reason(ImdsguardReasonREASON_PARSE_ERROR)
	ReasonForwardedRequest = Reason(ImdsguardReasonREASON_FORWARDED_REQUEST)
	ReasonPolicyRule       = Reason(ImdsguardReasonREASON_POLICY_RULE)
	ReasonUnjudgedWrite    = Reason(ImdsguardReasonREASON_UNJUDGED_WRITE)
	ReasonUnsupportedProto = Reason(ImdsguardReasonREASON_UNSUPPORTED_PROTOCOL)
	ReasonAdoptedConn      = Reason(ImdsguardReasonREASON_ADOPTED_CONNECTION)
	ReasonUrgentData       = Reason(ImdsguardReasonREASON_URGENT_DATA)
	ReasonConnectionLimit  = Reason(ImdsguardReasonREASON_CONNECTION_LIMIT)
	ReasonRawPacket        = Reason(ImdsguardReasonREASON_RAW_PACKET)
	ReasonEgressBypass     = Reason(ImdsguardReasonREASON_EGRESS_BYPASS)
	ReasonTokenTTLOverCap  = Reason(ImdsguardReasonREASON_TOKEN_TTL_OVER_CAP)
	ReasonCredentialLimit  = Reason(ImdsguardReasonREASON_CREDENTIAL_READ_LIMIT)
	// ReasonMax bounds the reasons: counter slots are laid out by it.
	ReasonMax = uint32(ImdsguardReasonREASON_MAX)
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
	case ReasonTokenTTLOverCap:
		return "token_ttl_over_cap"
	case ReasonCredentialLimit:
		return "credential_read_limit"
	}
	return "unknown"
}

// Kind says which hook produced an event.
type Kind uint8

const (
	KindConnect = Kind(ImdsguardKindKIND_CONNECT)
	KindRequest = Kind(ImdsguardKindKIND_REQUEST)
	kindMax     = uint32(ImdsguardKindKIND_MAX)
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
	ModeEnforce = uint32(ImdsguardModeMODE_ENFORCE)
	ModeAudit   = uint32(ImdsguardModeMODE_AUDIT)
)

// Bits of config.flags.
const (
	ConfigBlockNonHostNetns = uint32(ImdsguardConfigFlagCONFIG_BLOCK_NON_HOST_NETNS)
	ConfigRequireToken      = uint32(ImdsguardConfigFlagCONFIG_REQUIRE_TOKEN)
	ConfigRefuseForwarded   = uint32(ImdsguardConfigFlagCONFIG_REFUSE_FORWARDED)
)

// Limits of the kernel's tables (enum limit).
const (
	// PrefixMax is the longest credential prefix the kernel matches.
	PrefixMax = int(ImdsguardLimitPREFIX_MAX)
	// MaxPrefixes is how many credential prefixes the config holds.
	MaxPrefixes = int(ImdsguardLimitMAX_PREFIXES)
	// MaxRules is the size of one policy generation of the rules table.
	MaxRules = int(ImdsguardLimitMAX_RULES)
	// RulesPerCgroup is how many rules one cgroup's list holds.
	RulesPerCgroup = int(ImdsguardLimitRULES_PER_CGROUP)
	// MaxCgroupLevel is the deepest cgroup level the kernel's ancestor
	// walk looks at.
	MaxCgroupLevel = int(ImdsguardLimitMAX_CGROUP_LEVEL)
	// MaxEndpoints is the size of the endpoints map (both generations).
	MaxEndpoints = int(ImdsguardLimitMAX_ENDPOINTS)
	// HdrNameMax is the longest header name a profile may name (its proof
	// and its token TTL header).
	HdrNameMax = int(ImdsguardLimitHDR_NAME_MAX)
	// TokenPathMax is the longest token PUT path a profile may name.
	TokenPathMax = int(ImdsguardLimitTOKEN_PATH_MAX)
)

// Bits of rule.flags (enum rule_flag).
const (
	RuleDeny              = uint32(ImdsguardRuleFlagRULE_DENY)
	RuleAllowV1           = uint32(ImdsguardRuleFlagRULE_ALLOW_V1)
	RuleAllowNonHostNetns = uint32(ImdsguardRuleFlagRULE_ALLOW_NON_HOST_NETNS)
	RuleMatchComm         = uint32(ImdsguardRuleFlagRULE_MATCH_COMM)
	RuleMatchUID          = uint32(ImdsguardRuleFlagRULE_MATCH_UID)
)

// Bits of event.flags.
const (
	EventHostNetns        = uint8(ImdsguardEventFlagEVENT_HOST_NETNS)
	EventHasToken         = uint8(ImdsguardEventFlagEVENT_HAS_TOKEN)
	EventCredentialAccess = uint8(ImdsguardEventFlagEVENT_CREDENTIAL_ACCESS)
)

// CounterSlot is the index in the counters map for one (kind, action, reason).
func CounterSlot(k Kind, a Action, r Reason) uint32 {
	return uint32(k)*actionMax*ReasonMax + uint32(a)*ReasonMax + uint32(r)
}

// CounterEventsLost counts events dropped because the ring buffer was full.
const CounterEventsLost = uint32(ImdsguardCounterExtraCOUNTER_EVENTS_LOST)

// CounterUnguarded counts IMDS sockets sockops could not put under sk_msg.
const CounterUnguarded = uint32(ImdsguardCounterExtraCOUNTER_UNGUARDED)

// CounterAdopted counts connections adopted at start.
const CounterAdopted = uint32(ImdsguardCounterExtraCOUNTER_ADOPTED)

// CounterCredential is the first of three slots counting credential-path
// requests by action.
const CounterCredential = uint32(ImdsguardCounterExtraCOUNTER_CREDENTIAL)

// CounterSlots is the size of the counters map.
const CounterSlots = int(ImdsguardCounterExtraCOUNTER_MAX)
