package integration

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// The metrics count exactly the requests made (from the kernel's counters).
func TestMetricsCountWhatHappened(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l, "--metrics-addr", "127.0.0.1:0")
	base := metricsBase(t, d)

	for range 3 { // refused: token-less credential reads
		runClient(t, l, lab.Node, "", "-mode", "http", "-addr", imdsAddr, "-path", credPath)
	}
	for range 2 { // allowed: token PUT + credential read each
		if r := runClient(t, l, lab.Node, "", "-mode", "http", "-addr", imdsAddr, "-path", credPath, "-fetch-token"); r.Status != 200 {
			t.Fatalf("token client: %+v", r)
		}
	}
	runClient(t, l, lab.Pod, "", "-mode", "connect", "-addr", imdsAddr) // refused at connect

	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(base + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	value := func(name string, labels map[string]string) float64 {
		mf, ok := families[name]
		if !ok {
			return -1
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
		return 0
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"imdsguard_requests_total", map[string]string{"action": "deny", "reason": "imdsv1_no_token"}, 3},
		{"imdsguard_requests_total", map[string]string{"action": "allow", "reason": ""}, 4}, // 2 PUTs + 2 GETs
		{"imdsguard_credential_access_total", map[string]string{"action": "deny"}, 3},
		{"imdsguard_credential_access_total", map[string]string{"action": "allow"}, 2},
		{"imdsguard_connections_total", map[string]string{"action": "deny", "reason": "non_host_netns"}, 1},
		{"imdsguard_events_lost_total", nil, 0},
		{"imdsguard_output_dropped_total", nil, 0},
		{"imdsguard_attached", map[string]string{"hook": "sk_msg"}, 1},
		{"imdsguard_attached", map[string]string{"hook": "connect6"}, 1},
	}
	for _, c := range checks {
		if got := value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
	d.Signal(syscallSIGHUP)
	waitFor(t, 3*time.Second, "the reload counter", func() bool {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.Contains(string(b), `imdsguard_policy_reloads_total{result="unchanged"} 1`)
	})
}

// metricsBase is the URL of the metrics a daemon started with
// --metrics-addr 127.0.0.1:0 serves, read from its log: loopback only.
func metricsBase(t testing.TB, d *daemon.Daemon) string {
	t.Helper()
	var logged struct {
		Addr string `json:"addr"`
	}
	if err := json.Unmarshal([]byte(d.WaitLog(`"msg":"serving metrics"`, 5*time.Second)), &logged); err != nil {
		t.Fatal(err)
	}
	if _, p, _ := net.SplitHostPort(logged.Addr); p == "0" || !strings.HasPrefix(logged.Addr, "127.0.0.1:") {
		t.Fatalf("metrics address %q", logged.Addr)
	}
	return "http://" + logged.Addr
}
