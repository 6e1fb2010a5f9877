// Package kubenode runs a real Kubernetes node's container runtime in the
// test lab: Debian's containerd (1.6, CRI plugin) and runc, with the CNI
// bridge and host-local plugins, driven over CRI the way the kubelet drives
// it (kubelet cgroup parents and pod labels), so that imdsguard meets the
// pods, cgroups and names a real runtime makes.
//
// containerd runs in the lab's node network namespace (pods route only to
// the lab's IMDS), in a cgroup of the lab, in a PID namespace of its own
// (so that stopping the node ends every shim and container it started, and
// nothing else) and in a private mount namespace, with a tmpfs of its own
// on /run/containerd and /var/lib/cni; every other path it writes is under
// the test's temporary directory. Pods' cgroups are under the lab's. On a
// hybrid host (cgroup v1 controllers, v2 without them) runc makes them in
// every v1 hierarchy and joins the v2 one too, as on such a node; the node
// removes the v1 ones it leaves. Images cannot be pulled: the node imports
// one made here from busybox and the test's clients, also used as the
// sandbox image.
package kubenode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/imdsguard/imdsguard/test/lab"
)

// tools are the programs and plugins the node needs, from Debian's
// containerd, runc, containernetworking-plugins, busybox-static and
// util-linux packages.
var tools = []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "unshare", "nsenter",
	cniBinDir + "/bridge", cniBinDir + "/host-local", cniBinDir + "/loopback", "/bin/busybox"}

// Node is a running containerd with its CRI plugin.
type Node struct {
	t      testing.TB
	lab    *lab.Lab
	dir    string // configuration, state, sockets, logs
	Socket string // the CRI socket, for imdsguard's --cri-socket

	// PodsCgroup is the kubelet's /kubepods under the lab's cgroup, as a
	// path in the cgroup v2 mount; podsParent is the same path as the
	// runtime sees it (relative to the mount's root).
	PodsCgroup string
	podsParent string
	labRel     string // the lab's cgroup, relative to the mount's root
	runtimeCg  string // the cgroup containerd runs in

	madeDirs []string // mount points the node made on the machine's file system

	init *exec.Cmd // pid 1 of containerd's PID namespace
	ctrd *exec.Cmd // the containerd started last (a restart starts another)
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient

	mu   sync.Mutex
	pods []string // sandbox ids, removed at cleanup
}

// Start starts a node in l and registers its removal with t.Cleanup. The
// clients are files copied into the node's image (at /<base name>). It
// skips, or fails where privileged tests are required, when a tool is
// missing.
func Start(t testing.TB, l *lab.Lab, clients ...string) *Node {
	t.Helper()
	lab.Require(t, missingTools())
	mount, err := lab.CgroupV2Mount()
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{t: t, lab: l, dir: t.TempDir()}
	n.Socket = socketPath(n.dir)
	n.runtimeCg, _ = l.NewSubCgroup(t, "containerd")
	n.PodsCgroup = filepath.Join(l.Cgroup, "kubepods")
	n.labRel = "/" + strings.TrimPrefix(strings.TrimPrefix(l.Cgroup, mount), "/")
	n.podsParent = n.labRel + "/kubepods"
	if err := writeConfigs(n.dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.close)
	if err := n.startInit(); err != nil {
		t.Fatalf("kubenode: %v", err)
	}
	if err := n.connect(); err != nil {
		t.Fatalf("kubenode: %v\ncontainerd log:\n%s", err, n.Log())
	}
	if err := n.importImage(clients); err != nil {
		t.Fatalf("kubenode: %v", err)
	}
	return n
}

func missingTools() string {
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return fmt.Sprintf("the real-runtime lab needs %s (apt-get install containerd runc containernetworking-plugins busybox-static)",
		strings.Join(missing, ", "))
}

// initScript is pid 1 of the node's PID namespace: it makes the mount
// namespace's view, starts containerd and then only reaps (shims whose
// containerd is gone are re-parented to it).
const initScript = `set -e
for d in /run/containerd /var/lib/cni; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
containerd --config "$NODE_DIR/config.toml" >>"$NODE_DIR/containerd.log" 2>&1 &
set +e
while :; do wait; sleep 1; done
`

func (n *Node) startInit() error {
	for _, d := range []string{"/run/containerd", "/var/lib/cni"} {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			n.madeDirs = append(n.madeDirs, d)
		}
	}
	cmd := n.lab.CommandInCgroup(context.Background(), lab.Node, n.runtimeCg, "unshare",
		"--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc", "--", "/bin/sh", "-c", initScript)
	cmd.Env = append(os.Environ(), "NODE_DIR="+n.dir)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	n.init = cmd
	return nil
}

// connect waits until the CRI plugin answers.
func (n *Node) connect() error {
	conn, err := grpc.NewClient("unix://"+n.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("cri socket: %w", err)
	}
	n.conn, n.rt = conn, runtimeapi.NewRuntimeServiceClient(conn)
	return n.waitReady()
}

func (n *Node) waitReady() error {
	deadline := time.Now().Add(lab.Patience(30 * time.Second))
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := n.rt.Status(ctx, &runtimeapi.StatusRequest{})
		cancel()
		if err == nil && runtimeReady(st) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd's CRI not ready after %s: %v %v", lab.Patience(30*time.Second), err, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func runtimeReady(st *runtimeapi.StatusResponse) bool {
	for _, c := range st.GetStatus().GetConditions() {
		if !c.Status {
			return false
		}
	}
	return true
}

func (n *Node) importImage(clients []string) error {
	files := []imageFile{{"bin/busybox", "/bin/busybox"}}
	for _, c := range clients {
		files = append(files, imageFile{filepath.Base(c), c})
	}
	archive, err := writeImage(n.dir, files)
	if err != nil {
		return err
	}
	out, err := exec.Command("ctr", "--address", n.Socket, "--namespace", "k8s.io", "images", "import", archive).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import the image: %w: %s", err, out)
	}
	return nil
}

// Log is what containerd wrote so far.
func (n *Node) Log() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "containerd.log"))
	return string(b)
}

// Restart stops containerd (by its pid) and starts it again; pods and their
// shims go on running, as on a node whose runtime is upgraded.
func (n *Node) Restart() {
	n.t.Helper()
	pid, err := n.containerdPid()
	if err != nil {
		n.t.Fatalf("kubenode: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		n.t.Fatalf("kubenode: stop containerd: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); processExists(pid); {
		if time.Now().After(deadline) {
			n.t.Fatalf("kubenode: containerd (pid %d) did not stop", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	nsInit, err := n.nsInit()
	if err != nil {
		n.t.Fatalf("kubenode: %v", err)
	}
	cmd := n.lab.CommandInCgroup(context.Background(), lab.Node, n.runtimeCg, "nsenter",
		"--target", strconv.Itoa(nsInit), "--pid", "--mount", "--",
		"/bin/sh", "-c", `exec containerd --config "$0/config.toml" >>"$0/containerd.log" 2>&1`, n.dir)
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("kubenode: start containerd again: %v", err)
	}
	n.ctrd = cmd
	if err := n.waitReady(); err != nil {
		n.t.Fatalf("kubenode: %v\ncontainerd log:\n%s", err, n.Log())
	}
}

// nsInit is the host pid of pid 1 of the node's PID namespace: unshare's
// child (unshare itself stays in the machine's PID namespace).
func (n *Node) nsInit() (int, error) {
	pid := n.init.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0, fmt.Errorf("the node's PID namespace: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		return 0, fmt.Errorf("the node's PID namespace: unshare has children %q, want one", f)
	}
	return strconv.Atoi(f[0])
}

// containerdPid finds the running containerd among the processes of the
// node's cgroup (its PID namespace's init started it, or a restart did).
func (n *Node) containerdPid() (int, error) {
	b, err := os.ReadFile(filepath.Join(n.runtimeCg, "cgroup.procs"))
	if err != nil {
		return 0, fmt.Errorf("containerd's cgroup: %w", err)
	}
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if filepath.Base(exe) == "containerd" {
			return pid, nil
		}
	}
	return 0, errors.New("no containerd in the node's cgroup")
}

func processExists(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// a zombie has ended; only its parent's wait is missing
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(s[i+1:], " Z")
}

// close removes the pods over CRI, as the kubelet would, then ends the
// PID namespace: the kernel kills containerd, the shims and whatever the
// containers still run.
func (n *Node) close() {
	if n.rt != nil {
		n.removePods()
	}
	if n.conn != nil {
		n.conn.Close()
	}
	if n.init == nil || n.init.Process == nil {
		return
	}
	_ = n.init.Process.Kill()
	_ = n.init.Wait()
	if n.ctrd != nil {
		_ = n.ctrd.Process.Kill()
		_ = n.ctrd.Wait()
	}
	if err := removeV1Trees(n.labRel); err != nil {
		n.t.Errorf("kubenode: %v", err)
	}
	for _, d := range n.madeDirs {
		_ = os.Remove(d) // only when empty: another node may use it
	}
	if n.t.Failed() {
		n.t.Logf("kubenode: containerd log:\n%s", lastLines(n.Log(), 40))
	}
}

func (n *Node) removePods() {
	n.mu.Lock()
	pods := append([]string(nil), n.pods...)
	n.mu.Unlock()
	for _, id := range pods {
		ctx, cancel := context.WithTimeout(context.Background(), lab.Patience(20*time.Second))
		if _, err := n.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			n.t.Logf("kubenode: stop pod %s: %v", id, err)
		}
		if _, err := n.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			n.t.Logf("kubenode: remove pod %s: %v", id, err)
		}
		cancel()
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
