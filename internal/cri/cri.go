// Package cri names the Kubernetes pod, namespace and container of a
// container id by asking the container runtime over its CRI socket
// (containerd, CRI-O). Lookups are cached and refreshed at most every two
// seconds with a short timeout, so events are never held up for long and a
// runtime that is down only leaves names empty.
package cri

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Names are a container's Kubernetes names.
type Names struct {
	Pod, Namespace, Container string
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

	mu        sync.Mutex
	names     map[string]Names // container id -> names
	refreshed time.Time
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
	return &Client{conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn), names: map[string]Names{}}, nil
}

// Lookup returns the names of a container, listing the runtime's
// containers again on a miss (at most every refreshEvery, timeout 500 ms).
func (c *Client) Lookup(id string) (Names, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.names[id]; ok {
		return n, true
	}
	if time.Since(c.refreshed) < refreshEvery {
		return Names{}, false
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
		for _, p := range ps.GetItems() {
			pods[p.GetId()] = p.GetMetadata()
		}
	}
	names := make(map[string]Names, len(cs.GetContainers()))
	for _, ct := range cs.GetContainers() {
		// The kubelet's labels first; the sandbox's metadata otherwise.
		l := ct.GetLabels()
		n := Names{
			Pod:       l["io.kubernetes.pod.name"],
			Namespace: l["io.kubernetes.pod.namespace"],
			Container: l["io.kubernetes.container.name"],
		}
		if md := pods[ct.GetPodSandboxId()]; md != nil {
			if n.Pod == "" {
				n.Pod = md.GetName()
			}
			if n.Namespace == "" {
				n.Namespace = md.GetNamespace()
			}
		}
		if n.Container == "" {
			n.Container = ct.GetMetadata().GetName()
		}
		names[ct.GetId()] = n
	}
	c.names = names
	return nil
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
