package cgroupfs

import (
	"path/filepath"
	"testing"
)

func TestMountOfFindsTheHierarchyRoot(t *testing.T) {
	root, err := V2Mount()
	if err != nil {
		t.Skipf("no cgroup v2 mount here: %v", err)
	}
	for _, dir := range []string{root, filepath.Join(root, "."), root + "/"} {
		got, err := MountOf(dir)
		if err != nil || got != root {
			t.Errorf("MountOf(%q) = %q, %v; want %q", dir, got, err, root)
		}
	}
	if _, err := MountOf("/proc"); err == nil {
		t.Error("MountOf(/proc) found a cgroup v2 mount")
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/x\134y`: `/x\y`, `/end\04`: `/end\04`} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}
