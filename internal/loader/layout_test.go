package loader

import (
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/bpf"
)

func TestLayoutChangesWithAMapsShape(t *testing.T) {
	spec, err := bpf.LoadImdsguard()
	if err != nil {
		t.Fatal(err)
	}
	base := layoutOf(spec)
	if again, _ := bpf.LoadImdsguard(); layoutOf(again) != base {
		t.Fatal("layout of the same object differs between two reads")
	}
	spec.Maps[bpf.ImdsguardMapEvents].MaxEntries *= 2
	if layoutOf(spec) == base {
		t.Error("a bigger ring buffer did not change the layout")
	}
	spec, _ = bpf.LoadImdsguard()
	if shape := typeShape(spec.Maps[bpf.ImdsguardMapSockStates].Value, 0); !strings.Contains(shape, "passed@") {
		t.Errorf("sock_state shape %q does not list its members", shape)
	}
	for _, name := range sharedMaps(spec) {
		if strings.HasPrefix(name, ".") {
			t.Errorf("internal data section %s would be shared across daemons", name)
		}
	}
}

// Every map of the object is pinned and taken over: the list comes from
// the bindings, not from a hand-kept one that a new map could miss.
func TestEveryMapIsShared(t *testing.T) {
	spec, err := bpf.LoadImdsguard()
	if err != nil {
		t.Fatal(err)
	}
	var g Guard
	got := g.mapsByName()
	for _, name := range sharedMaps(spec) {
		if _, ok := got[name]; !ok {
			t.Errorf("map %s is not in mapsByName", name)
		}
	}
	if len(got) != len(sharedMaps(spec)) {
		t.Errorf("mapsByName has %d maps, the object %d", len(got), len(sharedMaps(spec)))
	}
}
