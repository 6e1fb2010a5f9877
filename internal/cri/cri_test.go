package cri

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// FakeRuntime answers the two CRI calls the client makes.
type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	calls int
}

func (f *fakeRuntime) ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f.calls++
	return &runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{
		{Id: "aaa", PodSandboxId: "s1", Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Labels: map[string]string{"io.kubernetes.pod.name": "web-1", "io.kubernetes.pod.namespace": "shop", "io.kubernetes.container.name": "app"}},
		{Id: "bbb", PodSandboxId: "s2", Metadata: &runtimeapi.ContainerMetadata{Name: "sidecar"}},
	}}, nil
}

func (f *fakeRuntime) ListPodSandbox(context.Context, *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	return &runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{
		{Id: "s2", Metadata: &runtimeapi.PodSandboxMetadata{Name: "job-7", Namespace: "batch"}},
	}}, nil
}

func TestLookup(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cri.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	fake := &fakeRuntime{}
	runtimeapi.RegisterRuntimeServiceServer(srv, fake)
	go srv.Serve(ln)
	defer srv.Stop()

	c, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n, ok := c.Lookup("aaa"); !ok || n != (Names{Pod: "web-1", Namespace: "shop", Container: "app"}) {
		t.Fatalf("aaa: %+v %v", n, ok)
	}
	if n, ok := c.Lookup("bbb"); !ok || n != (Names{Pod: "job-7", Namespace: "batch", Container: "sidecar"}) {
		t.Fatalf("bbb (names from the sandbox): %+v %v", n, ok)
	}
	// a miss right after a refresh does not list again (rate limited)
	if _, ok := c.Lookup("zzz"); ok {
		t.Fatal("zzz found")
	}
	if fake.calls != 1 {
		t.Fatalf("%d listings, want 1", fake.calls)
	}
	// a runtime that is gone leaves names empty, quickly
	srv.Stop()
	c.refreshed = time.Time{}
	start := time.Now()
	if _, ok := c.Lookup("yyy"); ok || time.Since(start) > time.Second {
		t.Fatalf("lookup against a dead runtime: ok=%v after %s", ok, time.Since(start))
	}
}

// A runtime that starts after the daemon (systemd orders imdsguard first)
// is found at a later lookup.
func TestAutoFindsARuntimeThatStartsLater(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cri.sock")
	present := false
	a := &Auto{find: func() string {
		if present {
			return sock
		}
		return ""
	}}
	defer a.Close()
	if _, ok := a.Lookup("aaa"); ok {
		t.Fatal("found names with no runtime")
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, &fakeRuntime{})
	go srv.Serve(ln)
	defer srv.Stop()
	present = true
	a.tried = time.Time{} // skip the wait between searches
	if n, ok := a.Lookup("aaa"); !ok || n.Pod != "web-1" {
		t.Fatalf("after the runtime started: %+v %v", n, ok)
	}
}

// slowRuntime answers after a delay longer than a lookup's timeout, as a
// loaded runtime (or an emulated machine) may.
type slowRuntime struct{ fakeRuntime }

func (s *slowRuntime) ListContainers(ctx context.Context, r *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	time.Sleep(800 * time.Millisecond)
	return s.fakeRuntime.ListContainers(ctx, r)
}

// Warm fills the cache at start with a longer timeout than a lookup's, so
// the first event of a running container has its names even from a slow
// runtime; a container made later is still listed at its first miss.
func TestWarmFillsTheCacheFromASlowRuntime(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cri.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	slow := &slowRuntime{}
	runtimeapi.RegisterRuntimeServiceServer(srv, slow)
	go srv.Serve(ln)
	defer srv.Stop()

	cold, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cold.Close()
	if _, ok := cold.Lookup("aaa"); ok {
		t.Fatal("a lookup got an answer slower than its timeout: the test shows nothing")
	}

	c, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Warm()
	if n, ok := c.Lookup("aaa"); !ok || n.Pod != "web-1" {
		t.Fatalf("after Warm, aaa: %+v %v", n, ok)
	}
	if !c.refreshed.IsZero() {
		t.Fatal("Warm set the refresh clock: a container made just after start would wait for its names")
	}
}
