package suggest

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/imdsguard/imdsguard/internal/containerid"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// safe is the alphabet Kubernetes makes generated name parts from
// (k8s.io/apimachinery's rand: no vowels, no 0, 1 or 3): the five
// characters generateName appends and the pod-template-hash.
const safe = "[bcdfghjklmnpqrstvwxz2456789]"

// The pod names the controllers make. A Deployment's ReplicaSet names its
// pods <deployment>-<pod-template-hash>-<5>, the hash 5 to 10 safe
// characters (the decimal digits of a 32-bit hash, encoded); a CronJob's
// Jobs theirs <cronjob>-<scheduled minute>-<5>; a DaemonSet's and a Job's
// pods are <name>-<5>; a StatefulSet's <name>-<ordinal>, kept when the pod
// is re-created.
var (
	replicaSetPod  = regexp.MustCompile(`^(.+)-(?:` + safe + `{5,10}|[0-9]{6,})-` + safe + `{5}$`)
	generatedPod   = regexp.MustCompile(`^(.+)-` + safe + `{5}$`)
	statefulSetPod = regexp.MustCompile(`^(.+)-(?:0|[1-9][0-9]*)$`)
)

// podNames is how a rule matches a pod by name.
type podNames struct {
	glob string // the match's pod glob
	base string // the controller's name (the pod's own when named by hand)
	// holds says why the glob matches the pod again when it is re-created,
	// or when it does not; risk what else it matches.
	holds, risk string
}

// podGlob is the glob for the pods of the controller that made pod (as its
// name's shape tells): one that matches them again when they are re-created
// (a new pod name's generated part, a new uid, new container ids), and as
// little else as a glob can say. Within a namespace whoever may create pods
// may name one anything, so no glob keeps them out; what it bounds is the
// other workloads of the namespace it matches by accident.
func podGlob(namespace, pod, container string) podNames {
	also := fmt.Sprintf(" if it runs a container named %s: check there is none", container)
	const again = ", so the rule holds when they are re-created (rollouts, evictions, rescheduling: new names, uids and container ids)"
	if m := replicaSetPod.FindStringSubmatch(pod); m != nil {
		return podNames{glob: escapeGlob(m[1]) + "-*-?????", base: m[1],
			holds: fmt.Sprintf("the names of the pods of the Deployment (or CronJob) %s, %s-<hash>-<5 characters>%s", m[1], m[1], again),
			risk:  fmt.Sprintf("in %s it also matches the pods of another Deployment whose name starts with %q (%s-admin's, %s-admin-<hash>-<5 characters>)%s", namespace, m[1]+"-", m[1], m[1], also)}
	}
	if m := generatedPod.FindStringSubmatch(pod); m != nil {
		return podNames{glob: escapeGlob(m[1]) + "-?????", base: m[1],
			holds: fmt.Sprintf("the names of the pods of the DaemonSet or Job %s, %s-<5 characters>%s", m[1], m[1], again),
			risk:  fmt.Sprintf("in %s it also matches a pod named %q and five characters%s", namespace, m[1]+"-", also)}
	}
	if statefulSetPod.MatchString(pod) {
		return podNames{glob: escapeGlob(pod), base: pod,
			holds: "its whole name, which a StatefulSet's pod keeps when it is re-created (new uid and container ids), so the rule holds"}
	}
	return podNames{glob: escapeGlob(pod), base: pod,
		holds: "its whole name, which has no part a controller generates: a pod re-created under another name needs a new rule; container restarts keep it"}
}

// namedWorkload is a pod's container matched by its names instead of its
// pod uid, so that the rule survives the pod's re-creation: the namespace
// and the container exactly, the pod by podGlob, and a cgroup glob with the
// pod uid and the container id wildcarded (the rest, the QoS class among
// it, as it is). ok is false when the names cannot make such a rule: the
// cgroup is not a pod's container cgroup itself (rules by name never match
// below one), or a name is not one Kubernetes allows.
func namedWorkload(cgroup string, info containerid.Info, ns, pod, container string) (workload, bool) {
	if _, place := containerid.Locate(cgroup); place != containerid.PodContainer || !validNames(ns, pod, container) {
		return workload{}, false
	}
	segs := strings.Split(cgroup[1:], "/")
	at := len(segs) - 1
	var b strings.Builder
	for i, seg := range segs {
		b.WriteByte('/')
		switch i {
		case at:
			before, after, _ := strings.Cut(seg, info.ContainerID)
			if strings.Contains(before, "pod") { // the flat "<pod slice>:cri-containerd:<id>"
				b.WriteString(wildcardPodUID(before) + "*" + escapeGlob(after))
			} else {
				b.WriteString(escapeGlob(before) + "*" + escapeGlob(after))
			}
		case at - 1:
			if strings.Contains(seg, "pod") {
				b.WriteString(wildcardPodUID(seg))
				break
			}
			fallthrough
		default:
			b.WriteString(escapeGlob(seg))
		}
	}
	pn := podGlob(ns, pod, container)
	w := workload{glob: b.String(), kind: workloadPod, name: pn.base, namespace: ns, pod: pn.glob, container: container}
	w.note = fmt.Sprintf("matches the pod by its names, not its uid: namespace %s and container %s exactly, and pod %s: %s", ns, container, pn.glob, pn.holds)
	if pn.risk != "" {
		w.note += "; " + pn.risk
	}
	if info.QoS != "" {
		w.note += fmt.Sprintf("; the cgroup glob keeps the QoS class (%s): a pod whose resources change class needs a new rule", info.QoS)
	}
	return w, true
}

// wildcardPodUID replaces the pod uid in a kubelet pod segment
// ("kubepods-besteffort-pod<uid>.slice", "pod<uid>") with "*".
func wildcardPodUID(seg string) string {
	i := strings.LastIndex(seg, "pod") + len("pod")
	rest := seg[i:]
	end := len(rest)
	if j := strings.Index(rest, ".slice"); j >= 0 {
		end = j
	}
	return escapeGlob(seg[:i]) + "*" + escapeGlob(rest[end:])
}

// validNames reports whether the names are ones Kubernetes allows, as the
// policy checks them.
func validNames(ns, pod, container string) bool {
	for _, n := range []struct{ key, name string }{{"namespace", ns}, {"pod", pod}, {"container", container}} {
		if n.name == "" || policy.ValidateNameGlob(n.key, escapeGlob(n.name)) != nil {
			return false
		}
	}
	return true
}
