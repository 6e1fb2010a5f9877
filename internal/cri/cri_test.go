package cri

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// FakeRuntime answers the two CRI calls the client makes.
type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	calls atomic.Int32 // a slow runtime's handlers run while the next call is made
}

func (f *fakeRuntime) ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f.calls.Add(1)
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
	if n := fake.calls.Load(); n != 1 {
		t.Fatalf("%d listings, want 1", n)
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

const (
	imgA = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	imgB = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	imgC = "sha256:00000000000000000000000000000000000000000000000000000000000000cc"
	imgD = "sha256:00000000000000000000000000000000000000000000000000000000000000dd"
)

// kubeletRuntime lists containers as the kubelet makes them: by image id,
// with the pod's spec's image beside it on newer kubelets, and an image
// service that knows the images' tags.
type kubeletRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer
	listings, imageListings int
}

func (k *kubeletRuntime) ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	k.listings++
	ct := func(id string, spec *runtimeapi.ImageSpec, labels map[string]string) *runtimeapi.Container {
		return &runtimeapi.Container{Id: id, PodSandboxId: "pod-s", Image: spec, ImageRef: spec.GetImage(), Labels: labels,
			Metadata: &runtimeapi.ContainerMetadata{Name: id}}
	}
	uid := map[string]string{"io.kubernetes.pod.uid": "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"}
	return &runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{
		ct("spec", &runtimeapi.ImageSpec{Image: imgA, UserSpecifiedImage: "nginx:1.27"}, uid),
		ct("named", &runtimeapi.ImageSpec{Image: "imdsguard.test/lab:1"}, nil),
		ct("tagged", &runtimeapi.ImageSpec{Image: imgB}, nil),
		ct("digested", &runtimeapi.ImageSpec{Image: imgC}, nil),
		ct("unlisted", &runtimeapi.ImageSpec{Image: imgD}, nil),
	}}, nil
}

func (k *kubeletRuntime) ListPodSandbox(context.Context, *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	return &runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{
		{Id: "pod-s", Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-1", Namespace: "shop", Uid: "9f8e7d6c-5b4a-3921-8f7e-6d5c4b3a2910"}},
	}}, nil
}

func (k *kubeletRuntime) ListImages(context.Context, *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	k.imageListings++
	return &runtimeapi.ListImagesResponse{Images: []*runtimeapi.Image{
		{Id: imgA, RepoTags: []string{"docker.io/library/nginx:1.27"}},
		{Id: imgB, RepoTags: []string{"docker.io/library/busybox:1.36", "busybox:latest"}},
		{Id: imgC, RepoDigests: []string{"registry.example/app@" + imgC}},
	}}, nil
}

func serve(t *testing.T, impl *kubeletRuntime) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cri.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, impl)
	runtimeapi.RegisterImageServiceServer(srv, impl)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	c, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The image is the name a person reads: the pod spec's, the one the
// container was made with unless it is an id, else the image's tag or
// digested reference, else the id; the pod uid is the kubelet's label's or
// the sandbox's.
func TestImagesAndPodUIDs(t *testing.T) {
	k := &kubeletRuntime{}
	c := serve(t, k)
	for id, want := range map[string]Names{
		"spec":     {Pod: "web-1", Namespace: "shop", Container: "spec", PodUID: "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901", Image: "nginx:1.27"},
		"named":    {Pod: "web-1", Namespace: "shop", Container: "named", PodUID: "9f8e7d6c-5b4a-3921-8f7e-6d5c4b3a2910", Image: "imdsguard.test/lab:1"},
		"tagged":   {Pod: "web-1", Namespace: "shop", Container: "tagged", PodUID: "9f8e7d6c-5b4a-3921-8f7e-6d5c4b3a2910", Image: "docker.io/library/busybox:1.36"},
		"digested": {Pod: "web-1", Namespace: "shop", Container: "digested", PodUID: "9f8e7d6c-5b4a-3921-8f7e-6d5c4b3a2910", Image: "registry.example/app@" + imgC},
		"unlisted": {Pod: "web-1", Namespace: "shop", Container: "unlisted", PodUID: "9f8e7d6c-5b4a-3921-8f7e-6d5c4b3a2910", Image: imgD},
	} {
		if n, ok := c.Lookup(id); !ok || n != want {
			t.Errorf("Lookup(%s) = %+v, %v; want %+v", id, n, ok, want)
		}
	}
	// images are named once per container, not at every listing
	c.refreshed = time.Time{}
	c.Lookup("new")
	if k.listings != 2 || k.imageListings != 1 {
		t.Errorf("%d listings, %d image listings; want 2 and 1", k.listings, k.imageListings)
	}
}

// A pod's sandbox is no container with names; asking for one does not list
// the runtime anew (the controller asks again at every rescan until a
// cgroup has names).
func TestSandboxesAreNotLookedUpAgain(t *testing.T) {
	k := &kubeletRuntime{}
	c := serve(t, k)
	c.Warm()
	c.refreshed = time.Time{}
	if _, ok := c.Lookup("pod-s"); ok {
		t.Error("the sandbox has names")
	}
	if k.listings != 1 {
		t.Errorf("%d listings, want 1: a sandbox id listed the runtime again", k.listings)
	}
}

// lateRuntime lists one container, then knows another (made since) when
// asked about it alone.
type lateRuntime struct {
	kubeletRuntime
	statuses int
}

func (l *lateRuntime) ContainerStatus(_ context.Context, r *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	l.statuses++
	if r.GetContainerId() != "late" {
		return nil, status.Error(codes.NotFound, "no such container")
	}
	return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{
		Id: "late", Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, Image: &runtimeapi.ImageSpec{Image: "imdsguard.test/lab:1"},
		Labels: map[string]string{"io.kubernetes.pod.name": "web-2", "io.kubernetes.pod.namespace": "shop",
			"io.kubernetes.container.name": "app", "io.kubernetes.pod.uid": "9f8e7d6c-5b4a-3921-8f7e-6d5c4b3a2910"},
	}}, nil
}

// A container made just after a listing is named at its first lookup, by
// asking the runtime about it alone; an id the runtime does not know is
// asked about twice per listing, and only so many lookups are made.
func TestAContainerMadeAfterAListingIsAskedAbout(t *testing.T) {
	l := &lateRuntime{}
	sock := filepath.Join(t.TempDir(), "cri.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, l)
	runtimeapi.RegisterImageServiceServer(srv, l)
	go srv.Serve(ln)
	defer srv.Stop()
	c, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Lookup("spec") // the listing
	want := Names{Pod: "web-2", Namespace: "shop", Container: "app", PodUID: "9f8e7d6c-5b4a-3921-8f7e-6d5c4b3a2910", Image: "imdsguard.test/lab:1"}
	if n, ok := c.Lookup("late"); !ok || n != want {
		t.Fatalf("late: %+v %v, want %+v", n, ok, want)
	}
	for range 3 {
		c.Lookup("unknown")
	}
	for i := range askedPerListing + 10 {
		c.Lookup(fmt.Sprintf("flood-%d", i))
	}
	if l.listings != 1 || l.statuses != askedPerListing {
		t.Errorf("%d listings, %d containers asked about; want 1 and %d", l.listings, l.statuses, askedPerListing)
	}
}
