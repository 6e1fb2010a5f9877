package cgroupfs

import (
	"path/filepath"
	"strings"
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

func TestParseMounts(t *testing.T) {
	info := `24 1 0:22 / /sys rw - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
31 24 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
900 30 0:26 /kubepods /run/my\040cgroup rw master:9 - cgroup2 cgroup2 rw
`
	got, err := ParseMounts(strings.NewReader(info))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{{Point: "/sys/fs/cgroup/unified", Root: "/"}, {Point: "/run/my cgroup", Root: "/kubepods"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("ParseMounts = %+v, want %+v", got, want)
	}
}

func TestDepth(t *testing.T) {
	for p, want := range map[string]int{"/": 0, ".": 0, "": 0, "/a": 1, "a/b": 2, "/kubepods/besteffort/pod1/": 3} {
		if got := depth(p); got != want {
			t.Errorf("depth(%q) = %d, want %d", p, got, want)
		}
	}
}
