// Package cri names the Kubernetes pod, namespace and container of a
// container id, and its image, by asking the container runtime over its CRI
// socket (containerd, CRI-O). Lookups are cached and refreshed at most every
// two seconds with a short timeout (in between, a container not in the cache
// is asked about alone, a bounded number of times), so events are never held
// up for long and a runtime that is down only leaves names empty.
package cri

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Names are a container's Kubernetes names, as the kubelet gave them to the
// runtime (from the API server), and its image.
type Names struct {
	Pod, Namespace, Container string
	// PodUID is the pod's uid as the runtime has it ("" if it has none),
	// to check against the uid in the container's cgroup path.
	PodUID string
	// Image is the image the container runs, by the name a person reads
	// ("imdsguard.test/lab:1", "docker.io/library/nginx:1.27"): the one
	// the pod's spec gave, which the kubelet passes on
	// (user_specified_image); else the name the container was created
	// with, unless that is an image id ("sha256:…", what the kubelet
	// passes); else the image's first tag, then its first digested
	// reference, from the runtime's image list; else the id itself.
	Image string
}

// DefaultSockets are the CRI sockets looked for when none is given.
func DefaultSockets() []string {
	return []string{"/run/containerd/containerd.sock", "/var/run/crio/crio.sock"}
}

// FindSocket returns the first default socket that exists, or "".
func FindSocket() string {
	for _, p := range DefaultSockets() {
		if st, err := os.Stat(p); err == nil && st.Mode()&os.ModeSocket != 0 {
			return p
		}
	}
	return ""
}

// Client looks names up.
type Client struct {
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient
	img  runtimeapi.ImageServiceClient

	mu    sync.Mutex
	names map[string]Names // container id -> names
	// sandboxes are the pods' sandbox ids: they are no container of a pod's
	// spec and have no names, and a lookup of one lists nothing anew.
	sandboxes map[string]bool
	refreshed time.Time
	// asked counts the lookups of single containers since the last
	// listing, by id.
	asked map[string]int
	calls int
}

// refreshEvery bounds how often a miss triggers a listing of the runtime.
const refreshEvery = 2 * time.Second

// Dial prepares a client for the CRI socket at path. It does not connect
// until the first lookup.
func Dial(path string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("cri socket %s: %w", path, err)
	}
	return &Client{conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn), img: runtimeapi.NewImageServiceClient(conn),
		names: map[string]Names{}, sandboxes: map[string]bool{}, asked: map[string]int{}}, nil
}

// Lookup returns the names of a container, listing the runtime's
// containers again on a miss (at most every refreshEvery, timeout 500 ms),
// or, between two listings, asking the runtime about that one container.
func (c *Client) Lookup(id string) (Names, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.names[id]; ok {
		return n, true
	}
	if c.sandboxes[id] {
		return Names{}, false
	}
	if time.Since(c.refreshed) < refreshEvery {
		return c.lookupOne(id)
	}
	c.refreshed = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := c.refresh(ctx); err != nil {
		return Names{}, false
	}
	n, ok := c.names[id]
	return n, ok
}

// askedPerListing bounds the lookups of single containers between two
// listings, askedPerID those of one container (CRI-O makes a container's
// cgroup before it can answer for it).
const (
	askedPerListing = 32
	askedPerID      = 2
)

// lookupOne asks the runtime about one container between two listings: a
// container's cgroup appears as it starts, so one made just after a listing
// gets its names (and its rules by name) at its first lookup rather than up
// to refreshEvery later. An id is asked about at most askedPerID times per
// listing, and all of them at most askedPerListing times, so misses (a
// flood of events from containers the runtime does not know among them)
// cost the runtime at most about as much as a listing.
func (c *Client) lookupOne(id string) (Names, bool) {
	if c.asked[id] >= askedPerID || c.calls >= askedPerListing {
		return Names{}, false
	}
	c.asked[id]++
	c.calls++
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	st, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil || st.GetStatus().GetId() != id {
		return Names{}, false
	}
	ct := st.GetStatus()
	// the kubelet's labels only: the status has no sandbox to fall back to
	n := namesOf(&runtimeapi.Container{Id: id, Metadata: ct.GetMetadata(), Labels: ct.GetLabels()}, nil)
	n.Image = readableImage(ct.GetImage()) // else named at the next listing
	c.names[id] = n
	return n, true
}

// warmTimeout bounds the first listing, made at start: a runtime (or a
// machine) slower than a lookup's 500 ms still fills the cache for the
// containers running then.
const warmTimeout = 3 * time.Second

// Warm lists the runtime's containers once, so that the first events of
// containers already running find their names. It leaves the refresh
// clock alone: a container made just after is still looked up at its
// first miss.
func (c *Client) Warm() {
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), warmTimeout)
	defer cancel()
	c.refresh(ctx) // a runtime that is down leaves the cache empty, as a miss would
}

func (c *Client) refresh(ctx context.Context) error {
	cs, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return fmt.Errorf("listing containers: %w", err)
	}
	pods := map[string]*runtimeapi.PodSandboxMetadata{}
	if ps, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
		sandboxes := make(map[string]bool, len(ps.GetItems()))
		for _, p := range ps.GetItems() {
			pods[p.GetId()] = p.GetMetadata()
			sandboxes[p.GetId()] = true
		}
		c.sandboxes = sandboxes
	}
	names := make(map[string]Names, len(cs.GetContainers()))
	var unnamed []*runtimeapi.Container
	for _, ct := range cs.GetContainers() {
		n := namesOf(ct, pods[ct.GetPodSandboxId()])
		// a container's image never changes: named once, kept
		if old, ok := c.names[ct.GetId()]; ok && old.Image != "" {
			n.Image = old.Image
		} else if n.Image = readableImage(ct.GetImage()); n.Image == "" {
			unnamed = append(unnamed, ct)
		}
		names[ct.GetId()] = n
	}
	if len(unnamed) > 0 {
		c.nameImages(ctx, unnamed, names)
	}
	c.names, c.asked, c.calls = names, map[string]int{}, 0
	return nil
}

// namesOf reads a container's names: the kubelet's labels first, the
// sandbox's metadata otherwise.
func namesOf(ct *runtimeapi.Container, md *runtimeapi.PodSandboxMetadata) Names {
	l := ct.GetLabels()
	n := Names{
		Pod:       l["io.kubernetes.pod.name"],
		Namespace: l["io.kubernetes.pod.namespace"],
		Container: l["io.kubernetes.container.name"],
		PodUID:    l["io.kubernetes.pod.uid"],
	}
	if md != nil {
		n.Pod = cmp.Or(n.Pod, md.GetName())
		n.Namespace = cmp.Or(n.Namespace, md.GetNamespace())
		n.PodUID = cmp.Or(n.PodUID, md.GetUid())
	}
	n.Container = cmp.Or(n.Container, ct.GetMetadata().GetName())
	return n
}

// readableImage is the image a container was created with, if it is a name
// rather than an image id.
func readableImage(spec *runtimeapi.ImageSpec) string {
	if u := spec.GetUserSpecifiedImage(); u != "" {
		return u
	}
	if im := spec.GetImage(); !isImageID(im) {
		return im
	}
	return ""
}

// isImageID reports whether ref is an image id ("sha256:<hex>", or the hex
// alone) or empty: nothing a person reads an image by.
func isImageID(ref string) bool {
	hex := strings.TrimPrefix(ref, "sha256:")
	return len(hex) == 64 && strings.Trim(hex, "0123456789abcdef") == "" || ref == ""
}

// nameImages names the images of containers created by image id, from the
// runtime's image list: the image's first tag, else its first digested
// reference, else (no list, or no such image) the id the container has.
func (c *Client) nameImages(ctx context.Context, cts []*runtimeapi.Container, names map[string]Names) {
	byID := map[string]string{}
	if list, err := c.img.ListImages(ctx, &runtimeapi.ListImagesRequest{}); err == nil {
		for _, im := range list.GetImages() {
			if ref := cmp.Or(first(im.GetRepoTags()), first(im.GetRepoDigests())); ref != "" {
				byID[im.GetId()] = ref
			}
		}
	}
	for _, ct := range cts {
		n := names[ct.GetId()]
		id := cmp.Or(ct.GetImage().GetImage(), ct.GetImageId(), ct.GetImageRef())
		n.Image = cmp.Or(byID[id], byID[ct.GetImageId()], byID[ct.GetImageRef()], id)
		names[ct.GetId()] = n
	}
}

func first(list []string) string {
	if len(list) == 0 {
		return ""
	}
	return list[0]
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Auto finds a default socket when a lookup first needs one, and keeps
// looking (at most every refreshEvery) until one appears: under systemd the
// daemon starts before the container runtime it names pods for.
type Auto struct {
	find func() string

	mu    sync.Mutex
	c     *Client
	tried time.Time
}

// NewAuto returns an Auto over the default sockets.
func NewAuto() *Auto { return &Auto{find: FindSocket} }

// Lookup is Client.Lookup on the runtime found, or a miss while there is
// none.
func (a *Auto) Lookup(id string) (Names, bool) {
	a.mu.Lock()
	if a.c == nil && time.Since(a.tried) >= refreshEvery {
		a.tried = time.Now()
		if p := a.find(); p != "" {
			if c, err := Dial(p); err == nil {
				a.c = c
			}
		}
	}
	c := a.c
	a.mu.Unlock()
	if c == nil {
		return Names{}, false
	}
	return c.Lookup(id)
}

// Warm is Client.Warm on the runtime found, if there is one now.
func (a *Auto) Warm() {
	a.mu.Lock()
	if a.c == nil {
		a.tried = time.Now()
		if p := a.find(); p != "" {
			if c, err := Dial(p); err == nil {
				a.c = c
			}
		}
	}
	c := a.c
	a.mu.Unlock()
	if c != nil {
		c.Warm()
	}
}

// Close closes the client, if a runtime was found.
func (a *Auto) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.c == nil {
		return nil
	}
	return a.c.Close()
}
