// Package lab builds a disposable network-namespace lab for imdsguard's
// privileged integration tests.
//
// Every call to New creates, with names unique to that call:
//
//	 pod netns                     node netns ("host")                      imds netns
//	10.99.1.2/24      <-veth->    10.99.1.1/24      10.99.0.1/24  <-veth->   10.99.0.2/24
//	fd00:99:1::2/64               fd00:99:1::1/64   fd00:99::1/64            fd00:99::2/64
//	default via node              forwarding on,                            lo: 169.254.169.254/32
//	                              routes to the IMDS                             169.254.170.2/32
//	                              addresses via imds                             169.254.170.23/32
//	                                                                             fd00:ec2::254/128
//	                                                                             fd00:ec2::23/128
//	                                                                             100.100.100.200/32
//	                                                                             fd20:ce::254/128
//	                                                                             fd00:c1::a9fe:a9fe/128
//	                                                                        default via node
//
// plus a child cgroup <cgroup2 mount>/imdsguard-lab-<id> into which the lab's
// commands are cloned (CLONE_INTO_CGROUP), so they never run outside it.
//
// The IMDS addresses exist only inside the lab's namespaces; nothing in this
// package sends traffic from the caller's own network namespace, and the
// calling goroutine's OS thread is never left in another namespace.
// Everything the lab creates is removed by Close, which New registers with
// t.Cleanup, so it also runs when a test fails.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/internal/netnsexec"
)

// Service addresses, configured on the imds namespace's loopback.
const (
	IMDSv4        = "169.254.169.254" // EC2 instance metadata service, IPv4
	IMDSv6        = "fd00:ec2::254"   // EC2 instance metadata service, IPv6
	ECSv4         = "169.254.170.2"   // ECS task credentials endpoint
	PodIdentityV4 = "169.254.170.23"  // EKS Pod Identity agent, IPv4
	PodIdentityV6 = "fd00:ec2::23"    // EKS Pod Identity agent, IPv6
	// The other clouds' metadata addresses (internal/cloud): Alibaba's,
	// GCP's IPv6 one and OCI's IPv6 one (the IPv4 ones are IMDSv4's).
	AlibabaV4 = "100.100.100.200"
	GCPv6     = "fd20:ce::254"
	OCIv6     = "fd00:c1::a9fe:a9fe"
)

// Link addresses.
const (
	NodeV4 = "10.99.1.1"    // node, on the node<->pod link
	NodeV6 = "fd00:99:1::1" // node, on the node<->pod link
	PodV4  = "10.99.1.2"    // pod
	PodV6  = "fd00:99:1::2" // pod

	NodeIMDSLinkV4 = "10.99.0.1"  // node, on the node<->imds link
	NodeIMDSLinkV6 = "fd00:99::1" // node, on the node<->imds link
	IMDSLinkV4     = "10.99.0.2"  // imds, on the node<->imds link
	IMDSLinkV6     = "fd00:99::2" // imds, on the node<->imds link
)

// NS is the logical name of one of the lab's network namespaces.
type NS string

// The lab's network namespaces.
const (
	Node NS = "node" // plays the host: the daemon's "host network namespace"
	IMDS NS = "imds" // holds the metadata service addresses
	Pod  NS = "pod"  // a workload whose traffic the node forwards
)

var allNS = []NS{Node, IMDS, Pod}

// netnsDir is where `ip netns` bind-mounts named network namespaces.
const netnsDir = "/var/run/netns"

// cgroupPrefix prefixes the lab's child cgroup under the cgroup2 mount.
const cgroupPrefix = "imdsguard-lab-"

// Lab is one instance of the test topology. Create it with New.
type Lab struct {
	// ID is unique per lab ("ig" + 6 hex digits); it prefixes every name
	// the lab creates.
	ID string
	// CgroupMount is the cgroup2 mount point (see CgroupV2Mount).
	CgroupMount string
	// Cgroup is the absolute directory of the lab's cgroup.
	Cgroup string
	// CgroupRel is the lab cgroup's path as shown on the "0::" line of
	// /proc/PID/cgroup, e.g. "/imdsguard-lab-ab12cd".
	CgroupRel string
	// CgroupID is the kernel cgroup id (the inode number of Cgroup).
	CgroupID uint64

	// Interface names. NodeIMDSLink and NodePodLink live in the node
	// namespace, IMDSLink in imds, PodLink in pod.
	NodeIMDSLink string
	NodePodLink  string
	IMDSLink     string
	PodLink      string

	nsenter   string
	cgroupMnt mountInfo

	mu        sync.Mutex
	closed    bool
	netns     []NS           // namespaces created so far
	cgroupFDs map[string]int // cgroup dir -> open O_DIRECTORY fd
	cmds      []*exec.Cmd    // commands handed out by Command*
	listeners []net.Listener // listeners handed out by Listen
	cgCreated bool
	bpffs     string // the lab's own BPF filesystem mount, once PinDir made it

	closeOnce sync.Once
	closeErr  error
}

// New builds a fresh lab and registers its teardown with t.Cleanup. It calls
// RequirePrivileged first, so it skips (or, in CI, fails) when the machine
// cannot run it.
func New(t testing.TB) *Lab {
	t.Helper()
	RequirePrivileged(t)

	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	mi, err := cgroup2Mount()
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	l := &Lab{
		CgroupMount: mi.mountPoint,
		nsenter:     nsenter,
		cgroupMnt:   mi,
		cgroupFDs:   map[string]int{},
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab %s teardown: %v", l.ID, err)
		}
	})
	if err := l.reserveCgroup(); err != nil {
		t.Fatalf("lab: %v", err)
	}
	if err := l.setup(); err != nil {
		t.Fatalf("lab %s: %v", l.ID, err)
	}
	return l
}

// reserveCgroup picks an unused ID and creates the lab cgroup. mkdir is
// atomic, so the cgroup directory doubles as the reservation of the ID for
// all other names (netns, veths) across parallel test processes.
func (l *Lab) reserveCgroup() error {
	for range 20 {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		id := "ig" + hex.EncodeToString(b[:])
		if anyNetnsExists(id) {
			continue
		}
		dir := filepath.Join(l.cgroupMnt.mountPoint, cgroupPrefix+id)
		if err := os.Mkdir(dir, 0o755); err != nil {
			if errors.Is(err, os.ErrExist) {
				continue
			}
			return fmt.Errorf("create cgroup: %w", err)
		}
		l.mu.Lock()
		l.ID = id
		l.Cgroup = dir
		l.cgCreated = true
		l.mu.Unlock()
		l.CgroupRel = filepath.Join(l.cgroupMnt.root, cgroupPrefix+id)
		cgid, err := inode(dir)
		if err != nil {
			return err
		}
		l.CgroupID = cgid
		if _, err := l.cgroupFD(dir); err != nil {
			return err
		}
		l.NodeIMDSLink = id + "-imds"
		l.NodePodLink = id + "-pod"
		l.IMDSLink = id + "-node"
		l.PodLink = id + "-node"
		return nil
	}
	return errors.New("could not find an unused lab id")
}

func anyNetnsExists(id string) bool {
	for _, ns := range allNS {
		if _, err := os.Lstat(filepath.Join(netnsDir, id+"-"+string(ns))); err == nil {
			return true
		}
	}
	return false
}

// NetnsName is the `ip netns` name of ns, e.g. "igab12cd-node".
func (l *Lab) NetnsName(ns NS) string { return l.ID + "-" + string(ns) }

// NetnsPath is the bind-mounted namespace file of ns, for setns(2) or
// `nsenter --net=`.
func (l *Lab) NetnsPath(ns NS) string { return filepath.Join(netnsDir, l.NetnsName(ns)) }

func mustCIDR(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

func (l *Lab) setup() error {
	ipCmd, err := exec.LookPath("ip")
	if err != nil {
		return err
	}
	handles := map[NS]*netlink.Handle{}
	nsFDs := map[NS]netns.NsHandle{}
	defer func() {
		for _, h := range handles {
			h.Close()
		}
		for _, fd := range nsFDs {
			fd.Close()
		}
	}()
	for _, ns := range allNS {
		if out, err := exec.Command(ipCmd, "netns", "add", l.NetnsName(ns)).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns add %s: %v: %s", l.NetnsName(ns), err, out)
		}
		l.mu.Lock()
		l.netns = append(l.netns, ns)
		l.mu.Unlock()
		fd, err := netns.GetFromPath(l.NetnsPath(ns))
		if err != nil {
			return fmt.Errorf("open netns %s: %w", ns, err)
		}
		nsFDs[ns] = fd
		h, err := netlink.NewHandleAt(fd)
		if err != nil {
			return fmt.Errorf("netlink handle in %s: %w", ns, err)
		}
		handles[ns] = h
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("%s: lo: %w", ns, err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("%s: lo up: %w", ns, err)
		}
	}
	node, imds, pod := handles[Node], handles[IMDS], handles[Pod]

	// The node namespace routes and forwards; set that up first.
	if err := netnsexec.Do(l.NetnsPath(Node), func() error {
		for _, f := range []string{
			"/proc/sys/net/ipv4/ip_forward",
			"/proc/sys/net/ipv6/conf/all/forwarding",
			"/proc/sys/net/ipv6/conf/default/forwarding",
		} {
			if err := os.WriteFile(f, []byte("1\n"), 0); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("node: enable forwarding: %w", err)
	}

	type side struct {
		ns    NS
		name  string
		addrs []string
	}
	pairs := [][2]side{ // [0] is always the node end
		{
			{Node, l.NodeIMDSLink, []string{NodeIMDSLinkV4 + "/24", NodeIMDSLinkV6 + "/64"}},
			{IMDS, l.IMDSLink, []string{IMDSLinkV4 + "/24", IMDSLinkV6 + "/64"}},
		},
		{
			{Node, l.NodePodLink, []string{NodeV4 + "/24", NodeV6 + "/64"}},
			{Pod, l.PodLink, []string{PodV4 + "/24", PodV6 + "/64"}},
		},
	}
	type key struct {
		ns   NS
		name string
	}
	links := map[key]netlink.Link{}
	for _, p := range pairs {
		a, b := p[0], p[1]
		// Created directly in node with the peer directly in its netns:
		// no interface of the lab ever appears in the caller's namespace.
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: a.name},
			PeerName:      b.name,
			PeerNamespace: netlink.NsFd(int(nsFDs[b.ns])),
		}
		if err := node.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s<->%s: %w", a.name, b.name, err)
		}
		for _, s := range p {
			h := handles[s.ns]
			link, err := h.LinkByName(s.name)
			if err != nil {
				return fmt.Errorf("%s: find %s: %w", s.ns, s.name, err)
			}
			for _, c := range s.addrs {
				if err := addAddr(h, link, c); err != nil {
					return fmt.Errorf("%s: %s: %w", s.ns, s.name, err)
				}
			}
			if err := h.LinkSetUp(link); err != nil {
				return fmt.Errorf("%s: %s up: %w", s.ns, s.name, err)
			}
			links[key{s.ns, s.name}] = link
		}
		// Permanent neighbour entries both ways: resolution never has to
		// wait for ARP/NDP, so the very first packet goes through.
		la, lb := links[key{a.ns, a.name}], links[key{b.ns, b.name}]
		if err := addNeighbours(handles[a.ns], la, lb.Attrs().HardwareAddr, b.addrs); err != nil {
			return fmt.Errorf("%s: %s neighbours: %w", a.ns, a.name, err)
		}
		if err := addNeighbours(handles[b.ns], lb, la.Attrs().HardwareAddr, a.addrs); err != nil {
			return fmt.Errorf("%s: %s neighbours: %w", b.ns, b.name, err)
		}
	}

	// Service addresses on imds's loopback.
	imdsLo, err := imds.LinkByName("lo")
	if err != nil {
		return err
	}
	for _, a := range []string{IMDSv4 + "/32", ECSv4 + "/32", PodIdentityV4 + "/32", IMDSv6 + "/128", PodIdentityV6 + "/128",
		AlibabaV4 + "/32", GCPv6 + "/128", OCIv6 + "/128"} {
		if err := addAddr(imds, imdsLo, a); err != nil {
			return fmt.Errorf("imds lo: %w", err)
		}
	}

	nodeIMDS := links[key{Node, l.NodeIMDSLink}]
	imdsLink := links[key{IMDS, l.IMDSLink}]
	podLink := links[key{Pod, l.PodLink}]
	routes := []struct {
		h    *netlink.Handle
		link netlink.Link
		dst  string
		gw   string
	}{
		{node, nodeIMDS, IMDSv4 + "/32", IMDSLinkV4},
		{node, nodeIMDS, ECSv4 + "/32", IMDSLinkV4},
		{node, nodeIMDS, PodIdentityV4 + "/32", IMDSLinkV4},
		{node, nodeIMDS, IMDSv6 + "/128", IMDSLinkV6},
		{node, nodeIMDS, PodIdentityV6 + "/128", IMDSLinkV6},
		{node, nodeIMDS, AlibabaV4 + "/32", IMDSLinkV4},
		{node, nodeIMDS, GCPv6 + "/128", IMDSLinkV6},
		{node, nodeIMDS, OCIv6 + "/128", IMDSLinkV6},
		{imds, imdsLink, "0.0.0.0/0", NodeIMDSLinkV4},
		{imds, imdsLink, "::/0", NodeIMDSLinkV6},
		{pod, podLink, "0.0.0.0/0", NodeV4},
		{pod, podLink, "::/0", NodeV6},
	}
	for _, r := range routes {
		_, dst, _ := net.ParseCIDR(r.dst)
		route := &netlink.Route{LinkIndex: r.link.Attrs().Index, Dst: dst, Gw: net.ParseIP(r.gw)}
		if err := r.h.RouteAdd(route); err != nil {
			return fmt.Errorf("route %s via %s dev %s: %w", r.dst, r.gw, r.link.Attrs().Name, err)
		}
	}
	return nil
}

func addAddr(h *netlink.Handle, link netlink.Link, cidr string) error {
	a := &netlink.Addr{IPNet: mustCIDR(cidr)}
	if a.IP.To4() == nil {
		// Usable at once: no duplicate address detection.
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add address %s: %w", cidr, err)
	}
	return nil
}

func addNeighbours(h *netlink.Handle, link netlink.Link, mac net.HardwareAddr, cidrs []string) error {
	for _, c := range cidrs {
		ip := mustCIDR(c).IP
		fam := unix.AF_INET6
		if ip.To4() != nil {
			fam = unix.AF_INET
		}
		n := &netlink.Neigh{
			LinkIndex:    link.Attrs().Index,
			Family:       fam,
			State:        netlink.NUD_PERMANENT,
			IP:           ip,
			HardwareAddr: mac,
		}
		if err := h.NeighAdd(n); err != nil {
			return fmt.Errorf("neighbour %s: %w", ip, err)
		}
	}
	return nil
}

// Do runs fn on a locked OS thread that is inside ns for the duration of
// the call. Sockets fn creates stay in ns. fn must not rely on goroutines it
// starts being in ns (they run on other threads).
func (l *Lab) Do(ns NS, fn func() error) error {
	return netnsexec.Do(l.NetnsPath(ns), fn)
}

// Listen creates a listener whose socket lives in ns (see net.Listen). The
// lab closes it on Close if the test has not.
func (l *Lab) Listen(ns NS, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := l.Do(ns, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, addr, ns, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		ln.Close()
		return nil, errors.New("lab is closed")
	}
	l.listeners = append(l.listeners, ln)
	return ln, nil
}

// Command returns a command that runs name inside ns and inside the lab
// cgroup: `nsenter --net=<NetnsPath(ns)> -- name args...`, cloned straight
// into the cgroup (clone3 CLONE_INTO_CGROUP), so it never runs elsewhere.
// nsenter execs name, so cmd.Process.Pid is the program's own pid. If ctx is
// nil the command has no context. Processes still in the lab cgroup at Close
// are killed.
func (l *Lab) Command(ctx context.Context, ns NS, name string, args ...string) *exec.Cmd {
	return l.CommandInCgroup(ctx, ns, l.Cgroup, name, args...)
}

// CommandInCgroup is Command with another cgroup, which must be the lab
// cgroup or below it (for example from NewSubCgroup); otherwise Start fails.
func (l *Lab) CommandInCgroup(ctx context.Context, ns NS, cgroupDir string, name string, args ...string) *exec.Cmd {
	argv := append([]string{"--net=" + l.NetnsPath(ns), "--", name}, args...)
	var cmd *exec.Cmd
	if ctx == nil {
		cmd = exec.Command(l.nsenter, argv...)
	} else {
		cmd = exec.CommandContext(ctx, l.nsenter, argv...)
	}
	fd, err := l.cgroupFDChecked(cgroupDir)
	if err != nil {
		cmd.Err = err
		return cmd
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	l.mu.Lock()
	l.cmds = append(l.cmds, cmd)
	l.mu.Unlock()
	return cmd
}

func (l *Lab) cgroupFDChecked(dir string) (int, error) {
	if !isWithin(l.Cgroup, dir) {
		return -1, fmt.Errorf("lab: cgroup %q is not within the lab cgroup %s", dir, l.Cgroup)
	}
	return l.cgroupFD(filepath.Clean(dir))
}

func isWithin(parent, dir string) bool {
	if parent == "" || !filepath.IsAbs(dir) {
		return false
	}
	dir = filepath.Clean(dir)
	return dir == parent || strings.HasPrefix(dir, parent+"/")
}

// cgroupFD returns a cached O_DIRECTORY fd for dir, kept open until Close.
func (l *Lab) cgroupFD(dir string) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return -1, errors.New("lab is closed")
	}
	if fd, ok := l.cgroupFDs[dir]; ok {
		return fd, nil
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open cgroup %s: %w", dir, err)
	}
	l.cgroupFDs[dir] = fd
	return fd, nil
}

// NewSubCgroup creates a child of the lab cgroup, removed when t's cleanup
// runs (and in any case by Close). It returns the absolute directory and the
// kernel cgroup id.
func (l *Lab) NewSubCgroup(t testing.TB, name string) (dir string, id uint64) {
	t.Helper()
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		t.Fatalf("lab: bad sub-cgroup name %q", name)
	}
	dir = filepath.Join(l.Cgroup, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("lab: create sub-cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := l.removeCgroupTree(dir); err != nil {
			t.Errorf("lab %s: remove sub-cgroup: %v", l.ID, err)
		}
	})
	id, err := inode(dir)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	if _, err := l.cgroupFD(dir); err != nil {
		t.Fatalf("lab: %v", err)
	}
	return dir, id
}

func inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// PinDir is a pin directory for the daemon on a BPF filesystem of the
// lab's own (mounted on first use, unmounted at teardown), so tests never
// touch the host's /sys/fs/bpf and whatever a test leaves pinned goes away
// with the lab.
func (l *Lab) PinDir() (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return "", errors.New("lab is closed")
	}
	if l.bpffs == "" {
		dir := filepath.Join(os.TempDir(), "imdsguard-bpffs-"+l.ID)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", err
		}
		if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
			os.Remove(dir)
			return "", fmt.Errorf("mounting a BPF filesystem on %s: %w", dir, err)
		}
		l.bpffs = dir
	}
	return filepath.Join(l.bpffs, "imdsguard"), nil
}

// Close tears the lab down: it kills (by pid) processes the lab started that
// are still in the lab cgroup, closes listeners, deletes the veths, the
// network namespaces and the cgroups. It is idempotent; New registers it
// with t.Cleanup.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.close() })
	return l.closeErr
}

func (l *Lab) close() error {
	l.mu.Lock()
	l.closed = true
	listeners := l.listeners
	l.listeners = nil
	created := l.netns
	cgCreated := l.cgCreated
	bpffs := l.bpffs
	l.bpffs = ""
	l.mu.Unlock()

	var errs []error
	for _, ln := range listeners {
		ln.Close() // may already be closed by the test
	}
	// Unmounting the lab's BPF filesystem drops every pin in it, which
	// detaches what a killed daemon left pinned there.
	if bpffs != "" {
		if err := unix.Unmount(bpffs, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", bpffs, err))
		} else if err := os.Remove(bpffs); err != nil {
			errs = append(errs, err)
		}
	}
	if cgCreated {
		if err := l.removeCgroupTree(l.Cgroup); err != nil {
			errs = append(errs, err)
		}
	}
	l.mu.Lock()
	for dir, fd := range l.cgroupFDs {
		unix.Close(fd)
		delete(l.cgroupFDs, dir)
	}
	l.mu.Unlock()

	// Delete the veths explicitly (deleting one end removes its peer), so
	// they go away even if something still pins a namespace.
	if containsNS(created, Node) {
		if err := l.deleteLinks(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(created) > 0 {
		ipCmd, err := exec.LookPath("ip")
		if err != nil {
			errs = append(errs, err)
		}
		for _, ns := range created {
			name := l.NetnsName(ns)
			if ipCmd != "" {
				if out, err := exec.Command(ipCmd, "netns", "del", name).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", name, err, out))
				}
			}
			if _, err := os.Lstat(l.NetnsPath(ns)); err == nil {
				errs = append(errs, fmt.Errorf("netns %s still present", name))
			}
		}
	}
	return errors.Join(errs...)
}

func containsNS(list []NS, ns NS) bool {
	for _, n := range list {
		if n == ns {
			return true
		}
	}
	return false
}

func (l *Lab) deleteLinks() error {
	fd, err := netns.GetFromPath(l.NetnsPath(Node))
	if err != nil {
		return fmt.Errorf("open node netns: %w", err)
	}
	defer fd.Close()
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		return fmt.Errorf("netlink handle in node: %w", err)
	}
	defer h.Close()
	var errs []error
	for _, name := range []string{l.NodeIMDSLink, l.NodePodLink} {
		link, err := h.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) {
				errs = append(errs, fmt.Errorf("find %s: %w", name, err))
			}
			continue
		}
		if err := h.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// startedPids is the set of pids of commands handed out by Command* that
// have been started.
func (l *Lab) startedPids() map[int]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	pids := map[int]bool{}
	for _, c := range l.cmds {
		if p := c.Process; p != nil {
			pids[p.Pid] = true
		}
	}
	return pids
}

// removeCgroupTree kills the lab's processes in dir and below, waits for the
// tree to become empty and removes it bottom-up.
func (l *Lab) removeCgroupTree(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	// known grows with descendants of the lab's processes: they are all
	// classified before any is killed, so children re-parented when their
	// parent dies are still recognised.
	known := l.startedPids()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := cgroupProcs(dir)
		if err != nil {
			return err
		}
		var foreign, ours []int
		for _, pid := range pids {
			if startedByLab(pid, known) {
				ours = append(ours, pid)
			} else {
				foreign = append(foreign, pid)
			}
		}
		for _, pid := range ours {
			known[pid] = true
		}
		for _, pid := range ours {
			killPid(pid, dir, known)
		}
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s still has processes %v (not started by the lab: %v)", dir, pids, foreign)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return rmdirTree(dir)
}

// cgroupProcs lists the pids in dir and all its descendants.
func cgroupProcs(dir string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENODEV) {
				return nil
			}
			return err
		}
		for _, f := range strings.Fields(string(b)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids, err
}

// startedByLab reports whether pid is a process the lab started or one of
// its descendants (walking the parent chain).
func startedByLab(pid int, started map[int]bool) bool {
	for range 64 {
		if started[pid] {
			return true
		}
		ppid, err := parentPid(pid)
		if err != nil || ppid <= 1 {
			return false
		}
		pid = ppid
	}
	return false
}

func parentPid(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// pid (comm) state ppid ...; comm may contain spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	var state string
	var ppid int
	if _, err := fmt.Sscan(s[i+1:], &state, &ppid); err != nil {
		return 0, err
	}
	return ppid, nil
}

// killPid sends SIGKILL through a pidfd, after re-checking (with the pidfd
// held, so the pid cannot be recycled) that the process is still in the lab
// cgroup tree and was started by the lab.
func killPid(pid int, dir string, started map[int]bool) {
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // gone
	}
	defer unix.Close(pfd)
	if !startedByLab(pid, started) || !inCgroupTree(pid, dir) {
		return
	}
	_ = unix.PidfdSendSignal(pfd, unix.SIGKILL, nil, 0)
}

func inCgroupTree(pid int, dir string) bool {
	mi, err := cgroup2Mount()
	if err != nil {
		return false
	}
	rel, err := cgroupOf(pid)
	if err != nil {
		return false
	}
	// Map the /proc view back to a directory under the mount.
	r, err := filepath.Rel(mi.root, rel)
	if err != nil || strings.HasPrefix(r, "..") {
		return false
	}
	return isWithin(dir, filepath.Join(mi.mountPoint, r))
}

// cgroupOf returns the cgroup v2 path of pid (the "0::" line).
func cgroupOf(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("pid %d has no cgroup v2 entry", pid)
}

// rmdirTree removes dir and its child cgroups, deepest first, retrying
// briefly on EBUSY (the kernel may still be tearing down exited tasks).
func rmdirTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			if err := rmdirTree(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return errors.Join(errs...)
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return errors.Join(append(errs, fmt.Errorf("rmdir %s: %w", dir, err))...)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ProgramsOn counts the BPF programs attached to cgroup on the given hooks.
func ProgramsOn(cgroup string, hooks ...ebpf.AttachType) (int, error) {
	fd, err := unix.Open(cgroup, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	n := 0
	for _, at := range hooks {
		res, err := link.QueryPrograms(link.QueryOptions{Target: fd, Attach: at})
		if err != nil {
			return 0, fmt.Errorf("querying %s programs on %s: %w", at, cgroup, err)
		}
		n += len(res.Programs)
	}
	return n, nil
}
