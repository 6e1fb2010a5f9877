package cgroupfs_test

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/internal/cgroupfs"
	"github.com/imdsguard/imdsguard/test/lab"
)

func TestScanListsEveryCgroupWithItsID(t *testing.T) {
	lab.RequirePrivileged(t)
	mount, err := cgroupfs.V2Mount()
	if err != nil {
		t.Fatal(err)
	}
	top, err := os.MkdirTemp(mount, "imdsguard-scan-")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	t.Cleanup(func() {
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
		os.Remove(top)
	})
	for _, rel := range []string{"a", "a/b", "a/b/c", "with space", "x", "x/y"} {
		d := filepath.Join(top, rel)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	got, err := cgroupfs.Scan(mount)
	if err != nil {
		t.Fatal(err)
	}
	if got[mustID(t, mount)] != "/" {
		t.Errorf("root not listed as /")
	}
	for _, d := range append([]string{top}, dirs...) {
		want := strings.TrimPrefix(d, mount)
		if p := got[mustID(t, d)]; p != want {
			t.Errorf("cgroup %s listed as %q, want %q", d, p, want)
		}
	}
	for _, p := range got {
		if strings.HasSuffix(p, "cgroup.procs") || strings.Contains(p, "/.") {
			t.Errorf("not a cgroup: %q", p)
		}
	}

	// A subtree scan lists that cgroup and those below it, nothing else.
	rel := strings.TrimPrefix(filepath.Join(top, "a"), mount)
	sub, err := cgroupfs.ScanSubtree(mount, rel)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]string{}
	for _, r := range []string{"a", "a/b", "a/b/c"} {
		d := filepath.Join(top, r)
		want[mustID(t, d)] = strings.TrimPrefix(d, mount)
	}
	if !maps.Equal(sub, want) {
		t.Errorf("ScanSubtree(%s) = %v, want %v", rel, sub, want)
	}
	if _, err := cgroupfs.ScanSubtree(mount, rel+"/gone"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ScanSubtree of a missing cgroup: %v, want ErrNotExist", err)
	}
}

func mustID(t *testing.T, dir string) uint64 {
	t.Helper()
	id, err := cgroupfs.ID(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func BenchmarkScan(b *testing.B) {
	mount, err := cgroupfs.V2Mount()
	if err != nil {
		b.Skip(err)
	}
	for b.Loop() {
		if _, err := cgroupfs.Scan(mount); err != nil {
			b.Fatal(err)
		}
	}
}
