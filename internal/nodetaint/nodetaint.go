// Package nodetaint removes a startup taint from the daemon's own node once
// the guard enforces.
//
// Pods scheduled on a node before imdsguard attaches reach IMDS unguarded.
// A node registered with a taint (kubelet --register-with-taints) takes no
// such pods; the DaemonSet tolerates every taint, starts, and lifts the
// taint when it enforces. The package talks to the API server with plain
// net/http and the pod's service account rather than client-go: it needs
// two requests, and client-go would add tens of modules to a security
// daemon's build.
package nodetaint

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Where the kubelet mounts a pod's service account credentials.
const (
	DefaultTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultCAFile    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

const (
	defaultAttempts = 6
	defaultBackoff  = 250 * time.Millisecond
	maxBackoff      = 5 * time.Second
	defaultTimeout  = 10 * time.Second
	// A Node carries its image list and status: large, but bounded.
	maxBody = 16 << 20
)

// Config says how to reach the API server. InCluster fills it from the pod's
// environment; tests point it at their own server and files.
type Config struct {
	// Server is the API server's base URL, e.g. https://10.100.0.1:443.
	Server string
	// TokenFile holds the bearer token. It is read again for every request:
	// projected service account tokens are rotated by the kubelet.
	TokenFile string
	// CAFile holds the PEM certificates that sign the API server's.
	CAFile string
	// Attempts bounds the tries of one RemoveTaint, conflicts and transient
	// failures together (default 6).
	Attempts int
	// Backoff is the first wait after a transient failure; it doubles up to
	// 5s (default 250ms). Conflicts are retried at once.
	Backoff time.Duration
	// Timeout bounds each request (default 10s).
	Timeout time.Duration
	// Log receives what was removed and why a try is repeated (default: none).
	Log *zap.Logger
}

// ConfigFromEnv builds the in-cluster configuration from the variables the
// kubelet sets in every container and the default credential paths.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return Config{}, errors.New("not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set")
	}
	return Config{
		Server:    "https://" + net.JoinHostPort(host, port),
		TokenFile: DefaultTokenFile,
		CAFile:    DefaultCAFile,
	}, nil
}

// InCluster returns a client that uses the pod's service account.
func InCluster(log *zap.Logger) (*Client, error) {
	cfg, err := ConfigFromEnv(os.Getenv)
	if err != nil {
		return nil, err
	}
	cfg.Log = log
	return New(cfg)
}

// Client removes taints from nodes. It holds no state between calls beyond
// its connection pool.
type Client struct {
	server    string
	tokenFile string
	http      *http.Client
	attempts  int
	backoff   time.Duration
	timeout   time.Duration
	log       *zap.Logger
}

// New checks the configuration and reads the CA. The token is read too, so
// that a pod without one (automountServiceAccountToken: false) fails at
// start rather than at the first removal.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("api server address %q: %w", cfg.Server, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		// The bearer token must never travel in clear text.
		return nil, fmt.Errorf("api server address %q: want https://HOST:PORT", cfg.Server)
	}
	if _, err := readToken(cfg.TokenFile); err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("reading the api server's ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("reading the api server's ca: no PEM certificate in %s", cfg.CAFile)
	}
	c := &Client{
		server:    strings.TrimSuffix(u.String(), "/"),
		tokenFile: cfg.TokenFile,
		attempts:  cfg.Attempts,
		backoff:   cfg.Backoff,
		timeout:   cfg.Timeout,
		log:       cfg.Log,
		http: &http.Client{Transport: &http.Transport{
			// The service address is inside the cluster: a node-wide
			// HTTPS_PROXY must not see the service account token.
			Proxy:               nil,
			TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: 10 * time.Second,
			ForceAttemptHTTP2:   true,
			MaxIdleConns:        1,
			IdleConnTimeout:     30 * time.Second,
		}},
	}
	if c.attempts <= 0 {
		c.attempts = defaultAttempts
	}
	if c.backoff <= 0 {
		c.backoff = defaultBackoff
	}
	if c.timeout <= 0 {
		c.timeout = defaultTimeout
	}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	return c, nil
}

// NodeName returns the node name the DaemonSet passes in NODE_NAME from the
// downward API. The host name is no substitute: on many clouds the two
// differ, and the wrong node would keep its taint.
func NodeName(getenv func(string) string) (string, error) {
	if n := getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	return "", errors.New("NODE_NAME is not set (set it from the downward API: fieldRef spec.nodeName)")
}

// RemoveTaint removes from node every taint that spec ("KEY" or
// "KEY:EFFECT") matches, and returns how many it removed. A node without
// such a taint is left alone and counts as success, so the call can be
// repeated. The removal is a JSON patch whose first operation tests that
// the taints are still what was read: a concurrent change (the kubelet, a
// controller, an admin) makes it fail instead of being overwritten, and the
// node is read again.
func (c *Client) RemoveTaint(ctx context.Context, node, spec string) (int, error) {
	s, err := ParseSpec(spec)
	if err != nil {
		return 0, err
	}
	if node == "" {
		return 0, errors.New("removing taint: empty node name")
	}
	wait := c.backoff
	for attempt := 1; ; attempt++ {
		n, err := c.removeOnce(ctx, node, s)
		if err == nil {
			if n > 0 {
				c.log.Info("removed startup taint", zap.String("node", node), zap.String("taint", s.String()), zap.Int("removed", n))
			} else {
				c.log.Debug("startup taint not present", zap.String("node", node), zap.String("taint", s.String()))
			}
			return n, nil
		}
		kind := classify(ctx, err)
		if kind == permanent {
			return 0, fmt.Errorf("removing taint %s from node %s: %w", s, node, err)
		}
		if attempt >= c.attempts {
			return 0, fmt.Errorf("removing taint %s from node %s: gave up after %d tries: %w", s, node, attempt, err)
		}
		if kind == conflict {
			c.log.Debug("node changed while removing the taint; reading it again", zap.String("node", node), zap.Error(err))
			continue
		}
		c.log.Warn("removing the startup taint failed; retrying", zap.String("node", node), zap.Duration("in", wait), zap.Error(err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("removing taint %s from node %s: %w (last error: %w)", s, node, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, maxBackoff)
	}
}

// taint is the part of a node taint that matching needs. The taints are
// sent back in the test operation exactly as read, so fields unknown to
// this package (timeAdded, future ones) survive.
type taint struct {
	Key    string `json:"key"`
	Effect string `json:"effect"`
}

type patchOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value,omitempty"`
}

func (c *Client) removeOnce(ctx context.Context, node string, s Spec) (int, error) {
	var obj struct {
		Spec struct {
			Taints json.RawMessage `json:"taints"`
		} `json:"spec"`
	}
	path := "/api/v1/nodes/" + url.PathEscape(node)
	body, err := c.do(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(body, &obj); err != nil {
		return 0, fmt.Errorf("decoding node %s: %w", node, err)
	}
	raw := obj.Spec.Taints
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return 0, fmt.Errorf("decoding node %s: spec.taints: %w", node, err)
	}
	ops := []patchOp{{Op: "test", Path: "/spec/taints", Value: raw}}
	// Highest index first: each removal shifts only the entries after it.
	for i := len(items) - 1; i >= 0; i-- {
		var t taint
		if err := json.Unmarshal(items[i], &t); err != nil {
			return 0, fmt.Errorf("decoding node %s: spec.taints[%d]: %w", node, i, err)
		}
		if s.matches(t) {
			ops = append(ops, patchOp{Op: "remove", Path: fmt.Sprintf("/spec/taints/%d", i)})
		}
	}
	removed := len(ops) - 1
	if removed == 0 {
		return 0, nil
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return 0, fmt.Errorf("encoding the patch: %w", err)
	}
	if _, err := c.do(ctx, http.MethodPatch, path, "application/json-patch+json", patch); err != nil {
		return 0, err
	}
	return removed, nil
}

// APIError is a request the API server answered with an error status.
type APIError struct {
	Verb    string // the RBAC verb: get or patch
	Path    string
	Code    int
	Reason  string // the Status object's reason, e.g. Forbidden, Conflict
	Message string // the Status object's message, or the start of the body
}

func (e *APIError) Error() string {
	resource := "nodes"
	msg := fmt.Sprintf("%s %s: %s (%d)", e.Verb, e.Path, http.StatusText(e.Code), e.Code)
	switch e.Code {
	case http.StatusForbidden:
		msg += fmt.Sprintf(": RBAC does not allow the service account to %s %s; its ClusterRole needs verbs get and patch on %s", e.Verb, resource, resource)
	case http.StatusUnauthorized:
		msg += ": the service account token was refused"
	case http.StatusNotFound:
		msg += ": no such node (is NODE_NAME set from spec.nodeName?)"
	}
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

func (c *Client) do(ctx context.Context, method, path, contentType string, body []byte) ([]byte, error) {
	verb := strings.ToLower(method)
	token, err := readToken(c.tokenFile)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", verb, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "imdsguard-nodetaint")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", verb, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", verb, path, err)
	}
	if resp.StatusCode/100 == 2 {
		return data, nil
	}
	apiErr := &APIError{Verb: verb, Path: path, Code: resp.StatusCode}
	var status struct {
		Reason  string `json:"reason"`
		Message string `json:"message"`
	}
	if json.Unmarshal(data, &status) == nil && (status.Message != "" || status.Reason != "") {
		apiErr.Reason, apiErr.Message = status.Reason, status.Message
	} else {
		apiErr.Message = strings.TrimSpace(string(data[:min(len(data), 200)]))
	}
	return nil, apiErr
}

func readToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the service account token: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("reading the service account token: %s is empty", path)
	}
	return token, nil
}

type errorKind int

const (
	permanent errorKind = iota
	transient
	conflict
)

func classify(ctx context.Context, err error) errorKind {
	if ctx.Err() != nil {
		return permanent
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		switch apiErr.Code {
		case http.StatusConflict, http.StatusUnprocessableEntity:
			// 422 is how the API server answers a failed "test"
			// operation; a real mistake in the patch repeats and runs
			// out of tries.
			return conflict
		case http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusBadGateway,
			http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return transient
		}
		return permanent
	}
	// A certificate that does not verify will not verify on the next try.
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) {
		return permanent
	}
	// Not reaching the API server at all: at node boot the service
	// address may not be routed yet (kube-proxy starting too).
	var netErr net.Error
	var urlErr *url.Error
	if errors.As(err, &netErr) || errors.As(err, &urlErr) {
		return transient
	}
	return permanent
}
