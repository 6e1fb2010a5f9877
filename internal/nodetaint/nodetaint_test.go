package nodetaint

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const nodeName = "ip-10-0-1-23.eu-west-1.compute.internal"

// fakeAPI plays the API server for one node: it checks the bearer token,
// serves GET and applies JSON patches made of "test" and "remove"
// operations on /spec/taints, as the real one does.
type fakeAPI struct {
	t         *testing.T
	tokenFile string

	mu      sync.Mutex
	token   string
	taints  []any // nil: the node has no spec.taints
	gets    int
	patches []string
	// patchStatus answers the n-th PATCH (0-based) with this status
	// instead of applying it, after calling beforeAnswer if set.
	patchStatus  map[int]int
	getStatus    map[int]int
	beforeAnswer func(f *fakeAPI)
	// onGet runs after a GET is answered (under the lock).
	onGet func(f *fakeAPI)
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if got, want := r.Header.Get("Authorization"), "Bearer "+f.token; got != want {
		f.t.Errorf("%s %s: Authorization %q, want %q", r.Method, r.URL.Path, got, want)
		status(w, http.StatusUnauthorized, "Unauthorized", "Unauthorized")
		return
	}
	if want := "/api/v1/nodes/" + nodeName; r.URL.Path != want {
		f.t.Errorf("%s %s: want path %s", r.Method, r.URL.Path, want)
		status(w, http.StatusNotFound, "NotFound", "not found")
		return
	}
	switch r.Method {
	case http.MethodGet:
		n := f.gets
		f.gets++
		if code := f.getStatus[n]; code != 0 {
			status(w, code, http.StatusText(code), "injected")
			return
		}
		f.writeNode(w)
		if f.onGet != nil {
			f.onGet(f)
		}
	case http.MethodPatch:
		if ct := r.Header.Get("Content-Type"); ct != "application/json-patch+json" {
			f.t.Errorf("PATCH Content-Type %q, want application/json-patch+json", ct)
		}
		body, _ := io.ReadAll(r.Body)
		n := len(f.patches)
		f.patches = append(f.patches, string(body))
		if code := f.patchStatus[n]; code != 0 {
			if f.beforeAnswer != nil {
				f.beforeAnswer(f)
			}
			status(w, code, http.StatusText(code), "injected")
			return
		}
		if code, msg := f.apply(body); code != http.StatusOK {
			status(w, code, http.StatusText(code), msg)
			return
		}
		f.writeNode(w)
	default:
		f.t.Errorf("unexpected method %s", r.Method)
		status(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "")
	}
}

func (f *fakeAPI) writeNode(w http.ResponseWriter) {
	spec := map[string]any{"podCIDR": "10.0.1.0/24"}
	if f.taints != nil {
		spec["taints"] = f.taints
	}
	node := map[string]any{
		"apiVersion": "v1", "kind": "Node",
		"metadata": map[string]any{"name": nodeName, "resourceVersion": "42"},
		"spec":     spec,
		"status":   map[string]any{"images": []any{map[string]any{"names": []any{"x"}}}},
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(node)
}

// apply is the API server's JSON patch for the operations RemoveTaint may
// send; a failed test answers 422 as the real one does.
func (f *fakeAPI) apply(body []byte) (int, string) {
	var ops []struct {
		Op    string          `json:"op"`
		Path  string          `json:"path"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(body, &ops); err != nil {
		return http.StatusBadRequest, err.Error()
	}
	taints := append([]any(nil), f.taints...)
	for _, op := range ops {
		switch {
		case op.Op == "test" && op.Path == "/spec/taints":
			var want any
			if err := json.Unmarshal(op.Value, &want); err != nil {
				return http.StatusBadRequest, err.Error()
			}
			var have any
			if f.taints != nil {
				raw, _ := json.Marshal(f.taints)
				_ = json.Unmarshal(raw, &have)
			}
			if !reflect.DeepEqual(have, want) {
				return http.StatusUnprocessableEntity, "the server rejected our request due to an error in our request: testing value /spec/taints failed: test failed"
			}
		case op.Op == "remove" && strings.HasPrefix(op.Path, "/spec/taints/"):
			i, err := strconv.Atoi(strings.TrimPrefix(op.Path, "/spec/taints/"))
			if err != nil || i < 0 || i >= len(taints) {
				return http.StatusUnprocessableEntity, "remove: index out of range " + op.Path
			}
			taints = append(taints[:i], taints[i+1:]...)
		default:
			return http.StatusUnprocessableEntity, "unexpected op " + op.Op + " " + op.Path
		}
	}
	f.taints = taints
	return http.StatusOK, ""
}

func status(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"kind": "Status", "apiVersion": "v1", "status": "Failure",
		"reason": reason, "message": msg, "code": code,
	})
}

// newFake starts a TLS API server and a client that trusts only its
// certificate, with the token and CA in files as the kubelet mounts them.
func newFake(t *testing.T, taints []any) (*fakeAPI, *Client) {
	t.Helper()
	dir := t.TempDir()
	f := &fakeAPI{t: t, token: "token-1", taints: taints, tokenFile: filepath.Join(dir, "token")}
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close)
	caFile := filepath.Join(dir, "ca.crt")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.tokenFile, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Server: srv.URL, TokenFile: f.tokenFile, CAFile: caFile, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

func notReady(effect string) map[string]any {
	return map[string]any{"key": "imdsguard.io/not-ready", "value": "true", "effect": effect}
}

func other() map[string]any {
	return map[string]any{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "2026-11-23T10:00:00Z"}
}

func TestRemoveTaintRemovesEveryMatch(t *testing.T) {
	f, c := newFake(t, []any{notReady("NoSchedule"), other(), notReady("NoExecute")})
	n, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready")
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("removed %d, want 2", n)
	}
	if !reflect.DeepEqual(f.taints, []any{other()}) {
		t.Errorf("taints left: %v, want only the unreachable one", f.taints)
	}
	if f.gets != 1 || len(f.patches) != 1 {
		t.Fatalf("%d GETs, %d PATCHes; want 1 and 1", f.gets, len(f.patches))
	}
	// The test operation carries the taints exactly as read (timeAdded
	// included), and removals go from the highest index down.
	want := `[{"op":"test","path":"/spec/taints","value":[` +
		`{"effect":"NoSchedule","key":"imdsguard.io/not-ready","value":"true"},` +
		`{"effect":"NoExecute","key":"node.kubernetes.io/unreachable","timeAdded":"2026-11-23T10:00:00Z"},` +
		`{"effect":"NoExecute","key":"imdsguard.io/not-ready","value":"true"}]},` +
		`{"op":"remove","path":"/spec/taints/2"},{"op":"remove","path":"/spec/taints/0"}]`
	if f.patches[0] != want {
		t.Errorf("patch body\n got %s\nwant %s", f.patches[0], want)
	}
}

func TestRemoveTaintMatchesEffect(t *testing.T) {
	f, c := newFake(t, []any{notReady("NoSchedule"), notReady("NoExecute")})
	n, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready:NoExecute")
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || !reflect.DeepEqual(f.taints, []any{notReady("NoSchedule")}) {
		t.Errorf("removed %d, left %v; want 1 removed and the NoSchedule one left", n, f.taints)
	}
	if !strings.Contains(f.patches[0], `{"op":"remove","path":"/spec/taints/1"}]`) || strings.Contains(f.patches[0], "/spec/taints/0") {
		t.Errorf("patch %s: want only index 1 removed", f.patches[0])
	}
}

func TestRemoveTaintAbsentSendsNoPatch(t *testing.T) {
	for name, taints := range map[string][]any{
		"no taints field": nil,
		"empty list":      {},
		"other key":       {other()},
		"other effect":    {notReady("NoExecute")},
	} {
		t.Run(name, func(t *testing.T) {
			f, c := newFake(t, taints)
			n, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready:NoSchedule")
			if err != nil {
				t.Fatal(err)
			}
			if n != 0 || len(f.patches) != 0 {
				t.Errorf("removed %d with %d PATCHes; want nothing done", n, len(f.patches))
			}
		})
	}
}

func TestRemoveTaintRepeatsAfterConflict(t *testing.T) {
	for _, code := range []int{http.StatusConflict, http.StatusUnprocessableEntity} {
		t.Run(http.StatusText(code), func(t *testing.T) {
			f, c := newFake(t, []any{notReady("NoSchedule")})
			f.patchStatus = map[int]int{0: code}
			// Someone adds a taint while the first patch is in flight.
			f.beforeAnswer = func(f *fakeAPI) { f.taints = append([]any{other()}, f.taints...) }
			n, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready")
			if err != nil {
				t.Fatal(err)
			}
			if n != 1 || f.gets != 2 || len(f.patches) != 2 {
				t.Fatalf("removed %d after %d GETs and %d PATCHes; want 1, 2, 2", n, f.gets, len(f.patches))
			}
			// The second try was built from the node as read again.
			if !strings.Contains(f.patches[1], "node.kubernetes.io/unreachable") || !strings.Contains(f.patches[1], `"path":"/spec/taints/1"`) {
				t.Errorf("second patch %s: want it built from the re-read taints", f.patches[1])
			}
			if !reflect.DeepEqual(f.taints, []any{other()}) {
				t.Errorf("taints left: %v; want the concurrently added one kept", f.taints)
			}
		})
	}
}

// A concurrent change the fake really detects: the test operation fails
// against the node as it now is.
func TestRemoveTaintTestOperationGuardsConcurrentChange(t *testing.T) {
	f, c := newFake(t, []any{notReady("NoSchedule")})
	changed := false
	f.onGet = func(f *fakeAPI) {
		if !changed {
			changed = true
			f.taints = append(f.taints, other())
		}
	}
	n, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready")
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || len(f.patches) != 2 || !reflect.DeepEqual(f.taints, []any{other()}) {
		t.Errorf("removed %d with %d PATCHes, left %v; want 1, 2, the other taint kept", n, len(f.patches), f.taints)
	}
}

func TestRemoveTaintGivesUpOnEndlessConflict(t *testing.T) {
	f, c := newFake(t, []any{notReady("NoSchedule")})
	f.patchStatus = map[int]int{}
	for i := range 100 {
		f.patchStatus[i] = http.StatusConflict
	}
	_, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready")
	if err == nil {
		t.Fatal("no error after endless conflicts")
	}
	if len(f.patches) != defaultAttempts {
		t.Errorf("%d PATCHes, want %d", len(f.patches), defaultAttempts)
	}
	if !strings.Contains(err.Error(), "after 6 tries") {
		t.Errorf("error %q does not say the tries ran out", err)
	}
}

func TestRemoveTaintForbiddenNamesRBAC(t *testing.T) {
	for _, tc := range []struct {
		name, verb string
		setup      func(f *fakeAPI)
	}{
		{"patch", "patch", func(f *fakeAPI) { f.patchStatus = map[int]int{0: http.StatusForbidden} }},
		{"get", "get", func(f *fakeAPI) { f.getStatus = map[int]int{0: http.StatusForbidden} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, c := newFake(t, []any{notReady("NoSchedule")})
			tc.setup(f)
			_, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready")
			if err == nil {
				t.Fatal("no error for 403")
			}
			msg := err.Error()
			for _, want := range []string{"RBAC", "to " + tc.verb + " nodes", "403", "imdsguard.io/not-ready", nodeName} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not name %q", msg, want)
				}
			}
			var apiErr *APIError
			if !errors.As(err, &apiErr) || apiErr.Code != http.StatusForbidden || apiErr.Verb != tc.verb {
				t.Errorf("error %v: want an *APIError with code 403 and verb %s", err, tc.verb)
			}
			// Permissions do not change between tries.
			if f.gets+len(f.patches) > 2 {
				t.Errorf("%d GETs and %d PATCHes: a 403 was retried", f.gets, len(f.patches))
			}
		})
	}
}

func TestRemoveTaintNodeNotFound(t *testing.T) {
	f, c := newFake(t, nil)
	f.getStatus = map[int]int{0: http.StatusNotFound}
	_, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready")
	if err == nil || !strings.Contains(err.Error(), "NODE_NAME") {
		t.Errorf("error %v: want one that points at NODE_NAME", err)
	}
}

func TestRemoveTaintRereadsRotatedToken(t *testing.T) {
	f, c := newFake(t, []any{notReady("NoSchedule")})
	f.onGet = func(f *fakeAPI) {
		// The kubelet rotates the projected token between two requests.
		f.token = "token-2"
		if err := os.WriteFile(f.tokenFile, []byte("token-2"), 0o600); err != nil {
			t.Error(err)
		}
	}
	if _, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready"); err != nil {
		t.Fatal(err) // the fake refuses the PATCH if it carries token-1
	}
	if len(f.patches) != 1 {
		t.Errorf("%d PATCHes, want 1", len(f.patches))
	}
}

func TestRemoveTaintRetriesTransientFailure(t *testing.T) {
	f, c := newFake(t, []any{notReady("NoSchedule")})
	f.getStatus = map[int]int{0: http.StatusServiceUnavailable, 1: http.StatusTooManyRequests}
	n, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready")
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || f.gets != 3 {
		t.Errorf("removed %d after %d GETs; want 1 after 3", n, f.gets)
	}
}

func TestRemoveTaintUnreachableServer(t *testing.T) {
	_, c := newFake(t, nil)
	c.server = "https://127.0.0.1:1" // nothing listens on port 1
	c.attempts = 2
	_, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready")
	if err == nil || !strings.Contains(err.Error(), "after 2 tries") {
		t.Errorf("error %v: want a connection error after 2 tries", err)
	}
}

func TestRemoveTaintStopsWithContext(t *testing.T) {
	f, c := newFake(t, nil)
	f.getStatus = map[int]int{0: http.StatusServiceUnavailable}
	c.backoff = time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.RemoveTaint(ctx, nodeName, "imdsguard.io/not-ready")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v: want the context's deadline", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("took %v: the backoff did not stop with the context", time.Since(start))
	}
}

func TestRemoveTaintRefusesBadInput(t *testing.T) {
	f, c := newFake(t, []any{notReady("NoSchedule")})
	if _, err := c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready:Sometimes"); err == nil {
		t.Error("bad spec accepted")
	}
	if _, err := c.RemoveTaint(context.Background(), "", "imdsguard.io/not-ready"); err == nil {
		t.Error("empty node name accepted")
	}
	if f.gets != 0 {
		t.Errorf("%d requests sent for bad input", f.gets)
	}
}

func TestParseSpec(t *testing.T) {
	good := map[string]Spec{
		"imdsguard.io/not-ready":                  {Key: "imdsguard.io/not-ready"},
		"imdsguard.io/not-ready:NoSchedule":       {Key: "imdsguard.io/not-ready", Effect: "NoSchedule"},
		"imdsguard.io/not-ready:NoExecute":        {Key: "imdsguard.io/not-ready", Effect: "NoExecute"},
		"imdsguard.io/not-ready:PreferNoSchedule": {Key: "imdsguard.io/not-ready", Effect: "PreferNoSchedule"},
		"not-ready":       {Key: "not-ready"},
		"Node_Not.Ready9": {Key: "Node_Not.Ready9"},
	}
	for in, want := range good {
		got, err := ParseSpec(in)
		if err != nil || got != want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if got.String() != in {
			t.Errorf("ParseSpec(%q).String() = %q", in, got.String())
		}
	}
	bad := map[string]string{
		"":                                   "empty",
		":NoSchedule":                        "empty key",
		"imdsguard.io/not-ready:":            "empty effect",
		"imdsguard.io/not-ready:noschedule":  `unknown effect "noschedule"`,
		"imdsguard.io/not-ready:NoSchedule:": `unknown effect "NoSchedule:"`,
		"imdsguard.io/not-ready=true":        "value",
		"imdsguard.io/not-ready=true:NoExec": "unknown effect",
		"a/b/c":                              `more than one "/"`,
		"Imdsguard.io/not-ready":             "not a DNS subdomain",
		"/not-ready":                         "key prefix",
		"imdsguard.io/":                      "empty name",
		"-not-ready":                         "start and end",
		"not ready":                          "only letters",
		strings.Repeat("a", 64):              "longer than 63",
	}
	for in, want := range bad {
		_, err := ParseSpec(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSpec(%q): error %v, want one containing %q", in, err, want)
		}
	}
}

func TestConfigFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cfg, err := ConfigFromEnv(env(map[string]string{"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "443"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server != "https://[fd00:10:96::1]:443" || cfg.TokenFile != DefaultTokenFile || cfg.CAFile != DefaultCAFile {
		t.Errorf("config %+v", cfg)
	}
	if _, err := ConfigFromEnv(env(nil)); err == nil || !strings.Contains(err.Error(), "KUBERNETES_SERVICE_HOST") {
		t.Errorf("outside a cluster: error %v", err)
	}
	if n, err := NodeName(env(map[string]string{"NODE_NAME": "n1"})); n != "n1" || err != nil {
		t.Errorf("NodeName = %q, %v", n, err)
	}
	if _, err := NodeName(env(nil)); err == nil || !strings.Contains(err.Error(), "spec.nodeName") {
		t.Errorf("NodeName without NODE_NAME: error %v", err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	ca := filepath.Join(dir, "ca.crt")
	notPEM := filepath.Join(dir, "not.pem")
	empty := filepath.Join(dir, "empty")
	for p, data := range map[string]string{token: "t", notPEM: "hello", empty: " \n"} {
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		cfg  Config
		want string
	}{
		"plain http":   {Config{Server: "http://10.0.0.1:443", TokenFile: token, CAFile: ca}, "https"},
		"no token":     {Config{Server: srv.URL, TokenFile: filepath.Join(dir, "missing"), CAFile: ca}, "service account token"},
		"empty token":  {Config{Server: srv.URL, TokenFile: empty, CAFile: ca}, "is empty"},
		"no ca":        {Config{Server: srv.URL, TokenFile: token, CAFile: filepath.Join(dir, "missing")}, "ca"},
		"ca not a PEM": {Config{Server: srv.URL, TokenFile: token, CAFile: notPEM}, "no PEM certificate"},
	} {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", name, err, tc.want)
		}
	}
	if _, err := New(Config{Server: srv.URL, TokenFile: token, CAFile: ca}); err != nil {
		t.Errorf("good config refused: %v", err)
	}
}

// A server whose certificate the CA does not sign is not retried: the
// token must not go to it, and the next try would fail the same way.
func TestRemoveTaintUntrustedServer(t *testing.T) {
	f, _ := newFake(t, nil)
	srv := httptest.NewTLSServer(f)
	defer srv.Close()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, selfSigned(t), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Server: srv.URL, TokenFile: f.tokenFile, CAFile: caFile, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.RemoveTaint(context.Background(), nodeName, "imdsguard.io/not-ready")
	var certErr *tls.CertificateVerificationError
	if !errors.As(err, &certErr) || strings.Contains(err.Error(), "tries") {
		t.Errorf("error %v: want a certificate error on the first try", err)
	}
	if f.gets != 0 {
		t.Error("the untrusted server answered a request")
	}
}

// selfSigned returns a PEM certificate that signs nothing the test servers use.
func selfSigned(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "other-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
