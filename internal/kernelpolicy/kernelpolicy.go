// Package kernelpolicy is a policy as imdsguard's kernel maps hold it: what
// internal/policy compiles a policy file into and internal/loader writes.
// It knows the kernel's layout (bpf) and nothing of files or outputs.
package kernelpolicy

import (
	"net/netip"

	"github.com/imdsguard/imdsguard/bpf"
)

// Tables are the entries of one policy generation. Config's host network
// namespace cookie is filled in by the loader.
type Tables struct {
	Config    bpf.ImdsguardConfig
	Endpoints []bpf.ImdsguardEndpointKey
	Rules     []bpf.ImdsguardRule
}

// OverflowRule is the index of the rule slot kept for cgroups that more
// rules could apply to than the kernel's list holds (bpf.RulesPerCgroup):
// a deny, so that such a cgroup is refused rather than judged by a list
// that leaves rules out. It is the last slot of the kernel's table, which
// a policy's rules never reach.
const OverflowRule = uint16(bpf.MaxRules - 1)

// OverflowRuleEntry is the kernel rule at OverflowRule.
func OverflowRuleEntry() bpf.ImdsguardRule { return bpf.ImdsguardRule{Flags: bpf.RuleDeny} }

// EndpointKey is the endpoints-map key of an address and port: IPv4 as
// IPv4-mapped IPv6, port in network byte order.
func EndpointKey(ap netip.AddrPort) bpf.ImdsguardEndpointKey {
	var k bpf.ImdsguardEndpointKey
	k.Addr = ap.Addr().As16()
	port := ap.Port()
	// The kernel compares the port as the raw big-endian bytes it holds;
	// on the little-endian targets bpf2go builds for, that is a byte swap.
	k.Port = port>>8 | port<<8
	return k
}
