package suggest

import (
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/internal/policy"
)

const (
	cid      = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cid2     = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	uid      = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"
	uidUnder = "1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901"
	uid2     = "9f8e7d6c-5b4a-3921-8f7e-6d5c4b3a2910"
)

func TestWorkloadOf(t *testing.T) {
	for _, tc := range []struct {
		name, cgroup string
		glob, kind   string
		// same is another cgroup of the same workload the glob must match
		// (the container restarted); other one it must not (another pod).
		same, other string
		note        string // a part of the note
	}{
		{
			name:   "cgroupfs besteffort",
			cgroup: "/kubepods/besteffort/pod" + uid + "/" + cid,
			glob:   "/kubepods/besteffort/pod" + uid + "/*", kind: workloadPod,
			same:  "/kubepods/besteffort/pod" + uid + "/" + cid2,
			other: "/kubepods/besteffort/pod" + uid2 + "/" + cid,
			note:  "every besteffort pod",
		},
		{
			name:   "cgroupfs guaranteed",
			cgroup: "/kubepods/pod" + uid + "/" + cid,
			glob:   "/kubepods/pod" + uid + "/*", kind: workloadPod,
			same:  "/kubepods/pod" + uid + "/" + cid2,
			other: "/kubepods/pod" + uid2 + "/" + cid,
			note:  "every guaranteed pod",
		},
		{
			name:   "systemd burstable containerd",
			cgroup: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidUnder + ".slice/cri-containerd-" + cid + ".scope",
			glob:   "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidUnder + ".slice/cri-containerd-*.scope", kind: workloadPod,
			same:  "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidUnder + ".slice/cri-containerd-" + cid2 + ".scope",
			other: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + strings.ReplaceAll(uid2, "-", "_") + ".slice/cri-containerd-" + cid + ".scope",
			note:  "every burstable pod",
		},
		{
			name:   "systemd guaranteed docker",
			cgroup: "/kubepods.slice/kubepods-pod" + uidUnder + ".slice/docker-" + cid + ".scope",
			glob:   "/kubepods.slice/kubepods-pod" + uidUnder + ".slice/docker-*.scope", kind: workloadPod,
			same:  "/kubepods.slice/kubepods-pod" + uidUnder + ".slice/docker-" + cid2 + ".scope",
			other: "/kubepods.slice/kubepods-pod" + strings.ReplaceAll(uid2, "-", "_") + ".slice/docker-" + cid + ".scope",
		},
		{
			name:   "systemd cri-o and its conmon share a glob",
			cgroup: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidUnder + ".slice/crio-conmon-" + cid + ".scope",
			glob:   "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidUnder + ".slice/crio-*.scope", kind: workloadPod,
			same: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidUnder + ".slice/crio-" + cid2 + ".scope",
		},
		{
			name:   "a prefix before the kubelet's part stays literal",
			cgroup: "/imdsguard-lab-abc/kubepods/burstable/pod" + uid + "/" + cid,
			glob:   "/imdsguard-lab-abc/kubepods/burstable/pod" + uid + "/*", kind: workloadPod,
			same:  "/imdsguard-lab-abc/kubepods/burstable/pod" + uid + "/" + cid2,
			other: "/kubepods/burstable/pod" + uid + "/" + cid,
		},
		{
			name:   "a sub-cgroup of the container stays literal",
			cgroup: "/kubepods/besteffort/pod" + uid + "/" + cid + "/init",
			glob:   "/kubepods/besteffort/pod" + uid + "/*/init", kind: workloadPod,
			same:  "/kubepods/besteffort/pod" + uid + "/" + cid2 + "/init",
			other: "/kubepods/besteffort/pod" + uid + "/" + cid,
		},
		{
			name:   "static pod",
			cgroup: "/kubepods/burstable/pod0123456789abcdef0123456789abcdef/" + cid,
			glob:   "/kubepods/burstable/pod0123456789abcdef0123456789abcdef/*", kind: workloadPod,
			same: "/kubepods/burstable/pod0123456789abcdef0123456789abcdef/" + cid2,
			note: "static pod",
		},
		{
			name:   "containerd without the systemd driver under a systemd kubelet",
			cgroup: "/system.slice/containerd.service/kubepods-besteffort-pod" + uidUnder + ".slice:cri-containerd:" + cid,
			glob:   "/system.slice/containerd.service/kubepods-besteffort-pod" + uidUnder + ".slice:cri-containerd:*", kind: workloadPod,
			same: "/system.slice/containerd.service/kubepods-besteffort-pod" + uidUnder + ".slice:cri-containerd:" + cid2,
		},
		{
			name:   "systemd service",
			cgroup: "/system.slice/backup.service",
			glob:   "/system.slice/backup.service", kind: workloadUnit,
			other: "/system.slice/backup.service/child",
			note:  "names the systemd unit",
		},
		{
			name:   "cgroup below a service",
			cgroup: "/system.slice/app.service/worker",
			glob:   "/system.slice/app.service/worker", kind: workloadUnit,
			other: "/system.slice/app.service",
			note:  "below its own",
		},
		{
			name:   "session scope",
			cgroup: "/user.slice/user-1000.slice/session-3.scope",
			glob:   "/user.slice/user-1000.slice/session-3.scope", kind: workloadCgroup,
			other: "/user.slice/user-1000.slice/session-4.scope",
			note:  "transient",
		},
		{
			name:   "docker container outside Kubernetes keeps its id",
			cgroup: "/system.slice/docker-" + cid + ".scope",
			glob:   "/system.slice/docker-" + cid + ".scope", kind: workloadContainer,
			other: "/system.slice/docker-" + cid2 + ".scope",
			note:  "re-created container",
		},
		{
			name:   "glob characters in a name are escaped",
			cgroup: `/odd[1]/a*b?\c`,
			glob:   `/odd\[1]/a\*b\?\\c`, kind: workloadCgroup,
			other: "/odd1/aXb?\\c",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, why := workloadOf(tc.cgroup)
			if why != "" {
				t.Fatalf("workloadOf(%q): left out: %s", tc.cgroup, why)
			}
			if w.glob != tc.glob || w.kind != tc.kind {
				t.Fatalf("workloadOf(%q) = %q (%s), want %q (%s)", tc.cgroup, w.glob, w.kind, tc.glob, tc.kind)
			}
			for _, p := range []string{tc.cgroup, tc.same} {
				if p != "" && !policy.MatchCgroup(w.glob, p) {
					t.Errorf("glob %q does not match %q", w.glob, p)
				}
			}
			if tc.other != "" && policy.MatchCgroup(w.glob, tc.other) {
				t.Errorf("glob %q matches another workload's %q", w.glob, tc.other)
			}
			if !strings.Contains(w.note, tc.note) {
				t.Errorf("note %q does not say %q", w.note, tc.note)
			}
		})
	}
}

func TestWorkloadOfLeavesOut(t *testing.T) {
	for _, tc := range []struct{ cgroup, why string }{
		{"/", "the root cgroup"},
		{"", "names no cgroup"},
		{"/system.slice/a\nb.service", "control characters"},
		{"relative/path", "not a cgroup path"},
		{"/a/", "not a valid glob"},
		{"/a//b", "not a valid glob"},
	} {
		w, why := workloadOf(tc.cgroup)
		if !strings.Contains(why, tc.why) {
			t.Errorf("workloadOf(%q) = %+v, %q; want left out because %q", tc.cgroup, w, why, tc.why)
		}
	}
}

func TestSanitize(t *testing.T) {
	for in, want := range map[string]string{
		"kube-system-aws-node-x7k2p":   "kube-system-aws-node-x7k2p",
		"My_App.Service":               "my-app-service",
		"--a--b--":                     "a-b",
		"":                             "workload",
		"ÄÖ":                           "workload",
		strings.Repeat("a", 70):        strings.Repeat("a", 63),
		strings.Repeat("a", 62) + "-b": strings.Repeat("a", 62),
	} {
		if got := sanitize(in); got != want {
			t.Errorf("sanitize(%q) = %q, want %q", in, got, want)
		}
	}
}
