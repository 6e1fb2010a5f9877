package controller

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/imdsguard/imdsguard/internal/cri"
	"github.com/imdsguard/imdsguard/internal/loader"
	"github.com/imdsguard/imdsguard/internal/policy"
)

const (
	cidWeb   = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cidOther = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	uidWeb   = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"
	uidOther = "9f8e7d6c-5b4a-3921-8f7e-6d5c4b3a2910"
	cgWeb    = "/kubepods/besteffort/pod" + uidWeb + "/" + cidWeb
	cgOther  = "/kubepods/besteffort/pod" + uidOther + "/" + cidOther
)

// fakeRuntime is a container runtime that knows the names it is given.
type fakeRuntime struct {
	names map[string]cri.Names
	asked map[string]int
}

func newFakeRuntime() *fakeRuntime {
	return &fakeRuntime{names: map[string]cri.Names{}, asked: map[string]int{}}
}

func (f *fakeRuntime) Lookup(id string) (cri.Names, bool) {
	f.asked[id]++
	n, ok := f.names[id]
	return n, ok
}

func TestIdentify(t *testing.T) {
	rt := newFakeRuntime()
	rt.names[cidWeb] = cri.Names{Namespace: "shop", Pod: "web-1", Container: "app", PodUID: uidWeb}
	rt.names[cidOther] = cri.Names{Namespace: "shop", Pod: "cart-1", Container: "app", PodUID: uidWeb} // not the uid of its path
	for _, tt := range []struct {
		name        string
		path        string
		rt          Runtime
		known, none bool // known names, or not a pod's container
		retry       bool
	}{
		{"named", cgWeb, rt, true, false, false},
		{"not listed yet", "/kubepods/pod" + uidWeb + "/" + cidWeb[:60] + "beef", rt, false, false, true},
		{"a uid the runtime says otherwise", cgOther, rt, false, false, false},
		{"a sub-cgroup of a container", cgWeb + "/init", rt, false, false, false},
		{"a container made inside a container", cgOther + "/kubepods/besteffort/pod" + uidWeb + "/" + cidWeb, rt, false, false, false},
		{"no runtime", cgWeb, nil, false, false, false},
		{"a service", "/system.slice/backup.service", rt, false, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id, retry := identify(tt.path, tt.rt)
			none := reflect.DeepEqual(id, policy.NotAPodContainer())
			if id.Known() != tt.known || none != tt.none || retry != tt.retry {
				t.Errorf("identify(%s) = %+v (not a pod's: %v), retry %v; want known %v, not a pod's %v, retry %v",
					tt.path, id, none, retry, tt.known, tt.none, tt.retry)
			}
		})
	}
	if w := func() policy.Workload { id, _ := identify(cgWeb, rt); return id.Workload() }(); w != (policy.Workload{Namespace: "shop", Pod: "web-1", Container: "app"}) {
		t.Errorf("names %+v", w)
	}
}

const namesPolicy = `
cloud: aws
rules:
  - name: web
    match: {namespace: shop, pod: "web-*"}
    allowNonHostNetns: true
  - name: no-ci
    match: {namespace: ci}
    deny: true
`

// planWithNames compiles the policy against a tree of dirs, naming pods
// with rt.
func planWithNames(t *testing.T, yaml string, rt Runtime, dirs ...string) (*Plan, string) {
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
	plan, err := MakePlanWithNames(pol, mount, rt)
	if err != nil {
		t.Fatal(err)
	}
	return plan, mount
}

// ownList names the rules in the kernel list of the cgroup at path.
func ownList(t *testing.T, plan *Plan, path string) []string {
	t.Helper()
	for id, p := range plan.tree {
		if p == path {
			var names []string
			for _, i := range plan.Cgroups[loader.CgroupKey{ID: id}] {
				names = append(names, plan.Compiled.RuleName(int(i)))
			}
			return names
		}
	}
	t.Fatalf("no cgroup %s in the plan's tree", path)
	return nil
}

// A container whose names the runtime does not have yet is denied by the
// denies by name and granted nothing by name; once the runtime names it,
// the next rescan gives it its grant (and the nftables layer lets it
// through), without a restart. Named cgroups are not asked about again.
func TestALateNamedContainerGetsItsGrantAtARescan(t *testing.T) {
	rt := newFakeRuntime()
	plan, mount := planWithNames(t, namesPolicy, rt, cgWeb)
	if got := ownList(t, plan, cgWeb); !slices.Equal(got, []string{"no-ci"}) {
		t.Fatalf("unknown names: list %v, want [no-ci] (denies by name apply, grants do not)", got)
	}
	if got := plan.allowedCgroups(); got != nil {
		t.Fatalf("unknown names: the table lets %v through", got)
	}
	if len(plan.pending) != 1 {
		t.Fatalf("pending %v, want the container's cgroup", plan.pending)
	}

	rescan(t, plan, mount) // still unknown: nothing changes
	if got := ownList(t, plan, cgWeb); !slices.Equal(got, []string{"no-ci"}) || len(plan.pending) != 1 {
		t.Fatalf("still unknown: list %v, pending %v", got, plan.pending)
	}

	rt.names[cidWeb] = cri.Names{Namespace: "shop", Pod: "web-7d9f8-x7k2p", Container: "app", PodUID: uidWeb}
	// a container made meanwhile, in the namespace denied
	if err := os.MkdirAll(filepath.Join(mount, cgOther), 0o755); err != nil {
		t.Fatal(err)
	}
	rt.names[cidOther] = cri.Names{Namespace: "ci", Pod: "job-1", Container: "run", PodUID: uidOther}
	rescan(t, plan, mount)
	if got := ownList(t, plan, cgWeb); !slices.Equal(got, []string{"web"}) {
		t.Errorf("named: list %v, want [web]", got)
	}
	if got := ownList(t, plan, cgOther); !slices.Equal(got, []string{"no-ci"}) {
		t.Errorf("the new container in ci: list %v, want [no-ci]", got)
	}
	if got := plan.allowedCgroups(); !slices.Equal(got, []string{cgWeb}) {
		t.Errorf("the table lets %v through, want the named pod", got)
	}
	if len(plan.pending) != 0 {
		t.Errorf("pending %v after every cgroup was named", plan.pending)
	}
	asked := rt.asked[cidWeb]
	rescan(t, plan, mount)
	if rt.asked[cidWeb] != asked {
		t.Errorf("a named cgroup was asked about again")
	}
}

// Without a runtime, rules by name hold every pod's container as unknown,
// for good: nothing is asked again, grants by name never apply.
func TestWithoutARuntimeNamesAreUnknown(t *testing.T) {
	plan, mount := planWithNames(t, namesPolicy, nil, cgWeb, "/system.slice/x.service")
	rescan(t, plan, mount)
	if got := ownList(t, plan, cgWeb); !slices.Equal(got, []string{"no-ci"}) {
		t.Errorf("pod container: list %v, want [no-ci]", got)
	}
	if got := ownList(t, plan, "/system.slice/x.service"); len(got) != 0 {
		t.Errorf("a service: list %v, want none (rules by name are for pods)", got)
	}
	if len(plan.pending) != 0 {
		t.Errorf("pending %v with no runtime to ask", plan.pending)
	}
}

// A policy without rules by name asks the runtime nothing.
func TestAPolicyWithoutNamesAsksNothing(t *testing.T) {
	rt := newFakeRuntime()
	plan, mount := planWithNames(t, fmt.Sprintf(podsPolicy, "enforce", "true"), rt, cgWeb)
	rescan(t, plan, mount)
	if len(rt.asked) != 0 || len(plan.pending) != 0 {
		t.Errorf("asked %v, pending %v", rt.asked, plan.pending)
	}
}
