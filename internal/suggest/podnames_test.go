package suggest

import (
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/policy"
)

func TestPodGlob(t *testing.T) {
	for _, tc := range []struct {
		pod, glob string
		same      []string // pods the controller makes later
		other     []string // pods of other workloads
	}{
		// web-admin-x7k2p and web-admin-<hash>-<5> would match too: the
		// risk the rule's comment names (a glob cannot say "no dash")
		{"web-6d8f7c9b4d-x7k2p", "web-*-?????", []string{"web-5c8b9d7f4-q9z8r", "web-66b6c48dd5-bcdfg"}, []string{"web-0", "web-x7k2p", "api-6d8f7c9b4d-x7k2p", "web"}},
		{"report-28471234-v2x7b", "report-*-?????", []string{"report-28471235-g5h6j"}, []string{"report-x7k2p"}},
		{"node-agent-x7k2p", "node-agent-?????", []string{"node-agent-q9z8r"}, []string{"node-agent-x7k2p2", "node-agent-admin-x7k2p", "node-x7k2p"}},
		{"db-0", "db-0", nil, []string{"db-1", "db-10"}},
		{"db-12", "db-12", nil, []string{"db-1"}},
		{"debug-shell", "debug-shell", nil, []string{"debug-shell-2"}},
		{"web-admin", "web-admin", nil, nil},                                                // "admin" has vowels: no generated suffix
		{"my-db-x7k2p", "my-db-?????", []string{"my-db-bcd42"}, []string{"my-cache-x7k2p"}}, // a hash is 5 to 10 characters
	} {
		pn := podGlob("shop", tc.pod, "app")
		if pn.glob != tc.glob {
			t.Errorf("podGlob(%q) = %q, want %q", tc.pod, pn.glob, tc.glob)
			continue
		}
		for _, p := range append([]string{tc.pod}, tc.same...) {
			if !policy.MatchCgroup("/"+pn.glob, "/"+p) {
				t.Errorf("glob %q does not match %q", pn.glob, p)
			}
		}
		for _, p := range tc.other {
			if policy.MatchCgroup("/"+pn.glob, "/"+p) {
				t.Errorf("glob %q matches another workload's pod %q", pn.glob, p)
			}
		}
	}
}

// A pod's container named by its events gets a rule by names, with the pod
// uid and the container id wildcarded in its cgroup glob and the rest (a
// prefix, the QoS class) kept; cgroups that rules by name never match keep
// the uid.
func TestWorkloadForNamedPods(t *testing.T) {
	for _, tc := range []struct {
		name, cgroup string
		glob         string
		named        bool
	}{
		{"cgroupfs", "/kubepods/burstable/pod" + uid + "/" + cid, "/kubepods/burstable/pod*/*", true},
		{"cgroupfs guaranteed", "/kubepods/pod" + uid + "/" + cid, "/kubepods/pod*/*", true},
		{"systemd", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidUnder + ".slice/cri-containerd-" + cid + ".scope",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod*.slice/cri-containerd-*.scope", true},
		{"systemd guaranteed cri-o", "/kubepods.slice/kubepods-pod" + uidUnder + ".slice/crio-" + cid + ".scope",
			"/kubepods.slice/kubepods-pod*.slice/crio-*.scope", true},
		{"flat containerd", "/system.slice/containerd.service/kubepods-burstable-pod" + uidUnder + ".slice:cri-containerd:" + cid,
			"/system.slice/containerd.service/kubepods-burstable-pod*.slice:cri-containerd:*", true},
		{"a literal prefix", "/imdsguard-lab-x/kubepods/besteffort/pod" + uid + "/" + cid, "/imdsguard-lab-x/kubepods/besteffort/pod*/*", true},
		{"static pod", "/kubepods/burstable/pod0123456789abcdef0123456789abcdef/" + cid, "/kubepods/burstable/pod*/*", true},
		{"a sub-cgroup keeps the uid", "/kubepods/besteffort/pod" + uid + "/" + cid + "/init", "/kubepods/besteffort/pod" + uid + "/*/init", false},
		{"conmon keeps the uid", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidUnder + ".slice/crio-conmon-" + cid + ".scope",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidUnder + ".slice/crio-*.scope", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, why := workloadFor(record{Cgroup: tc.cgroup, Namespace: "shop", Pod: "web-6d8f7c9b4d-x7k2p", Container: "app"})
			if why != "" {
				t.Fatal(why)
			}
			if w.glob != tc.glob || (w.namespace != "") != tc.named {
				t.Fatalf("workloadFor(%s) = %+v, want glob %q, named %v", tc.cgroup, w, tc.glob, tc.named)
			}
			if !policy.MatchCgroup(w.glob, tc.cgroup) {
				t.Errorf("glob %q does not match %q", w.glob, tc.cgroup)
			}
			if tc.named && (w.pod != "web-*-?????" || w.container != "app" || !strings.Contains(w.note, "not its uid")) {
				t.Errorf("names %+v", w)
			}
		})
	}
	for name, r := range map[string]record{
		"no names":          {Cgroup: "/kubepods/besteffort/pod" + uid + "/" + cid},
		"no container name": {Cgroup: "/kubepods/besteffort/pod" + uid + "/" + cid, Namespace: "shop", Pod: "web-1"},
		"not a name":        {Cgroup: "/kubepods/besteffort/pod" + uid + "/" + cid, Namespace: "Shop", Pod: "web-1", Container: "app"},
	} {
		if w, _ := workloadFor(r); w.namespace != "" || w.glob != "/kubepods/besteffort/pod"+uid+"/*" {
			t.Errorf("%s: %+v, want the uid glob", name, w)
		}
	}
}

// The suggested rule holds for the pod re-created (new pod name suffix, uid
// and container id), and not for another namespace, another container, or
// a pod the glob's shape leaves out.
func TestSuggestedPodRuleSurvivesRecreation(t *testing.T) {
	cg := "/kubepods/besteffort/pod" + uid + "/" + cid
	res := run(t, Config{}, jsonLines(
		ev("2025-06-01T10:00:00Z", bpf.ReasonIMDSv1NoToken, cg, "python3", pod("shop", "web-6d8f7c9b4d-x7k2p", "app", uid)),
	))
	pol := wantRules(t, res.YAML, []rule{
		{name: "shop-web-app", cgroup: "/kubepods/besteffort/pod*/*", namespace: "shop", pod: "web-*-?????", ctr: "app", v1: true},
	})
	r := &pol.Rules[0]
	again := "/kubepods/besteffort/pod" + uid2 + "/" + cid2
	for _, tc := range []struct {
		name   string
		cgroup string
		w      policy.Workload
		want   bool
	}{
		{"the pod re-created by a rollout", again, policy.Workload{Namespace: "shop", Pod: "web-5c8b9d7f4-q9z8r", Container: "app"}, true},
		{"another namespace", again, policy.Workload{Namespace: "dev", Pod: "web-5c8b9d7f4-q9z8r", Container: "app"}, false},
		{"another container of the pod", again, policy.Workload{Namespace: "shop", Pod: "web-5c8b9d7f4-q9z8r", Container: "sidecar"}, false},
		{"a StatefulSet's pod web-0", again, policy.Workload{Namespace: "shop", Pod: "web-0", Container: "app"}, false},
		{"another QoS class", "/kubepods/burstable/pod" + uid2 + "/" + cid2, policy.Workload{Namespace: "shop", Pod: "web-5c8b9d7f4-q9z8r", Container: "app"}, false},
	} {
		if got := r.AppliesTo(tc.cgroup, policy.Named(tc.w)); got != tc.want {
			t.Errorf("%s: applies %v, want %v", tc.name, got, tc.want)
		}
	}
	if r.AppliesTo(again, policy.PathIdentity(again)) {
		t.Error("the rule applies to a pod whose names are unknown")
	}
	wantContains(t, res.YAML, `in shop it also matches the pods of another Deployment whose name starts with "web-" (web-admin's, web-admin-<hash>-<5 characters>) if it runs a container named app: check there is none`)
}

// Two Deployments whose names share a start, web and web-admin: web's glob
// also matches web-admin's pods, so web-admin's rule comes first, and each
// pod's processes first match their own rule.
func TestSuggestOrdersOverlappingPodGlobs(t *testing.T) {
	cgA := "/kubepods/besteffort/pod" + uid + "/" + cid
	cgB := "/kubepods/besteffort/pod" + uid2 + "/" + cid2
	res := run(t, Config{}, jsonLines(
		ev("2025-06-01T10:00:00Z", bpf.ReasonIMDSv1NoToken, cgA, "python3", pod("shop", "web-6d8f7c9b4d-x7k2p", "app", uid)),
		ev("2025-06-01T10:00:01Z", bpf.ReasonNonHostNetns, cgB, "python3", connect, pod("shop", "web-admin-5c8b9d7f4-q9z8r", "app", uid2)),
	))
	wantRules(t, res.YAML, []rule{
		{name: "shop-web-admin-app", cgroup: "/kubepods/besteffort/pod*/*", namespace: "shop", pod: "web-admin-*-?????", ctr: "app", netns: true},
		{name: "shop-web-app", cgroup: "/kubepods/besteffort/pod*/*", namespace: "shop", pod: "web-*-?????", ctr: "app", v1: true},
	})
}

// Events of a pod that the base policy already denies by name leave it
// out; events a base rule by name already grants need nothing.
func TestSuggestHonoursBaseRulesByName(t *testing.T) {
	cgA := "/kubepods/besteffort/pod" + uid + "/" + cid
	cgB := "/kubepods/besteffort/pod" + uid2 + "/" + cid2
	base := `rules:
  - name: shop-web
    match: {namespace: shop, pod: "web-*"}
    allowV1: true
  - name: no-ci
    match: {namespace: ci}
    deny: true
`
	res := run(t, Config{Base: []byte(base), BaseSource: "p.yaml"}, jsonLines(
		ev("2025-06-01T10:00:00Z", bpf.ReasonIMDSv1NoToken, cgA, "python3", pod("shop", "web-6d8f7c9b4d-x7k2p", "app", uid)),
		ev("2025-06-01T10:00:01Z", bpf.ReasonIMDSv1NoToken, cgB, "job", pod("ci", "build-x7k2p", "run", uid2)),
	))
	wantRules(t, res.YAML, []rule{
		{name: "shop-web", namespace: "shop", pod: "web-*", v1: true},
		{name: "no-ci", namespace: "ci", deny: true},
	})
	wantContains(t, res.YAML, `the policy's rule "no-ci" denies it`, `rule "shop-web": 1 audit event`)
}
