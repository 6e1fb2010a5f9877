package realpods

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/kubenode"
	"github.com/imdsguard/imdsguard/test/lab"
	"github.com/imdsguard/imdsguard/test/labclient/report"
)

const imdsAddr = lab.IMDSv4 + ":80"

// fixture is a lab with an IMDS server and a real node.
type fixture struct {
	lab  *lab.Lab
	srv  *imdsserver.Server
	node *kubenode.Node
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	lab.RequirePrivileged(t)
	l := lab.New(t)
	srv := imdsserver.New(imdsserver.Options{})
	ln, err := l.Listen(lab.IMDS, "tcp4", imdsAddr)
	if err != nil {
		t.Fatalf("listening on %s in imds: %v", imdsAddr, err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &fixture{lab: l, srv: srv, node: kubenode.Start(t, l, bins.labclient)}
}

// daemon starts imdsguard with the policy body (none: the default) and
// the node's CRI socket for names.
func (f *fixture) daemon(t *testing.T, policy string, args ...string) *daemon.Daemon {
	t.Helper()
	argv := append([]string{"--cri-socket", f.node.Socket}, args...)
	if policy != "" {
		p := filepath.Join(t.TempDir(), "policy.yaml")
		if err := os.WriteFile(p, []byte(policy), 0o644); err != nil {
			t.Fatal(err)
		}
		argv = append(argv, "--policy", p)
	}
	return daemon.Start(t, bins.imdsguard, f.lab, argv...)
}

// client runs labclient as container name of pod and returns its report.
func (f *fixture) client(t *testing.T, pod *kubenode.Pod, name string, args ...string) (report.Report, *kubenode.Container) {
	t.Helper()
	c := f.node.Start(pod, name, append([]string{"/labclient", "-addr", imdsAddr}, args...)...)
	out, code := c.Wait()
	if code != 0 {
		t.Fatalf("labclient in %s/%s exited %d: %s", pod.Name, name, code, out)
	}
	r, err := report.Parse([]byte(out))
	if err != nil {
		t.Fatalf("labclient in %s/%s: %v\n%s", pod.Name, name, err, out)
	}
	return r, c
}

// served counts the requests the server answered from addr.
func (f *fixture) served(addr string) int {
	n := 0
	for _, r := range f.srv.Requests() {
		if host, _, _ := net.SplitHostPort(r.RemoteAddr); host == addr {
			n++
		}
	}
	return n
}

// podCgroupGlob matches the cgroups of pod's containers, as a policy
// names cgroups (the "0::" path of /proc/PID/cgroup).
func podCgroupGlob(l *lab.Lab, pod *kubenode.Pod) string {
	return l.CgroupRel + "/kubepods/besteffort/pod" + pod.UID + "/*"
}
