package uplink

import (
	"net"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// A device the program cannot read (no Ethernet framing: a tunnel, a
// WireGuard device) is an error before any netlink request, so that an
// allowed pod with one is not let through unguarded.
func TestEnsureRefusesDevicesWithoutEthernetFraming(t *testing.T) {
	for _, encap := range []string{"none", "ipip", "gre"} {
		l := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "wg0", EncapType: encap}}
		_, err := attacher{}.ensure(nil, l)
		if err == nil || !strings.Contains(err.Error(), `link type "`+encap+`"`) {
			t.Errorf("ensure on a %s device: %v, want a refusal naming the link type", encap, err)
		}
	}
}

// The node's devices have no link kind; a pod's (veth, macvlan, netkit)
// have one. A namespace with one of the node's is never treated as a pod's.
func TestPhysicalDevicesAreTheOnesWithoutALinkKind(t *testing.T) {
	for _, tc := range []struct {
		link netlink.Link
		want bool
	}{
		{&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}, true},
		{&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo", Flags: net.FlagLoopback}}, false},
		{&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}, false},
		{&netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: "mv0"}}, false},
	} {
		if got := isPhysical(tc.link); got != tc.want {
			t.Errorf("isPhysical(%s %s) = %v, want %v", tc.link.Type(), tc.link.Attrs().Name, got, tc.want)
		}
	}
}
