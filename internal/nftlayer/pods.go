package nftlayer

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/internal/netnsexec"
)

// PodGuard guards the devices of the network namespace of a pod that an
// allowNonHostNetns rule lets reach IMDS (internal/uplink.Pods): the
// table lets the pod's packets through by their source address, so the
// pod's hand-made TCP must be stopped inside its namespace. A pod's
// addresses are let through only once Guard has succeeded there; pod
// false says the namespace is none the node routes for (none are).
type PodGuard interface {
	Guard(h *netlink.Handle) (pod bool, err error)
}

// podNetns is the network namespace of a process in an allowed cgroup.
type podNetns struct {
	path   string // /proc/PID/ns/net
	id     [2]uint64
	cgroup string // where the process was found, for the log
}

// allowedSources are the addresses of the network namespaces of processes
// in the allowed cgroups: the pods the policy lets reach IMDS. nftables
// sees packets, not cgroups, so a pod is named by its addresses. A pod
// whose devices cannot be guarded (admit) is left out: its packets are
// dropped, not let through unjudged.
func (t *Table) allowedSources(cgroups []string) []netip.Addr {
	pods := t.podNamespaces(cgroups)
	var out []netip.Addr
	for _, p := range pods {
		out = append(out, t.admit(p)...)
	}
	// forget the errors of pods gone, so that one coming back is logged
	for id := range t.podErrs {
		if !slices.ContainsFunc(pods, func(p podNetns) bool { return p.id == id }) {
			delete(t.podErrs, id)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out)
}

// podNamespaces lists, once each, the network namespaces of the processes
// in cgroups. The host's namespace is never one (its packets are not
// forwarded), nor is the daemon's own (the same one, but under
// --host-netns): its devices are not a pod's to guard.
func (t *Table) podNamespaces(cgroups []string) []podNetns {
	seen := map[[2]uint64]bool{t.hostNetns: true, t.selfNetns: true}
	var out []podNetns
	for _, cg := range cgroups {
		for _, pid := range procs(filepath.Join(t.opts.CgroupMount, cg)) {
			path := fmt.Sprintf("/proc/%d/ns/net", pid)
			id, err := netnsexec.ID(path)
			if err != nil || seen[id] {
				continue // gone meanwhile, or known
			}
			seen[id] = true
			out = append(out, podNetns{path: path, id: id, cgroup: cg})
		}
	}
	return out
}

// procs lists the processes of the cgroup at dir; none when it is gone.
func procs(dir string) []int {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// admit guards the devices of an allowed pod's namespace and lists its
// addresses; none when it cannot be guarded.
func (t *Table) admit(p podNetns) []netip.Addr {
	h, err := netns.GetFromPath(p.path)
	if err != nil {
		return nil
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil
	}
	defer nl.Close()
	if !t.guardPod(nl, p) {
		return nil
	}
	addrs, err := nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil
	}
	return sourceAddrs(addrs)
}

// guardPod puts the pod guard on the pod's devices; false when its
// packets must not be let through. A failure is logged once per pod, and
// so is its end.
func (t *Table) guardPod(nl *netlink.Handle, p podNetns) bool {
	if t.opts.Pods == nil {
		return true
	}
	pod, err := t.opts.Pods.Guard(nl)
	if err == nil && !pod {
		return false // not a namespace the node routes for
	}
	if err != nil {
		if t.podErrs[p.id] != err.Error() {
			t.podErrs[p.id] = err.Error()
			t.log.Error("an allowed pod's devices cannot be guarded against hand-made packets: its packets to IMDS are dropped",
				zap.String("cgroup", p.cgroup), zap.String("netns", p.path), zap.Error(err))
		}
		return false
	}
	if _, failed := t.podErrs[p.id]; failed {
		delete(t.podErrs, p.id)
		t.log.Info("an allowed pod's devices are guarded now: its packets to IMDS pass", zap.String("cgroup", p.cgroup))
	}
	return true
}

// sourceAddrs are the addresses of a pod's namespace its packets can
// come from when routed through the node: global unicast and private
// ones, not loopback or link-local.
func sourceAddrs(addrs []netlink.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsGlobalUnicast() || ip.IsPrivate() {
			out = append(out, ip)
		}
	}
	return out
}
