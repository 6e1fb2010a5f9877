package nftlayer

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/imdsguard/imdsguard/internal/netnsexec"
	"github.com/imdsguard/imdsguard/internal/nft"
)

// fakeKernel records what the layer asks of the kernel's table.
type fakeKernel struct {
	applied  []nft.Config
	checked  []int
	removed  int
	allowed  [][2][]netip.Addr // add, remove
	intact   bool              // what Check answers
	applyErr error
}

func (f *fakeKernel) Apply(cfg nft.Config) error {
	if f.applyErr != nil {
		return f.applyErr
	}
	f.applied = append(f.applied, cfg)
	return nil
}

func (f *fakeKernel) Check(rules int) (bool, error) {
	f.checked = append(f.checked, rules)
	return f.intact, nil
}

func (f *fakeKernel) SetAllowed(add, remove []netip.Addr) error {
	f.allowed = append(f.allowed, [2][]netip.Addr{add, remove})
	return nil
}

func (f *fakeKernel) Remove() error { f.removed++; return nil }

func fakeTable(t *testing.T, opts Options) (*Table, *fakeKernel) {
	t.Helper()
	tbl := newTable(opts, zap.NewNop())
	k := &fakeKernel{intact: true}
	tbl.kernel = k
	return tbl, k
}

var endpoints = []netip.AddrPort{netip.MustParseAddrPort("169.254.169.254:80"), netip.MustParseAddrPort("[fd00:ec2::254]:80")}

// A Want becomes the table's config: its endpoints, reject and audit,
// logged (rate limited) to the group the daemon reads.
func TestWantBecomesTheTableConfig(t *testing.T) {
	allowed := []netip.Addr{netip.MustParseAddr("10.1.2.3")}
	for _, w := range []Want{
		{On: true, Endpoints: endpoints},
		{On: true, Endpoints: endpoints, Audit: true},
		{On: true, Endpoints: endpoints[:1], Reject: true},
	} {
		cfg := config(w, allowed)
		if !slices.Equal(cfg.Endpoints, w.Endpoints) || cfg.Audit != w.Audit || cfg.Reject != w.Reject ||
			cfg.LogGroup != LogGroup || cfg.LogRate != 10 || !slices.Equal(cfg.Allowed, allowed) {
			t.Errorf("want %+v: config %+v", w, cfg)
		}
		// logged tables have an accept, a log and a drop rule per endpoint
		if got := ruleCount(cfg); got != 3*len(w.Endpoints) {
			t.Errorf("want %+v: %d rules, want %d", w, got, 3*len(w.Endpoints))
		}
	}
}

// Sync writes the table, removes it when the policy turns it off (once),
// and writes it again when turned on.
func TestSyncWritesAndRemovesTheTable(t *testing.T) {
	tbl, k := fakeTable(t, Options{})
	if err := tbl.Sync(Want{On: false}); err != nil || k.removed != 0 {
		t.Fatalf("off before any table: err %v, %d removals, want none", err, k.removed)
	}
	if err := tbl.Sync(Want{On: true, Endpoints: endpoints, Reject: true}); err != nil {
		t.Fatal(err)
	}
	if len(k.applied) != 1 || !k.applied[0].Reject || !slices.Equal(k.applied[0].Endpoints, endpoints) || len(k.applied[0].Allowed) != 0 {
		t.Fatalf("applied %+v, want one reject table for %v and nothing allowed", k.applied, endpoints)
	}
	for range 2 {
		if err := tbl.Sync(Want{On: false}); err != nil {
			t.Fatal(err)
		}
	}
	if k.removed != 1 {
		t.Errorf("%d removals after turning off twice, want 1", k.removed)
	}
	if err := tbl.Sync(Want{On: true, Endpoints: endpoints, Audit: true}); err != nil || len(k.applied) != 2 || !k.applied[1].Audit {
		t.Errorf("on again: err %v, applied %+v", err, k.applied)
	}
}

// Without nf_tables the layer does nothing, and says no error.
func TestNoKernelTableNoWork(t *testing.T) {
	tbl := newTable(Options{}, zap.NewNop())
	if err := tbl.Sync(Want{On: true, Endpoints: endpoints}); err != nil {
		t.Fatal(err)
	}
	if err := tbl.FollowPods([]string{"/"}); err != nil {
		t.Fatal(err)
	}
	tbl.restoreIfChanged()
	if err := tbl.Stop(true); err != nil || tbl.Restores() != 0 {
		t.Errorf("stop: %v, %d restores", err, tbl.Restores())
	}
}

// The watchdog checks the rule count of the table written, restores the
// same table when it changed, counts and reports it; an intact table, or
// none (off), is left alone.
func TestWatchdogRestoresAChangedTable(t *testing.T) {
	var reported []string
	tbl, k := fakeTable(t, Options{Restored: func(table string, at time.Time) {
		if at.IsZero() {
			t.Error("restore reported without a time")
		}
		reported = append(reported, table)
	}})
	tbl.restoreIfChanged()
	if len(k.checked) != 0 {
		t.Fatalf("checked %v before any table was written", k.checked)
	}
	if err := tbl.Sync(Want{On: true, Endpoints: endpoints}); err != nil {
		t.Fatal(err)
	}
	tbl.restoreIfChanged()
	if !slices.Equal(k.checked, []int{6}) || len(k.applied) != 1 || tbl.Restores() != 0 {
		t.Fatalf("intact table: checked %v, applied %d, restores %d; want checked [6], applied 1, restores 0", k.checked, len(k.applied), tbl.Restores())
	}
	k.intact = false
	tbl.restoreIfChanged()
	if len(k.applied) != 2 || !slices.Equal(k.applied[1].Endpoints, k.applied[0].Endpoints) || tbl.Restores() != 1 {
		t.Fatalf("changed table: applied %+v, restores %d; want the same table again, 1 restore", k.applied, tbl.Restores())
	}
	if !slices.Equal(reported, []string{"inet " + nft.TableName}) {
		t.Errorf("reported %v", reported)
	}
	if err := tbl.Sync(Want{On: false}); err != nil {
		t.Fatal(err)
	}
	tbl.restoreIfChanged()
	if len(k.checked) != 2 {
		t.Errorf("checked %v after the table was turned off", k.checked)
	}
}

// A table the kernel refused is not on: nothing to restore, follow or
// remove at exit.
func TestRefusedTableIsNotOn(t *testing.T) {
	tbl, k := fakeTable(t, Options{})
	k.applyErr = errors.New("refused")
	if err := tbl.Sync(Want{On: true, Endpoints: endpoints}); !errors.Is(err, k.applyErr) {
		t.Fatalf("Sync: %v, want the kernel's error", err)
	}
	tbl.restoreIfChanged()
	if err := tbl.FollowPods(nil); err != nil {
		t.Fatal(err)
	}
	if err := tbl.Stop(true); err != nil {
		t.Fatal(err)
	}
	if len(k.checked)+len(k.allowed)+k.removed != 0 {
		t.Errorf("checked %v, allowed %v, removed %d: want nothing", k.checked, k.allowed, k.removed)
	}
}

// At exit the table stays (keep) or goes (detach).
func TestStopKeepsOrRemovesTheTable(t *testing.T) {
	for _, remove := range []bool{false, true} {
		tbl, k := fakeTable(t, Options{})
		if err := tbl.Sync(Want{On: true, Endpoints: endpoints}); err != nil {
			t.Fatal(err)
		}
		if err := tbl.Stop(remove); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{false: 0, true: 1}[remove]; k.removed != want {
			t.Errorf("Stop(%v): %d removals, want %d", remove, k.removed, want)
		}
	}
}

// Following pods changes only what changed in the allowed sets.
func TestDiffAddrs(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::3")
	add, remove := diffAddrs([]netip.Addr{a, b}, []netip.Addr{b, c})
	if !slices.Equal(add, []netip.Addr{c}) || !slices.Equal(remove, []netip.Addr{a}) {
		t.Errorf("add %v remove %v, want add [%v] remove [%v]", add, remove, c, a)
	}
	if add, remove := diffAddrs([]netip.Addr{a}, []netip.Addr{a}); add != nil || remove != nil {
		t.Errorf("no change: add %v remove %v", add, remove)
	}
}

// A pod is let through by the addresses routed packets can come from:
// global unicast and private ones (IPv4-mapped ones as IPv4), never
// loopback, link-local or multicast.
func TestSourceAddrsOfAPod(t *testing.T) {
	var addrs []netlink.Addr
	for _, s := range []string{"127.0.0.1", "10.244.1.7", "169.254.3.4", "::1", "fe80::1", "fd00:10::7", "2001:db8::7", "::ffff:192.168.5.6", "ff02::1"} {
		addrs = append(addrs, netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(s), Mask: net.CIDRMask(8, 32)}})
	}
	addrs = append(addrs, netlink.Addr{}) // no address at all
	want := []netip.Addr{netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("fd00:10::7"), netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("192.168.5.6")}
	if got := sourceAddrs(addrs); !slices.Equal(got, want) {
		t.Errorf("sourceAddrs = %v, want %v", got, want)
	}
}

// A cgroup's processes are read from cgroup.procs; a cgroup gone has none.
func TestProcsOfACgroup(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("12\n345\nx\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := procs(dir); !slices.Equal(got, []int{12, 345}) {
		t.Errorf("procs = %v, want [12 345]", got)
	}
	if got := procs(filepath.Join(dir, "gone")); got != nil {
		t.Errorf("procs of a missing cgroup = %v", got)
	}
}

// Each network namespace of the allowed cgroups' processes is listed once,
// found in the first cgroup that has it; the host's and the daemon's own
// never are.
func TestPodNamespacesSkipTheHostsAndAreListedOnce(t *testing.T) {
	sleeper := exec.Command("sleep", "60") // a second process in this namespace
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	mount := t.TempDir()
	for cg, pids := range map[string]string{"a": strconv.Itoa(sleeper.Process.Pid), "b": strconv.Itoa(os.Getpid()) + "\n999999999\n"} {
		if err := os.Mkdir(filepath.Join(mount, cg), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mount, cg, "cgroup.procs"), []byte(pids), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	self, err := netnsexec.ID("")
	if err != nil {
		t.Fatal(err)
	}
	tbl := newTable(Options{CgroupMount: mount}, zap.NewNop())
	tbl.hostNetns, tbl.selfNetns = [2]uint64{1, 1}, self
	if got := tbl.podNamespaces([]string{"/a", "/b"}); len(got) != 0 {
		t.Errorf("the daemon's own namespace listed: %+v", got)
	}
	tbl.hostNetns, tbl.selfNetns = self, [2]uint64{1, 1}
	if got := tbl.podNamespaces([]string{"/a", "/b"}); len(got) != 0 {
		t.Errorf("the host's namespace listed: %+v", got)
	}
	tbl.hostNetns, tbl.selfNetns = [2]uint64{1, 1}, [2]uint64{2, 2}
	want := []podNetns{{path: "/proc/" + strconv.Itoa(sleeper.Process.Pid) + "/ns/net", id: self, cgroup: "/a"}}
	if got := tbl.podNamespaces([]string{"/a", "/b"}); !slices.Equal(got, want) {
		t.Errorf("podNamespaces = %+v, want %+v", got, want)
	}
}

// fakePods answers Guard as told.
type fakePods struct {
	pod bool
	err error
}

func (f *fakePods) Guard(*netlink.Handle) (bool, error) { return f.pod, f.err }

// A pod is let through only once its devices are guarded; a failure is
// logged once however many rescans see it, and its end once.
func TestPodIsLetThroughOnlyOnceGuarded(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	pods := &fakePods{err: errors.New("wg0 is not Ethernet")}
	tbl := newTable(Options{Pods: pods}, zap.New(core))
	p := podNetns{path: "/proc/7/ns/net", id: [2]uint64{3, 4}, cgroup: "/kubepods/pod1"}
	for range 3 {
		if tbl.guardPod(nil, p) {
			t.Fatal("a pod whose devices cannot be guarded let through")
		}
	}
	if n := logs.FilterMessageSnippet("cannot be guarded").Len(); n != 1 {
		t.Errorf("the failure logged %d times, want once", n)
	}
	pods.pod, pods.err = true, nil
	if !tbl.guardPod(nil, p) || !tbl.guardPod(nil, p) {
		t.Fatal("a guarded pod not let through")
	}
	if n := logs.FilterMessageSnippet("guarded now").Len(); n != 1 {
		t.Errorf("the recovery logged %d times, want once", n)
	}
	pods.pod = false // the node's own namespace, on its way into a pod
	if tbl.guardPod(nil, p) {
		t.Error("a namespace that is no pod's let through")
	}
	if !newTable(Options{}, zap.NewNop()).guardPod(nil, p) {
		t.Error("without a pod guard, allowed pods are let through unguarded")
	}
}
