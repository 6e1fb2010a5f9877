package suggest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/imdsguard/imdsguard/bpf"
)

// maxLine bounds one line of input. The daemon's events are a few KiB at
// most (cmdline and path are truncated in the kernel); a longer line is not
// one of them.
const maxLine = 4 << 20

// record is what suggest needs of one event, from either encoding.
type record struct {
	Time        time.Time
	Kind        string // connect, request, packet
	Action      string
	Reason      string
	Method      string
	Path        string
	UID         uint32
	Comm        string
	Exe         string
	Cgroup      string
	ContainerID string
	PodUID      string
	Pod         string
	Namespace   string
	Container   string
	Count       uint64
	Rule        string
	Src         string // packet events: the source address
}

// Stats says what the input held, for the policy's header.
type Stats struct {
	Lines  int // lines read, blank ones included
	Logs   int // the daemon's log lines ("msg") and the command's own "imdsguard: " lines
	Other  int // non-connection events: policy reloads, nftables table events
	Events int // event lines
	Old    int // event lines older than --since
	// Audit, Allow and Deny count events by action (sums of their count).
	Audit, Allow, Deny uint64
	// Rules are the rule names the events carry: the policy they were
	// recorded under.
	Rules map[string]bool
}

// lineKind says what a line turned out to be.
type lineKind int

const (
	lineSkip  lineKind = iota // blank
	lineLog                   // a log line
	lineOther                 // an event suggest has no use for
	lineEvent
)

// readAll reads every source, handing each event to fn. An error names the
// source and line: "events.json:7: …".
func readAll(sources []Source, st *Stats, fn func(record)) error {
	for _, src := range sources {
		if err := readSource(src, st, fn); err != nil {
			return err
		}
	}
	return nil
}

func readSource(src Source, st *Stats, fn func(record)) error {
	sc := bufio.NewScanner(src.R)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	n := 0
	for sc.Scan() {
		n++
		st.Lines++
		kind, rec, err := parseLine(sc.Bytes())
		if err != nil {
			return fmt.Errorf("%s:%d: %w", src.Name, n, err)
		}
		switch kind {
		case lineLog:
			st.Logs++
		case lineOther:
			st.Other++
		case lineEvent:
			fn(rec)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%s:%d: line longer than %d bytes: not an imdsguard event", src.Name, n+1, maxLine)
		}
		return fmt.Errorf("reading %s: %w", src.Name, err)
	}
	return nil
}

// logPrefix starts the line the command prints when it fails ("imdsguard:
// …"), which a capture of stdout and stderr together holds.
const logPrefix = "imdsguard: "

// parseLine classifies one line and decodes it if it is an event. Only
// blank lines and the command's own error lines are skipped unread:
// anything else that is not a JSON object is an error, because a line
// suggest cannot read may be an event it would miss, and the policy would
// then break the workload that sent it.
func parseLine(line []byte) (lineKind, record, error) {
	line = bytes.TrimSpace(line)
	switch {
	case len(line) == 0:
		return lineSkip, record{}, nil
	case bytes.HasPrefix(line, []byte(logPrefix)):
		return lineLog, record{}, nil
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(line, &keys); err != nil || keys == nil {
		return 0, record{}, fmt.Errorf("not a JSON object (%s): suggest reads the daemon's events, one JSON object per line, as it writes them (from journalctl, use -o cat)", excerpt(line))
	}
	if _, ok := keys["msg"]; ok {
		return lineLog, record{}, nil
	}
	if _, ok := keys["class_uid"]; ok {
		rec, err := decodeOCSF(line)
		return lineEvent, rec, err
	}
	var kind string
	if raw, ok := keys["kind"]; !ok || json.Unmarshal(raw, &kind) != nil {
		return 0, record{}, fmt.Errorf("a JSON object with neither \"kind\" (an imdsguard event), \"msg\" (a log line) nor \"class_uid\" (an OCSF event): %s", excerpt(line))
	}
	switch kind {
	case bpf.KindConnect.String(), bpf.KindRequest.String(), kindPacket:
		rec, err := decodeJSON(line)
		return lineEvent, rec, err
	case "policy", "nftables":
		return lineOther, record{}, nil
	}
	return 0, record{}, fmt.Errorf("unknown event kind %q (want connect, request, packet, policy or nftables)", kind)
}

// kindPacket is the kind of the nftables layer's packet events.
const kindPacket = "packet"

// jsonEvent is an event in imdsguard's JSON (internal/events). Fields
// suggest does not use are not listed; unknown fields are ignored, so an
// event schema that grows stays readable.
type jsonEvent struct {
	Time        string  `json:"time"`
	Kind        string  `json:"kind"`
	Action      string  `json:"action"`
	Reason      string  `json:"reason"`
	Method      string  `json:"method"`
	Path        string  `json:"path"`
	UID         uint32  `json:"uid"`
	Comm        string  `json:"comm"`
	Exe         string  `json:"exe"`
	Cgroup      *string `json:"cgroup"`
	ContainerID string  `json:"container_id"`
	PodUID      string  `json:"pod_uid"`
	Pod         string  `json:"pod"`
	Namespace   string  `json:"namespace"`
	Container   string  `json:"container"`
	Count       uint64  `json:"count"`
	Rule        string  `json:"rule"`
	Src         string  `json:"src"`
}

func decodeJSON(line []byte) (record, error) {
	var e jsonEvent
	if err := json.Unmarshal(line, &e); err != nil {
		return record{}, fmt.Errorf("not an imdsguard event: %w", err)
	}
	t, err := time.Parse(time.RFC3339Nano, e.Time)
	if err != nil {
		return record{}, fmt.Errorf("event time %q is not an RFC 3339 time: %w", e.Time, err)
	}
	if e.Cgroup == nil && e.Kind != kindPacket {
		return record{}, errors.New("event has no \"cgroup\" field: not an imdsguard event")
	}
	rec := record{
		Time: t, Kind: e.Kind, Action: e.Action, Reason: e.Reason, Method: e.Method, Path: e.Path,
		UID: e.UID, Comm: e.Comm, Exe: e.Exe, ContainerID: e.ContainerID, PodUID: e.PodUID,
		Pod: e.Pod, Namespace: e.Namespace, Container: e.Container, Count: e.Count, Rule: e.Rule, Src: e.Src,
	}
	if e.Cgroup != nil {
		rec.Cgroup = *e.Cgroup
	}
	return rec, checkAction(rec)
}

func checkAction(rec record) error {
	switch rec.Action {
	case bpf.ActionAllow.String(), bpf.ActionDeny.String(), bpf.ActionAudit.String():
		return nil
	}
	return fmt.Errorf("event action %q is not one of allow, deny, audit", rec.Action)
}

// excerpt quotes the start of a line for an error message.
func excerpt(line []byte) string {
	const n = 60
	if len(line) > n {
		return fmt.Sprintf("%q…", line[:n])
	}
	return fmt.Sprintf("%q", line)
}

// counted is an event's count: how many repeats a folded event stands for.
func (r record) counted() uint64 { return max(r.Count, 1) }

// readSince reads the sources, keeping the events at or after cutoff (the
// zero time keeps all), and counts what it read and skipped.
func readSince(sources []Source, cutoff time.Time, fn func(record)) (Stats, error) {
	st := Stats{Rules: map[string]bool{}}
	err := readAll(sources, &st, func(r record) {
		st.Events++
		if r.Time.Before(cutoff) {
			st.Old++
			return
		}
		switch r.Action {
		case bpf.ActionAudit.String():
			st.Audit += r.counted()
		case bpf.ActionAllow.String():
			st.Allow += r.counted()
		case bpf.ActionDeny.String():
			st.Deny += r.counted()
		}
		if r.Rule != "" {
			st.Rules[r.Rule] = true
		}
		fn(r)
	})
	return st, err
}
