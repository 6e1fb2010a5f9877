package containerid

import "strings"

// Place says where a cgroup sits among the containers of Kubernetes pods:
// whether the names the container runtime gives the container in its path
// can be taken to name the processes in it.
type Place int

const (
	// NotInPod: no segment of the path names a container of a kubelet pod
	// (a systemd service, a session, a docker or podman container outside
	// Kubernetes, the root).
	NotInPod Place = iota
	// PodContainer: the cgroup the runtime made for one container of a
	// kubelet pod, exactly: its last segment names the container, the pod
	// the kubelet laid out is around it (Info.QoS is set), and no other
	// segment names a container.
	PodContainer
	// InPod: inside a pod's container, but not its cgroup: a sub-cgroup the
	// container made ("…/cri-containerd-<id>.scope/init"), a container
	// inside a container (a kind or minikube node seen from the host,
	// docker in docker), conmon's scope. The names of the container in the
	// last such segment cannot be trusted: a container that may make
	// cgroups can give one any name, another container's id included.
	InPod
)

// Locate is Parse with where the cgroup sits. It reads the same shapes, but
// no path is rejected whole: a name with control characters, or a path
// longer than 4096 bytes, is only a segment that names nothing, so a
// container cannot move out of its pod's place by giving a sub-cgroup an odd
// name. Info is the innermost container's, as Parse has it (zero for a path
// that is not absolute or has empty, "." or ".." segments: the kernel makes
// none).
func Locate(cgroupPath string) (Info, Place) {
	if len(cgroupPath) < 2 || cgroupPath[0] != '/' {
		return Info{}, NotInPod
	}
	segs := strings.Split(cgroupPath[1:], "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return Info{}, NotInPod
		}
	}
	var last Info
	at, found, inPod := -1, 0, false
	for i := range segs {
		info, ok := container(segs, i)
		if !ok {
			continue
		}
		last, at = info, i
		found++
		inPod = inPod || info.QoS != ""
	}
	switch {
	case !inPod:
		return last, NotInPod
	case found == 1 && at == len(segs)-1 && !isConmon(segs[at]):
		return last, PodContainer
	}
	return last, InPod
}

// isConmon reports whether a container segment is conmon's, the runtime's
// helper that runs in the host's namespaces next to the container.
func isConmon(seg string) bool {
	return strings.HasPrefix(seg, "crio-conmon-") || strings.HasPrefix(seg, "libpod-conmon-")
}
