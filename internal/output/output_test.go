package output

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
	"github.com/imdsguard/imdsguard/internal/ocsf"
)

func request() *events.Event {
	return &events.Event{
		Time: time.Unix(1700000000, 0), Kind: bpf.KindRequest, Action: bpf.ActionDeny, Reason: bpf.ReasonIMDSv1NoToken,
		Endpoint: netip.MustParseAddrPort("169.254.169.254:80"), Method: "GET",
		Path: "/latest/meta-data/iam/security-credentials/role", CredentialAccess: true, PID: 42, Comm: "curl",
	}
}

// One line per event on stdout, in the configured format.
func TestEventsReachStdoutInEachFormat(t *testing.T) {
	for format, check := range map[string]func(map[string]any) bool{
		"json": func(m map[string]any) bool {
			return m["kind"] == "request" && m["reason"] == "imdsv1_no_token" && m["comm"] == "curl"
		},
		"ocsf": func(m map[string]any) bool { return m["class_uid"] == float64(4002) },
	} {
		t.Run(format, func(t *testing.T) {
			var out bytes.Buffer
			p, err := New(Config{Format: format, Targets: []string{"stdout"}, Product: ocsf.Product{Name: "imdsguard", VendorName: "imdsguard", Version: "test"}}, &out, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			p.Emit(request())
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			var m map[string]any
			if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &m) != nil || !check(m) {
				t.Fatalf("stdout in %s: %q", format, out.String())
			}
		})
	}
}

// A format or a target that is not one is refused at start, naming it.
func TestBadFormatsAndTargetsAreRefused(t *testing.T) {
	for cfg, want := range map[*Config]string{
		{Format: "xml"}:                            `--format: "xml" is not a format`,
		{Targets: []string{"file:relative.log"}}:   "the file path must be absolute",
		{Targets: []string{"syslog+quic://h:514"}}: `transport "quic" is not udp, tcp or tls`,
		{Targets: []string{"http://collector:80"}}: "want stdout, file:/PATH or syslog",
	} {
		if _, err := New(*cfg, &bytes.Buffer{}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(%+v) = %v, want an error with %q", *cfg, err, want)
		}
	}
}
