package bench

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/lab"
)

// refuseCell accumulates one attempt under one configuration over rounds.
type refuseCell struct {
	p50, p99 []float64 // µs per round
	outcomes map[string]int
	n        int
}

func (c *refuseCell) add(r clientResult) {
	if c.outcomes == nil {
		c.outcomes = map[string]int{}
	}
	c.p50 = append(c.p50, PercentileNs(r.Samples, 50))
	c.p99 = append(c.p99, PercentileNs(r.Samples, 99))
	for k, v := range r.Outcomes {
		c.outcomes[k] += v
	}
	c.n += len(r.Samples)
}

// fmtDuration renders microseconds in the unit that reads best.
func fmtMicros(s Summary) string {
	if s.N == 0 {
		return "n/a"
	}
	if s.Median >= 10000 {
		ms := Summary{N: s.N, Median: s.Median / 1e3, Min: s.Min / 1e3, Max: s.Max / 1e3}
		return ms.Fmt(0) + " ms"
	}
	return s.Fmt(1) + " µs"
}

func (c *refuseCell) String() string {
	if c == nil || c.n == 0 {
		return "—"
	}
	keys := slices.Sorted(maps.Keys(c.outcomes))
	var outs []string
	for _, k := range keys {
		outs = append(outs, fmt.Sprintf("%s ×%d", k, c.outcomes[k]))
	}
	return fmt.Sprintf("p50 %s, p99 %s; %s", fmtMicros(Summarize(c.p50)), fmtMicros(Summarize(c.p99)), strings.Join(outs, ", "))
}

// BenchmarkRefuse is section 3: how long a refused attempt takes to fail,
// as the client sees it, with imdsguard and with an nftables block.
func BenchmarkRefuse(b *testing.B) {
	sc := currentScale()
	l := lab.New(b)
	srv := serveIMDS(b, l)
	imds := net.JoinHostPort(lab.IMDSv4, "80")
	const (
		cfgDrop   = "nftables drop"
		cfgReject = "nftables reject (TCP reset)"
	)
	configs := []string{cfgGuard, cfgDrop, cfgReject, cfgNone}
	const (
		podConnect = "a pod connects to IMDS"
		v1Request  = "a host process sends a token-less credentials request (IMDSv1, SSRF)"
	)
	cells := map[string]map[string]*refuseCell{}
	for _, a := range []string{podConnect, v1Request} {
		cells[a] = map[string]*refuseCell{}
		for _, c := range configs {
			cells[a][c] = &refuseCell{}
		}
	}
	n := fmt.Sprint(sc.refuseN)
	timeout := time.Second
	for round := range sc.refuseRounds {
		order := slices.Clone(configs)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, cfg := range order {
			var g *guardDaemon
			var removeTable func()
			connects := n
			switch cfg {
			case cfgGuard:
				g = startGuard(b, l)
			case cfgDrop:
				removeTable = addPodBlock(b, l, false)
				connects = fmt.Sprint(sc.refuseDropN) // each waits for the full timeout
			case cfgReject:
				removeTable = addPodBlock(b, l, true)
			}
			srv.Reset()
			cells[podConnect][cfg].add(runClient(b, l, lab.Pod, "-mode", "refuse-connect", "-addr", imds, "-n", connects, "-timeout", timeout.String()))
			if cfg != cfgReject { // the same table as drop for host traffic: nothing
				srv.Reset()
				cells[v1Request][cfg].add(runClient(b, l, lab.Node, "-mode", "refuse-request", "-addr", imds, "-n", n))
			}
			if g != nil {
				g.stop(b)
			}
			if removeTable != nil {
				removeTable()
			}
		}
	}
	t := Table{Header: append([]string{"attempt"}, configs...)}
	for _, a := range []string{podConnect, v1Request} {
		row := []string{a}
		for _, c := range configs {
			row = append(row, cells[a][c].String())
		}
		t.Rows = append(t.Rows, row)
	}
	report.Add(&Section{Num: 3, Title: sectionTitles[3], Tables: []Table{t}, Method: fmt.Sprintf(`
Time from the start of the attempt until the client learns its fate, as
benchclient (Go) sees it, with how the attempts ended. A pod's attempt is
connect() from the pod namespace to 169.254.169.254:80 (%d per round; with
the nftables drop only %d, since each waits for the client's timeout, set to
%s, botocore's default IMDS timeout; the AWS SDKs retry after it). A host's
attempt is a token-less GET /latest/meta-data/iam/security-credentials/ on a
new connection, timed from the start of the write until the write fails or
the answer arrives (%d per round). %d round(s), configurations interleaved;
p50 and p99 per round, median (min–max) over rounds shown.

The nftables table sees packets from the pod subnet only: it cannot tell a
token-less request from a host process, so under it that request is *served*
(HTTP 200, the role name), exactly as with no guard. Its reject variant
answers the pod's SYN with a reset; for host requests it is the same as the
drop table and is not measured again.`, sc.refuseN, sc.refuseDropN, timeout, sc.refuseN, sc.refuseRounds)})
}
