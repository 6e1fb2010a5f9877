package integration

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// comm and path come from the workload: quotes, newlines, control bytes and
// invalid UTF-8 in them are escaped, so no event can forge another.
func TestWorkloadChosenFieldsCannotForgeEvents(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l)

	// 15 bytes, the most a comm holds: a quote, a newline, a control byte,
	// invalid UTF-8 and the start of a forged object
	comm := "a\"\n\x01\xff{\"action\":"
	path := `/latest/meta-data/"},{"action":"allow"}\`
	r := runClient(t, l, lab.Node, "", "-mode", "http", "-addr", imdsAddr, "-path", path,
		"-comm", `a\"\n\x01\xff{\"action\":`)
	if !strings.Contains(r.Error, "EACCES") {
		t.Fatalf("client: %+v", r)
	}
	d.WaitEvent("the request", func(e event) bool { return e.Kind == "request" && e.PID == r.PID })

	var mine []map[string]any
	for _, line := range d.Lines() {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("a line is not one JSON object: %v: %q", err, line)
		}
		if pid, _ := ev["pid"].(float64); int(pid) == r.PID {
			mine = append(mine, ev)
		}
	}
	if len(mine) != 2 { // the connect and the request, nothing forged
		t.Fatalf("%d events for the client, want 2: %v", len(mine), mine)
	}
	wantComm := strings.ToValidUTF8(comm[:15], "\ufffd")
	for _, ev := range mine {
		if ev["comm"] != wantComm {
			t.Errorf("comm %q, want %q", ev["comm"], wantComm)
		}
		if ev["kind"] == "request" && (ev["path"] != path || ev["action"] != "deny") {
			t.Errorf("request event path %q action %v, want %q deny", ev["path"], ev["action"], path)
		}
	}
}

// Events name the container and pod a process runs in, from its cgroup
// (here a kubelet-shaped path, systemd driver, containerd).
func TestEventsNameContainerAndPod(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	const podUID = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"
	const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	dir := l.Cgroup
	for _, seg := range []string{"kubepods.slice", "kubepods-besteffort.slice",
		"kubepods-besteffort-pod" + strings.ReplaceAll(podUID, "-", "_") + ".slice", "cri-containerd-" + id + ".scope"} {
		dir = filepath.Join(dir, seg)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		d := dir
		t.Cleanup(func() { os.Remove(d) })
	}
	sock := fakeCRI(t, map[string][3]string{id: {"web-1", "shop", "app"}})
	d := startDaemon(t, l, "--cri-socket", sock, "--instance-id", "auto")
	// the client stays until its event is read, so /proc still has it
	// (exe and cmdline come from there), however slow the machine
	wait, release := startWaitingClientIn(t, l, lab.Node, dir, "-mode", "connect", "-addr", imdsAddr)
	ev := d.WaitEvent("the connect", func(e event) bool { return e.Kind == "connect" && e.ContainerID == id })
	release()
	if r := wait(); ev.PID != r.PID {
		t.Errorf("event pid %d, want the client's %d", ev.PID, r.PID)
	}
	if ev.ContainerID != id || ev.Runtime != "containerd" || ev.PodUID != podUID || ev.Hostname == "" {
		t.Fatalf("event %+v, want container %s (containerd) in pod %s, and a hostname", ev, id, podUID)
	}
	if ev.Pod != "web-1" || ev.Namespace != "shop" || ev.Container != "app" {
		t.Errorf("CRI names: pod %q namespace %q container %q, want web-1 shop app", ev.Pod, ev.Namespace, ev.Container)
	}
	if ev.InstanceID != imdsserver.DefaultInstanceID {
		t.Errorf("instance_id %q, want %q (read over IMDSv2 from the host namespace)", ev.InstanceID, imdsserver.DefaultInstanceID)
	}
	if !strings.HasSuffix(ev.Exe, "/labclient") || !strings.Contains(ev.Cmdline, "-mode connect") {
		t.Errorf("exe %q cmdline %q", ev.Exe, ev.Cmdline)
	}
}

type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	names map[string][3]string
}

func (f *fakeRuntime) ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	var cs []*runtimeapi.Container
	for id, n := range f.names {
		cs = append(cs, &runtimeapi.Container{Id: id, Labels: map[string]string{
			"io.kubernetes.pod.name": n[0], "io.kubernetes.pod.namespace": n[1], "io.kubernetes.container.name": n[2]}})
	}
	return &runtimeapi.ListContainersResponse{Containers: cs}, nil
}

// fakeCRI serves a container runtime's CRI socket with the given
// container id -> (pod, namespace, container) names.
func fakeCRI(t testing.TB, names map[string][3]string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cri.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, &fakeRuntime{names: names})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return sock
}

// Repeats of the same event from the same workload are folded into one
// event with a count; the first is sent at once; the kernel totals stay
// exact.
func TestRepeatsAreFolded(t *testing.T) {
	l := lab.New(t)
	startIMDS(t, l, imdsserver.Options{})
	d := startDaemon(t, l, "--fold-window", "2s")
	// five refusals from one process, well inside one window (five curls
	// can take longer than the window under emulation)
	script := `
import socket, sys
for _ in range(5):
    s = socket.create_connection((sys.argv[1], 80), timeout=5)
    try:
        s.sendall(b"GET ` + credPath + ` HTTP/1.1\r\nHost: x\r\n\r\n")
        sys.exit("sent")
    except PermissionError:
        pass
    s.close()
`
	if _, stderr, code, _ := runInLab(t, l, lab.Node, nil, "python3", "-c", script, lab.IMDSv4); code != 0 {
		t.Fatalf("python3 exit %d: %s, want five refusals", code, stderr)
	}
	first := d.WaitEvent("the first refusal", func(e event) bool { return e.Kind == "request" && e.Comm == "python3" })
	if first.Count != 1 {
		t.Fatalf("first event count %d, want 1", first.Count)
	}
	folded := d.WaitEvent("the folded repeats", func(e event) bool { return e.Kind == "request" && e.Comm == "python3" && e.Count > 1 })
	if folded.Count != 4 {
		t.Fatalf("folded count %d, want 4", folded.Count)
	}
	n := 0
	for _, e := range d.Events() {
		if e.Kind == "request" && e.Comm == "python3" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d request events for 5 identical refusals, want 2", n)
	}
	if code := d.Stop(); code != 0 {
		t.Fatal(code)
	}
	if exit := d.WaitLog("detached; exiting", time.Second); !strings.Contains(exit, `"request_deny_imdsv1_no_token":5`) {
		t.Fatalf("kernel totals not exact: %s", exit)
	}
}
