package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/internal/uplink"
	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// rawFrom runs rawclient in ns with args and decodes its result.
func rawFrom(t testing.TB, l *lab.Lab, ns lab.NS, args ...string) rawResult {
	t.Helper()
	return rawFromIn(t, l, ns, l.Cgroup, args...)
}

// rawFromIn is rawFrom in another cgroup of the lab.
func rawFromIn(t testing.TB, l *lab.Lab, ns lab.NS, dir string, args ...string) rawResult {
	t.Helper()
	out, stderr, code, _ := runInLabCgroup(t, l, ns, dir, bins.rawclient, append([]string{"-timeout", "2s"}, args...)...)
	if code != 0 {
		t.Fatalf("rawclient %v: exit %d: %s", args, code, stderr)
	}
	var r rawResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("rawclient output %q: %v", out, err)
	}
	return r
}

// dropOwnResets keeps ns's kernel from resetting the connections rawclient
// makes by hand (it knows nothing of them).
func dropOwnResets(t testing.TB, l *lab.Lab, ns lab.NS) {
	t.Helper()
	nftIn(t, l, ns, "add", "table", "inet", "rawclient")
	nftIn(t, l, ns, "add", "chain", "inet", "rawclient", "out", "{ type filter hook output priority 0 ; }")
	nftIn(t, l, ns, "add", "rule", "inet", "rawclient", "out", "tcp", "flags", "rst", "drop")
}

// handleIn is a netlink handle in the lab namespace ns.
func handleIn(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func macOf(t testing.TB, h *netlink.Handle, name string) string {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return link.Attrs().HardwareAddr.String()
}

// served says whether a raw attack got the credentials.
func served(r rawResult) bool {
	return strings.Contains(r.Response, imdsserver.DefaultRole)
}

// The attacks of one sender: token-less credential requests on TCP built
// by hand, over a raw IPv4 socket, a raw IPv6 socket and an AF_PACKET
// socket on the uplink. None passes a socket hook or the forward chain.
func rawAttacks(src4, src6, link, mac string) map[string][]string {
	return map[string][]string{
		"raw IPv4":  {"-src", src4, "-dst", imdsAddr},
		"raw IPv6":  {"-src", src6, "-dst", "[" + lab.IMDSv6 + "]:80"},
		"AF_PACKET": {"-src", src4, "-dst", imdsAddr, "-link", link, "-dst-mac", mac},
	}
}

// A host process with CAP_NET_RAW crafts TCP to IMDS: without the uplink
// guard it is served whatever the policy says; with it, the segments with
// payload never leave the node, the client is never answered, and the
// event names the sender's cgroup. The guard comes back if deleted and
// goes, with its qdisc, when the daemon detaches.
func TestRawTCPFromTheHostIsDroppedAtTheUplink(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	dropOwnResets(t, l, lab.Node)
	mac := macOf(t, handleIn(t, l.NetnsPath(lab.IMDS)), l.IMDSLink)
	attacks := rawAttacks(lab.NodeIMDSLinkV4, lab.NodeIMDSLinkV6, l.NodeIMDSLink, mac)

	for name, args := range attacks {
		if r := rawFrom(t, l, lab.Node, args...); !served(r) {
			t.Fatalf("%s: without imdsguard the attack should be served: %+v", name, r)
		}
	}
	srv.Reset()

	d := startDaemon(t, l)
	for name, args := range attacks {
		r := rawFrom(t, l, lab.Node, args...)
		if r.Response != "" {
			t.Errorf("%s: with imdsguard the attack got %+v", name, r)
		}
	}
	if n := len(srv.Requests()); n != 0 {
		t.Fatalf("IMDS answered %d hand-made requests", n)
	}
	for _, c := range srv.Conns() {
		if len(c.Received) != 0 {
			t.Fatalf("IMDS received %q on a hand-made connection", c.Received)
		}
	}
	for _, ep := range []string{imdsAddr, "[" + lab.IMDSv6 + "]:80"} {
		ev := d.WaitEvent("raw packet event for "+ep, func(e event) bool { return e.Reason == "raw_packet" && e.Endpoint == ep })
		if ev.Kind != "connect" || ev.Action != "deny" || ev.Cgroup != l.CgroupRel || ev.UID != 0 {
			t.Errorf("raw packet event %+v, want connect deny from %s, uid 0", ev, l.CgroupRel)
		}
	}

	node := handleIn(t, l.NetnsPath(lab.Node))
	link, err := node.LinkByName(l.NodeIMDSLink)
	if err != nil {
		t.Fatal(err)
	}
	filters, err := node.FilterList(link, netlink.HANDLE_MIN_EGRESS)
	if err != nil || len(filters) != 1 {
		t.Fatalf("filters on %s: %v, %v; want the uplink guard alone", l.NodeIMDSLink, filters, err)
	}
	if err := node.FilterDel(filters[0]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the uplink guard to come back", func() bool {
		devs, err := uplink.Attached(l.NetnsPath(lab.Node))
		return err == nil && len(devs) == 1 && devs[0] == l.NodeIMDSLink
	})
	if r := rawFrom(t, l, lab.Node, attacks["raw IPv4"]...); r.Response != "" {
		t.Fatalf("after the guard came back the attack got %+v", r)
	}

	if code := d.Stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if devs, err := uplink.Attached(l.NetnsPath(lab.Node)); err != nil || len(devs) != 0 {
		t.Fatalf("after detach the uplink guard is on %v (%v)", devs, err)
	}
	qdiscs, err := node.QdiscList(link)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			t.Fatalf("after detach %s still has the clsact qdisc", l.NodeIMDSLink)
		}
	}
}

// upperPod makes a namespace whose only device is a macvlan or ipvlan
// (kind) of the node's uplink: its frames leave by the uplink's queue,
// never by the node's forward path. It skips where the kernel has no
// ipvlan.
func upperPod(t testing.TB, l *lab.Lab, kind string) (lab.NS, string) {
	t.Helper()
	ns := lab.NS(kind + "pod")
	name := l.NetnsName(ns)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	node := handleIn(t, l.NetnsPath(lab.Node))
	parent, err := node.LinkByName(l.NodeIMDSLink)
	if err != nil {
		t.Fatal(err)
	}
	target, err := netns.GetFromPath(l.NetnsPath(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	dev := l.ID + kind[:2]
	attrs := netlink.LinkAttrs{Name: dev, ParentIndex: parent.Attrs().Index, Namespace: netlink.NsFd(target)}
	var upper netlink.Link = &netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE}
	if kind == "ipvlan" {
		upper = &netlink.IPVlan{LinkAttrs: attrs, Mode: netlink.IPVLAN_MODE_L2}
	}
	if err := node.LinkAdd(upper); err != nil {
		if kind == "ipvlan" && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT)) {
			lab.SkipWithoutKernelFeature(t, "ipvlan", fmt.Sprintf("adding an ipvlan: %v", err))
		}
		t.Fatalf("adding the %s: %v", kind, err)
	}
	pod := handleIn(t, l.NetnsPath(ns))
	for _, d := range []string{"lo", dev} {
		link, err := pod.LinkByName(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := pod.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	ip := func(args ...string) {
		if out, err := exec.Command("ip", append([]string{"-n", name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ip("addr", "add", upperPodV4+"/24", "dev", dev)
	ip("addr", "add", upperPodV6+"/64", "dev", dev, "nodad")
	ip("route", "add", lab.IMDSv4, "via", lab.IMDSLinkV4)
	ip("-6", "route", "add", lab.IMDSv6, "via", lab.IMDSLinkV6)
	return ns, dev
}

const (
	upperPodV4 = "10.99.0.3"
	upperPodV6 = "fd00:99::3"
)

// A pod on a macvlan of the uplink with CAP_NET_RAW: its sockets' connects
// are refused, but TCP it builds itself skips the node's forward chain.
// The uplink guard stops it.
func TestMacvlanPodRawTCPIsDroppedAtTheUplink(t *testing.T) {
	checkUpperPodRawTCP(t, "macvlan")
}

// The same from a pod on an ipvlan (L2 mode) of the uplink.
func TestIpvlanPodRawTCPIsDroppedAtTheUplink(t *testing.T) {
	checkUpperPodRawTCP(t, "ipvlan")
}

func checkUpperPodRawTCP(t *testing.T, kind string) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	pod, dev := upperPod(t, l, kind)
	dropOwnResets(t, l, pod)
	mac := macOf(t, handleIn(t, l.NetnsPath(lab.IMDS)), l.IMDSLink)
	attacks := rawAttacks(upperPodV4, upperPodV6, dev, mac)

	for name, args := range attacks {
		if r := rawFrom(t, l, pod, args...); !served(r) {
			t.Fatalf("%s: without imdsguard the attack from the %s pod should be served: %+v", name, kind, r)
		}
	}
	srv.Reset()

	d := startDaemon(t, l)
	for name, args := range attacks {
		if r := rawFrom(t, l, pod, args...); r.Response != "" {
			t.Errorf("%s: with imdsguard the attack from the %s pod got %+v", name, kind, r)
		}
	}
	if n := len(srv.Requests()); n != 0 {
		t.Fatalf("IMDS answered %d hand-made requests from the %s pod", n, kind)
	}
	ev := d.WaitEvent("raw packet event", func(e event) bool { return e.Reason == "raw_packet" })
	if ev.Action != "deny" || ev.Cgroup != l.CgroupRel {
		t.Errorf("raw packet event %+v, want deny from %s", ev, l.CgroupRel)
	}
	// and its ordinary connections are refused at connect, as any pod's
	res := runClient(t, l, pod, "", "-mode", "http", "-addr", imdsAddr, "-timeout", "5s", "-path", credPath)
	if res.ConnectErrno != "EPERM" {
		t.Errorf("a %s pod's connect: %+v, want EPERM", kind, res)
	}
}

// PACKET_QDISC_BYPASS hands a packet socket's frames to the driver past
// every egress hook: served without imdsguard, refused with EPERM under it.
func TestQdiscBypassIsRefused(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	dropOwnResets(t, l, lab.Node)
	mac := macOf(t, handleIn(t, l.NetnsPath(lab.IMDS)), l.IMDSLink)
	args := []string{"-src", lab.NodeIMDSLinkV4, "-dst", imdsAddr, "-link", l.NodeIMDSLink, "-dst-mac", mac, "-qdisc-bypass"}

	if r := rawFrom(t, l, lab.Node, args...); !served(r) {
		t.Fatalf("without imdsguard the bypassing attack should be served: %+v", r)
	}
	srv.Reset()
	startDaemon(t, l)
	r := rawFrom(t, l, lab.Node, args...)
	want := "setsockopt PACKET_QDISC_BYPASS: operation not permitted"
	if r.Error != want || r.SynAck || r.Sent {
		t.Fatalf("with imdsguard: %+v, want error %q and nothing sent", r, want)
	}
	if n := len(srv.Conns()); n != 0 {
		t.Fatalf("IMDS saw %d connections", n)
	}
}

// A sidecar in the network namespace of a pod that an allowNonHostNetns
// rule lets reach IMDS: its sockets are judged like the broker's, but TCP
// it builds on raw and packet sockets passes the forward chain by the
// pod's address. The guard on the pod's own devices drops it, lets the
// broker's judged requests pass, and leaves with the daemon.
func TestAllowedPodSidecarRawTCPIsDropped(t *testing.T) {
	l := lab.New(t)
	mac := macOf(t, handleIn(t, l.NetnsPath(lab.Node)), l.NodePodLink)
	checkAllowedPodSidecar(t, l, lab.Pod, l.PodLink, lab.PodV4, lab.PodV6, rawAttacks(lab.PodV4, lab.PodV6, l.PodLink, mac))
}

// The same on a netkit device in L3 mode, as Cilium makes them: Ethernet
// framing without addresses (frames to the all-zero MAC reach the host).
func TestAllowedNetkitPodSidecarRawTCPIsDropped(t *testing.T) {
	l := lab.New(t)
	pod, dev := netkitPod(t, l)
	mac := macOf(t, handleIn(t, l.NetnsPath(lab.Node)), l.ID+"nkp")
	if mac == "" {
		mac = "00:00:00:00:00:00"
	}
	checkAllowedPodSidecar(t, l, pod, dev, netkitPodV4, netkitPodV6, rawAttacks(netkitPodV4, netkitPodV6, dev, mac))
}

const (
	netkitPodV4 = "10.99.3.2"
	netkitPodV6 = "fd00:99:3::2"
)

// netkitPod makes a namespace whose device is the peer of an L3 netkit
// pair in the node, routed like a Cilium pod's, or skips where the kernel
// has no netkit (before 6.7).
func netkitPod(t testing.TB, l *lab.Lab) (lab.NS, string) {
	t.Helper()
	ns := lab.NS("nkpod")
	name := l.NetnsName(ns)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	target, err := netns.GetFromPath(l.NetnsPath(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	node := handleIn(t, l.NetnsPath(lab.Node))
	primary, peer := l.ID+"nkp", l.ID+"nk"
	nk := &netlink.Netkit{LinkAttrs: netlink.LinkAttrs{Name: primary}, Mode: netlink.NETKIT_MODE_L3}
	nk.SetPeerAttrs(&netlink.LinkAttrs{Name: peer, Namespace: netlink.NsFd(target)})
	if err := node.LinkAdd(nk); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) {
			lab.SkipWithoutKernelFeature(t, "netkit", fmt.Sprintf("adding a netkit pair (netkit came in 6.7): %v", err))
		}
		t.Fatalf("adding the netkit pair: %v", err)
	}
	t.Cleanup(func() {
		if link, err := node.LinkByName(primary); err == nil {
			node.LinkDel(link)
		}
	})
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	nodeNs := l.NetnsName(lab.Node)
	ip("-n", nodeNs, "link", "set", primary, "up")
	ip("-n", nodeNs, "route", "add", netkitPodV4+"/32", "dev", primary)
	ip("-n", nodeNs, "-6", "route", "add", netkitPodV6+"/128", "dev", primary)
	ip("-n", name, "link", "set", "lo", "up")
	ip("-n", name, "link", "set", peer, "up")
	ip("-n", name, "addr", "add", netkitPodV4+"/32", "dev", peer)
	ip("-n", name, "addr", "add", netkitPodV6+"/128", "dev", peer, "nodad")
	ip("-n", name, "route", "add", "default", "dev", peer)
	ip("-n", name, "-6", "route", "add", "default", "dev", peer)
	return ns, peer
}

func checkAllowedPodSidecar(t *testing.T, l *lab.Lab, pod lab.NS, dev, src4, src6 string, attacks map[string][]string) {
	srv := startIMDS(t, l, imdsserver.Options{})
	broker, _ := l.NewSubCgroup(t, "broker")
	dropOwnResets(t, l, pod)
	for name, args := range attacks {
		if r := rawFromIn(t, l, pod, broker, args...); !served(r) {
			t.Fatalf("%s: without imdsguard the sidecar's attack should be served: %+v", name, r)
		}
	}
	srv.Reset()

	pol := writePolicy(t, t.TempDir(), "policy.yaml", fmt.Sprintf(
		"rules:\n  - name: iam-broker\n    match: {cgroup: %q}\n    allowNonHostNetns: true\n", l.CgroupRel+"/broker"))
	d := startDaemon(t, l, "--policy", pol)
	wait, release := startWaitingClientIn(t, l, pod, broker, "-mode", "connect", "-addr", imdsAddr)
	for set, addr := range map[string]string{"allowed4": src4, "allowed6": src6} {
		waitFor(t, 3*time.Second, "the broker pod's address in "+set, func() bool {
			return strings.Contains(nftIn(t, l, lab.Node, "list", "set", "inet", "imdsguard", set), addr)
		})
	}
	for name, args := range attacks {
		if r := rawFromIn(t, l, pod, broker, args...); r.Response != "" {
			t.Errorf("%s: with imdsguard the sidecar's attack got %+v", name, r)
		}
	}
	if n := len(srv.Requests()); n != 0 {
		t.Fatalf("IMDS answered %d hand-made requests from the allowed pod", n)
	}
	for _, c := range srv.Conns() {
		if len(c.Received) != 0 {
			t.Fatalf("IMDS received %q on a hand-made connection from the allowed pod", c.Received)
		}
	}
	ev := d.WaitEvent("raw packet event", func(e event) bool { return e.Reason == "raw_packet" })
	if ev.Action != "deny" || ev.Cgroup != l.CgroupRel+"/broker" {
		t.Errorf("raw packet event %+v, want deny from %s/broker", ev, l.CgroupRel)
	}
	for _, addr := range []string{imdsAddr, "[" + lab.IMDSv6 + "]:80"} {
		r := runClient(t, l, pod, broker, "-mode", "http", "-addr", addr, "-path", credPath, "-fetch-token")
		if r.Status != 200 {
			t.Errorf("the broker's IMDSv2 request to %s: %+v, want 200", addr, r)
		}
	}
	release()
	wait()
	if devs, err := uplink.Attached(l.NetnsPath(pod)); err != nil || len(devs) != 1 || devs[0] != dev {
		t.Fatalf("guarded devices in the allowed pod: %v (%v), want %s", devs, err, dev)
	}
	st := readStatus(t, l)
	if !slices.ContainsFunc(st.PodDevices, func(d string) bool { return strings.HasPrefix(d, dev+" in ") }) {
		t.Errorf("status pod devices %q, want %s among them", st.PodDevices, dev)
	}

	if code := d.Stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if devs, err := uplink.Attached(l.NetnsPath(pod)); err != nil || len(devs) != 0 {
		t.Fatalf("after detach the allowed pod's devices carry the guard: %v (%v)", devs, err)
	}
}

// The same by the 32-bit setsockopt, which the kernel never shows to cgroup
// setsockopt programs: refused by the guard on the LSM hook, where the
// kernel lets it load.
func TestCompatQdiscBypassIsRefused(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	dropOwnResets(t, l, lab.Node)
	mac := macOf(t, handleIn(t, l.NetnsPath(lab.IMDS)), l.IMDSLink)
	args := []string{"-src", lab.NodeIMDSLinkV4, "-dst", imdsAddr, "-link", l.NodeIMDSLink, "-dst-mac", mac, "-qdisc-bypass", "-compat"}

	r := rawFrom(t, l, lab.Node, args...)
	if strings.HasPrefix(r.Error, "compat syscalls unavailable") {
		lab.SkipWithoutKernelFeature(t, "compat32", r.Error)
	}
	if !served(r) {
		t.Fatalf("without imdsguard the compat bypass should be served: %+v", r)
	}
	srv.Reset()
	d := startDaemon(t, l)
	st := readStatus(t, l)
	if !slices.ContainsFunc(st.Hooks, func(h pinHook) bool { return h.Hook == "setsockopt_all" && h.Attached }) {
		warn := d.WaitLog("(compat) setsockopt calls are not guarded", 5*time.Second)
		lab.SkipWithoutKernelFeature(t, "fmod_ret", "the daemon could not load its setsockopt guard on the LSM hook: "+warn)
	}
	r = rawFrom(t, l, lab.Node, args...)
	want := "compat setsockopt PACKET_QDISC_BYPASS: operation not permitted"
	if r.Error != want || r.SynAck || r.Sent {
		t.Fatalf("with imdsguard: %+v, want error %q and nothing sent", r, want)
	}
	if n := len(srv.Conns()); n != 0 {
		t.Fatalf("IMDS saw %d connections", n)
	}
}
