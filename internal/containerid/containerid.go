// Package containerid reads what a cgroup v2 path says about the workload
// running in it: the container id, the container runtime, and for Kubernetes
// pods the pod UID and QoS class.
//
// It only reads names; it never looks at the file system and never guesses.
// A field is set only when the path spells it out in one of the shapes the
// runtimes and kubelet actually create, and every value it returns has a fixed,
// validated form (a container id is 64 lower-case hex characters, a pod UID a
// canonical lower-case UUID), so the fields are safe to log and compare as they
// are.
//
// # Shapes recognised
//
// A container is recognised by one segment of the path (anywhere in it, so a
// prefix such as "/system.slice/docker-<node>.scope" for a kind node or
// "/docker/<node>" for minikube is fine):
//
//	cri-containerd-<id>.scope   containerd (CRI, systemd cgroup driver)
//	crio-<id>.scope             cri-o      (systemd cgroup driver)
//	crio-conmon-<id>.scope      cri-o      (conmon of container <id>, see below)
//	docker-<id>.scope           docker     (dockerd or cri-dockerd, systemd driver)
//	libpod-<id>.scope           podman     (systemd driver, root or rootless)
//	libpod-conmon-<id>.scope    podman     (conmon of container <id>)
//	nerdctl-<id>.scope          containerd (nerdctl, systemd driver)
//	crio-<id>                   cri-o      (cgroupfs driver)
//	crio-conmon-<id>            cri-o      (conmon, cgroupfs driver)
//	libpod-<id>                 podman     (cgroupfs driver, "/libpod_parent/libpod-<id>")
//	<id>                        runtime from the parent segment: "docker" ("/docker/<id>",
//	                            dockerd with cgroupfs) is docker, "default" ("/default/<id>",
//	                            containerd's default namespace: ctr, nerdctl with cgroupfs)
//	                            is containerd, anything else (e.g. the kubelet's cgroupfs
//	                            "/kubepods/burstable/pod<uid>/<id>") is "" — the name does
//	                            not say which runtime made it
//	<slice>.slice:cri-containerd:<id>
//	                            containerd: the kubelet uses the systemd driver but
//	                            containerd does not (SystemdCgroup = false), so runc takes
//	                            the systemd-style "slice:prefix:name" literally, e.g.
//	                            "/system.slice/containerd.service/kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>"
//
// <id> is always exactly 64 lower-case hex characters; anything else (63 or 65
// characters, upper case, a short id) is not a container id.
//
// When several segments name a container (a pod inside a kind or minikube
// node container, docker in docker), the innermost one — the last — wins: that
// is the container the process is in. Segments after it are sub-cgroups the
// container made for itself ("…/cri-containerd-<id>.scope/init",
// "…/libpod-<id>.scope/container", "/docker/<id>/sub") and do not change the
// answer.
//
// Conmon: CRI-O and Podman run one conmon process per container, in
// crio-conmon-<id>.scope / libpod-conmon-<id>.scope next to the container's own
// scope. Parse reports such a path with the container's id and runtime, because
// conmon exists only for that container and is, for accounting, part of it. Be
// aware that conmon itself is a runtime helper that runs in the host's
// namespaces, not the workload; the Info alone does not tell the two apart
// (the last path segment does: it starts with "crio-conmon-" or
// "libpod-conmon-").
//
// # Pods
//
// Pod UID and QoS are read from the container segment's parent, and only when
// the container is in a pod the kubelet laid out:
//
//	systemd driver: .../kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/<container>
//	                .../kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/<container>
//	                .../kubepods.slice/kubepods-pod<uid>.slice/<container>   (guaranteed)
//	                with a cgroup root, e.g. kind's "/kubelet":
//	                /kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod<uid>.slice/<container>
//	cgroupfs driver: .../kubepods/burstable/pod<uid-with-dashes>/<container>
//	                 .../kubepods/besteffort/pod<uid>/<container>
//	                 .../kubepods/pod<uid>/<container>   (guaranteed)
//
// For the systemd driver every parent slice systemd implies must be there
// ("a-b-c.slice" lives in "a-b.slice" in "a.slice"); the flat
// "<slice>:cri-containerd:<id>" form has only the pod slice's name to go by.
// The UID must be a UUID (8-4-4-4-12 lower-case hex; underscores under the
// systemd driver, dashes under cgroupfs); it is returned with dashes. Static
// pods (kubelet manifests) have a 32-hex-character UID with no dashes, the
// hash of the manifest: for them QoS is reported but PodUID stays empty. A pod
// segment that is neither leaves both PodUID and QoS empty; the container id
// is still reported.
//
// Paths that are not clean absolute paths ("", relative, "//", "." or ".."
// segments, a trailing "/"), that are longer than 4096 bytes or that contain
// control characters (newlines included) are rejected whole: Parse returns the
// zero Info. So is the " (deleted)" suffix readlink(2) appends for a cgroup
// that has been removed: strip it first if that is what you have.
//
// # Trust
//
// A cgroup name is chosen by whoever can create the cgroup. Normally that is
// root (systemd, the runtimes, the kubelet), but a process with write access
// to a cgroup subtree — a privileged container, or a delegated subtree such as
// user@<uid>.service for rootless containers — can create sub-cgroups with any
// of the names above inside its own and move into them. Treat Info as a label
// for reports, not as proof of identity. Locate tells the one cgroup whose
// name can be taken to name its container, a kubelet pod's container cgroup
// itself, from those below it, which the container may have made.
package containerid

import "strings"

// Info is what a cgroup path says about the workload. Empty fields mean the
// path does not say (never guess).
type Info struct {
	ContainerID string // the runtime's full id: 64 lower-case hex chars
	Runtime     string // "containerd", "cri-o", "docker", "podman", "" when unknown
	PodUID      string // canonical form with dashes: 1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901
	QoS         string // "guaranteed", "burstable", "besteffort" for kubepods paths, else ""
}

// Runtime names.
const (
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	RuntimeDocker     = "docker"
	RuntimePodman     = "podman"
)

// QoS classes.
const (
	QoSGuaranteed = "guaranteed"
	QoSBurstable  = "burstable"
	QoSBestEffort = "besteffort"
)

// maxPathLen bounds the input; cgroup paths are file system paths (PATH_MAX).
const maxPathLen = 4096

// scopePrefixes are the systemd scope names runc/crun create for the
// "slice:prefix:id" cgroup paths the runtimes pass: <prefix>-<id>.scope.
var scopePrefixes = []struct{ prefix, runtime string }{
	{"cri-containerd-", RuntimeContainerd},
	{"crio-conmon-", RuntimeCRIO},
	{"crio-", RuntimeCRIO},
	{"docker-", RuntimeDocker},
	{"libpod-conmon-", RuntimePodman},
	{"libpod-", RuntimePodman},
	{"nerdctl-", RuntimeContainerd},
}

// dirPrefixes are the prefixed container directories of the cgroupfs driver.
var dirPrefixes = []struct{ prefix, runtime string }{
	{"crio-conmon-", RuntimeCRIO},
	{"crio-", RuntimeCRIO},
	{"libpod-", RuntimePodman},
}

// Parse reads what cgroupPath, a cgroup v2 path relative to the cgroup2 mount
// ("/kubepods.slice/…", as in the "0::" line of /proc/<pid>/cgroup), says
// about the workload. It never fails: a path it does not recognise gives the
// zero Info, and a field the path does not spell out stays empty.
func Parse(cgroupPath string) Info {
	segs, ok := split(cgroupPath)
	if !ok {
		return Info{}
	}
	for i := len(segs) - 1; i >= 0; i-- {
		if info, ok := container(segs, i); ok {
			return info
		}
	}
	return Info{}
}

// split returns the segments of a clean absolute path, or false.
func split(p string) ([]string, bool) {
	if len(p) < 2 || len(p) > maxPathLen || p[0] != '/' {
		return nil, false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x20 || c == 0x7f {
			return nil, false
		}
	}
	segs := strings.Split(p[1:], "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return nil, false
		}
	}
	return segs, true
}

// container reports whether segs[i] names a container and, if so, what the
// path says about it.
func container(segs []string, i int) (Info, bool) {
	seg := segs[i]

	// <slice>.slice:cri-containerd:<id> (containerd without SystemdCgroup
	// under a kubelet with the systemd driver).
	if slice, rest, ok := strings.Cut(seg, ":"); ok {
		prefix, id, ok := strings.Cut(rest, ":")
		if !ok || prefix != "cri-containerd" || !isID(id) || !strings.HasSuffix(slice, ".slice") {
			return Info{}, false
		}
		info := Info{ContainerID: id, Runtime: RuntimeContainerd}
		if comps, ok := sliceComponents(slice); ok {
			info.PodUID, info.QoS = podFromComponents(comps, '_')
		}
		return info, true
	}

	var info Info
	if name, ok := strings.CutSuffix(seg, ".scope"); ok {
		for _, p := range scopePrefixes {
			if id, ok := strings.CutPrefix(name, p.prefix); ok && isID(id) {
				info = Info{ContainerID: id, Runtime: p.runtime}
				break
			}
		}
	} else if isID(seg) {
		info.ContainerID = seg
		if i > 0 {
			switch segs[i-1] {
			case "docker":
				info.Runtime = RuntimeDocker
			case "default":
				info.Runtime = RuntimeContainerd
			}
		}
	} else {
		for _, p := range dirPrefixes {
			if id, ok := strings.CutPrefix(seg, p.prefix); ok && isID(id) {
				info = Info{ContainerID: id, Runtime: p.runtime}
				break
			}
		}
	}
	if info.ContainerID == "" {
		return Info{}, false
	}
	if i > 0 {
		info.PodUID, info.QoS = pod(segs, i-1)
	}
	return info, true
}

// pod returns the pod UID and QoS class if segs[j] is a kubelet pod cgroup
// in the layout the kubelet creates around it.
func pod(segs []string, j int) (uid, qos string) {
	seg := segs[j]
	if slice, ok := strings.CutSuffix(seg, ".slice"); ok {
		// systemd driver: the kubelet's cgroup name [root…, kubepods, qos?,
		// pod<uid>] becomes the slice "root-…-kubepods-qos-pod<uid>.slice",
		// nested in one slice per shorter prefix.
		comps, ok := sliceComponents(seg)
		if !ok || j < len(comps)-1 {
			return "", ""
		}
		for k := 1; k < len(comps); k++ {
			slice = slice[:strings.LastIndexByte(slice, '-')]
			if segs[j-k] != slice+".slice" {
				return "", ""
			}
		}
		return podFromComponents(comps, '_')
	}
	// cgroupfs driver: …/kubepods[/qos]/pod<uid>.
	comps := segs[:j+1]
	if len(comps) > 3 {
		comps = comps[len(comps)-3:]
	}
	return podFromComponents(comps, '-')
}

// sliceComponents splits a systemd slice name ("a-b-c.slice") into its
// components, or reports false if it is not one.
func sliceComponents(seg string) ([]string, bool) {
	name, ok := strings.CutSuffix(seg, ".slice")
	if !ok {
		return nil, false
	}
	comps := strings.Split(name, "-")
	for _, c := range comps {
		if c == "" {
			return nil, false
		}
	}
	return comps, true
}

// podFromComponents reads the tail of a kubelet cgroup name: […, "kubepods",
// "pod<uid>"] is a guaranteed pod, […, "kubepods", "burstable"|"besteffort",
// "pod<uid>"] a pod of that class. sep is the separator the UID is written
// with ('_' under the systemd driver, which escapes '-', '-' under cgroupfs).
func podFromComponents(comps []string, sep byte) (uid, qos string) {
	n := len(comps)
	if n < 2 {
		return "", ""
	}
	raw, ok := strings.CutPrefix(comps[n-1], "pod")
	if !ok {
		return "", ""
	}
	switch {
	case comps[n-2] == "kubepods":
		qos = QoSGuaranteed
	case n >= 3 && comps[n-3] == "kubepods" && (comps[n-2] == QoSBurstable || comps[n-2] == QoSBestEffort):
		qos = comps[n-2]
	default:
		return "", ""
	}
	if uid, ok := canonicalUUID(raw, sep); ok {
		return uid, qos
	}
	if len(raw) == 32 && isLowerHex(raw) {
		// A static pod: its UID is the hex MD5 of its manifest, not a UUID.
		return "", qos
	}
	return "", ""
}

// canonicalUUID returns s, an 8-4-4-4-12 lower-case hex UUID written with
// sep between the groups, in its canonical form with dashes.
func canonicalUUID(s string, sep byte) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	b := []byte(s)
	for i, c := range b {
		switch i {
		case 8, 13, 18, 23:
			if c != sep {
				return "", false
			}
			b[i] = '-'
		default:
			if !isLowerHexByte(c) {
				return "", false
			}
		}
	}
	return string(b), true
}

// isID reports whether s is a full container id: 64 lower-case hex characters.
func isID(s string) bool { return len(s) == 64 && isLowerHex(s) }

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isLowerHexByte(s[i]) {
			return false
		}
	}
	return true
}

func isLowerHexByte(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }
