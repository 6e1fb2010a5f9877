package suggest

import (
	"fmt"
	"strings"

	"github.com/imdsguard/imdsguard/internal/containerid"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// Kinds of workload.
const (
	workloadPod       = "pod"       // a container of a kubelet pod
	workloadContainer = "container" // a container outside Kubernetes
	workloadUnit      = "unit"      // a systemd service, or a cgroup below one
	workloadCgroup    = "cgroup"    // any other cgroup, named as it is
)

// workload is what one suggested rule is for: the cgroup glob that names it
// (with the pod's names, when the events have them), and what that glob's
// stability depends on.
type workload struct {
	glob string // the rule's match.cgroup
	// namespace, pod and container are the rule's name conditions (a pod
	// glob for pod), for a pod's container named by the events; "" else.
	namespace, pod, container string
	kind                      string
	// name is the cgroup segment the rule's name is made from when the
	// events carry no pod or container name.
	name string
	// note says, for the rule's comment, what will make the glob stop
	// matching; "" when only renaming the workload would.
	note string
}

// workloadFor names the workload of an event: a pod's container whose
// event names its namespace, pod and container by those names (see
// namedWorkload), so that the rule survives the pod's re-creation; any
// other by its cgroup (workloadOf).
func workloadFor(r record) (workload, string) {
	w, why := workloadOf(r.Cgroup)
	if why != "" || w.kind != workloadPod {
		return w, why
	}
	if named, ok := namedWorkload(r.Cgroup, containerid.Parse(r.Cgroup), r.Namespace, r.Pod, r.Container); ok {
		return named, ""
	}
	return w, ""
}

// workloadOf names the workload a cgroup belongs to with the narrowest glob
// that still matches it after the restarts it survives. It returns why not
// when no glob can name it on its own: a grant must pin one workload, and
// suggest never widens a glob to do so.
//
// A kubelet pod whose events do not name it (no runtime, or a cgroup below
// the container's, which rules by name never match) is named by its pod
// uid, kept literal: with the uid wildcarded the glob would match every
// pod of its QoS class. Only the container id is wildcarded, because it
// changes on every container restart while the pod (and its uid) stays.
func workloadOf(cgroup string) (workload, string) {
	switch {
	case cgroup == "":
		return workload{}, "the event names no cgroup (it was removed before the daemon looked it up: a short-lived process or pod); a rule has to name the workload's cgroup"
	case cgroup == "/":
		return workload{}, "the root cgroup: a rule for \"/\" would cover whatever runs outside every service and pod, not one workload; run the client in a unit of its own (systemd-run --unit NAME …) and audit again"
	case !strings.HasPrefix(cgroup, "/"):
		return workload{}, "not a cgroup path (they start with \"/\", relative to the cgroup2 mount)"
	case !policy.Writable(cgroup):
		return workload{}, "the cgroup path holds control characters or invalid UTF-8, which a policy file cannot"
	}
	var w workload
	info := containerid.Parse(cgroup)
	switch {
	case info.ContainerID != "" && info.QoS != "":
		w = podWorkload(cgroup, info)
	case info.ContainerID != "":
		w = workload{glob: escapeGlob(cgroup), kind: workloadContainer, name: lastSegment(cgroup),
			note: "names the container by its id, as nothing else in its cgroup path names it: a re-created container (docker rm and run, compose up) gets a new id and needs a new rule"}
	default:
		w = unitWorkload(cgroup)
	}
	if err := policy.ValidateCgroupGlob(w.glob); err != nil {
		return workload{}, fmt.Sprintf("no glob can name it: %v", err)
	}
	if !policy.MatchCgroup(w.glob, cgroup) {
		return workload{}, fmt.Sprintf("not a clean cgroup path (the glob %q made from it does not match it)", w.glob)
	}
	return w, ""
}

// podWorkload is the glob for a container of a kubelet pod: the path as it
// is, the container id in its segment wildcarded ("/kubepods/besteffort/
// pod<uid>/*", "…/kubepods-besteffort-pod<uid>.slice/cri-containerd-*.scope").
// Whatever comes before the kubelet's part (a test cgroup, a kind node's
// container) and after the container segment stays literal.
func podWorkload(cgroup string, info containerid.Info) workload {
	segs := strings.Split(cgroup[1:], "/")
	at := len(segs) - 1
	for at > 0 && !strings.Contains(segs[at], info.ContainerID) {
		at--
	}
	var b strings.Builder
	for i, seg := range segs {
		b.WriteByte('/')
		if i != at {
			b.WriteString(escapeGlob(seg))
			continue
		}
		before, after, _ := strings.Cut(seg, info.ContainerID)
		// conmon's scope ("crio-conmon-<id>.scope") is the container's
		// helper and falls under the container's glob ("crio-*.scope"):
		// one rule, not two that overlap
		before = strings.TrimSuffix(before, "conmon-")
		b.WriteString(escapeGlob(before) + "*" + escapeGlob(after))
	}
	w := workload{glob: b.String(), kind: workloadPod, name: segs[at]}
	for i := at; i >= 0; i-- {
		if strings.Contains(segs[i], "pod") {
			w.name = segs[i] // the pod's segment, for a name when the events have none
			break
		}
	}
	if info.PodUID == "" {
		// containerid leaves the uid out for static pods only.
		w.note = "a static pod (a kubelet manifest): its pod uid is the hash of the manifest, so the rule holds until the manifest changes; container restarts keep it (the container id is wildcarded)"
	} else {
		w.note = fmt.Sprintf("names the pod by its uid %s, because the events do not name the pod (or name it from a cgroup below its container's, which rules by name never match), and with the uid wildcarded the glob would match every %s pod: a re-created pod (rollout, eviction, rescheduling) gets a new uid and needs a new rule; container restarts keep it (the container id is wildcarded)", info.PodUID, info.QoS)
	}
	return w
}

// unitWorkload names a cgroup outside the kubelet's: literally. A systemd
// service's cgroup is its unit name, stable across restarts; a scope
// (login session, systemd-run) is transient and gets a new name each time.
func unitWorkload(cgroup string) workload {
	w := workload{glob: escapeGlob(cgroup), kind: workloadCgroup, name: lastSegment(cgroup),
		note: "names the cgroup as it is: it holds as long as whatever creates the cgroup keeps its name"}
	segs := strings.Split(cgroup[1:], "/")
	for i := len(segs) - 1; i >= 0; i-- {
		if strings.HasSuffix(segs[i], ".service") {
			w.kind, w.name = workloadUnit, segs[i]
			w.note = "names the systemd unit: it holds across restarts of the service and reboots"
			if i < len(segs)-1 {
				w.note = fmt.Sprintf("names a cgroup the unit %s made below its own: it holds as long as the service keeps that name", segs[i])
			}
			return w
		}
	}
	if last := lastSegment(cgroup); strings.HasSuffix(last, ".scope") {
		w.note = fmt.Sprintf("names the scope %s, which is transient (a login session, systemd-run): it gets a new name when it is started again, and then needs a new rule", last)
	}
	return w
}

func lastSegment(cgroup string) string { return cgroup[strings.LastIndexByte(cgroup, '/')+1:] }

// escapeGlob makes s match itself literally: "*", "?", "[" and "\" are
// glob syntax in a cgroup name.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
