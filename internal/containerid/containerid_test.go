package containerid

import (
	"regexp"
	"strings"
	"testing"
)

// Ids and UIDs in the shapes real nodes show (cgroup listings from kubelet,
// minikube, kind and podman hosts).
const (
	idA  = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	idB  = "0765f197c9158576f202e50498b488cd0d2b022fb2462b0a629f214bb51cd57d"
	idC  = "d4e8e05a546c86b6443f101966c618e47753ed01fa9929cae00d3b692f7a9f80"
	node = "d5d9ee5cf5ec9520d182418b737fb11f3aa6b739e91d7cb6ecd6786f6a2bcbd1"

	uid   = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"
	uidS  = "1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901" // systemd-escaped
	uid2  = "2cde702b-a0cf-438d-a228-fb164e54434b"
	uid2S = "2cde702b_a0cf_438d_a228_fb164e54434b"

	staticUID = "8daa50c3a64c9ff60bb9eab7b44b56fd" // static pod: hex MD5 of the manifest
)

const (
	burstableSlice  = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidS + ".slice"
	besteffortSlice = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uid2S + ".slice"
	guaranteedSlice = "/kubepods.slice/kubepods-pod" + uidS + ".slice"
	kindBurstable   = "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod" + uidS + ".slice"
)

type testCase struct {
	name string
	path string
	want Info
}

var cases = []testCase{
	// Kubernetes, systemd cgroup driver.
	{"systemd containerd burstable", burstableSlice + "/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, uid, QoSBurstable}},
	{"systemd containerd besteffort", besteffortSlice + "/cri-containerd-" + idB + ".scope",
		Info{idB, RuntimeContainerd, uid2, QoSBestEffort}},
	{"systemd containerd guaranteed", guaranteedSlice + "/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, uid, QoSGuaranteed}},
	{"systemd containerd sub-cgroup", burstableSlice + "/cri-containerd-" + idA + ".scope/init",
		Info{idA, RuntimeContainerd, uid, QoSBurstable}},
	{"systemd cri-o burstable", burstableSlice + "/crio-" + idB + ".scope",
		Info{idB, RuntimeCRIO, uid, QoSBurstable}},
	{"systemd cri-o guaranteed", guaranteedSlice + "/crio-" + idB + ".scope",
		Info{idB, RuntimeCRIO, uid, QoSGuaranteed}},
	{"systemd cri-o container sub-cgroup", besteffortSlice + "/crio-" + idB + ".scope/container",
		Info{idB, RuntimeCRIO, uid2, QoSBestEffort}},
	{"systemd cri-o conmon", burstableSlice + "/crio-conmon-" + idB + ".scope",
		Info{idB, RuntimeCRIO, uid, QoSBurstable}},
	{"systemd cri-dockerd", besteffortSlice + "/docker-" + idC + ".scope",
		Info{idC, RuntimeDocker, uid2, QoSBestEffort}},
	{"systemd static pod (uid not a UUID)", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + staticUID + ".slice/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, "", QoSBurstable}},
	{"minikube: cri-o pod in a docker node container", "/docker/" + node + besteffortSlice + "/crio-" + idB + ".scope",
		Info{idB, RuntimeCRIO, uid2, QoSBestEffort}},
	{"kind node seen from its cgroup namespace", kindBurstable + "/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, uid, QoSBurstable}},
	{"kind node seen from the host", "/system.slice/docker-" + node + ".scope" + kindBurstable + "/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, uid, QoSBurstable}},
	{"kind guaranteed", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" + uidS + ".slice/cri-containerd-" + idC + ".scope",
		Info{idC, RuntimeContainerd, uid, QoSGuaranteed}},
	{"kind besteffort", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uid2S + ".slice/cri-containerd-" + idC + ".scope",
		Info{idC, RuntimeContainerd, uid2, QoSBestEffort}},
	{"containerd without SystemdCgroup under a systemd kubelet", "/system.slice/containerd.service/kubepods-besteffort-pod" + uid2S + ".slice:cri-containerd:" + idC,
		Info{idC, RuntimeContainerd, uid2, QoSBestEffort}},
	{"containerd without SystemdCgroup, burstable", "/system.slice/containerd.service/kubepods-burstable-pod" + uidS + ".slice:cri-containerd:" + idA,
		Info{idA, RuntimeContainerd, uid, QoSBurstable}},
	{"containerd without SystemdCgroup, guaranteed", "/system.slice/containerd.service/kubepods-pod" + uidS + ".slice:cri-containerd:" + idA,
		Info{idA, RuntimeContainerd, uid, QoSGuaranteed}},

	// Kubernetes, cgroupfs driver.
	{"cgroupfs burstable", "/kubepods/burstable/pod" + uid + "/" + idA,
		Info{idA, "", uid, QoSBurstable}},
	{"cgroupfs besteffort", "/kubepods/besteffort/pod" + uid2 + "/" + idB,
		Info{idB, "", uid2, QoSBestEffort}},
	{"cgroupfs guaranteed", "/kubepods/pod" + uid + "/" + idA,
		Info{idA, "", uid, QoSGuaranteed}},
	{"cgroupfs sub-cgroup", "/kubepods/burstable/pod" + uid + "/" + idA + "/sub",
		Info{idA, "", uid, QoSBurstable}},
	{"cgroupfs cgroup root /kubelet", "/kubelet/kubepods/besteffort/pod" + uid2 + "/" + idC,
		Info{idC, "", uid2, QoSBestEffort}},
	{"cgroupfs k3s in a docker node", "/docker/" + node + "/kubepods/burstable/pod" + uid + "/" + idA,
		Info{idA, "", uid, QoSBurstable}},
	{"cgroupfs cri-o", "/kubepods/burstable/pod" + uid + "/crio-" + idB,
		Info{idB, RuntimeCRIO, uid, QoSBurstable}},
	{"cgroupfs cri-o conmon", "/kubepods/pod" + uid + "/crio-conmon-" + idB,
		Info{idB, RuntimeCRIO, uid, QoSGuaranteed}},
	{"cgroupfs static pod", "/kubepods/besteffort/pod" + staticUID + "/" + idA,
		Info{idA, "", "", QoSBestEffort}},

	// Docker without Kubernetes.
	{"docker systemd", "/system.slice/docker-" + idA + ".scope",
		Info{idA, RuntimeDocker, "", ""}},
	{"docker systemd rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/docker-" + idA + ".scope",
		Info{idA, RuntimeDocker, "", ""}},
	{"docker cgroupfs", "/docker/" + idB,
		Info{idB, RuntimeDocker, "", ""}},
	{"docker cgroupfs sub-cgroup", "/docker/" + idB + "/sub",
		Info{idB, RuntimeDocker, "", ""}},
	{"docker in docker", "/docker/" + node + "/docker/" + idB,
		Info{idB, RuntimeDocker, "", ""}},
	{"a process of the kind node itself", "/system.slice/docker-" + node + ".scope/system.slice/containerd.service",
		Info{node, RuntimeDocker, "", ""}},

	// containerd without Kubernetes.
	{"nerdctl systemd", "/system.slice/nerdctl-" + idC + ".scope",
		Info{idC, RuntimeContainerd, "", ""}},
	{"nerdctl systemd rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/nerdctl-" + idC + ".scope",
		Info{idC, RuntimeContainerd, "", ""}},
	{"containerd default namespace (ctr, nerdctl cgroupfs)", "/default/" + idC,
		Info{idC, RuntimeContainerd, "", ""}},
	{"containerd other namespace: runtime unknown", "/k8s.io/" + idC,
		Info{idC, "", "", ""}},

	// Podman.
	{"podman systemd", "/machine.slice/libpod-" + idA + ".scope",
		Info{idA, RuntimePodman, "", ""}},
	{"podman container sub-cgroup", "/machine.slice/libpod-" + idA + ".scope/container",
		Info{idA, RuntimePodman, "", ""}},
	{"podman conmon", "/machine.slice/libpod-conmon-" + idA + ".scope",
		Info{idA, RuntimePodman, "", ""}},
	{"podman rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + idB + ".scope",
		Info{idB, RuntimePodman, "", ""}},
	{"podman rootless conmon", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-" + idB + ".scope",
		Info{idB, RuntimePodman, "", ""}},
	{"podman pod (not a kubelet pod)", "/machine.slice/machine-libpod_pod_" + node + ".slice/libpod-" + idB + ".scope",
		Info{idB, RuntimePodman, "", ""}},
	{"podman cgroupfs", "/libpod_parent/libpod-" + idC,
		Info{idC, RuntimePodman, "", ""}},

	// Nothing to say.
	{"empty", "", Info{}},
	{"root", "/", Info{}},
	{"init", "/init.scope", Info{}},
	{"docker.service", "/system.slice/docker.service", Info{}},
	{"containerd.service", "/system.slice/containerd.service", Info{}},
	{"docker.socket", "/system.slice/docker.socket", Info{}},
	{"user session", "/user.slice/user-1000.slice/session-3.scope", Info{}},
	{"user manager", "/user.slice/user-1000.slice/user@1000.service/init.scope", Info{}},
	{"kubelet", "/system.slice/kubelet.service", Info{}},
	{"pod slice without a container", burstableSlice, Info{}},
	{"cgroupfs pod without a container", "/kubepods/burstable/pod" + uid, Info{}},
	{"qos slice", "/kubepods.slice/kubepods-besteffort.slice", Info{}},
	{"libpod_parent conmon (no id in the name)", "/libpod_parent/conmon", Info{}},

	// Ids that are not ids.
	{"63 hex", "/system.slice/docker-" + idA[:63] + ".scope", Info{}},
	{"65 hex", "/system.slice/docker-" + idA + "0.scope", Info{}},
	{"upper-case hex", "/system.slice/docker-" + strings.ToUpper(idA) + ".scope", Info{}},
	{"one upper-case digit", "/docker/" + idA[:63] + "F", Info{}},
	{"short id", "/docker/" + idA[:12], Info{}},
	{"63 hex cgroupfs", "/kubepods/burstable/pod" + uid + "/" + idA[:63], Info{}},
	{"65 hex cgroupfs", "/kubepods/burstable/pod" + uid + "/" + idA + "a", Info{}},
	{"not hex", "/docker/" + strings.Repeat("g", 64), Info{}},
	{"empty id", "/system.slice/docker-.scope", Info{}},
	{"no dash", "/system.slice/docker" + idA + ".scope", Info{}},
	{"mount unit", "/system.slice/docker-" + idA + ".mount", Info{}},
	{"scope prefix without .scope is not cgroupfs", "/system.slice/cri-containerd-" + idA, Info{}},
	{"unknown scope prefix", "/system.slice/rkt-" + idA + ".scope", Info{}},
	{"crio-conmon with 65 hex", burstableSlice + "/crio-conmon-" + idA + "0.scope", Info{}},
	{"colon form, unknown prefix", "/system.slice/containerd.service/kubepods-pod" + uidS + ".slice:crio:" + idA, Info{}},
	{"colon form, not a slice", "/system.slice/containerd.service/kubepods-pod" + uidS + ":cri-containerd:" + idA, Info{}},
	{"colon form, extra colon", "/system.slice/containerd.service/kubepods-pod" + uidS + ".slice:cri-containerd:" + idA + ":x", Info{}},

	// Pods that are not pods: the container id stays, the pod fields do not.
	{"pod uid not a UUID", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnot_a_uuid.slice/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, "", ""}},
	{"pod uid with dashes under systemd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid + ".slice/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, "", ""}},
	{"pod uid with underscores under cgroupfs", "/kubepods/burstable/pod" + uidS + "/" + idA,
		Info{idA, "", "", ""}},
	{"pod uid upper case", "/kubepods/burstable/pod" + strings.ToUpper(uid) + "/" + idA,
		Info{idA, "", "", ""}},
	{"pod uid too long", "/kubepods/burstable/pod" + uid + "0/" + idA,
		Info{idA, "", "", ""}},
	{"pod uid 35 chars", "/kubepods/burstable/pod" + uid[:35] + "/" + idA,
		Info{idA, "", "", ""}},
	{"pod uid misplaced dash", "/kubepods/burstable/pod1b2c3d4e5-f60-7182-93a4-b5c6d7e8f901/" + idA,
		Info{idA, "", "", ""}},
	{"pod uid 31 hex", "/kubepods/burstable/pod" + staticUID[:31] + "/" + idA,
		Info{idA, "", "", ""}},
	{"systemd pod without its qos slice", "/kubepods.slice/kubepods-burstable-pod" + uidS + ".slice/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, "", ""}},
	{"systemd pod without kubepods.slice", "/kubepods-burstable.slice/kubepods-burstable-pod" + uidS + ".slice/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, "", ""}},
	{"systemd pod in the wrong qos slice", "/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod" + uidS + ".slice/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, "", ""}},
	{"systemd unknown qos", "/kubepods.slice/kubepods-guaranteed.slice/kubepods-guaranteed-pod" + uidS + ".slice/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, "", ""}},
	{"systemd pod not under kubepods", "/system.slice/system-pod" + uidS + ".slice/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, "", ""}},
	{"systemd pod slice is not the parent", burstableSlice + "/extra.slice/cri-containerd-" + idA + ".scope",
		Info{idA, RuntimeContainerd, "", ""}},
	{"cgroupfs pod not under kubepods", "/foo/burstable/pod" + uid + "/" + idA,
		Info{idA, "", "", ""}},
	{"cgroupfs unknown qos", "/kubepods/guaranteed/pod" + uid + "/" + idA,
		Info{idA, "", "", ""}},
	{"cgroupfs pod is not the parent", "/kubepods/burstable/pod" + uid + "/x/" + idA,
		Info{idA, "", "", ""}},
	{"colon form, pod uid not a UUID", "/system.slice/containerd.service/kubepods-besteffort-podxyz.slice:cri-containerd:" + idC,
		Info{idC, RuntimeContainerd, "", ""}},

	// Malformed paths and attacker-ish strings are rejected whole.
	{"relative", "kubepods/burstable/pod" + uid + "/" + idA, Info{}},
	{"double slash", "/kubepods//burstable/pod" + uid + "/" + idA, Info{}},
	{"trailing slash", "/docker/" + idA + "/", Info{}},
	{"dot segment", "/docker/./" + idA, Info{}},
	{"dot-dot segment", "/../cri-containerd-" + idA + ".scope", Info{}},
	{"trailing newline", "/docker/" + idA + "\n", Info{}},
	{"newline inside the id", "/docker/" + idA[:32] + "\n" + idA[32:], Info{}},
	{"forged /proc/pid/cgroup line", "/system.slice/evil\n0::/kubepods/burstable/pod" + uid + "/" + idA, Info{}},
	{"forged scope after a newline", "/user.slice/x\n/system.slice/docker-" + idA + ".scope", Info{}},
	{"carriage return", "/docker/" + idA + "\r", Info{}},
	{"NUL", "/docker/" + idA + "\x00", Info{}},
	{"escape sequence", "/system.slice/\x1b[2J/docker-" + idA + ".scope", Info{}},
	{"DEL", "/docker/\x7f/" + idA, Info{}},
	{"deleted cgroup as readlink shows it", "/docker/" + idA + " (deleted)", Info{}},
	{"id with trailing space", "/docker/" + idA + " ", Info{}},
	{"too long", "/docker/" + idA + strings.Repeat("/a", maxPathLen), Info{}},
	{"non-ASCII look-alike", "/system.slice/docker-" + idA[:63] + "е.scope", Info{}}, // Cyrillic е
}

func TestParse(t *testing.T) {
	seen := map[string]bool{}
	for _, tc := range cases {
		if seen[tc.name] {
			t.Fatalf("duplicate case name %q", tc.name)
		}
		seen[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			got := Parse(tc.path)
			if got != tc.want {
				t.Errorf("Parse(%q)\n got  %+v\n want %+v", tc.path, got, tc.want)
			}
			checkInvariants(t, tc.path, got)
		})
	}
}

// TestParseAllRuntimesAtEveryPodShape crosses every container segment shape
// with every pod parent shape of the matching driver.
func TestParseAllRuntimesAtEveryPodShape(t *testing.T) {
	systemdPods := map[string]string{
		burstableSlice:  QoSBurstable,
		guaranteedSlice: QoSGuaranteed,
		"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidS + ".slice": QoSBestEffort,
		kindBurstable: QoSBurstable,
	}
	scopes := map[string]string{
		"cri-containerd-": RuntimeContainerd,
		"crio-":           RuntimeCRIO,
		"crio-conmon-":    RuntimeCRIO,
		"docker-":         RuntimeDocker,
	}
	for parent, qos := range systemdPods {
		for prefix, rt := range scopes {
			p := parent + "/" + prefix + idA + ".scope"
			want := Info{idA, rt, uid, qos}
			if got := Parse(p); got != want {
				t.Errorf("Parse(%q) = %+v, want %+v", p, got, want)
			}
		}
	}
	cgroupfsPods := map[string]string{
		"/kubepods/burstable/pod" + uid:  QoSBurstable,
		"/kubepods/besteffort/pod" + uid: QoSBestEffort,
		"/kubepods/pod" + uid:            QoSGuaranteed,
	}
	dirs := map[string]string{"": "", "crio-": RuntimeCRIO, "crio-conmon-": RuntimeCRIO}
	for parent, qos := range cgroupfsPods {
		for prefix, rt := range dirs {
			p := parent + "/" + prefix + idA
			want := Info{idA, rt, uid, qos}
			if got := Parse(p); got != want {
				t.Errorf("Parse(%q) = %+v, want %+v", p, got, want)
			}
		}
	}
}

var (
	idRE   = regexp.MustCompile(`^[0-9a-f]{64}$`)
	uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

// checkInvariants holds for every input: the fields have their fixed forms
// and say nothing the path does not.
func checkInvariants(t *testing.T, path string, got Info) {
	t.Helper()
	if got.ContainerID != "" {
		if !idRE.MatchString(got.ContainerID) {
			t.Fatalf("Parse(%q).ContainerID = %q, not 64 lower-case hex", path, got.ContainerID)
		}
		if !strings.Contains(path, got.ContainerID) {
			t.Fatalf("Parse(%q).ContainerID = %q, not in the path", path, got.ContainerID)
		}
	}
	if got.PodUID != "" {
		if !uuidRE.MatchString(got.PodUID) {
			t.Fatalf("Parse(%q).PodUID = %q, not a canonical UUID", path, got.PodUID)
		}
		if !strings.Contains(path, got.PodUID) && !strings.Contains(path, strings.ReplaceAll(got.PodUID, "-", "_")) {
			t.Fatalf("Parse(%q).PodUID = %q, not in the path", path, got.PodUID)
		}
		if got.QoS == "" {
			t.Fatalf("Parse(%q) = %+v: a pod UID without a QoS class", path, got)
		}
	}
	switch got.Runtime {
	case "", RuntimeContainerd, RuntimeCRIO, RuntimeDocker, RuntimePodman:
	default:
		t.Fatalf("Parse(%q).Runtime = %q", path, got.Runtime)
	}
	switch got.QoS {
	case "", QoSGuaranteed, QoSBurstable, QoSBestEffort:
	default:
		t.Fatalf("Parse(%q).QoS = %q", path, got.QoS)
	}
	if got.ContainerID == "" && got != (Info{}) {
		t.Fatalf("Parse(%q) = %+v: fields without a container", path, got)
	}
	if again := Parse(path); again != got {
		t.Fatalf("Parse(%q) not deterministic: %+v then %+v", path, got, again)
	}
}

func FuzzParse(f *testing.F) {
	for _, tc := range cases {
		f.Add(tc.path)
	}
	f.Fuzz(func(t *testing.T, path string) {
		checkInvariants(t, path, Parse(path))
	})
}

func BenchmarkParse(b *testing.B) {
	p := "/system.slice/docker-" + node + ".scope" + kindBurstable + "/cri-containerd-" + idA + ".scope"
	b.ReportAllocs()
	for b.Loop() {
		Parse(p)
	}
}
