package kubenode

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/imdsguard/imdsguard/test/lab"
)

// PodSpec is what the kubelet would ask of the runtime for a pod.
type PodSpec struct {
	Name, Namespace string
	HostNetwork     bool   // the sandbox shares the node's network namespace
	UID             string // "" for a new one (NewUID)
}

// Pod is a running pod sandbox.
type Pod struct {
	ID, UID         string
	Name, Namespace string
	IP              string // "" for a host-network pod
	// Cgroup is the pod's cgroup in the cgroup v2 mount; Parent the same as
	// the kubelet names it (its cgroup_parent).
	Cgroup, Parent string
	config         *runtimeapi.PodSandboxConfig
	attempts       map[string]uint32 // containers started by name, as the kubelet counts restarts
}

// RunPod starts a pod sandbox with the kubelet's labels and its cgroupfs
// parent for a BestEffort pod (/kubepods/besteffort/pod<uid>).
func (n *Node) RunPod(spec PodSpec) *Pod {
	n.t.Helper()
	uid := spec.UID
	if uid == "" {
		uid = NewUID()
	}
	p := &Pod{UID: uid, Name: spec.Name, Namespace: spec.Namespace, attempts: map[string]uint32{}}
	p.Parent = n.podsParent + "/besteffort/pod" + uid
	p.Cgroup = filepath.Join(n.PodsCgroup, "besteffort", "pod"+uid)
	netMode := runtimeapi.NamespaceMode_POD
	if spec.HostNetwork {
		netMode = runtimeapi.NamespaceMode_NODE
	}
	p.config = &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: spec.Name, Namespace: spec.Namespace, Uid: uid},
		LogDirectory: filepath.Join(n.dir, "pods", spec.Namespace+"_"+spec.Name+"_"+uid),
		Labels: map[string]string{
			"io.kubernetes.pod.name": spec.Name, "io.kubernetes.pod.namespace": spec.Namespace, "io.kubernetes.pod.uid": uid,
		},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: p.Parent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: netMode, Pid: runtimeapi.NamespaceMode_POD},
			},
		},
	}
	if !spec.HostNetwork {
		p.config.Hostname = spec.Name // a host-network pod keeps the node's, as the kubelet does
	}
	if err := os.MkdirAll(p.config.LogDirectory, 0o755); err != nil {
		n.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), lab.Patience(60*time.Second))
	defer cancel()
	resp, err := n.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: p.config})
	if err != nil {
		n.t.Fatalf("kubenode: run pod %s/%s: %v\ncontainerd log:\n%s", spec.Namespace, spec.Name, err, lastLines(n.Log(), 30))
	}
	p.ID = resp.PodSandboxId
	n.mu.Lock()
	n.pods = append(n.pods, p.ID)
	n.mu.Unlock()
	st, err := n.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.ID})
	if err != nil {
		n.t.Fatalf("kubenode: pod %s status: %v", spec.Name, err)
	}
	if !spec.HostNetwork {
		p.IP = st.GetStatus().GetNetwork().GetIp()
	}
	return p
}

// NewUID is a random pod uid in the API server's form.
func NewUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Container is a started container.
type Container struct {
	ID, Name string
	LogPath  string
	node     *Node
}

// Start creates and starts a container named name in pod, running argv
// from the node's image.
func (n *Node) Start(p *Pod, name string, argv ...string) *Container {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), lab.Patience(60*time.Second))
	defer cancel()
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name, Attempt: p.attempts[name]},
		Image:    &runtimeapi.ImageSpec{Image: ImageName},
		Command:  argv,
		LogPath:  fmt.Sprintf("%s_%d.log", name, p.attempts[name]),
		Labels: map[string]string{
			"io.kubernetes.pod.name": p.Name, "io.kubernetes.pod.namespace": p.Namespace,
			"io.kubernetes.pod.uid": p.UID, "io.kubernetes.container.name": name,
		},
	}
	p.attempts[name]++ // a name is the runtime's once per attempt
	created, err := n.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: p.ID, Config: cfg, SandboxConfig: p.config})
	if err != nil {
		n.t.Fatalf("kubenode: create container %s in %s: %v", name, p.Name, err)
	}
	if _, err := n.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		n.t.Fatalf("kubenode: start container %s in %s: %v\ncontainerd log:\n%s", name, p.Name, err, lastLines(n.Log(), 30))
	}
	return &Container{ID: created.ContainerId, Name: name, LogPath: filepath.Join(p.config.LogDirectory, cfg.LogPath), node: n}
}

// Run starts a container in pod and waits for it to exit; it returns what
// the container wrote to its standard output and its exit code.
func (n *Node) Run(p *Pod, name string, argv ...string) (stdout string, exitCode int32) {
	n.t.Helper()
	c := n.Start(p, name, argv...)
	return c.Wait()
}

// Wait waits for the container to exit and returns its output and code.
func (c *Container) Wait() (stdout string, exitCode int32) {
	t := c.node.t
	t.Helper()
	deadline := time.Now().Add(lab.Patience(60 * time.Second))
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := c.node.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.ID})
		cancel()
		if err != nil {
			t.Fatalf("kubenode: container %s status: %v", c.Name, err)
		}
		if st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
			return c.Stdout(), st.GetStatus().GetExitCode()
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubenode: container %s still running after %s; output:\n%s", c.Name, lab.Patience(60*time.Second), c.Stdout())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stdout reads the container's standard output from its CRI log file
// ("<time> stdout F <line>" lines, P for a partial one).
func (c *Container) Stdout() string {
	f, err := os.Open(c.LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	var out strings.Builder
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		fields := strings.SplitN(sc.Text(), " ", 4)
		if len(fields) < 4 || fields[1] != "stdout" {
			continue
		}
		out.WriteString(fields[3])
		if fields[2] == "F" {
			out.WriteString("\n")
		}
	}
	return out.String()
}
