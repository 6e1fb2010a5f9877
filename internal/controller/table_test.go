package controller

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/internal/nftlayer"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// fakeTable records what the controller asks of the nftables layer.
type fakeTable struct {
	synced   []nftlayer.Want
	followed [][]string
	err      error
}

func (f *fakeTable) Sync(w nftlayer.Want) error {
	f.synced = append(f.synced, w)
	return f.err
}

func (f *fakeTable) FollowPods(cgroups []string) error {
	f.followed = append(f.followed, cgroups)
	return f.err
}

// controller is a Controller holding plan, with a fake table and no guard:
// enough for what it asks of the table.
func controller(plan *Plan) (*Controller, *fakeTable) {
	ft := &fakeTable{}
	return &Controller{plan: plan, opts: Options{Table: ft}, log: zap.NewNop()}, ft
}

// syncedWant is what the controller asks of the table for plan at start.
func syncedWant(t *testing.T, plan *Plan) nftlayer.Want {
	t.Helper()
	e, ft := controller(plan)
	if err := e.SyncTable(); err != nil {
		t.Fatal(err)
	}
	if len(ft.synced) != 1 || len(ft.followed) != 0 {
		t.Fatalf("synced %+v, followed %v: want one sync", ft.synced, ft.followed)
	}
	return ft.synced[0]
}

// planFor compiles the policy yaml against a cgroup tree made of dirs
// (paths relative to a temporary mount).
func planFor(t *testing.T, yaml string, dirs ...string) (*Plan, string) {
	t.Helper()
	mount := t.TempDir()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(mount, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pol, err := policy.Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	plan, err := MakePlan(pol, mount)
	if err != nil {
		t.Fatal(err)
	}
	return plan, mount
}

const podsPolicy = `
cloud: aws
mode: %s
nftables: %s
nftablesAction: reject
endpoints: ["169.254.169.254:80", "[fd00:ec2::254]:8080"]
rules:
  - name: iam-broker
    match: {cgroup: /kubepods/*/broker}
    allowNonHostNetns: true
  - name: not-from-pods
    match: {cgroup: /system.slice/*}
    allowV1: true
  - name: denied
    match: {cgroup: /kubepods/ci/*}
    deny: true
`

var podsTree = []string{"/kubepods/a/broker", "/kubepods/b/broker", "/kubepods/a/app", "/kubepods/ci/job", "/system.slice/x"}

// The table is what the policy says (reject, audit, its endpoints), and
// lets through the cgroups that a rule allows from other network
// namespaces: not those a rule allows something else, nor denied ones.
func TestTableLetsThroughTheCgroupsAllowedFromPods(t *testing.T) {
	for _, mode := range []string{policy.ModeEnforce, policy.ModeAudit} {
		plan, _ := planFor(t, fmt.Sprintf(podsPolicy, mode, "true"), podsTree...)
		got := syncedWant(t, plan)
		want := nftlayer.Want{
			On: true, Reject: true, Audit: mode == policy.ModeAudit,
			Endpoints:      []netip.AddrPort{netip.MustParseAddrPort("169.254.169.254:80"), netip.MustParseAddrPort("[fd00:ec2::254]:8080")},
			AllowedCgroups: []string{"/kubepods/a/broker", "/kubepods/b/broker"},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("mode %s: table %+v, want %+v", mode, got, want)
		}
	}
}

// nftables: false turns the table off, and then no pods are followed.
func TestTableOffFollowsNoPods(t *testing.T) {
	plan, _ := planFor(t, fmt.Sprintf(podsPolicy, policy.ModeEnforce, "false"), podsTree...)
	if got := syncedWant(t, plan); !reflect.DeepEqual(got, nftlayer.Want{}) {
		t.Errorf("table %+v, want off", got)
	}
	e, ft := controller(plan)
	e.followPodsLocked()
	if len(ft.followed) != 0 {
		t.Errorf("followed %v with the table off", ft.followed)
	}
}

// At each rescan the table is handed the allowed cgroups of the tree as
// scanned: a pod made since is let through, one gone no longer.
func TestRescanHandsTheTableTheAllowedCgroupsOfNow(t *testing.T) {
	plan, mount := planFor(t, fmt.Sprintf(podsPolicy, policy.ModeEnforce, "true"), podsTree...)
	e, ft := controller(plan)
	if err := os.MkdirAll(filepath.Join(mount, "/kubepods/c/broker"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mount, "/kubepods/a/broker")); err != nil {
		t.Fatal(err)
	}
	rescan(t, e.plan, mount)
	e.followPodsLocked()
	want := [][]string{{"/kubepods/b/broker", "/kubepods/c/broker"}}
	if !reflect.DeepEqual(ft.followed, want) || len(ft.synced) != 0 {
		t.Errorf("followed %v, synced %v; want followed %v and no sync", ft.followed, ft.synced, want)
	}
}

// rescan leaves plan as a rescan of the tree at mount does (the kernel
// aside).
func rescan(t *testing.T, plan *Plan, mount string) {
	t.Helper()
	sc, err := scanTree(plan, mount, plan.tree, plan.pending)
	if err != nil {
		t.Fatal(err)
	}
	plan.commit(sc, plan.changes(sc, zap.NewNop()))
}

// A table the layer could not write fails the start; without a table
// (none configured) there is nothing to fail.
func TestSyncTableErrors(t *testing.T) {
	plan, _ := planFor(t, fmt.Sprintf(podsPolicy, policy.ModeEnforce, "true"))
	e, ft := controller(plan)
	ft.err = errors.New("no table for you")
	if err := e.SyncTable(); !errors.Is(err, ft.err) {
		t.Errorf("SyncTable: %v, want the table's error", err)
	}
	e.opts.Table = nil
	if err := e.SyncTable(); err != nil {
		t.Errorf("SyncTable without a table: %v", err)
	}
	e.followPodsLocked() // must not panic
}
