package lab

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestParseCgroup2Mount(t *testing.T) {
	const hybrid = `23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
41 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
42 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	const unified = `23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
`
	const other = `23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
50 23 0:40 /sub /mnt/my\040cg rw,relatime - cgroup2 none rw
`
	const none = `23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
`
	for _, tc := range []struct {
		name, in  string
		mnt, root string
		wantErr   bool
	}{
		{"hybrid", hybrid, "/sys/fs/cgroup/unified", "/", false},
		{"unified", unified, "/sys/fs/cgroup", "/", false},
		{"other", other, "/mnt/my cg", "/sub", false},
		{"none", none, "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mi, err := parseCgroup2Mount(strings.NewReader(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if mi.mountPoint != tc.mnt || mi.root != tc.root {
				t.Errorf("got %+v, want %q root %q", mi, tc.mnt, tc.root)
			}
		})
	}
}

// fakeTB records Skip/Fatal instead of stopping the goroutine.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper()          {}
func (f *fakeTB) Skip(args ...any) { f.skipped = true }
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped = true
	f.msg = fmt.Sprintf(format, args...)
}
func (f *fakeTB) Fatalf(format string, args ...any) { f.failed = true; f.msg = format }

func TestRequirePrivilegedDecision(t *testing.T) {
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	for _, tc := range []struct {
		name       string
		problem    string
		env        map[string]string
		skip, fail bool
	}{
		{"ok", "", map[string]string{"CI": "true"}, false, false},
		{"skip locally", "needs root: uid 1000", nil, true, false},
		{"fail in CI", "needs root: uid 1000", map[string]string{"CI": "true"}, false, true},
		{"fail when required", "needs BPF: EPERM", map[string]string{"IMDSGUARD_REQUIRE_PRIVILEGED": "1"}, false, true},
		{"CI=false skips", "needs cgroup v2: none", map[string]string{"CI": "false"}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeTB{TB: t}
			requirePrivileged(f, tc.problem, env(tc.env))
			if f.skipped != tc.skip || f.failed != tc.fail {
				t.Errorf("skipped=%v failed=%v, want %v %v", f.skipped, f.failed, tc.skip, tc.fail)
			}
		})
	}
}

func TestIsWithin(t *testing.T) {
	p := "/sys/fs/cgroup/unified/imdsguard-lab-ig000000"
	for dir, want := range map[string]bool{
		p:                        true,
		p + "/sub":               true,
		p + "/sub/../x":          true,
		p + "/..":                false,
		p + "x":                  false,
		"/sys/fs/cgroup/unified": false,
		"relative":               false,
	} {
		if got := isWithin(p, dir); got != want {
			t.Errorf("isWithin(%q) = %v", dir, got)
		}
	}
}

func TestICMPChecksum(t *testing.T) {
	// Echo request, id 0x1234 seq 1, no payload: checksum 0xe5ca.
	msg := []byte{8, 0, 0, 0, 0x12, 0x34, 0, 1}
	if got := icmpChecksum(msg); got != 0xe5ca {
		t.Errorf("checksum %#x", got)
	}
}

func TestSkipWithoutKernelFeatureDecision(t *testing.T) {
	for _, tc := range []struct {
		name, features string
		skip, fail     bool
	}{
		{"not expected: skip", "", true, false},
		{"another expected: skip", "ipvlan,fmod_ret", true, false},
		{"expected: fail", "ipvlan, netkit", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeTB{TB: t}
			skipWithoutKernelFeature(f, "netkit", "operation not supported", func(string) string { return tc.features })
			if f.skipped != tc.skip || f.failed != tc.fail {
				t.Errorf("skipped=%v failed=%v, want %v %v", f.skipped, f.failed, tc.skip, tc.fail)
			}
			if f.skipped && !strings.HasPrefix(f.msg, "kernel lacks netkit: ") {
				t.Errorf("skip message %q does not start with the prefix the matrix accepts", f.msg)
			}
		})
	}
}

func TestPatienceScalesByTheFactorInItsVariable(t *testing.T) {
	for _, c := range []struct {
		env  string
		want time.Duration
	}{{"", 20 * time.Second}, {"3", 60 * time.Second}, {"x", 20 * time.Second}, {"0", 20 * time.Second}, {"21", 20 * time.Second}} {
		t.Setenv(EnvPatience, c.env)
		if got := Patience(20 * time.Second); got != c.want {
			t.Errorf("%s=%q: Patience(20s) = %s, want %s", EnvPatience, c.env, got, c.want)
		}
	}
}
