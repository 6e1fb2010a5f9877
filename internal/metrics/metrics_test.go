package metrics

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/counters"
)

// source is a daemon as the metrics see it, without a kernel.
type source struct {
	totals     counters.Totals
	hooks      []string
	ready      bool
	lastRescan time.Time
}

func (s *source) Counters() (counters.Totals, error) { return s.totals, nil }
func (s *source) Hooks() []string                    { return s.hooks }
func (s *source) Reloads() map[string]uint64         { return map[string]uint64{"loaded": 2, "rejected": 1} }
func (s *source) Ready() bool                        { return s.ready }
func (s *source) LastRescan() time.Time              { return s.lastRescan }
func (s *source) OutputDropped() uint64              { return 7 }

func get(t *testing.T, h http.Handler, path string) (int, string) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

// The counters come out as they are in the kernel, by verdict, with the
// hooks, reloads, lost and dropped events.
func TestMetricsReportTheKernelCounters(t *testing.T) {
	src := &source{
		totals: counters.From(map[uint32]uint64{
			bpf.CounterSlot(bpf.KindRequest, bpf.ActionDeny, bpf.ReasonIMDSv1NoToken): 3,
			bpf.CounterSlot(bpf.KindConnect, bpf.ActionDeny, bpf.ReasonNonHostNetns):  2,
			bpf.CounterEventsLost: 5,
		}),
		hooks: []string{"sk_msg", "egress"}, ready: true, lastRescan: time.Now(),
	}
	code, body := get(t, Handler(src), "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`imdsguard_requests_total{action="deny",reason="imdsv1_no_token"} 3`,
		`imdsguard_connections_total{action="deny",reason="non_host_netns"} 2`,
		`imdsguard_events_lost_total 5`,
		`imdsguard_attached{hook="egress"} 1`,
		`imdsguard_policy_reloads_total{result="rejected"} 1`,
		`imdsguard_output_dropped_total 7`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
}

// /readyz is ready only while the programs are attached and the cgroup
// tree was scanned lately; /healthz only says the process answers.
func TestReadinessFollowsAttachmentAndRescans(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  source
		code int
		says string
	}{
		{"ready", source{ready: true, lastRescan: time.Now()}, http.StatusOK, "ready (last cgroup rescan"},
		{"not attached", source{ready: false, lastRescan: time.Now()}, http.StatusServiceUnavailable, "not ready"},
		{"stale rescan", source{ready: true, lastRescan: time.Now().Add(-2 * StaleRescan)}, http.StatusServiceUnavailable, "the last cgroup rescan was"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(t, Handler(&tc.src), "/readyz")
			if code != tc.code || !strings.Contains(body, tc.says) {
				t.Errorf("/readyz = %d %q, want %d and %q", code, body, tc.code, tc.says)
			}
			if code, _ := get(t, Handler(&tc.src), "/healthz"); code != http.StatusOK {
				t.Errorf("/healthz = %d, want 200", code)
			}
		})
	}
}

// What /metrics writes is what Prometheus's own parser reads, escapes
// included, plain or gzipped as the scraper asks.
func TestMetricsParseAsPrometheusText(t *testing.T) {
	src := &source{hooks: []string{"sk_msg", `odd"hook\` + "\n"}, ready: true, lastRescan: time.Now()}
	for _, enc := range []string{"", "gzip", "gzip;q=0", "br, gzip;q=0.5"} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header.Set("Accept-Encoding", enc)
		Handler(src).ServeHTTP(rec, req)
		body := io.Reader(rec.Body)
		if gzipped := rec.Header().Get("Content-Encoding") == "gzip"; gzipped != acceptsGzip(enc) {
			t.Fatalf("Accept-Encoding %q: Content-Encoding %q", enc, rec.Header().Get("Content-Encoding"))
		} else if gzipped {
			zr, err := gzip.NewReader(rec.Body)
			if err != nil {
				t.Fatal(err)
			}
			body = zr
		}
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
			t.Errorf("Content-Type %q", ct)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(body)
		if err != nil {
			t.Fatalf("Accept-Encoding %q: %v", enc, err)
		}
		var hooks []string
		for _, m := range fams["imdsguard_attached"].GetMetric() {
			hooks = append(hooks, m.GetLabel()[0].GetValue())
		}
		if want := []string{`odd"hook\` + "\n", "sk_msg"}; !slices.Equal(hooks, want) {
			t.Errorf("hooks %q, want %q", hooks, want)
		}
		if got := fams["imdsguard_policy_reloads_total"].GetMetric()[1].GetCounter().GetValue(); got != 1 {
			t.Errorf("reloads rejected = %v", got)
		}
	}
}
