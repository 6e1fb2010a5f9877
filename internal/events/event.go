// Package events is the schema of what imdsguard reports: the events, how
// a kernel record decodes into one, and their JSON encoding. Reading them
// from the kernel and enriching them is internal/eventreader's job.
package events

import (
	"net/netip"
	"strconv"
	"time"

	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/bpf"
)

// Event is one judged IMDS connection or request. Field names are the stable
// schema SIEM parsers rely on (DESIGN.md, "Events").
type Event struct {
	Time             time.Time
	Kind             bpf.Kind
	Action           bpf.Action
	Reason           bpf.Reason
	Endpoint         netip.AddrPort
	Method           string
	Path             string
	CredentialAccess bool
	HasToken         bool
	PID              uint32
	PPID             uint32
	Comm             string
	UID              uint32
	GID              uint32
	Cgroup           string
	CgroupID         uint64
	ContainerID      string // from the cgroup path, "" when it names none
	Runtime          string
	PodUID           string
	Pod              string // from the container runtime (CRI), when reachable
	Namespace        string
	Container        string
	Image            string // the container's image as the runtime names it (CRI)
	Exe              string // from /proc, when the process still runs
	Cmdline          string // truncated to MaxCmdline bytes
	Hostname         string
	InstanceID       string
	Cloud            string // the policy's cloud profile (aws, gcp, ..., generic)
	Count            uint64 // 1, or the number of repeats a folded event stands for
	NetnsCookie      uint64
	HostNetns        bool
	Rule             string
	RuleIndex        uint16 // index + 1 in the policy generation Gen, 0 for none
	Gen              uint8
}

// PolicyEvent reports a policy reload.
type PolicyEvent struct {
	Time    time.Time
	Result  string // loaded, invalid, failed
	Trigger string // SIGHUP, file change
	Source  string
	Hash    string
	Rules   int
	Error   string
}

// MarshalLogObject writes the event's fields in a fixed order.
func (e *PolicyEvent) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("kind", "policy")
	enc.AddString("result", e.Result)
	enc.AddString("trigger", e.Trigger)
	enc.AddString("source", e.Source)
	enc.AddString("policy_hash", e.Hash)
	enc.AddInt("rules", e.Rules)
	if e.Error != "" {
		enc.AddString("error", e.Error)
	}
	return nil
}

// MarshalLogObject writes the event's fields in a fixed order.
func (e *Event) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("kind", e.Kind.String())
	enc.AddString("action", e.Action.String())
	enc.AddString("reason", e.Reason.String())
	enc.AddString("endpoint", e.Endpoint.String())
	if e.Kind == bpf.KindRequest {
		enc.AddString("method", e.Method)
		enc.AddString("path", e.Path)
		enc.AddBool("has_token", e.HasToken)
	}
	enc.AddBool("credential_access", e.CredentialAccess)
	enc.AddUint32("pid", e.PID)
	enc.AddUint32("ppid", e.PPID)
	enc.AddString("comm", e.Comm)
	enc.AddUint32("uid", e.UID)
	enc.AddUint32("gid", e.GID)
	enc.AddString("cgroup", e.Cgroup)
	enc.AddUint64("cgroup_id", e.CgroupID)
	enc.AddString("container_id", e.ContainerID)
	enc.AddString("runtime", e.Runtime)
	enc.AddString("pod_uid", e.PodUID)
	enc.AddString("pod", e.Pod)
	enc.AddString("namespace", e.Namespace)
	enc.AddString("container", e.Container)
	enc.AddString("image", e.Image)
	enc.AddString("exe", e.Exe)
	enc.AddString("cmdline", e.Cmdline)
	enc.AddString("hostname", e.Hostname)
	enc.AddString("instance_id", e.InstanceID)
	enc.AddString("cloud", e.Cloud)
	count := e.Count
	if count == 0 {
		count = 1
	}
	enc.AddUint64("count", count)
	// A decimal string: cookies use all 64 bits, beyond what JSON numbers
	// keep exactly in most SIEM parsers.
	enc.AddString("netns_cookie", strconv.FormatUint(e.NetnsCookie, 10))
	enc.AddBool("host_netns", e.HostNetns)
	enc.AddString("rule", e.Rule)
	return nil
}

// Decode converts a raw kernel record. bootOffset turns the kernel's
// CLOCK_MONOTONIC nanoseconds into wall-clock time.
func Decode(raw *bpf.ImdsguardEvent, bootOffset time.Duration) Event {
	addr := netip.AddrFrom16(raw.Addr).Unmap()
	return Event{
		Time:             time.Unix(0, int64(raw.TsNs)).Add(bootOffset),
		Kind:             bpf.Kind(raw.Kind),
		Action:           bpf.Action(raw.Action),
		Reason:           bpf.Reason(raw.Reason),
		Endpoint:         netip.AddrPortFrom(addr, raw.Port),
		Method:           bytesOf(raw.Method[:], int(raw.MethodLen)),
		Path:             bytesOf(raw.Path[:], int(raw.PathLen)),
		CredentialAccess: raw.Flags&bpf.EventCredentialAccess != 0,
		HasToken:         raw.Flags&bpf.EventHasToken != 0,
		PID:              raw.Pid,
		PPID:             raw.Ppid,
		Comm:             cString(raw.Comm[:]),
		UID:              raw.Uid,
		GID:              raw.Gid,
		CgroupID:         raw.CgroupId,
		NetnsCookie:      raw.NetnsCookie,
		HostNetns:        raw.Flags&bpf.EventHostNetns != 0,
		RuleIndex:        raw.Rule,
		Gen:              raw.Gen,
	}
}

// bytesOf returns the first n bytes of a fixed-size kernel field (at most
// 128 bytes, the longest field). Copied through a stack array, the string
// is the only allocation.
func bytesOf(b []int8, n int) string {
	var out [128]byte
	n = min(n, len(b), len(out))
	for i := range n {
		out[i] = byte(b[i])
	}
	return string(out[:n])
}

// cString returns a NUL-terminated kernel field (comm: 16 bytes).
func cString(b []int8) string {
	var out [16]byte
	n := 0
	for _, c := range b[:min(len(b), len(out))] {
		if c == 0 {
			break
		}
		out[n] = byte(c)
		n++
	}
	return string(out[:n])
}

// MonotonicOffset returns wall-clock time minus CLOCK_MONOTONIC, the offset
// that turns bpf_ktime_get_ns values into times.
func MonotonicOffset() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - ts.Nano())
}

// TableEvent reports something that happened to the nftables table.
type TableEvent struct {
	Time   time.Time
	Result string // restored
	Table  string
}

// MarshalLogObject writes the event's fields in a fixed order.
func (e *TableEvent) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("kind", "nftables")
	enc.AddString("result", e.Result)
	enc.AddString("table", e.Table)
	return nil
}

// PacketEvent is a packet the nftables layer stopped: routed to IMDS from
// another network namespace without passing a host socket.
type PacketEvent struct {
	Time        time.Time
	Action      bpf.Action
	Endpoint    netip.AddrPort
	Src         netip.AddrPort
	InInterface string
}

// MarshalLogObject writes the event's fields in a fixed order.
func (e *PacketEvent) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("kind", "packet")
	enc.AddString("action", e.Action.String())
	enc.AddString("reason", "routed_from_other_netns")
	enc.AddString("endpoint", e.Endpoint.String())
	enc.AddString("src", e.Src.String())
	enc.AddString("in_interface", e.InInterface)
	enc.AddBool("host_netns", false)
	return nil
}
