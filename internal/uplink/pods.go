package uplink

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/internal/netnsexec"
)

// Pods puts the uplink program on the devices of the network namespaces
// of pods that the policy lets reach IMDS (allowNonHostNetns). The node's
// forward chain lets such a pod's packets through by their source
// address, so TCP that a sidecar in the pod builds on a raw or packet
// socket would pass it unjudged; inside the pod's namespace the program
// still sees the sending socket and drops what no judged socket sent.
type Pods struct {
	att attacher
}

// NewPods takes the uplink program.
func NewPods(prog *ebpf.Program) (*Pods, error) {
	att, err := newAttacher(prog)
	if err != nil {
		return nil, err
	}
	return &Pods{att: att}, nil
}

// Guard puts the program on every device of the namespace h works in
// that a packet can leave by, and fails when one of them cannot carry it
// (not Ethernet: a tunnel or WireGuard device the pod's owner set up): the
// caller then must not let the pod's packets through. Loopback and devices
// that are down (the fallback tunnels every namespace gets) are left
// alone; a pod cannot bring a device up without CAP_NET_ADMIN.
//
// A namespace that holds a physical device is not a pod's that the node
// routes for (it is the node's own, seen through a process on its way into
// a pod, or a pod with a device of its own): Guard attaches nothing there
// and says so with pod false.
func (p *Pods) Guard(h *netlink.Handle) (pod bool, err error) {
	links, err := h.LinkList()
	if err != nil {
		return false, fmt.Errorf("listing devices: %w", err)
	}
	if slices.ContainsFunc(links, isPhysical) {
		return false, nil
	}
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.Flags&net.FlagUp == 0 {
			continue
		}
		if _, err := p.att.ensure(h, l); err != nil {
			errs = append(errs, fmt.Errorf("guarding %s: %w", a.Name, err))
		}
	}
	return true, errors.Join(errs...)
}

// isPhysical says whether l is a device of the hardware (or of the
// hypervisor): no link kind, not loopback.
func isPhysical(l netlink.Link) bool {
	return l.Type() == "device" && l.Attrs().Flags&net.FlagLoopback == 0
}

// RemoveFromPods takes imdsguard's filters off the devices of every
// network namespace a process is in, but the one at hostNetnsPath (or the
// caller's own), for detach: a pod's filter left behind would drop its
// IMDS traffic once no socket is judged. Only filters whose program uses
// one of maps are taken (another guard's, in a namespace of its own, stay).
// It names what it removed.
func RemoveFromPods(hostNetnsPath string, maps []ebpf.MapID) (removed []string, err error) {
	owned := func(f *netlink.BpfFilter) bool { return usesMaps(f.Id, maps) }
	return inPods(hostNetnsPath, func(h *netlink.Handle) ([]string, error) { return removeAll(h, owned) })
}

// AttachedInPods names the devices of pods that carry a filter whose
// program uses one of maps, for status.
func AttachedInPods(hostNetnsPath string, maps []ebpf.MapID) ([]string, error) {
	return inPods(hostNetnsPath, func(h *netlink.Handle) ([]string, error) {
		links, err := h.LinkList()
		if err != nil {
			return nil, fmt.Errorf("listing devices: %w", err)
		}
		var names []string
		for _, l := range links {
			if f, err := ours(h, l); err == nil && f != nil && usesMaps(f.Id, maps) {
				names = append(names, l.Attrs().Name)
			}
		}
		return names, nil
	})
}

// inPods runs fn in every network namespace a process is in but the
// host's, and names the devices it returns by namespace. A namespace that
// goes away meanwhile is no error.
func inPods(hostNetnsPath string, fn func(h *netlink.Handle) ([]string, error)) (names []string, err error) {
	host, err := netnsexec.ID(hostNetnsPath)
	if err != nil {
		return nil, err
	}
	var errs []error
	for path, name := range podNetns(host) {
		var devs []string
		err := withHandle(path, func(h *netlink.Handle) error {
			var err error
			devs, err = fn(h)
			return err
		})
		// a namespace that went away meanwhile (its process ended, its
		// mount was removed: the path is then no namespace, EINVAL)
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("in %s: %w", name, err))
		}
		for _, d := range devs {
			names = append(names, d+" in "+name)
		}
	}
	slices.Sort(names)
	return names, errors.Join(errs...)
}

// usesMaps says whether program id uses one of maps.
func usesMaps(id int, maps []ebpf.MapID) bool {
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return false
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return false
	}
	ids, _ := info.MapIDs()
	for _, m := range ids {
		if slices.Contains(maps, m) {
			return true
		}
	}
	return false
}

// podNetns maps a path per network namespace but skip to how to name it:
// the namespaces that processes are in (/proc/PID/ns/net), and those held
// by a bind mount in /run/netns (ip netns, CNI plugins) with no process
// in them.
func podNetns(skip [2]uint64) map[string]string {
	out := map[string]string{}
	seen := map[[2]uint64]bool{skip: true}
	add := func(path, name string) {
		id, err := netnsexec.ID(path)
		if err != nil || seen[id] || !isNetns(path) {
			return
		}
		seen[id] = true
		out[path] = name
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			add(filepath.Join("/proc", e.Name(), "ns", "net"), "the network namespace of pid "+e.Name())
		}
	}
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			add(filepath.Join(dir, e.Name()), "network namespace "+e.Name())
		}
	}
	return out
}

// isNetns says whether path is a namespace file (nsfs), not the empty file
// a removed `ip netns` mount leaves behind.
func isNetns(path string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && fs.Type == unix.NSFS_MAGIC
}
