package integration

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// The three ways a client can name the IPv4 or IPv6 IMDS endpoint.
var imdsAddrs = []struct{ name, addr, endpoint string }{
	{"ipv4", net.JoinHostPort(lab.IMDSv4, "80"), "169.254.169.254:80"},
	{"ipv6", net.JoinHostPort(lab.IMDSv6, "80"), "[fd00:ec2::254]:80"},
	{"ipv4-mapped", "[::ffff:169.254.169.254]:80", "169.254.169.254:80"},
}

func TestPodConnectRefusedWithEPERM(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)

	for _, a := range imdsAddrs {
		t.Run(a.name, func(t *testing.T) {
			r := runClient(t, l, lab.Pod, "", "-mode", "http", "-addr", a.addr, "-timeout", "5s",
				"-path", "/latest/meta-data/iam/security-credentials/")
			if r.ConnectErrno != "EPERM" {
				t.Fatalf("pod connect to %s: errno %q (status %d), want EPERM", a.addr, r.ConnectErrno, r.Status)
			}
			// Refused by the kernel at connect(), not by a timeout.
			if r.ConnectMS > 500 {
				t.Errorf("refusal took %.1f ms, want well under the 5 s client timeout", r.ConnectMS)
			}
			ev := d.WaitEvent("deny for pod pid", func(e event) bool { return e.PID == r.PID && e.Kind == "connect" })
			if ev.Kind != "connect" || ev.Action != "deny" || ev.Reason != "non_host_netns" || ev.Endpoint != a.endpoint {
				t.Errorf("event %+v, want connect deny non_host_netns on %s", ev, a.endpoint)
			}
			if ev.HostNetns || ev.Comm != "labclient" || ev.Cgroup != l.CgroupRel || ev.UID != 0 {
				t.Errorf("event %+v, want host_netns=false comm=labclient cgroup=%s uid=0", ev, l.CgroupRel)
			}
			if ev.NetnsCookie == "" || ev.NetnsCookie == "0" {
				t.Errorf("event has no netns cookie: %+v", ev)
			}
		})
	}
	if n := srv.ReceivedBytes(); n != 0 || len(srv.Conns()) != 0 {
		t.Fatalf("IMDS server saw %d connections and %d bytes from refused pods", len(srv.Conns()), n)
	}
}

func TestHostClientGetsIMDS(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)

	for _, a := range imdsAddrs {
		t.Run(a.name, func(t *testing.T) {
			r := runClient(t, l, lab.Node, "", "-mode", "http", "-addr", a.addr, "-fetch-token", "-path", "/latest/meta-data/instance-id")
			if r.ConnectErrno != "" || r.Status != 200 || r.Body != imdsserver.DefaultInstanceID {
				t.Fatalf("host client via %s: errno %q status %d body %q error %q, want 200 %s",
					a.addr, r.ConnectErrno, r.Status, r.Body, r.Error, imdsserver.DefaultInstanceID)
			}
			ev := d.WaitEvent("allow for host pid", func(e event) bool { return e.PID == r.PID && e.Kind == "connect" })
			if ev.Action != "allow" || ev.Reason != "" || !ev.HostNetns || ev.Endpoint != a.endpoint || ev.Comm != "labclient" {
				t.Errorf("event %+v, want allow from the host netns on %s", ev, a.endpoint)
			}
		})
	}
	// a token PUT and a GET per address
	if len(srv.Requests()) != 2*len(imdsAddrs) {
		t.Errorf("IMDS server answered %d requests, want %d", len(srv.Requests()), 2*len(imdsAddrs))
	}
}

func TestPodKeepsOtherLinkLocalServices(t *testing.T) {
	l := lab.New(t)
	want := startNeighbours(t, l)
	d := startDaemon(t, l)

	for addr, body := range want {
		r := runClient(t, l, lab.Pod, "", "-mode", "http", "-addr", addr, "-path", "/")
		if r.ConnectErrno != "" || r.Status != 200 || r.Body != body {
			t.Errorf("pod to %s: errno %q status %d body %q error %q, want 200 %q",
				addr, r.ConnectErrno, r.Status, r.Body, r.Error, body)
		}
	}
	if code := d.Stop(); code != 0 {
		t.Fatalf("imdsguard exit code %d", code)
	}
	// Untouched means not even reported.
	if evs := d.Events(); len(evs) != 0 {
		t.Fatalf("non-IMDS connections produced events: %+v", evs)
	}
}

func TestAuditModeLetsPodThroughAndReports(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l, "--mode", "audit")

	for _, a := range imdsAddrs {
		r := runClient(t, l, lab.Pod, "", "-mode", "http", "-addr", a.addr, "-path", "/latest/meta-data/instance-id")
		if r.ConnectErrno != "" || r.Status != 200 {
			t.Fatalf("audit mode, pod via %s: errno %q status %d, want 200", a.addr, r.ConnectErrno, r.Status)
		}
		ev := d.WaitEvent("audit for pod pid", func(e event) bool { return e.PID == r.PID && e.Kind == "connect" })
		if ev.Action != "audit" || ev.Reason != "non_host_netns" || ev.HostNetns || ev.Endpoint != a.endpoint {
			t.Errorf("event %+v, want audit non_host_netns on %s", ev, a.endpoint)
		}
	}
	if got := len(srv.Requests()); got != len(imdsAddrs) {
		t.Errorf("IMDS server answered %d requests, want %d", got, len(imdsAddrs))
	}
}

func TestEventNamesProcessAndCgroup(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	app, appID := l.NewSubCgroup(t, "app")
	d := startDaemon(t, l)

	r := runClient(t, l, lab.Pod, app, "-mode", "connect", "-addr", net.JoinHostPort(lab.IMDSv4, "80"))
	if r.ConnectErrno != "EPERM" {
		t.Fatalf("connect errno %q, want EPERM", r.ConnectErrno)
	}
	ev := d.WaitEvent("deny for client pid", func(e event) bool { return e.PID == r.PID })
	wantCgroup := l.CgroupRel + "/" + filepath.Base(app)
	if ev.Cgroup != wantCgroup || ev.CgroupID != appID || ev.Comm != "labclient" || ev.PID != r.PID {
		t.Fatalf("event %+v, want pid %d comm labclient cgroup %s (id %d)", ev, r.PID, wantCgroup, appID)
	}
	// the client's parent is this test process (nsenter execs the client)
	if ev.PPID != os.Getpid() {
		t.Errorf("event ppid %d, want %d", ev.PPID, os.Getpid())
	}
	if ev.Time == "" || !strings.HasSuffix(ev.Time, "Z") {
		t.Errorf("event time %q, want RFC 3339 UTC", ev.Time)
	}
}

func TestDaemonExitDetachesEverything(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)

	if got := attachedPrograms(t, l.Cgroup); got == 0 {
		t.Fatal("no program attached to the lab cgroup while the daemon runs")
	}
	if code := d.Stop(); code != 0 {
		t.Fatalf("imdsguard exit code %d after SIGTERM, want 0; stderr:\n%s", code, d.Stderr())
	}
	if got := attachedPrograms(t, l.Cgroup); got != 0 {
		t.Fatalf("%d programs still attached after exit", got)
	}
	// And the guard is really gone: the pod reaches IMDS again.
	r := runClient(t, l, lab.Pod, "", "-mode", "http", "-addr", net.JoinHostPort(lab.IMDSv4, "80"), "-path", "/latest/meta-data/instance-id")
	if r.ConnectErrno != "" || r.Status != 200 {
		t.Fatalf("after detach, pod got errno %q status %d, want 200", r.ConnectErrno, r.Status)
	}
}

// attachedPrograms counts programs on the cgroup's connect and sockops hooks.
func attachedPrograms(t testing.TB, cgroup string) int {
	t.Helper()
	n, err := lab.ProgramsOn(cgroup, ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupSockOps)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
