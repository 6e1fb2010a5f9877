// Package manifests checks the Kubernetes base in deploy/kubernetes without
// a cluster: every document decodes strictly into its k8s.io/api type (a
// misspelt field fails here, not as a field the API server silently
// drops), the DaemonSet has what the daemon needs to guard a node, the
// pieces refer to each other correctly, and the daemon binary accepts the
// policy and every flag the manifests give it.
package manifests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/imdsguard/imdsguard/internal/nodetaint"
)

const (
	moduleRoot   = "../.."
	baseDir      = moduleRoot + "/deploy/kubernetes"
	namespace    = "imdsguard"
	defaultImage = "ghcr.io/imdsguard/imdsguard"
	installDoc   = moduleRoot + "/docs/install-kubernetes.md"
)

// kustomization is the part of kustomize's Kustomization this base uses.
// It is decoded strictly too, so a field this test does not know (and so
// does not check) fails until it is added here.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images"`
}

// object is one decoded document and where it came from.
type object struct {
	file string
	obj  any
}

type base struct {
	k       kustomization
	objects []object
}

// newObject maps a document's apiVersion and kind to its Go type. A kind
// missing here fails the test: it would otherwise go unchecked.
func newObject(tm metav1.TypeMeta) (any, error) {
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, nil
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "apps/v1 DaemonSet":
		return &appsv1.DaemonSet{}, nil
	case "rbac.authorization.k8s.io/v1 ClusterRole":
		return &rbacv1.ClusterRole{}, nil
	case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}, nil
	}
	return nil, fmt.Errorf("apiVersion %q kind %q: not a type this test decodes (add it to newObject)", tm.APIVersion, tm.Kind)
}

// decodeStrict decodes one YAML document the way the API server's strict
// field validation does: duplicate keys, unknown fields and fields whose
// case differs from the schema's are errors. (encoding/json alone would
// accept "hostnetwork" for hostNetwork.)
func decodeStrict(doc []byte, into any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := sigsjson.UnmarshalStrict(js, into, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// decodeDocument decodes a document into the type its kind names; nil for a
// document of comments only.
func decodeDocument(doc []byte) (any, error) {
	var probe map[string]any
	if err := yaml.Unmarshal(doc, &probe); err != nil {
		return nil, err
	}
	if len(probe) == 0 {
		return nil, nil
	}
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	obj, err := newObject(tm)
	if err != nil {
		return nil, err
	}
	if err := decodeStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return obj, nil
}

func splitDocuments(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, doc)
	}
}

func loadBase(t *testing.T) *base {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(baseDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b := &base{}
	if err := decodeStrict(data, &b.k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	for _, res := range b.k.Resources {
		file := filepath.Join(baseDir, res)
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("kustomization.yaml lists %s: %v", res, err)
		}
		docs, err := splitDocuments(data)
		if err != nil {
			t.Fatalf("%s: %v", res, err)
		}
		for i, doc := range docs {
			obj, err := decodeDocument(doc)
			if err != nil {
				t.Fatalf("%s, document %d: %v", res, i+1, err)
			}
			if obj != nil {
				b.objects = append(b.objects, object{file: res, obj: obj})
			}
		}
	}
	return b
}

// all returns the base's objects of type T.
func all[T any](b *base) []*T {
	var out []*T
	for _, o := range b.objects {
		if v, ok := o.obj.(*T); ok {
			out = append(out, v)
		}
	}
	return out
}

// one returns the only object of type T, failing if there is not exactly one.
func one[T any](t *testing.T, b *base) *T {
	t.Helper()
	objs := all[T](b)
	if len(objs) != 1 {
		var zero T
		t.Fatalf("%d objects of type %T in the base, want 1", len(objs), zero)
	}
	return objs[0]
}

func meta(obj any) *metav1.ObjectMeta {
	switch o := obj.(type) {
	case *corev1.Namespace:
		return &o.ObjectMeta
	case *corev1.ServiceAccount:
		return &o.ObjectMeta
	case *corev1.ConfigMap:
		return &o.ObjectMeta
	case *corev1.Service:
		return &o.ObjectMeta
	case *appsv1.DaemonSet:
		return &o.ObjectMeta
	case *rbacv1.ClusterRole:
		return &o.ObjectMeta
	case *rbacv1.ClusterRoleBinding:
		return &o.ObjectMeta
	}
	panic(fmt.Sprintf("meta: unhandled %T", obj))
}

func clusterScoped(obj any) bool {
	switch obj.(type) {
	case *corev1.Namespace, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding:
		return true
	}
	return false
}

func TestKustomizationListsEveryFile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(baseDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := decodeStrict(data, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: apiVersion %q kind %q", k.APIVersion, k.Kind)
	}
	listed := map[string]bool{}
	for _, r := range k.Resources {
		if listed[r] {
			t.Errorf("kustomization.yaml lists %s twice", r)
		}
		listed[r] = true
		if _, err := os.Stat(filepath.Join(baseDir, r)); err != nil {
			t.Errorf("kustomization.yaml lists %s, which is missing: %v", r, err)
		}
	}
	entries, err := os.ReadDir(baseDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || name == "kustomization.yaml" {
			continue
		}
		if ext := filepath.Ext(name); (ext == ".yaml" || ext == ".yml") && !listed[name] {
			t.Errorf("%s is in %s but not in kustomization.yaml's resources: it would never be applied", name, baseDir)
		}
	}
	if len(k.Images) != 1 || k.Images[0].Name != defaultImage {
		t.Errorf("kustomization.yaml images: %+v; want one entry for %s, the override point for overlays", k.Images, defaultImage)
	}
}

// The strictness the other tests rely on: these must all fail to decode.
func TestDecoderIsStrict(t *testing.T) {
	const good = `apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: x
spec:
  selector:
    matchLabels: {app: x}
  template:
    metadata:
      labels: {app: x}
    spec:
      hostNetwork: true
      containers:
        - name: x
          image: x
`
	if _, err := decodeDocument([]byte(good)); err != nil {
		t.Fatalf("the well-formed document does not decode: %v", err)
	}
	broken := map[string][2]string{
		"unknown field":        {"      hostNetwork: true", "      hostNetwrk: true"},
		"field in wrong case":  {"      hostNetwork: true", "      hostnetwork: true"},
		"nested unknown field": {"          image: x", "          image: x\n          imagePullPolicyy: Always"},
		"duplicate key":        {"      hostNetwork: true", "      hostNetwork: true\n      hostNetwork: false"},
		"wrong type":           {"      hostNetwork: true", "      hostNetwork: [true]"},
		"misplaced field":      {"  selector:", "  hostPID: true\n  selector:"},
	}
	for name, edit := range broken {
		doc := strings.Replace(good, edit[0], edit[1], 1)
		if doc == good {
			t.Fatalf("%s: the edit did not apply", name)
		}
		if _, err := decodeDocument([]byte(doc)); err == nil {
			t.Errorf("%s: the decoder accepted\n%s", name, doc)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if _, err := decodeDocument([]byte("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n")); err == nil {
		t.Error("a kind the test does not know was accepted")
	}
}

func TestObjectsAndNamespace(t *testing.T) {
	b := loadBase(t)
	ns := one[corev1.Namespace](t, b)
	if ns.Name != namespace {
		t.Errorf("Namespace %q, want %q", ns.Name, namespace)
	}
	// Pod Security Admission must admit hostNetwork, hostPID, hostPath and
	// privileged, whatever the cluster's default level.
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("Namespace label pod-security.kubernetes.io/enforce = %q, want privileged", got)
	}
	seen := map[string]string{}
	for _, o := range b.objects {
		m := meta(o.obj)
		key := fmt.Sprintf("%T %s", o.obj, m.Name)
		if prev, dup := seen[key]; dup {
			t.Errorf("%s defined in both %s and %s", key, prev, o.file)
		}
		seen[key] = o.file
		if m.Name == "" {
			t.Errorf("%s: %T without a name", o.file, o.obj)
		}
		if clusterScoped(o.obj) {
			if m.Namespace != "" {
				t.Errorf("%s: cluster-scoped %T %s has namespace %q", o.file, o.obj, m.Name, m.Namespace)
			}
		} else if m.Namespace != namespace {
			// Explicit, so that kubectl apply -f works like apply -k.
			t.Errorf("%s: %T %s in namespace %q, want %q", o.file, o.obj, m.Name, m.Namespace, namespace)
		}
	}
}

func TestRBAC(t *testing.T) {
	b := loadBase(t)
	sa := one[corev1.ServiceAccount](t, b)
	role := one[rbacv1.ClusterRole](t, b)
	binding := one[rbacv1.ClusterRoleBinding](t, b)
	// Exactly what taint removal needs, nothing more.
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}}}
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].APIGroups, want[0].APIGroups) ||
		!slices.Equal(role.Rules[0].Resources, want[0].Resources) || !slices.Equal(role.Rules[0].Verbs, want[0].Verbs) ||
		len(role.Rules[0].ResourceNames) != 0 || len(role.Rules[0].NonResourceURLs) != 0 || role.AggregationRule != nil {
		t.Errorf("ClusterRole rules %+v, want only %+v", role.Rules, want)
	}
	if binding.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name}) {
		t.Errorf("ClusterRoleBinding roleRef %+v does not name ClusterRole %s", binding.RoleRef, role.Name)
	}
	if len(binding.Subjects) != 1 || binding.Subjects[0] != (rbacv1.Subject{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace}) {
		t.Errorf("ClusterRoleBinding subjects %+v, want the ServiceAccount %s/%s", binding.Subjects, sa.Namespace, sa.Name)
	}
}

// runArgs reads the container's args as "run" followed by --name=value
// flags. The one-token form is required: "--flag value" cannot be told from
// a boolean flag followed by a stray argument without knowing the flags.
func runArgs(t *testing.T, c *corev1.Container) (names []string, values map[string]string) {
	t.Helper()
	if len(c.Command) != 0 {
		t.Errorf("container %s sets command %q: leave it to the image's entrypoint", c.Name, c.Command)
	}
	if len(c.Args) == 0 || c.Args[0] != "run" {
		t.Fatalf("container %s args %q: want the run command first", c.Name, c.Args)
	}
	values = map[string]string{}
	for _, a := range c.Args[1:] {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok || name == "" {
			t.Errorf("container %s arg %q: want --name=value", c.Name, a)
			continue
		}
		if _, dup := values[name]; dup {
			t.Errorf("container %s: --%s given twice", c.Name, name)
		}
		names = append(names, name)
		values[name] = value
	}
	return names, values
}

// mountOf returns the volume mount whose path holds p, the deepest one.
func mountOf(c *corev1.Container, p string) *corev1.VolumeMount {
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") {
			if best == nil || len(m.MountPath) > len(best.MountPath) {
				best = m
			}
		}
	}
	return best
}

func volume(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

func daemonContainer(t *testing.T, ds *appsv1.DaemonSet) *corev1.Container {
	t.Helper()
	cs := ds.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("DaemonSet has %d containers, want 1", len(cs))
	}
	return &cs[0]
}

func TestDaemonSetShape(t *testing.T) {
	b := loadBase(t)
	ds := one[appsv1.DaemonSet](t, b)
	spec := &ds.Spec.Template.Spec
	c := daemonContainer(t, ds)

	if !spec.HostNetwork {
		t.Error("hostNetwork is not true: the daemon's netns must be the host's (netns cookie, nftables table)")
	}
	if !spec.HostPID {
		t.Error("hostPID is not true: the daemon reads /proc/<pid> of every process on the node")
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q, want ClusterFirstWithHostNet", spec.DNSPolicy)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", spec.PriorityClassName)
	}
	tolerateAll := false
	for _, tol := range spec.Tolerations {
		if tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == "" && tol.TolerationSeconds == nil {
			tolerateAll = true
		}
	}
	if !tolerateAll {
		t.Errorf("tolerations %+v: want one with operator Exists, no key and no effect (every taint, NoExecute included)", spec.Tolerations)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g < 10 || *g > 60 {
		t.Errorf("terminationGracePeriodSeconds %v, want about 30", g)
	}
	if spec.ServiceAccountName == "" {
		t.Error("no serviceAccountName: taint removal needs the imdsguard service account")
	}
	if a := spec.AutomountServiceAccountToken; a != nil && !*a {
		t.Error("automountServiceAccountToken is false: taint removal needs the token")
	}

	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || *us.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) {
		t.Errorf("updateStrategy %+v: want RollingUpdate with maxUnavailable 1 (one node at a time)", us)
	}
	if us.RollingUpdate != nil && us.RollingUpdate.MaxSurge != nil && us.RollingUpdate.MaxSurge.IntValue() != 0 {
		t.Errorf("maxSurge %v: a second pod on the node would fight over the pin lock and the host port", us.RollingUpdate.MaxSurge)
	}

	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		t.Fatalf("DaemonSet selector: %v", err)
	}
	if !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("DaemonSet selector %v does not match the pod labels %v", sel, ds.Spec.Template.Labels)
	}

	if img := c.Image; img != defaultImage+":latest" {
		t.Errorf("image %q, want %s:latest (overlays override it with kustomize images:)", img, defaultImage)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want cpu and memory requests and a memory limit", c.Resources)
	}
	if c.Resources.Limits.Memory().Cmp(*c.Resources.Requests.Memory()) < 0 {
		t.Error("memory limit below the request")
	}

	// Every mount has its volume, and every volume is mounted.
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounted[m.Name] = true
		if volume(spec, m.Name) == nil {
			t.Errorf("volumeMount %s (%s) has no volume", m.Name, m.MountPath)
		}
	}
	for _, v := range spec.Volumes {
		if !mounted[v.Name] {
			t.Errorf("volume %s is not mounted", v.Name)
		}
	}

	sc := c.SecurityContext
	for _, m := range c.VolumeMounts {
		// The API server refuses Bidirectional in unprivileged containers.
		if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional &&
			(sc == nil || sc.Privileged == nil || !*sc.Privileged) {
			t.Errorf("volumeMount %s is Bidirectional but the container is not privileged", m.Name)
		}
	}
	if sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("securityContext.runAsUser is not 0: the daemon needs root for /sys/fs/bpf and the distroless image's default is not documented to stay root")
	}

	var env *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "NODE_NAME" {
			env = &c.Env[i]
		}
	}
	if env == nil || env.ValueFrom == nil || env.ValueFrom.FieldRef == nil || env.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME %+v: want it from the downward API, fieldRef spec.nodeName", env)
	}
}

func TestDaemonSetArgsMatchMounts(t *testing.T) {
	b := loadBase(t)
	ds := one[appsv1.DaemonSet](t, b)
	spec := &ds.Spec.Template.Spec
	c := daemonContainer(t, ds)
	_, args := runArgs(t, c)

	// The policy is a key of the ConfigMap, mounted whole (no subPath: a
	// subPath mount never sees the kubelet's updates, and the daemon
	// watches the directory for the "..data" swap).
	policyPath := args["policy"]
	m := mountOf(c, policyPath)
	if m == nil {
		t.Fatalf("--policy=%s is not under any volumeMount", policyPath)
	}
	if m.SubPath != "" || m.SubPathExpr != "" {
		t.Errorf("volumeMount %s uses subPath: policy edits would never reach the pod", m.Name)
	}
	if path.Dir(policyPath) != m.MountPath {
		t.Errorf("--policy=%s is not directly in the mount %s", policyPath, m.MountPath)
	}
	v := volume(spec, m.Name)
	if v == nil || v.ConfigMap == nil {
		t.Fatalf("--policy=%s is on volume %s, which is not a ConfigMap", policyPath, m.Name)
	}
	var cm *corev1.ConfigMap
	for _, x := range all[corev1.ConfigMap](b) {
		if x.Name == v.ConfigMap.Name {
			cm = x
		}
	}
	if cm == nil {
		t.Fatalf("volume %s names ConfigMap %s, which the base does not define", v.Name, v.ConfigMap.Name)
	}
	key := path.Base(policyPath)
	if len(v.ConfigMap.Items) != 0 {
		t.Errorf("volume %s selects items: keep the whole ConfigMap so the file name is the key", v.Name)
	}
	if _, ok := cm.Data[key]; !ok {
		t.Errorf("ConfigMap %s has no key %s (for --policy=%s)", cm.Name, key, policyPath)
	}

	// The service account exists.
	found := false
	for _, sa := range all[corev1.ServiceAccount](b) {
		found = found || sa.Name == spec.ServiceAccountName
	}
	if !found {
		t.Errorf("serviceAccountName %s is not defined in the base", spec.ServiceAccountName)
	}

	// --cgroup is the host's cgroup v2 root, not the container's own.
	hostPathAt := func(flag, want string, exact bool) *corev1.VolumeMount {
		t.Helper()
		p := args[flag]
		m := mountOf(c, p)
		if m == nil {
			t.Errorf("--%s=%s is not under any volumeMount", flag, p)
			return nil
		}
		v := volume(spec, m.Name)
		if v == nil || v.HostPath == nil || v.HostPath.Path != want {
			t.Errorf("--%s=%s is on volume %s, want a hostPath of %s", flag, p, m.Name, want)
			return nil
		}
		if exact && p != m.MountPath {
			t.Errorf("--%s=%s: want the mount point %s itself", flag, p, m.MountPath)
		}
		return m
	}
	if m := hostPathAt("cgroup", "/sys/fs/cgroup", true); m != nil && strings.HasPrefix(m.MountPath, "/sys/fs/cgroup") {
		t.Errorf("host cgroup tree mounted at %s: that hides the container's own; use another path", m.MountPath)
	}
	if sock := args["cri-socket"]; sock != "" && sock != "none" && sock != "auto" {
		if m := hostPathAt("cri-socket", filepath.Dir(sock), false); m != nil && !m.ReadOnly {
			t.Errorf("CRI socket volume %s is not read-only", m.Name)
		}
	}

	// Pins go to the host's bpffs, and must survive the container.
	pinDir := args["pin-dir"]
	if pinDir == "" {
		pinDir = "/sys/fs/bpf/imdsguard" // the daemon's default
	}
	if m := mountOf(c, pinDir); m == nil {
		t.Errorf("pin directory %s is not under any volumeMount: pins would die with the container", pinDir)
	} else {
		v := volume(spec, m.Name)
		if v == nil || v.HostPath == nil || v.HostPath.Path != "/sys/fs/bpf" || m.MountPath != "/sys/fs/bpf" {
			t.Errorf("pin directory %s is on volume %s, want the hostPath /sys/fs/bpf mounted at /sys/fs/bpf", pinDir, m.Name)
		}
		if m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
			t.Errorf("bpffs volumeMount %s: want mountPropagation Bidirectional, so a bpffs the daemon mounts reaches the host", m.Name)
		}
		if m.ReadOnly {
			t.Errorf("bpffs volumeMount %s is read-only: the daemon pins there", m.Name)
		}
	}

	// The metrics port is the one the daemon listens on, on the node's
	// addresses (hostNetwork: kubelet probes the node IP, not loopback).
	host, port, err := net.SplitHostPort(args["metrics-addr"])
	if err != nil {
		t.Fatalf("--metrics-addr=%s: %v", args["metrics-addr"], err)
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		t.Errorf("--metrics-addr=%s: probes and Prometheus come from outside the node's loopback", args["metrics-addr"])
	}
	metricsPort, _ := strconv.Atoi(port)
	var metricsName string
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			metricsName = p.Name
			if int(p.ContainerPort) != metricsPort {
				t.Errorf("container port metrics = %d, --metrics-addr port %d", p.ContainerPort, metricsPort)
			}
		}
	}
	if metricsName == "" {
		t.Error("no container port named metrics")
	}
	probe := func(name string, p *corev1.Probe, wantPath string) {
		t.Helper()
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an httpGet on %s", name, wantPath)
			return
		}
		if p.HTTPGet.Path != wantPath {
			t.Errorf("%s probe path %s, want %s", name, p.HTTPGet.Path, wantPath)
		}
		if pp := p.HTTPGet.Port; pp != intstr.FromString(metricsName) && pp != intstr.FromInt32(int32(metricsPort)) {
			t.Errorf("%s probe port %v, want %d (metrics)", name, pp.String(), metricsPort)
		}
	}
	probe("liveness", c.LivenessProbe, "/healthz")
	probe("readiness", c.ReadinessProbe, "/readyz")
	if c.StartupProbe != nil {
		probe("startup", c.StartupProbe, "/healthz")
	}

	// The startup taint must be something the daemon can parse, and the
	// node name must come with it.
	if spec := args["startup-taint"]; spec == "" {
		t.Error("no --startup-taint: nodes registered with imdsguard.io/not-ready would keep it")
	} else if _, err := nodetaint.ParseSpec(spec); err != nil {
		t.Errorf("--startup-taint: %v", err)
	}
	if got := args["on-exit"]; got != "keep" {
		t.Errorf("--on-exit=%q, want keep (restarts and upgrades must leave no gap)", got)
	}
}

func TestService(t *testing.T) {
	b := loadBase(t)
	ds := one[appsv1.DaemonSet](t, b)
	svc := one[corev1.Service](t, b)
	c := daemonContainer(t, ds)
	if len(svc.Spec.Selector) == 0 {
		t.Fatal("Service without a selector")
	}
	for k, v := range svc.Spec.Selector {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not match the pod labels %v", k, v, ds.Spec.Template.Labels)
		}
	}
	var sp *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if svc.Spec.Ports[i].Name == "metrics" {
			sp = &svc.Spec.Ports[i]
		}
	}
	if sp == nil {
		t.Fatal("Service has no port named metrics")
	}
	var cp *corev1.ContainerPort
	for i := range c.Ports {
		tp := sp.TargetPort
		if (tp.Type == intstr.String && tp.StrVal == c.Ports[i].Name) ||
			(tp.Type == intstr.Int && tp.IntVal == c.Ports[i].ContainerPort) ||
			(tp.Type == intstr.Int && tp.IntVal == 0 && sp.Port == c.Ports[i].ContainerPort) {
			cp = &c.Ports[i]
		}
	}
	if cp == nil || cp.Name != "metrics" {
		t.Errorf("Service port metrics targets %v, which is not the container's metrics port", sp.TargetPort.String())
	}
}

// daemonBinary builds cmd/imdsguard once for the subtests.
func daemonBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the daemon (-short)")
	}
	bin := filepath.Join(t.TempDir(), "imdsguard")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/imdsguard")
	cmd.Dir = moduleRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/imdsguard: %v\n%s", err, out)
	}
	return bin
}

// runFlags lists the flags `imdsguard run -h` documents. The flag package
// prints each as "  -name type" at the start of a line.
func runFlags(t *testing.T, bin string) map[string]bool {
	t.Helper()
	cmd := exec.Command(bin, "run", "-h")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("imdsguard run -h: %v\n%s", err, out.String())
	}
	re := regexp.MustCompile(`(?m)^  -([a-z0-9][a-z0-9-]*)\b`)
	flags := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(out.String(), -1) {
		flags[m[1]] = true
	}
	if !flags["policy"] || !flags["metrics-addr"] {
		t.Fatalf("could not read the flags from imdsguard run -h:\n%s", out.String())
	}
	return flags
}

func TestDaemonAcceptsManifests(t *testing.T) {
	b := loadBase(t)
	ds := one[appsv1.DaemonSet](t, b)
	c := daemonContainer(t, ds)
	names, args := runArgs(t, c)
	bin := daemonBinary(t)

	t.Run("policy", func(t *testing.T) {
		policyPath := args["policy"]
		var cm *corev1.ConfigMap
		for _, x := range all[corev1.ConfigMap](b) {
			if x.Name == "imdsguard-policy" {
				cm = x
			}
		}
		if cm == nil {
			t.Fatal("no ConfigMap imdsguard-policy")
		}
		text, ok := cm.Data[path.Base(policyPath)]
		if !ok {
			t.Fatalf("ConfigMap %s has no key %s", cm.Name, path.Base(policyPath))
		}
		file := filepath.Join(t.TempDir(), "policy.yaml")
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "check", "--policy", file).CombinedOutput()
		if err != nil {
			t.Fatalf("imdsguard check on the ConfigMap's policy: %v\n%s", err, out)
		}
	})

	t.Run("run flags", func(t *testing.T) {
		known := runFlags(t, bin)
		for _, name := range names {
			if !known[name] {
				t.Errorf("the DaemonSet passes --%s, which imdsguard run does not have", name)
			}
		}
	})
}

// The uninstall procedure in the docs patches the --on-exit argument by its
// index, guarded by a JSON-patch test: keep the index right.
func TestInstallDocPatchesOnExit(t *testing.T) {
	doc, err := os.ReadFile(installDoc)
	if err != nil {
		t.Fatal(err)
	}
	b := loadBase(t)
	c := daemonContainer(t, one[appsv1.DaemonSet](t, b))
	re := regexp.MustCompile(`\{"op":"(test|replace)","path":"/spec/template/spec/containers/0/args/(\d+)","value":"(--on-exit=[a-z]+)"\}`)
	ops := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(string(doc), -1) {
		op, value := m[1], m[3]
		i, _ := strconv.Atoi(m[2])
		ops[op] = true
		if i >= len(c.Args) || c.Args[i] != "--on-exit=keep" {
			t.Errorf("%s: the %s operation on args/%d, but the DaemonSet's args are %q", installDoc, op, i, c.Args)
		}
		if op == "test" && value != "--on-exit=keep" || op == "replace" && value != "--on-exit=detach" {
			t.Errorf("%s: %s operation with value %s", installDoc, op, value)
		}
	}
	if !ops["test"] || !ops["replace"] {
		t.Errorf("%s: want a JSON patch with a test and a replace operation on the --on-exit argument", installDoc)
	}
}

// The one-shot pod the docs use to run `imdsguard detach` on each node must
// be a valid Pod with what detach needs: the host's network namespace (the
// nftables table), the host's bpffs (the pins) and the privileges.
func TestInstallDocOneShotPod(t *testing.T) {
	doc, err := os.ReadFile(installDoc)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)--overrides='(\{.*?\n\s*\})'`).FindSubmatch(doc)
	if m == nil {
		t.Fatalf("%s: no kubectl run --overrides='{…}' found", installDoc)
	}
	// Shell splices such as '"$node"' become plain strings.
	js := regexp.MustCompile(`'"\$([a-z_]+)"'`).ReplaceAll(m[1], []byte("x-$1"))
	var pod corev1.Pod
	if err := decodeStrict(js, &pod); err != nil {
		t.Fatalf("the one-shot pod does not decode strictly: %v\n%s", err, js)
	}
	spec := &pod.Spec
	if spec.NodeName != "x-node" || !spec.HostNetwork || len(spec.Containers) != 1 {
		t.Fatalf("one-shot pod: nodeName %q, hostNetwork %v, %d containers", spec.NodeName, spec.HostNetwork, len(spec.Containers))
	}
	c := &spec.Containers[0]
	if !slices.Equal(c.Args, []string{"x-cmd"}) || len(c.Command) != 0 {
		t.Errorf("one-shot pod args %q command %q: want the command word as the only arg", c.Args, c.Command)
	}
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("one-shot pod is not privileged: detach needs CAP_BPF and CAP_NET_ADMIN")
	}
	mnt := mountOf(c, "/sys/fs/bpf/imdsguard")
	if mnt == nil || mnt.MountPath != "/sys/fs/bpf" {
		t.Fatal("one-shot pod does not mount the host's bpffs at /sys/fs/bpf")
	}
	if v := volume(spec, mnt.Name); v == nil || v.HostPath == nil || v.HostPath.Path != "/sys/fs/bpf" {
		t.Errorf("one-shot pod's %s volume is not the hostPath /sys/fs/bpf", mnt.Name)
	}
	tolerateAll := false
	for _, tol := range spec.Tolerations {
		tolerateAll = tolerateAll || tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
	}
	if !tolerateAll {
		t.Error("one-shot pod does not tolerate every taint: tainted nodes would keep their enforcement")
	}
}
