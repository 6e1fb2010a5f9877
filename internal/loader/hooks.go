package loader

import (
	"github.com/cilium/ebpf"

	"github.com/imdsguard/imdsguard/bpf"
)

// cgroupHooks drives attach, pin, takeover, detach and status, in attach
// order: the egress guard before the connect hooks that mark the sockets
// it checks, the setsockopt guard (which keeps packet sockets from sending
// past the uplink guard), then sockops, the connect hooks last.
//
// beside: in a replacing takeover the new program is attached next to the
// old one (each guards what its own programs set up) rather than switched
// in place.
var cgroupHooks = []struct {
	name   string
	attach ebpf.AttachType
	prog   func(*bpf.ImdsguardPrograms) *ebpf.Program
	beside bool
}{
	{"egress", ebpf.AttachCGroupInetEgress, func(p *bpf.ImdsguardPrograms) *ebpf.Program { return p.ImdsEgress }, true},
	{"setsockopt", ebpf.AttachCGroupSetsockopt, func(p *bpf.ImdsguardPrograms) *ebpf.Program { return p.ImdsSetsockopt }, true},
	{"sockops", ebpf.AttachCGroupSockOps, func(p *bpf.ImdsguardPrograms) *ebpf.Program { return p.ImdsSockops }, false},
	{"connect4", ebpf.AttachCGroupInet4Connect, func(p *bpf.ImdsguardPrograms) *ebpf.Program { return p.ImdsConnect4 }, false},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(p *bpf.ImdsguardPrograms) *ebpf.Program { return p.ImdsConnect6 }, false},
}
