package controller

import (
	"github.com/imdsguard/imdsguard/internal/containerid"
	"github.com/imdsguard/imdsguard/internal/cri"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// Runtime is the container runtime as the controller asks it for the names
// of a container (internal/cri's Client or Auto). Lookups are cached there;
// a miss lists the runtime's containers again at most every two seconds,
// and in between asks about that one container once, so asking at every
// rescan about a cgroup still unnamed costs a map lookup.
type Runtime interface {
	Lookup(containerID string) (cri.Names, bool)
}

// identify says what the rules that match names may know of the workload
// in the cgroup at path. retry says the names may still become known (the
// runtime has not listed the container yet, or could not be reached): the
// cgroup is looked at again at every rescan until they are.
//
// Only a kubelet pod's container cgroup itself is named, and only by the
// runtime: a cgroup below one (which the container may have made and named
// after any other container) or a container inside a container is unknown
// for good, as is a container whose pod uid the runtime reports differently
// from its path.
func identify(path string, rt Runtime) (id policy.Identity, retry bool) {
	info, place := containerid.Locate(path)
	switch {
	case place == containerid.NotInPod:
		return policy.NotAPodContainer(), false
	case place == containerid.InPod || rt == nil:
		return policy.Identity{}, false
	}
	n, ok := rt.Lookup(info.ContainerID)
	if !ok {
		return policy.Identity{}, true
	}
	if n.PodUID != "" && info.PodUID != "" && n.PodUID != info.PodUID {
		return policy.Identity{}, false
	}
	return policy.Named(policy.Workload{Namespace: n.Namespace, Pod: n.Pod, Container: n.Container}), false
}

// identities are the names of a tree's cgroups, as far as the runtime has
// given them.
type identities struct {
	of      map[uint64]policy.Identity
	pending map[uint64]bool // cgroups whose names may yet become known
}

// identifyAll names the cgroups of paths (id -> path); nothing when the
// policy has no rule by name, which then needs none.
func identifyAll(c *policy.Compiled, paths map[uint64]string, rt Runtime) identities {
	ids := identities{of: map[uint64]policy.Identity{}, pending: map[uint64]bool{}}
	if !c.HasNameRules() {
		return ids
	}
	for cg, path := range paths {
		id, retry := identify(path, rt)
		ids.of[cg] = id
		if retry {
			ids.pending[cg] = true
		}
	}
	return ids
}

// NoRuntimeWarning is logged when the policy has rules by name and no
// container runtime answers them: those rules then hold every pod's
// container as one whose names are unknown.
const NoRuntimeWarning = "the policy matches pods by name, but no container runtime (CRI) socket is in use: " +
	"grants by namespace, pod or container name do not apply, and denies by name apply to every pod's container"
