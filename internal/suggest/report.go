package suggest

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// header is the policy's opening comment: where the rules came from and
// what the input held.
func header(cfg Config, st Stats, sugg []*suggestion, t *tally, base *policy.Policy) []string {
	var out []string
	add := func(format string, a ...any) { out = append(out, wrap(fmt.Sprintf(format, a...), "# ", "#   ")...) }
	from := "from " + orDefault(strings.Join(cfg.Inputs, ", "), "<stdin>")
	if base != nil {
		from += ", on top of " + cfg.BaseSource + " (its keys, comments and rules kept)"
	}
	add("Suggested by imdsguard suggest %s.", from)
	read := fmt.Sprintf("Read %s: %s (%d audit, %d allow, %d deny, by their counts)", plural(uint64(st.Lines), "line"),
		plural(uint64(st.Events), "event line"), st.Audit, st.Allow, st.Deny)
	if st.Logs+st.Other > 0 {
		read += fmt.Sprintf("; skipped %s and %s", plural(uint64(st.Logs), "log line"), plural(uint64(st.Other), "policy or nftables event"))
	}
	if cfg.Since > 0 {
		read += fmt.Sprintf("; skipped %s before %s (--since %s)", plural(uint64(st.Old), "event line"), stamp(cfg.cutoff()), shortDuration(cfg.Since))
	}
	add("%s.", read)
	add("%s for %s; %s left out (listed at the end)%s.", rulesText(sugg),
		plural(groupedEvents(sugg), "audit event"), plural(leftEvents(t), "audit event"), alreadyText(t))
	add("Each rule lets its whole workload (every process in the cgroups its glob matches) do what audit mode saw some of its processes do. Review them before enforcing.")
	if st.Deny > 0 {
		add("The %d deny events are not turned into rules: suggest works from audit mode's verdicts (run in audit mode to see everything enforcing would refuse).", st.Deny)
	}
	if base != nil && base.Mode == policy.ModeAudit {
		add("mode: audit is kept from %s: set mode: enforce (or run imdsguard with --mode enforce) once these rules are reviewed.", cfg.BaseSource)
	}
	if base == nil && len(st.Rules) > 0 {
		add("The events name rules of the policy they were recorded under (%s): pass that policy with --policy so its rules are kept and these placed among them.", strings.Join(slices.Sorted(maps.Keys(st.Rules)), ", "))
	}
	return out
}

// rulesText counts the suggestions: "3 rules", "2 rules and 1 extended".
func rulesText(sugg []*suggestion) string {
	extended := 0
	for _, s := range sugg {
		if s.amend >= 0 {
			extended++
		}
	}
	text := plural(uint64(len(sugg)-extended), "rule")
	if extended > 0 {
		text += fmt.Sprintf(" and %d of the policy's rules extended", extended)
	}
	return text
}

func groupedEvents(sugg []*suggestion) uint64 {
	var n uint64
	for _, s := range sugg {
		n += s.g.count
	}
	return n
}

func leftEvents(t *tally) uint64 {
	var n uint64
	for _, it := range t.left {
		n += it.count
	}
	return n
}

func alreadyText(t *tally) string {
	var n uint64
	for _, s := range t.already {
		n += s.count
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("; %s already allowed by the policy's rules", plural(n, "audit event"))
}

// footer is the left-out section: by reason, what no rule was suggested
// for and why, then what the base policy already allows.
func footer(t *tally) []string {
	out := []string{"# Left out: audit events that enforce mode will refuse and that no rule here allows."}
	keys := slices.SortedFunc(maps.Keys(t.left), func(a, b leftKey) int {
		return cmp.Or(cmp.Compare(a.reason, b.reason), cmp.Compare(a.cgroup, b.cgroup), cmp.Compare(a.why, b.why))
	})
	if len(keys) == 0 {
		out = append(out, "#   nothing.")
	}
	for i, k := range keys {
		if i == 0 || keys[i-1].reason != k.reason {
			out = append(out, "#")
			out = append(out, wrap(reasonHeading(k.reason, t), "# ", "#   ")...)
		}
		out = append(out, wrap(leftText(k, t.left[k]), "#   - ", "#       ")...)
	}
	return append(out, alreadySection(t)...)
}

func reasonHeading(reason string, t *tally) string {
	var n uint64
	for k, it := range t.left {
		if k.reason == reason {
			n += it.count
		}
	}
	h := fmt.Sprintf("%s (%s)", orDefault(reason, "no reason"), plural(n, "event"))
	if why := reasonWhy(reason); why != "" {
		h += ": " + why
	}
	return h
}

func leftText(k leftKey, it *leftItem) string {
	where := k.cgroup
	switch {
	case where == "":
		where = "no cgroup"
	case !strings.HasPrefix(where, "packets from"):
		where = fmt.Sprintf("%q", where)
	}
	text := fmt.Sprintf("%d from %s", it.count, where)
	if pods := slices.Sorted(maps.Keys(it.pods)); len(pods) > 0 {
		text += " (pod " + strings.Join(pods, ", ") + ")"
	}
	if len(it.procs) > 0 {
		text += ", processes " + top(it.procs, maxProcs)
	}
	text += ", " + seenText(it.span)
	if k.why != "" {
		text += ": " + k.why
	}
	return text
}

// alreadySection lists the events the base policy's rules already allow:
// recorded before those rules were added.
func alreadySection(t *tally) []string {
	if len(t.already) == 0 {
		return nil
	}
	out := []string{"#", "# Already allowed by the policy's rules (events recorded before those rules were in force):"}
	for _, i := range slices.Sorted(maps.Keys(t.already)) {
		out = append(out, wrap(fmt.Sprintf("rule %q: %s", t.rules[i].Name, seenText(*t.already[i])), "#   - ", "#       ")...)
	}
	return out
}

// reasonWhy says why no rule is suggested for a reason; "" for the reasons
// a rule can grant (their items say why they were left out).
func reasonWhy(reason string) string {
	switch reason {
	case bpf.ReasonIMDSv1NoToken.String(), bpf.ReasonNonHostNetns.String():
		return ""
	case bpf.ReasonForwardedRequest.String():
		return "requests relayed by a proxy (X-Forwarded-For), the usual SSRF path: no rule allows them; stop the proxy relaying to IMDS (refuseForwarded: false would allow them for every workload)"
	case bpf.ReasonTokenTTLOverCap.String():
		return "token PUTs asking for a longer life than maxTokenTTL: no rule allows them; raise maxTokenTTL or make the client ask for less"
	case bpf.ReasonParseError.String():
		return "requests the kernel's parser could not read within its bounds: refused whatever the rules say; the client needs fixing"
	case bpf.ReasonConnectionLimit.String():
		return "more IMDS connections open at once than maxConnectionsPerCgroup or maxConnectionsPerUser allow: a bound, not a grant; raise it if the workload really holds that many"
	case bpf.ReasonCredentialLimit.String():
		return "more credential reads a minute than credentialReadsPerMinute allows: a rule's own credentialReadsPerMinute can raise it for one workload, but the bound is yours to choose"
	case bpf.ReasonPolicyRule.String():
		return "denied by a deny rule of the policy: suggest never overrides a deny"
	case bpf.ReasonRawPacket.String(), bpf.ReasonEgressBypass.String():
		return "packets that bypass the socket hooks (raw or AF_PACKET sockets): no rule allows them"
	case "routed_from_other_netns":
		return "packets routed to IMDS from another network namespace past the socket hooks; the nftables layer lets a pod's packets through when a rule with allowNonHostNetns matches the pod, but a packet event names only its source address, not a cgroup"
	case bpf.ReasonUnjudgedWrite.String(), bpf.ReasonUrgentData.String():
		return "bytes that went past the request judge (TCP Fast Open, a write before the connection was up, urgent data): refused whatever the rules say"
	case bpf.ReasonUnsupportedProto.String():
		return "MPTCP sockets, whose subflows the request judge cannot follow: no rule allows them; the client has to use plain TCP"
	case bpf.ReasonAdoptedConn.String():
		return "connections open before imdsguard started, on which nothing can be judged: clients reconnect, no rule is needed"
	}
	return "no rule key allows this reason"
}

// shortDuration is d without its zero tails: "24h", "1h30m".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
