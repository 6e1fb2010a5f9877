package realpods

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/kubenode"
	"github.com/imdsguard/imdsguard/test/lab"
	"github.com/imdsguard/imdsguard/test/labclient/report"
)

// hostClient runs labclient in the node's namespace, in cgroup dir.
func (f *fixture) hostClient(t *testing.T, dir string, args ...string) report.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), lab.Patience(30*time.Second))
	defer cancel()
	cmd := f.lab.CommandInCgroup(ctx, lab.Node, dir, bins.labclient, append([]string{"-addr", imdsAddr}, args...)...)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("labclient in %s: %v", dir, err)
	}
	r, err := report.Parse(out.Bytes())
	if err != nil {
		t.Fatalf("labclient in %s: %v\n%s", dir, err, out.String())
	}
	return r
}

// imdsguard runs the imdsguard binary and returns its stdout; it fails the
// test on a non-zero exit.
func imdsguard(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bins.imdsguard, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("imdsguard %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// workload is the mixed node of the roll-out: a legacy service making
// IMDSv1 requests and a pod that needs IMDS (its broker) are legitimate;
// a pod that must not reach IMDS and a service that must not make IMDSv1
// requests try only once the guard enforces, as an attacker would.
type workload struct {
	legacy, other string // cgroups of host services
	broker, web   *kubenode.Pod
}

var (
	v1Read = []string{"-mode", "http", "-path", "/latest/meta-data/iam/security-credentials/"}
	v2Read = append([]string{"-fetch-token"}, v1Read...)
)

// legitimate makes the legitimate workloads' requests.
func (w *workload) legitimate(t *testing.T, f *fixture) (legacy, broker report.Report) {
	t.Helper()
	broker, _ = f.client(t, w.broker, "broker", v2Read...)
	return f.hostClient(t, w.legacy, v1Read...), broker
}

// The roll-out path on a real node: audit a mixed workload, let suggest
// write the exceptions from what audit reported, and enforce with them:
// the legacy v1 service and the broker pod keep working (the broker also
// once re-created, with a new pod uid), the others are refused.
func TestAuditSuggestEnforce(t *testing.T) {
	f := newFixture(t)
	legacy, _ := f.lab.NewSubCgroup(t, "legacy.service")
	w := &workload{
		legacy: legacy,
		broker: f.node.RunPod(kubenode.PodSpec{Name: "iam-broker-6d5f7c9b8-k2x4p", Namespace: "security"}),
		web:    f.node.RunPod(kubenode.PodSpec{Name: "web-7d4b9c6f5-x2x9q", Namespace: "shop"}),
	}

	// 1. audit: the legitimate workloads are served, and what enforce
	// would refuse of them is reported
	audit := f.daemon(t, "mode: audit\n")
	if legacy, broker := w.legitimate(t, f); legacy.Status != 200 || broker.Status != 200 {
		t.Fatalf("audit mode: legacy %+v, broker %+v, want both served", legacy, broker)
	}
	audit.WaitEvent("the broker's audited connect", func(e daemon.Event) bool {
		return e.Action == "audit" && e.Pod == w.broker.Name
	})
	audit.Stop()
	events := filepath.Join(t.TempDir(), "events.json")
	if err := os.WriteFile(events, []byte(strings.Join(audit.Lines(), "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// 2. suggest: its output passes check
	suggested := imdsguard(t, "suggest", events)
	policy := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policy, []byte(suggested), 0o644); err != nil {
		t.Fatal(err)
	}
	imdsguard(t, "check", "--policy", policy, "--dmi-dir", daemon.FakeDMI(t, "Amazon EC2"))
	t.Logf("suggested policy:\n%s", suggested)
	if strings.Contains(suggested, "/**") {
		t.Errorf("suggest granted a whole subtree:\n%s", suggested)
	}

	// 3. enforce with the suggestion
	w.other, _ = f.lab.NewSubCgroup(t, "other.service")
	d := f.daemon(t, "", "--policy", policy)
	if legacy, broker := w.legitimate(t, f); legacy.Status != 200 || broker.Status != 200 {
		t.Errorf("enforce with the suggestion: legacy %+v, broker %+v, want both served", legacy, broker)
	}
	if web, _ := f.client(t, w.web, "app", v2Read...); web.ConnectErrno != "EPERM" {
		t.Errorf("enforce with the suggestion: the web pod got %+v, want EPERM at connect", web)
	}
	if other := f.hostClient(t, w.other, v1Read...); other.Status == 200 || len(other.Writes) == 0 || other.Writes[0].Errno != "EACCES" {
		t.Errorf("enforce with the suggestion: another service's IMDSv1 request got %+v, want EACCES", other)
	}

	// the broker's pod re-created by its Deployment: same names, new uid
	w.broker = f.node.RunPod(kubenode.PodSpec{Name: "iam-broker-6d5f7c9b8-q8z1m", Namespace: "security"})
	r, c := f.client(t, w.broker, "broker", v2Read...)
	if r.Status != 200 {
		t.Errorf("the re-created broker pod got %+v, want served by the suggested rule", r)
	}
	if ev := connectEvent(d, c); ev.Action != "allow" || ev.Rule == "" {
		t.Errorf("the re-created broker's connect: %s by rule %q, want allowed by a suggested rule", ev.Action, ev.Rule)
	}
}
