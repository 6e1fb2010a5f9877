package containerid

import (
	"strings"
	"testing"
)

func TestLocate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		path  string
		place Place
		id    string
	}{
		{"systemd containerd", burstableSlice + "/cri-containerd-" + idA + ".scope", PodContainer, idA},
		{"systemd cri-o guaranteed", guaranteedSlice + "/crio-" + idB + ".scope", PodContainer, idB},
		{"cgroupfs", "/kubepods/besteffort/pod" + uid + "/" + idA, PodContainer, idA},
		{"cgroupfs cri-o", "/kubepods/pod" + uid + "/crio-" + idB, PodContainer, idB},
		{"flat containerd under a systemd kubelet", "/system.slice/containerd.service/kubepods-besteffort-pod" + uidS + ".slice:cri-containerd:" + idA, PodContainer, idA},
		{"kind's cgroup root", kindBurstable + "/cri-containerd-" + idA + ".scope", PodContainer, idA},
		{"a prefix before the kubelet's part", "/imdsguard-lab-x/kubepods/burstable/pod" + uid + "/" + idA, PodContainer, idA},
		{"static pod", "/kubepods/burstable/pod" + staticUID + "/" + idA, PodContainer, idA},

		{"sub-cgroup of a container", burstableSlice + "/cri-containerd-" + idA + ".scope/init", InPod, idA},
		{"a sub-cgroup named like another container", burstableSlice + "/cri-containerd-" + idA + ".scope/" + idB, InPod, idB},
		{"a fake pod inside a container", "/kubepods/besteffort/pod" + uid + "/" + idA + "/kubepods/besteffort/pod" + uid2 + "/" + idB, InPod, idB},
		{"a sub-cgroup with a newline in its name", burstableSlice + "/cri-containerd-" + idA + ".scope/a\nb", InPod, idA},
		{"a sub-cgroup past 4096 bytes", burstableSlice + "/cri-containerd-" + idA + ".scope" + strings.Repeat("/a", maxPathLen), InPod, idA},
		{"conmon", burstableSlice + "/crio-conmon-" + idB + ".scope", InPod, idB},
		{"a pod in a kind node seen from the host", "/system.slice/docker-" + node + ".scope" + kindBurstable + "/cri-containerd-" + idA + ".scope", InPod, idA},

		{"the pod's own cgroup", burstableSlice, NotInPod, ""},
		{"a service", "/system.slice/backup.service", NotInPod, ""},
		{"docker outside Kubernetes", "/system.slice/docker-" + idA + ".scope", NotInPod, idA},
		{"a container id not in a pod", "/docker/" + idA, NotInPod, idA},
		{"root", "/", NotInPod, ""},
		{"relative", "kubepods/besteffort/pod" + uid + "/" + idA, NotInPod, ""},
		{"dot-dot", "/kubepods/besteffort/pod" + uid + "/../" + idA, NotInPod, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, place := Locate(tc.path)
			if place != tc.place || info.ContainerID != tc.id {
				t.Errorf("Locate(%q) = %+v, %d; want container %q, place %d", tc.path, info, place, tc.id, tc.place)
			}
			if place == PodContainer {
				if p := Parse(tc.path); p != info {
					t.Errorf("Locate's Info %+v differs from Parse's %+v", info, p)
				}
			}
		})
	}
}

// Whatever a container names the cgroups it makes below its own, none is
// its pod's container cgroup, or outside every pod.
func FuzzLocateBelowAContainer(f *testing.F) {
	for _, s := range []string{"init", idB, "kubepods/besteffort/pod" + uid2 + "/" + idB, "a\nb", "crio-" + idB + ".scope"} {
		f.Add(s)
	}
	base := burstableSlice + "/cri-containerd-" + idA + ".scope/"
	f.Fuzz(func(t *testing.T, rest string) {
		p := base + rest
		for _, s := range strings.Split(rest, "/") {
			if s == "" || s == "." || s == ".." {
				return // not a path the kernel makes
			}
		}
		if _, place := Locate(p); place != InPod {
			t.Fatalf("Locate(%q) = %d, want InPod", p, place)
		}
	})
}
