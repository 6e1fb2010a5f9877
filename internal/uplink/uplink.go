// Package uplink keeps imdsguard's uplink guard (the imds_uplink tc
// program, bpf/uplink.h) on the egress of every device of the host's
// network namespace that a packet to IMDS can leave the node by. It drops
// packets to an endpoint that no judged socket sent: TCP crafted on raw or
// packet sockets in the host, or in a pod on a macvlan or ipvlan of the
// uplink, none of which pass a socket hook or the forward chain.
//
// The devices are the physical ones (no link kind), the ones the routes to
// the endpoints leave by, and the lower devices of those (the parent of a
// VLAN, macvlan or ipvlan; the ports of a bond or team): an upper device
// hands its frames to its lower one's queue, so guarding the lowest is
// enough and a pod on a macvlan cannot skip it. Pod veths are left alone.
//
// The filter is a direct-action cls_bpf filter on clsact egress, at
// Priority with Handle and the name FilterName, so that another daemon can
// replace it in place (one netlink request, no gap) and detach can find it.
// Filters outlive the daemon, like the pinned cgroup links.
package uplink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

const (
	// FilterName marks imdsguard's filters (TCA_BPF_NAME).
	FilterName = "imdsguard_uplink"
	// Priority and Handle place the filter on clsact egress. Priority 1
	// runs before filters that other agents add with the default.
	Priority = 1
	Handle   = 0x1d5
	// resync is how often the devices are checked even without a netlink
	// notification: a filter or qdisc deleted by hand comes back then.
	resync = 5 * time.Second
)

// Guard attaches the program to the devices of one network namespace.
type Guard struct {
	att       attacher
	endpoints []netip.Addr
	ns        netns.NsHandle // -1: the caller's namespace
	h         *netlink.Handle
	log       *zap.Logger

	mu      sync.Mutex
	devices []string // guarded at the last sync
}

// Start opens the namespace at netnsPath ("" for the caller's own) and
// attaches prog to every device there that needs it.
func Start(prog *ebpf.Program, endpoints []netip.Addr, netnsPath string, log *zap.Logger) (*Guard, error) {
	att, err := newAttacher(prog)
	if err != nil {
		return nil, err
	}
	g := &Guard{att: att, endpoints: endpoints, ns: -1, log: log}
	if g.h, g.ns, err = openHandle(netnsPath); err != nil {
		return nil, err
	}
	if _, err := g.Sync(); err != nil {
		g.closeHandle()
		return nil, err
	}
	return g, nil
}

func openHandle(netnsPath string) (*netlink.Handle, netns.NsHandle, error) {
	if netnsPath == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, -1, fmt.Errorf("opening netlink: %w", err)
		}
		return h, -1, nil
	}
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, -1, fmt.Errorf("opening %s: %w", netnsPath, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, -1, fmt.Errorf("opening netlink in %s: %w", netnsPath, err)
	}
	return h, ns, nil
}

func (g *Guard) closeHandle() { closeHandle(g.h, g.ns) }

func closeHandle(h *netlink.Handle, ns netns.NsHandle) {
	h.Close()
	if ns >= 0 {
		ns.Close()
	}
}

// Devices names the devices guarded at the last sync.
func (g *Guard) Devices() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.devices)
}

// Sync attaches the program where it is missing or another program (an
// earlier daemon's) is in its place, and returns the guarded devices.
func (g *Guard) Sync() ([]string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	links, err := g.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	var names []string
	var errs []error
	for _, l := range wanted(links, g.routeDevices()) {
		name := l.Attrs().Name
		fresh, err := g.att.ensure(g.h, l)
		if err != nil {
			errs = append(errs, fmt.Errorf("guarding %s: %w", name, err))
			continue
		}
		if fresh && slices.Contains(g.devices, name) {
			g.log.Warn("the uplink guard was missing from a device and is back", zap.String("device", name))
		}
		names = append(names, name)
	}
	if len(names) == 0 && len(errs) == 0 {
		g.log.Warn("no device to guard: no physical device and no route to an endpoint")
	}
	if !slices.Equal(names, g.devices) {
		g.log.Info("uplink guard on", zap.Strings("devices", names))
	}
	g.devices = names
	return names, errors.Join(errs...)
}

// routeDevices are the indexes of the devices the routes to the endpoints
// leave by.
func (g *Guard) routeDevices() []int {
	var out []int
	for _, a := range g.endpoints {
		routes, err := g.h.RouteGet(net.IP(a.AsSlice()))
		if err != nil {
			continue // no route: nothing leaves for it by routing
		}
		for _, r := range routes {
			out = append(out, r.LinkIndex)
		}
	}
	return out
}

// wanted picks the Ethernet devices to guard, in index order: physical
// ones, those with the given indexes, and the lower devices of both.
func wanted(links []netlink.Link, routed []int) []netlink.Link {
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	pick := map[int]bool{}
	var visit func(idx int)
	visit = func(idx int) {
		l, ok := byIndex[idx]
		if !ok || pick[idx] {
			return
		}
		pick[idx] = true
		if p := l.Attrs().ParentIndex; p != 0 && l.Attrs().NetNsID < 0 {
			visit(p)
		}
		if t := l.Type(); t == "bond" || t == "team" {
			for _, port := range links {
				if port.Attrs().MasterIndex == idx {
					visit(port.Attrs().Index)
				}
			}
		}
	}
	for _, l := range links {
		if isPhysical(l) {
			visit(l.Attrs().Index)
		}
	}
	for _, idx := range routed {
		visit(idx)
	}
	var out []netlink.Link
	for _, l := range links {
		if pick[l.Attrs().Index] && l.Attrs().EncapType == "ether" {
			out = append(out, l)
		}
	}
	return out
}

// ours finds imdsguard's filter on l's egress, or nil.
func ours(h *netlink.Handle, l netlink.Link) (*netlink.BpfFilter, error) {
	filters, err := h.FilterList(l, netlink.HANDLE_MIN_EGRESS)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil, nil // no clsact qdisc
		}
		return nil, fmt.Errorf("listing filters: %w", err)
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, FilterName) {
			return bf, nil
		}
	}
	return nil, nil
}

// Run keeps the guard on every device that needs it until ctx ends:
// after each change of devices or routes, and every few seconds.
func (g *Guard) Run(ctx context.Context) {
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	done := make(chan struct{})
	defer close(done)
	g.subscribe(done, notify)
	tick := time.NewTicker(resync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			// let a burst (a device and its addresses and routes) settle
			time.Sleep(50 * time.Millisecond)
		case <-tick.C:
		}
		if _, err := g.Sync(); err != nil {
			g.log.Error("guarding the uplinks", zap.Error(err))
		}
	}
}

// subscribe calls notify on every link and route update.
func (g *Guard) subscribe(done chan struct{}, notify func()) {
	var nsOpt *netns.NsHandle
	if g.ns >= 0 {
		nsOpt = &g.ns
	}
	onErr := func(err error) {
		select {
		case <-done: // the socket was closed on the way out
		default:
			g.log.Warn("device notifications stopped: devices are checked every few seconds", zap.Error(err))
		}
	}
	links := make(chan netlink.LinkUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: nsOpt, ErrorCallback: onErr}); err != nil {
		g.log.Warn("no device notifications: new devices are guarded within seconds", zap.Error(err))
	}
	routes := make(chan netlink.RouteUpdate, 64)
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: nsOpt, ErrorCallback: onErr}); err != nil {
		g.log.Warn("no route notifications: new routes are followed within seconds", zap.Error(err))
	}
	go func() {
		for {
			select {
			case _, ok := <-links:
				if !ok {
					links = nil
					continue
				}
				notify()
			case _, ok := <-routes:
				if !ok {
					routes = nil
					continue
				}
				notify()
			case <-done:
				return
			}
		}
	}()
}

// Close releases the namespace; with detach it first removes the filters.
func (g *Guard) Close(detach bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var err error
	if detach {
		_, err = removeAll(g.h, anyFilter)
	}
	g.closeHandle()
	return err
}

// Remove takes imdsguard's filters off every device of the namespace at
// netnsPath ("" for the caller's own), for `imdsguard detach`, and names
// the devices it took them from.
func Remove(netnsPath string) (removed []string, err error) {
	err = withHandle(netnsPath, func(h *netlink.Handle) error {
		removed, err = removeAll(h, anyFilter)
		return err
	})
	return removed, err
}

// Attached names the devices that carry imdsguard's filter, for status.
func Attached(netnsPath string) (names []string, err error) {
	err = withHandle(netnsPath, func(h *netlink.Handle) error {
		links, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("listing devices: %w", err)
		}
		for _, l := range links {
			if f, err := ours(h, l); err == nil && f != nil {
				names = append(names, l.Attrs().Name)
			}
		}
		return nil
	})
	return names, err
}

func withHandle(netnsPath string, fn func(*netlink.Handle) error) error {
	h, ns, err := openHandle(netnsPath)
	if err != nil {
		return err
	}
	defer closeHandle(h, ns)
	return fn(h)
}

func anyFilter(*netlink.BpfFilter) bool { return true }

// removeAll removes the filters that which picks, and the clsact qdisc of
// a device that is left without any filter (imdsguard added it, or nobody
// uses it).
func removeAll(h *netlink.Handle, which func(*netlink.BpfFilter) bool) ([]string, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	var removed []string
	var errs []error
	for _, l := range links {
		f, err := ours(h, l)
		if err != nil || f == nil || !which(f) {
			continue
		}
		if err := h.FilterDel(f); err != nil {
			errs = append(errs, fmt.Errorf("removing the uplink guard from %s: %w", l.Attrs().Name, err))
			continue
		}
		removed = append(removed, l.Attrs().Name)
		if unused(h, l) {
			if err := h.QdiscDel(clsact(l)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("removing the clsact qdisc of %s: %w", l.Attrs().Name, err))
			}
		}
	}
	return removed, errors.Join(errs...)
}

// unused says whether l's clsact qdisc holds no filter.
func unused(h *netlink.Handle, l netlink.Link) bool {
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		if fs, err := h.FilterList(l, parent); err != nil || len(fs) > 0 {
			return false
		}
	}
	return true
}
