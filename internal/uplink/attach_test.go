package uplink

import (
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
