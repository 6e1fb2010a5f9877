package uplink

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// attacher puts the guard's program on a device's clsact egress. The
// program reads Ethernet frames (veth, macvlan, ipvlan, netkit, physical
// devices); a device of another link type has no place for it.
type attacher struct {
	prog *ebpf.Program
	id   int
}

func newAttacher(prog *ebpf.Program) (attacher, error) {
	info, err := prog.Info()
	if err != nil {
		return attacher{}, fmt.Errorf("reading the uplink program's info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return attacher{}, errors.New("the kernel does not report program ids")
	}
	return attacher{prog: prog, id: int(id)}, nil
}

// ensure puts the filter on l's egress unless it is there with the right
// program; fresh says it had to.
func (a attacher) ensure(h *netlink.Handle, l netlink.Link) (fresh bool, err error) {
	if t := l.Attrs().EncapType; t != "ether" {
		return false, fmt.Errorf("a device of link type %q: the uplink guard reads Ethernet frames only", t)
	}
	f, err := ours(h, l)
	if err != nil {
		return false, err
	}
	if f != nil && f.Id == a.id {
		return false, nil
	}
	if err := h.QdiscAdd(clsact(l)); err != nil && !errors.Is(err, unix.EEXIST) {
		return false, fmt.Errorf("adding the clsact qdisc: %w", err)
	}
	if err := h.FilterReplace(filter(l, a.prog)); err != nil {
		return false, fmt.Errorf("attaching the filter: %w", err)
	}
	return true, nil
}

func clsact(l netlink.Link) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
}

func filter(l netlink.Link, prog *ebpf.Program) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: l.Attrs().Index,
			Parent:    netlink.HANDLE_MIN_EGRESS,
			Handle:    Handle,
			Priority:  Priority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         FilterName,
		DirectAction: true,
	}
}
