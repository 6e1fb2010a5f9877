package uplink

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// attacher puts the guard's program on a device's clsact egress: the
// Ethernet one, or on a device without link-layer header (EncapType
// "none": netkit and other L3 devices) the one that reads from the IP
// header, when there is one.
type attacher struct {
	ether, l3 program
}

type program struct {
	prog *ebpf.Program
	id   int
}

func newAttacher(ether, l3 *ebpf.Program) (attacher, error) {
	var a attacher
	var err error
	if a.ether, err = programOf(ether); err != nil {
		return a, err
	}
	if l3 != nil {
		a.l3, err = programOf(l3)
	}
	return a, err
}

func programOf(p *ebpf.Program) (program, error) {
	info, err := p.Info()
	if err != nil {
		return program{}, fmt.Errorf("reading the uplink program's info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return program{}, errors.New("the kernel does not report program ids")
	}
	return program{prog: p, id: int(id)}, nil
}

// programFor picks the program for l, or says it has none.
func (a attacher) programFor(l netlink.Link) (program, bool) {
	switch l.Attrs().EncapType {
	case "ether":
		return a.ether, true
	case "none":
		return a.l3, a.l3.prog != nil
	}
	return program{}, false
}

// ensure puts the filter on l's egress unless it is there with the right
// program; fresh says it had to.
func (a attacher) ensure(h *netlink.Handle, l netlink.Link) (fresh bool, err error) {
	p, ok := a.programFor(l)
	if !ok {
		return false, fmt.Errorf("no uplink program for a device of link type %q", l.Attrs().EncapType)
	}
	f, err := ours(h, l)
	if err != nil {
		return false, err
	}
	if f != nil && f.Id == p.id {
		return false, nil
	}
	if err := h.QdiscAdd(clsact(l)); err != nil && !errors.Is(err, unix.EEXIST) {
		return false, fmt.Errorf("adding the clsact qdisc: %w", err)
	}
	if err := h.FilterReplace(filter(l, p.prog)); err != nil {
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
