package kubenode_test

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/kubenode"
	"github.com/imdsguard/imdsguard/test/lab"
	"github.com/imdsguard/imdsguard/test/labclient/report"
)

// The node is what the guard's real-pod tests stand on: a pod made over CRI
// gets an address from the CNI bridge, its container runs in the kubelet's
// cgroup for it, under the lab's cgroup, and reaches the lab's IMDS (and
// nothing else) through the node; a restart of containerd keeps the pod.
func TestNodeRunsPodsThatReachTheLabsIMDS(t *testing.T) {
	lab.RequirePrivileged(t)
	l := lab.New(t)
	srv := imdsserver.New(imdsserver.Options{})
	ln, err := l.Listen(lab.IMDS, "tcp4", net.JoinHostPort(lab.IMDSv4, "80"))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	client := lab.BuildLabclient(t)
	node := kubenode.Start(t, l, client)

	pod := node.RunPod(kubenode.PodSpec{Name: "web", Namespace: "shop"})
	if ip, err := netip.ParseAddr(pod.IP); err != nil || !netip.MustParsePrefix(kubenode.PodSubnet).Contains(ip) {
		t.Fatalf("pod address %q, want one in %s", pod.IP, kubenode.PodSubnet)
	}
	sleeper := node.Start(pod, "sleeper", "/bin/sleep", "600")
	procs, err := os.ReadFile(filepath.Join(pod.Cgroup, sleeper.ID, "cgroup.procs"))
	if err != nil || len(strings.Fields(string(procs))) == 0 {
		t.Errorf("container's cgroup %s: %q %v, want its process there", filepath.Join(pod.Cgroup, sleeper.ID), procs, err)
	}
	out, code := node.Run(pod, "app", "/labclient", "-mode", "http", "-addr", lab.IMDSv4+":80", "-fetch-token")
	if code != 0 {
		t.Fatalf("container exit %d: %s", code, out)
	}
	r, err := report.Parse([]byte(out))
	if err != nil {
		t.Fatalf("client output: %v\n%s", err, out)
	}
	if r.Status != 200 {
		t.Errorf("pod's IMDSv2 request: %+v, want 200", r)
	}
	if got := srv.Requests(); len(got) == 0 || !strings.HasPrefix(got[len(got)-1].RemoteAddr, pod.IP+":") {
		t.Errorf("server requests %+v, want them from the pod's address %s", got, pod.IP)
	}

	node.Restart()
	if out, code := node.Run(pod, "after-restart", "/bin/sh", "-c", "echo alive"); code != 0 || strings.TrimSpace(out) != "alive" {
		t.Errorf("after a containerd restart the pod runs %q (exit %d), want alive", out, code)
	}
}
