// Package metrics serves Prometheus metrics and health checks. Verdict
// counts are read from the kernel's counters at scrape time, so they are
// exact even when events are lost.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/counters"
)

// Source is what the metrics read from the running daemon.
type Source interface {
	Counters() (counters.Totals, error)
	Hooks() []string
	Reloads() map[string]uint64
	Ready() bool // programs attached and a policy loaded
	// LastRescan is when the cgroup tree was last scanned successfully.
	LastRescan() time.Time
	OutputDropped() uint64
}

type collector struct {
	src                                     Source
	requests, connections, credential, lost *prometheus.Desc
	reloads, attached, outputDropped        *prometheus.Desc
}

func newCollector(src Source) *collector {
	return &collector{
		src:         src,
		requests:    prometheus.NewDesc("imdsguard_requests_total", "HTTP requests to IMDS judged, by verdict.", []string{"action", "reason"}, nil),
		connections: prometheus.NewDesc("imdsguard_connections_total", "Connection attempts to IMDS, by verdict.", []string{"action", "reason"}, nil),
		credential:  prometheus.NewDesc("imdsguard_credential_access_total", "Requests for credential paths, by verdict.", []string{"action"}, nil),
		lost:        prometheus.NewDesc("imdsguard_events_lost_total", "Events the kernel could not queue (verdict counters stay exact).", nil, nil),
		reloads:     prometheus.NewDesc("imdsguard_policy_reloads_total", "Policy reload attempts, by result.", []string{"result"}, nil),
		attached:    prometheus.NewDesc("imdsguard_attached", "1 for each attached hook.", []string{"hook"}, nil),
		outputDropped: prometheus.NewDesc("imdsguard_output_dropped_total",
			"Events network outputs dropped because their queue was full while the collector was down.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.connections, c.credential, c.lost, c.reloads, c.attached, c.outputDropped} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	if totals, err := c.src.Counters(); err == nil {
		for _, v := range totals.Verdicts() {
			desc := c.requests
			if v.Kind == bpf.KindConnect {
				desc = c.connections
			}
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v.Count), v.Action.String(), v.Reason.String())
		}
		for _, a := range []bpf.Action{bpf.ActionAllow, bpf.ActionDeny, bpf.ActionAudit} {
			ch <- prometheus.MustNewConstMetric(c.credential, prometheus.CounterValue, float64(totals.CredentialAccess(a)), a.String())
		}
		ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(totals.EventsLost()))
	}
	for result, n := range c.src.Reloads() {
		ch <- prometheus.MustNewConstMetric(c.reloads, prometheus.CounterValue, float64(n), result)
	}
	ch <- prometheus.MustNewConstMetric(c.outputDropped, prometheus.CounterValue, float64(c.src.OutputDropped()))
	for _, h := range c.src.Hooks() {
		ch <- prometheus.MustNewConstMetric(c.attached, prometheus.GaugeValue, 1, h)
	}
}

// StaleRescan is how old the last cgroup rescan may be before /readyz
// fails: rescans run twice a second.
const StaleRescan = 10 * time.Second

// Handler serves /metrics, /healthz (the process is alive) and /readyz
// (programs attached and a policy loaded).
func Handler(src Source) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(src))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !src.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		// A daemon that stopped rescanning gives new cgroups no rules.
		age := time.Since(src.LastRescan()).Round(100 * time.Millisecond)
		if age > StaleRescan {
			http.Error(w, fmt.Sprintf("not ready: the last cgroup rescan was %s ago", age), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ready (last cgroup rescan %s ago)\n", age)
	})
	return mux
}

// Serve listens on addr until ctx ends. The listener is opened before it
// returns, so a bad address fails the start.
func Serve(ctx context.Context, addr string, src Source, log *zap.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-addr: %w", err)
	}
	srv := &http.Server{Handler: Handler(src), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", zap.Error(err))
		}
	}()
	log.Info("serving metrics", zap.String("addr", ln.Addr().String()))
	return nil
}
