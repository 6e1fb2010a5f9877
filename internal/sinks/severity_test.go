package sinks

import (
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
)

// TestSyslogSeverityPRI sends one event of each severity over UDP and TCP
// with the RFC 5424 severity events.SeverityOf gives it, as the output
// pipeline does, and checks the PRI a receiver reads: local0 (16) * 8 +
// severity. The audited credential read from a pod, where credentials left
// the node, now ranks above the refused SDK probe (it was Notice, 133,
// below the probe's Warning, 132).
func TestSyslogSeverityPRI(t *testing.T) {
	refusedRead := hostCredentialRead("java -jar /srv/app.jar")
	refusedRead.Action = bpf.ActionDeny
	sdkRead := hostCredentialRead("aws s3 ls")
	sdkRead.Action, sdkRead.Reason, sdkRead.HasToken = bpf.ActionAllow, bpf.ReasonNone, true
	probe := podCredentialRead()
	probe.Kind, probe.Action, probe.CredentialAccess, probe.Method, probe.Path = bpf.KindConnect, bpf.ActionDeny, false, "", ""
	tests := []struct {
		name string
		ev   zapcore.ObjectMarshaler
		pri  int
	}{
		{"audited credential read from a pod", podCredentialRead(), 131},
		{"allowed credential read without a token", func() *events.Event { e := hostCredentialRead(""); e.Action = bpf.ActionAllow; return e }(), 131},
		{"refused credential read", refusedRead, 132},
		{"table restored", &events.TableEvent{Result: "restored"}, 132},
		{"policy invalid", &events.PolicyEvent{Result: "invalid"}, 132},
		{"routed packet dropped", &events.PacketEvent{Action: bpf.ActionDeny}, 132},
		{"refused pod connect (SDK probe)", probe, 133},
		{"policy loaded", &events.PolicyEvent{Result: "loaded"}, 133},
		{"an SDK's credential read on the host", sdkRead, 134},
	}
	udp := listenUDP(t)
	us, err := NewSyslog(SyslogOptions{Network: "udp", Addr: udp.addr(), Hostname: "node-1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = us.Close() })
	c := startCollector(t, "127.0.0.1:0", nil)
	ts, err := NewSyslog(SyslogOptions{Network: "tcp", Addr: c.addr, Hostname: "node-1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ts.Close() })
	for _, tt := range tests {
		rec := Record{Time: testTime, JSON: []byte(`{}`), MsgID: "x", SDID: "imdsguard@32473"}
		if ev, ok := tt.ev.(*events.Event); ok {
			rec = ocsfRecord(t, ev)
		}
		rec.Severity = events.SeverityOf(tt.ev).Syslog()
		us.Send(rec)
		ts.Send(rec)
		for transport, got := range map[string][]byte{"udp": udp.next(t), "tcp": c.receive(t, 1)[0]} {
			p, err := parse5424(got)
			if err != nil {
				t.Fatalf("%s over %s: parse: %v", tt.name, transport, err)
			}
			if p.pri != tt.pri {
				t.Errorf("%s over %s: <%d>, want <%d>", tt.name, transport, p.pri, tt.pri)
			}
		}
	}
}
