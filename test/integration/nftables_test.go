package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

func nftIn(t testing.TB, l *lab.Lab, ns lab.NS, args ...string) string {
	t.Helper()
	out, stderr, code, _ := runInLab(t, l, ns, nil, "nft", args...)
	if code != 0 {
		t.Fatalf("nft %v in %s: exit %d: %s", args, ns, code, stderr)
	}
	return out
}

type rawResult struct {
	SynAck   bool   `json:"syn_ack"`
	Sent     bool   `json:"sent"`
	Response string `json:"response"`
	Error    string `json:"error"`
}

// rawAttack hand-crafts a TCP connection and a token-less GET from the pod
// on a raw socket: no socket hook of the host ever sees it.
func rawAttack(t testing.TB, l *lab.Lab) rawResult {
	t.Helper()
	return rawFrom(t, l, lab.Pod, "-src", lab.PodV4, "-dst", imdsAddr)
}

// A pod with CAP_NET_RAW crafting TCP by hand passes no socket hook; the
// table stops it. Without the table the same attack reaches IMDS, so the
// test can fail.
func TestRawSocketFromPodIsStoppedByTheTable(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	dropOwnResets(t, l, lab.Pod)

	before := rawAttack(t, l)
	if !before.SynAck || !strings.Contains(before.Response, imdsserver.DefaultRole) || len(srv.Requests()) != 1 {
		t.Fatalf("without imdsguard the raw attack should reach IMDS: %+v, %d requests", before, len(srv.Requests()))
	}
	srv.Reset()

	d := startDaemon(t, l)
	after := rawAttack(t, l)
	if after.SynAck || after.Response != "" {
		t.Fatalf("with imdsguard the raw attack got %+v", after)
	}
	if len(srv.Conns()) != 0 || len(srv.Requests()) != 0 {
		t.Fatalf("IMDS saw %d connections, %d requests", len(srv.Conns()), len(srv.Requests()))
	}
	ev := d.WaitEvent("packet event", func(e event) bool { return e.Kind == "packet" })
	if ev.Action != "deny" || ev.Reason != "routed_from_other_netns" || ev.Endpoint != "169.254.169.254:80" ||
		!strings.HasPrefix(ev.Src, lab.PodV4+":") || ev.InInterface != l.NodePodLink {
		t.Fatalf("packet event %+v, want deny routed_from_other_netns from %s on %s", ev, lab.PodV4, l.NodePodLink)
	}
	// counted in the table
	list := nftIn(t, l, lab.Node, "list", "table", "inet", "imdsguard")
	counted := false
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, "ip daddr 169.254.169.254") && strings.HasSuffix(line, " drop") {
			counted = !strings.Contains(line, "counter packets 0 ")
		}
	}
	if !counted {
		t.Errorf("the IPv4 drop rule did not count the packets:\n%s", list)
	}
}

// Deleting or flushing the table while the daemon runs: restored within a
// few seconds, with an event. Exit removes exactly this table.
func TestTableIsRestoredAndRemovedCleanly(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	nftIn(t, l, lab.Node, "add", "table", "ip", "kube-proxy")
	nftIn(t, l, lab.Node, "add", "chain", "ip", "kube-proxy", "svc", "{ type nat hook prerouting priority -100 ; }")
	d := startDaemon(t, l)
	want := nftIn(t, l, lab.Node, "list", "table", "inet", "imdsguard")

	for i, breakIt := range [][]string{
		{"flush", "chain", "inet", "imdsguard", "forward"},
		{"delete", "table", "inet", "imdsguard"},
		{"flush", "ruleset"},
	} {
		nftIn(t, l, lab.Node, breakIt...)
		start := time.Now()
		waitFor(t, 5*time.Second, "the table to be restored", func() bool {
			out, _, code, _ := runInLab(t, l, lab.Node, nil, "nft", "list", "table", "inet", "imdsguard")
			return code == 0 && stripCounters(out) == stripCounters(want)
		})
		t.Logf("%v: restored after %s", breakIt, time.Since(start).Round(time.Millisecond))
		n := i + 1
		waitFor(t, 2*time.Second, "the restore events", func() bool { return countKind(d, "nftables") >= n })
	}
	// flush ruleset took kube-proxy's table with it; add it back to check the exit
	nftIn(t, l, lab.Node, "add", "table", "ip", "kube-proxy")
	if code := d.Stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	tables := nftIn(t, l, lab.Node, "list", "tables")
	if strings.Contains(tables, "imdsguard") || !strings.Contains(tables, "table ip kube-proxy") {
		t.Fatalf("tables after exit:\n%s", tables)
	}
}

func stripCounters(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if i := strings.Index(line, "counter packets"); i >= 0 {
			rest := line[i:]
			if j := strings.Index(rest, " bytes "); j >= 0 {
				rest = rest[j+7:]
				if k := strings.Index(rest, " "); k >= 0 {
					line = line[:i] + "counter" + rest[k:]
				}
			}
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

func countKind(d *daemon.Daemon, kind string) int {
	n := 0
	for _, e := range d.Events() {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

// nftables: false turns the layer off; nftablesAction: reject resets.
func TestTableFollowsThePolicy(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	dir := t.TempDir()
	pol := writePolicy(t, dir, "policy.yaml", "nftables: false\n")
	d := startDaemon(t, l, "--policy", pol)
	if out := nftIn(t, l, lab.Node, "list", "tables"); strings.Contains(out, "imdsguard") {
		t.Fatalf("nftables: false, yet:\n%s", out)
	}
	writePolicy(t, dir, "policy.yaml", "nftablesAction: reject\n")
	d.WaitEvent("reload", func(e event) bool { return e.Kind == "policy" && e.Result == "loaded" })
	waitFor(t, 3*time.Second, "the reject table", func() bool {
		out, _, _, _ := runInLab(t, l, lab.Node, nil, "nft", "list", "table", "inet", "imdsguard")
		return strings.Contains(out, "reject with tcp reset")
	})
}

// A pod an allowNonHostNetns rule matches is let through by its addresses,
// for as long as it runs.
func TestTableFollowsAllowedPods(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	broker, _ := l.NewSubCgroup(t, "broker")
	pol := writePolicy(t, t.TempDir(), "policy.yaml", fmt.Sprintf(
		"rules:\n  - name: iam-broker\n    match: {cgroup: %q}\n    allowNonHostNetns: true\n", l.CgroupRel+"/broker"))
	startDaemon(t, l, "--policy", pol)
	set := func() string { return nftIn(t, l, lab.Node, "list", "set", "inet", "imdsguard", "allowed4") }
	if strings.Contains(set(), lab.PodV4) {
		t.Fatalf("pod address allowed before the broker runs:\n%s", set())
	}
	wait, release := startWaitingClientIn(t, l, lab.Pod, broker, "-mode", "connect", "-addr", imdsAddr)
	waitFor(t, 3*time.Second, "the broker pod's address in allowed4", func() bool { return strings.Contains(set(), lab.PodV4) })
	release()
	wait()
	waitFor(t, 3*time.Second, "the address to leave allowed4", func() bool { return !strings.Contains(set(), lab.PodV4) })
}
