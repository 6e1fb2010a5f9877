package realpods

import (
	"fmt"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/kubenode"
)

// connectEvent waits for the connect event of container c.
func connectEvent(d *daemon.Daemon, c *kubenode.Container) daemon.Event {
	return d.WaitEvent("connect of container "+c.Name, func(e daemon.Event) bool {
		return e.Kind == "connect" && e.ContainerID == c.ID
	})
}

// checkNames fails unless ev names pod and container c as the runtime does.
func checkNames(t *testing.T, ev daemon.Event, pod *kubenode.Pod, c *kubenode.Container) {
	t.Helper()
	got := fmt.Sprintf("pod=%s namespace=%s container=%s pod_uid=%s image=%s", ev.Pod, ev.Namespace, ev.Container, ev.PodUID, ev.Image)
	want := fmt.Sprintf("pod=%s namespace=%s container=%s pod_uid=%s image=%s", pod.Name, pod.Namespace, c.Name, pod.UID, kubenode.ImageName)
	if got != want {
		t.Errorf("event names %s\nwant           %s\nevent: %+v", got, want, ev)
	}
}

// A pod of a real runtime (its own network namespace, made by the CNI
// bridge) is refused at connect with EPERM, even with a token, and its
// event names it as containerd does.
func TestRealPodIsRefusedAndNamed(t *testing.T) {
	f := newFixture(t)
	pod := f.node.RunPod(kubenode.PodSpec{Name: "web-7d4b9c6f5-x2x9q", Namespace: "shop"})
	d := f.daemon(t, "")

	r, c := f.client(t, pod, "app", "-mode", "http", "-fetch-token", "-path", "/latest/meta-data/iam/security-credentials/")
	if r.ConnectErrno != "EPERM" || r.TokenConnectErrno != "EPERM" {
		t.Errorf("pod's connects: token %q, request %q, want EPERM for both", r.TokenConnectErrno, r.ConnectErrno)
	}
	ev := connectEvent(d, c)
	if ev.Action != "deny" || ev.Reason != "non_host_netns" || ev.HostNetns {
		t.Errorf("event %s %s host_netns=%v, want deny non_host_netns from another namespace", ev.Action, ev.Reason, ev.HostNetns)
	}
	checkNames(t, ev, pod, c)
	if n := f.served(pod.IP); n != 0 {
		t.Errorf("the server answered %d requests from the pod", n)
	}
	for _, line := range d.Lines() {
		if strings.Contains(line, c.ID) {
			t.Logf("the event as emitted: %s", line) // what a SIEM gets from a real runtime's pod
			break
		}
	}
}

// A hostNetwork pod shares the node's network namespace, so only a rule on
// the kubelet's cgroups stops it: without one it is served, with one it
// is refused.
func TestHostNetworkPodIsCaughtByACgroupRule(t *testing.T) {
	f := newFixture(t)
	pod := f.node.RunPod(kubenode.PodSpec{Name: "node-agent-4kq7m", Namespace: "kube-system", HostNetwork: true})

	d := f.daemon(t, "")
	r, _ := f.client(t, pod, "before", "-mode", "http", "-fetch-token")
	if r.Status != 200 {
		t.Fatalf("hostNetwork pod without a rule: %+v, want served (it is the host's namespace)", r)
	}
	d.Stop()

	d = f.daemon(t, fmt.Sprintf(`rules:
  - name: no-host-network-pods
    match: {cgroup: %q}
    deny: true
`, f.lab.CgroupRel+"/kubepods/**"))
	r, c := f.client(t, pod, "after", "-mode", "http", "-fetch-token")
	if r.ConnectErrno != "EPERM" {
		t.Errorf("hostNetwork pod with the rule: connect %q (status %d), want EPERM", r.ConnectErrno, r.Status)
	}
	ev := connectEvent(d, c)
	if ev.Action != "deny" || ev.Reason != "policy_rule" || ev.Rule != "no-host-network-pods" || !ev.HostNetns {
		t.Errorf("event %s %s rule %q host_netns=%v, want deny policy_rule no-host-network-pods from the host namespace",
			ev.Action, ev.Reason, ev.Rule, ev.HostNetns)
	}
	checkNames(t, ev, pod, c)
}

// allowNonHostNetns for one pod lets that pod's IMDSv2 client through and
// not its neighbour's.
func TestAllowNonHostNetnsForOnePodOnly(t *testing.T) {
	f := newFixture(t)
	broker := f.node.RunPod(kubenode.PodSpec{Name: "iam-broker-0", Namespace: "security"})
	neighbour := f.node.RunPod(kubenode.PodSpec{Name: "web-7d4b9c6f5-x2x9q", Namespace: "shop"})
	d := f.daemon(t, fmt.Sprintf(`rules:
  - name: iam-broker
    match: {cgroup: %q}
    allowNonHostNetns: true
`, podCgroupGlob(f.lab, broker)))

	r, c := f.client(t, broker, "broker", "-mode", "http", "-fetch-token", "-path", "/latest/meta-data/iam/security-credentials/")
	if r.Status != 200 || r.TokenStatus != 200 {
		t.Errorf("allowed pod: token %d, request %d (%s %s), want 200 for both", r.TokenStatus, r.Status, r.ConnectErrno, r.Error)
	}
	ev := connectEvent(d, c)
	if ev.Action != "allow" || ev.Rule != "iam-broker" {
		t.Errorf("allowed pod's event %s rule %q, want allow by iam-broker", ev.Action, ev.Rule)
	}
	checkNames(t, ev, broker, c)

	r, c = f.client(t, neighbour, "app", "-mode", "http", "-fetch-token")
	if r.ConnectErrno != "EPERM" {
		t.Errorf("neighbour pod: connect %q status %d, want EPERM", r.ConnectErrno, r.Status)
	}
	if ev := connectEvent(d, c); ev.Action != "deny" || ev.Reason != "non_host_netns" {
		t.Errorf("neighbour's event %s %s, want deny non_host_netns", ev.Action, ev.Reason)
	}
	if n := f.served(neighbour.IP); n != 0 {
		t.Errorf("the server answered %d requests from the neighbour", n)
	}
}

// The names keep coming when containerd restarts under a running daemon
// (the CRI connection breaks and comes back), for old and new pods.
func TestEventsKeepTheirNamesAcrossAContainerdRestart(t *testing.T) {
	f := newFixture(t)
	old := f.node.RunPod(kubenode.PodSpec{Name: "old-6c9f8-abcde", Namespace: "shop"})
	d := f.daemon(t, "")
	_, c := f.client(t, old, "first", "-mode", "connect")
	checkNames(t, connectEvent(d, c), old, c)

	f.node.Restart()
	_, c = f.client(t, old, "second", "-mode", "connect")
	checkNames(t, connectEvent(d, c), old, c)
	fresh := f.node.RunPod(kubenode.PodSpec{Name: "new-5b8d7-fghij", Namespace: "shop"})
	r, c := f.client(t, fresh, "app", "-mode", "connect")
	if r.ConnectErrno != "EPERM" {
		t.Errorf("pod made after the restart: connect %q, want EPERM", r.ConnectErrno)
	}
	checkNames(t, connectEvent(d, c), fresh, c)
}

// Pods created after the daemon started are covered from their first
// connect: one without a grant is refused, and one whose grant was written
// for its cgroup before it existed gets it by its first connect.
func TestPodsCreatedAfterTheDaemonAreCoveredFromTheirFirstConnect(t *testing.T) {
	f := newFixture(t)
	grantedUID := kubenode.NewUID()
	d := f.daemon(t, fmt.Sprintf(`rules:
  - name: late-broker
    match: {cgroup: %q}
    allowNonHostNetns: true
`, f.lab.CgroupRel+"/kubepods/besteffort/pod"+grantedUID+"/*"))

	granted := f.node.RunPod(kubenode.PodSpec{Name: "late-broker-0", Namespace: "security", UID: grantedUID})
	other := f.node.RunPod(kubenode.PodSpec{Name: "late-web-0", Namespace: "shop"})
	r, c := f.client(t, granted, "app", "-mode", "http", "-fetch-token")
	if r.Status != 200 || r.TokenStatus != 200 {
		t.Errorf("late pod with a grant, first try: token %d request %d (%s), want 200", r.TokenStatus, r.Status, r.ConnectErrno)
	}
	if ev := connectEvent(d, c); ev.Action != "allow" || ev.Rule != "late-broker" {
		t.Errorf("late pod's event %s rule %q, want allow by late-broker", ev.Action, ev.Rule)
	}
	r, c = f.client(t, other, "app", "-mode", "connect")
	if r.ConnectErrno != "EPERM" {
		t.Errorf("late pod without a grant, first try: connect %q, want EPERM", r.ConnectErrno)
	}
	checkNames(t, connectEvent(d, c), other, c)
}
