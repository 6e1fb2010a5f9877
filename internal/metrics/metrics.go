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

// families reads the daemon's state into the metric families it serves,
// at each scrape.
func families(src Source) []*family {
	requests := &family{name: "imdsguard_requests_total", help: "HTTP requests to IMDS judged, by verdict.", kind: "counter", labels: []string{"action", "reason"}}
	connections := &family{name: "imdsguard_connections_total", help: "Connection attempts to IMDS, by verdict.", kind: "counter", labels: []string{"action", "reason"}}
	credential := &family{name: "imdsguard_credential_access_total", help: "Requests for credential paths, by verdict.", kind: "counter", labels: []string{"action"}}
	lost := &family{name: "imdsguard_events_lost_total", help: "Events the kernel could not queue (verdict counters stay exact).", kind: "counter"}
	reloads := &family{name: "imdsguard_policy_reloads_total", help: "Policy reload attempts, by result.", kind: "counter", labels: []string{"result"}}
	attached := &family{name: "imdsguard_attached", help: "1 for each attached hook.", kind: "gauge", labels: []string{"hook"}}
	outputDropped := &family{name: "imdsguard_output_dropped_total", kind: "counter",
		help: "Events network outputs dropped because their queue was full while the collector was down."}
	if totals, err := src.Counters(); err == nil {
		for _, v := range totals.Verdicts() {
			f := requests
			if v.Kind == bpf.KindConnect {
				f = connections
			}
			f.add(float64(v.Count), v.Action.String(), v.Reason.String())
		}
		for _, a := range []bpf.Action{bpf.ActionAllow, bpf.ActionDeny, bpf.ActionAudit} {
			credential.add(float64(totals.CredentialAccess(a)), a.String())
		}
		lost.add(float64(totals.EventsLost()))
	}
	for result, n := range src.Reloads() {
		reloads.add(float64(n), result)
	}
	outputDropped.add(float64(src.OutputDropped()))
	for _, h := range src.Hooks() {
		attached.add(1, h)
	}
	return []*family{requests, connections, credential, lost, reloads, attached, outputDropped}
}

// StaleRescan is how old the last cgroup rescan may be before /readyz
// fails: rescans run twice a second.
const StaleRescan = 10 * time.Second

// Handler serves /metrics, /healthz (the process is alive) and /readyz
// (programs attached and a policy loaded).
func Handler(src Source) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		serveText(w, r, families(src))
	})
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
