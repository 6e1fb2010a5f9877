package events

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/bpf"
)

func cchars(s string, n int) []int8 {
	out := make([]int8, n)
	for i := 0; i < len(s) && i < n; i++ {
		out[i] = int8(s[i])
	}
	return out
}

func TestDecodeAndJSON(t *testing.T) {
	var raw bpf.ImdsguardEvent
	raw.TsNs = 5e9
	raw.CgroupId = 42
	raw.NetnsCookie = 1<<63 + 7 // beyond float64 precision: must survive as a string
	raw.Pid = 1234
	raw.Uid = 1001
	raw.Addr = [16]byte{10: 0xff, 11: 0xff, 12: 169, 13: 254, 14: 169, 15: 254}
	raw.Port = 80
	raw.Kind = uint8(bpf.KindConnect)
	raw.Action = uint8(bpf.ActionDeny)
	raw.Reason = uint8(bpf.ReasonNonHostNetns)
	copy(raw.Comm[:], cchars("cu\"rl\n{", 16))

	ev := Decode(&raw, time.Duration(1700000000)*time.Second)
	ev.Cgroup = "/kubepods/pod1"
	var buf bytes.Buffer
	buf.Write(EncodeJSON(ev.Time, &ev))
	buf.WriteByte('\n')

	if bytes.Count(buf.Bytes(), []byte("\n")) != 1 {
		t.Fatalf("want exactly one line, got %q", buf.String())
	}
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("output is not JSON: %v: %s", err, buf.String())
	}
	want := map[string]any{
		"time":         "2023-11-14T22:13:25Z",
		"kind":         "connect",
		"action":       "deny",
		"reason":       "non_host_netns",
		"endpoint":     "169.254.169.254:80",
		"pid":          float64(1234),
		"uid":          float64(1001),
		"comm":         "cu\"rl\n{",
		"cgroup":       "/kubepods/pod1",
		"cgroup_id":    float64(42),
		"netns_cookie": "9223372036854775815",
		"host_netns":   false,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	if _, ok := got["path"]; ok {
		t.Errorf("connect event has a path field: %s", buf.String())
	}
}

func TestDecodeIPv6Endpoint(t *testing.T) {
	var raw bpf.ImdsguardEvent
	raw.Addr = [16]byte{0: 0xfd, 2: 0x0e, 3: 0xc2, 14: 0x02, 15: 0x54}
	raw.Port = 80
	raw.Flags = bpf.EventHostNetns
	ev := Decode(&raw, 0)
	if ev.Endpoint.String() != "[fd00:ec2::254]:80" || !ev.HostNetns {
		t.Fatalf("endpoint %s host %v", ev.Endpoint, ev.HostNetns)
	}
}
