package imdsserver_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/imdsserver"
)

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// do sends one request straight to ServeHTTP; no network is involved.
func do(s *imdsserver.Server, method, path string, header map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	for k, v := range header {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

// token obtains a token with the given ttl, failing the test if it cannot.
func token(t *testing.T, s *imdsserver.Server, ttl string) string {
	t.Helper()
	w := do(s, http.MethodPut, imdsserver.TokenPath, map[string]string{imdsserver.TokenTTLHeader: ttl})
	if w.Code != http.StatusOK {
		t.Fatalf("PUT token: status %d, body %q", w.Code, w.Body)
	}
	return w.Body.String()
}

func TestTokenTTL(t *testing.T) {
	tests := []struct {
		name string
		ttl  *string
		want int
	}{
		{"zero", ptr("0"), http.StatusBadRequest},
		{"min", ptr("1"), http.StatusOK},
		{"max", ptr("21600"), http.StatusOK},
		{"above max", ptr("21601"), http.StatusBadRequest},
		{"negative", ptr("-1"), http.StatusBadRequest},
		{"missing", nil, http.StatusBadRequest},
		{"empty", ptr(""), http.StatusBadRequest},
		{"not a number", ptr("abc"), http.StatusBadRequest},
		{"fraction", ptr("1.5"), http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := imdsserver.New(imdsserver.Options{})
			h := map[string]string{}
			if tt.ttl != nil {
				h[imdsserver.TokenTTLHeader] = *tt.ttl
			}
			w := do(s, http.MethodPut, imdsserver.TokenPath, h)
			if w.Code != tt.want {
				t.Fatalf("status = %d, want %d (body %q)", w.Code, tt.want, w.Body)
			}
			if tt.want != http.StatusOK {
				return
			}
			if got := w.Header().Get(imdsserver.TokenTTLHeader); got != *tt.ttl {
				t.Errorf("ttl header = %q, want %q", got, *tt.ttl)
			}
			raw, err := base64.RawURLEncoding.DecodeString(w.Body.String())
			if err != nil {
				t.Fatalf("token %q is not base64url: %v", w.Body, err)
			}
			if len(raw) < 32 {
				t.Errorf("token carries %d random bytes, want >= 32", len(raw))
			}
		})
	}
}

func TestTokensAreUnique(t *testing.T) {
	s := imdsserver.New(imdsserver.Options{})
	if a, b := token(t, s, "60"), token(t, s, "60"); a == b {
		t.Fatalf("two PUTs returned the same token %q", a)
	}
}

func TestTokenPathMethods(t *testing.T) {
	for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodDelete} {
		t.Run(method, func(t *testing.T) {
			s := imdsserver.New(imdsserver.Options{})
			w := do(s, method, imdsserver.TokenPath, map[string]string{imdsserver.TokenTTLHeader: "60"})
			if w.Code != http.StatusMethodNotAllowed {
				t.Fatalf("status = %d, want 405", w.Code)
			}
			if got := w.Header().Get("Allow"); got != http.MethodPut {
				t.Errorf("Allow = %q, want PUT", got)
			}
		})
	}
}

func TestForwardedForRefused(t *testing.T) {
	s := imdsserver.New(imdsserver.Options{})
	w := do(s, http.MethodPut, imdsserver.TokenPath, map[string]string{
		imdsserver.TokenTTLHeader: "60",
		"X-Forwarded-For":         "10.1.2.3",
	})
	if w.Code != http.StatusForbidden {
		t.Fatalf("status = %d, want 403", w.Code)
	}
	if !strings.HasPrefix(w.Body.String(), "Forbidden") || w.Header().Get(imdsserver.TokenTTLHeader) != "" {
		t.Errorf("refused PUT still looks like it issued a token: %q", w.Body)
	}
}

func TestTokenExpiry(t *testing.T) {
	clock := newFakeClock()
	s := imdsserver.New(imdsserver.Options{RequireToken: true, Now: clock.Now})
	tok := token(t, s, "10")
	get := func() int {
		return do(s, http.MethodGet, "/latest/meta-data/instance-id", map[string]string{imdsserver.TokenHeader: tok}).Code
	}

	steps := []struct {
		advance time.Duration
		want    int
	}{
		{0, http.StatusOK},
		{9*time.Second + 999*time.Millisecond, http.StatusOK},
		{time.Millisecond, http.StatusUnauthorized}, // exactly ttl after issue
		{-5 * time.Second, http.StatusUnauthorized}, // expired tokens are forgotten, not revived
	}
	for i, st := range steps {
		clock.Advance(st.advance)
		if got := get(); got != st.want {
			t.Fatalf("step %d (+%v): status = %d, want %d", i, st.advance, got, st.want)
		}
	}
}

func TestTokenRules(t *testing.T) {
	const path = "/latest/meta-data/instance-id"
	tests := []struct {
		name    string
		require bool
		token   string // "valid" gets a fresh token; "" sends no header
		want    int
	}{
		{"v1 allowed, no token", false, "", http.StatusOK},
		{"v1 allowed, valid token", false, "valid", http.StatusOK},
		{"v1 allowed, unknown token", false, "bogus", http.StatusUnauthorized},
		{"v1 allowed, empty token", false, "empty", http.StatusUnauthorized},
		{"v2 required, no token", true, "", http.StatusUnauthorized},
		{"v2 required, valid token", true, "valid", http.StatusOK},
		{"v2 required, unknown token", true, "bogus", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := imdsserver.New(imdsserver.Options{RequireToken: tt.require})
			h := map[string]string{}
			switch tt.token {
			case "":
			case "valid":
				h[imdsserver.TokenHeader] = token(t, s, "60")
			case "empty":
				h[imdsserver.TokenHeader] = ""
			default:
				h[imdsserver.TokenHeader] = tt.token
			}
			w := do(s, http.MethodGet, path, h)
			if w.Code != tt.want {
				t.Fatalf("status = %d, want %d (body %q)", w.Code, tt.want, w.Body)
			}
			if w.Code == http.StatusOK && w.Body.String() != imdsserver.DefaultInstanceID {
				t.Errorf("body = %q, want %q", w.Body, imdsserver.DefaultInstanceID)
			}
		})
	}
}

func TestSetRequireToken(t *testing.T) {
	s := imdsserver.New(imdsserver.Options{})
	const path = "/latest/meta-data/instance-id"
	for i, st := range []struct {
		require bool
		want    int
	}{{false, 200}, {true, 401}, {false, 200}} {
		s.SetRequireToken(st.require)
		if got := do(s, http.MethodGet, path, nil).Code; got != st.want {
			t.Errorf("step %d (require=%v): status = %d, want %d", i, st.require, got, st.want)
		}
	}
}

func TestMetadataPaths(t *testing.T) {
	s := imdsserver.New(imdsserver.Options{InstanceID: "i-0feedfacecafe0001", Role: "web"})
	tests := []struct {
		method, path string
		want         int
		body         string // checked when non-empty
	}{
		{"GET", "/latest/meta-data/instance-id", 200, "i-0feedfacecafe0001"},
		{"GET", "/latest/meta-data/instance-id?x=1", 200, "i-0feedfacecafe0001"},
		{"HEAD", "/latest/meta-data/instance-id", 200, ""},
		{"GET", "/latest/meta-data/", 200, "ami-id\niam/\ninstance-id\ninstance-type\nplacement/"},
		{"GET", "/latest/meta-data/iam/security-credentials/", 200, "web"},
		{"GET", "/latest/meta-data/iam/security-credentials/web", 200, ""},
		{"GET", "/latest/meta-data/iam/security-credentials/other", 404, ""},
		{"GET", "/latest/meta-data/placement/region", 200, "us-east-1"},
		{"GET", "/latest/meta-data/placement/availability-zone", 200, "us-east-1a"},
		{"GET", "/latest/meta-data/placement/availability-zone/", 200, "us-east-1a"}, // botocore's form
		{"GET", "/latest/meta-data", 200, "ami-id\niam/\ninstance-id\ninstance-type\nplacement/"},
		{"GET", "/latest/meta-data/nope", 404, ""},
		{"GET", "/latest/meta-data/nope/", 404, ""},
		{"GET", "/latest/meta-data/instance-id//", 404, ""},
		{"GET", "/2021-07-15/meta-data/instance-id", 404, ""},
		{"GET", "/", 404, ""},
		{"POST", "/latest/meta-data/instance-id", 405, ""},
		{"PUT", "/latest/meta-data/instance-id", 405, ""},
		{"DELETE", "/latest/meta-data/", 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			w := do(s, tt.method, tt.path, nil)
			if w.Code != tt.want {
				t.Fatalf("status = %d, want %d (body %q)", w.Code, tt.want, w.Body)
			}
			if tt.body != "" && w.Body.String() != tt.body {
				t.Errorf("body = %q, want %q", w.Body, tt.body)
			}
		})
	}
}

func TestCredentials(t *testing.T) {
	clock := newFakeClock()
	s := imdsserver.New(imdsserver.Options{Now: clock.Now})
	w := do(s, http.MethodGet, "/latest/meta-data/iam/security-credentials/"+imdsserver.DefaultRole, nil)
	if w.Code != http.StatusOK {
		t.Fatalf("status = %d, body %q", w.Code, w.Body)
	}

	// Exactly AWS's keys: nothing missing, nothing extra.
	var fields map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &fields); err != nil {
		t.Fatalf("decode: %v", err)
	}
	wantKeys := []string{"Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
	if len(fields) != len(wantKeys) {
		t.Errorf("got keys %v, want exactly %v", fields, wantKeys)
	}
	for _, k := range wantKeys {
		if v, ok := fields[k].(string); !ok || v == "" {
			t.Errorf("key %q = %#v, want a non-empty string", k, fields[k])
		}
	}

	// Decoded the way aws-sdk-go-v2's ec2rolecreds does, with time.Time fields.
	var creds struct {
		Code            string
		LastUpdated     time.Time
		Type            string
		AccessKeyID     string `json:"AccessKeyId"`
		SecretAccessKey string
		Token           string
		Expiration      time.Time
	}
	if err := json.Unmarshal(w.Body.Bytes(), &creds); err != nil {
		t.Fatalf("decode into typed struct: %v", err)
	}
	now := clock.Now()
	checks := []struct {
		name string
		ok   bool
	}{
		{"Code is Success", creds.Code == "Success"},
		{"Type is AWS-HMAC", creds.Type == "AWS-HMAC"},
		{"AccessKeyId is a 20-char ASIA key", strings.HasPrefix(creds.AccessKeyID, "ASIA") && len(creds.AccessKeyID) == 20},
		{"AccessKeyId is the exported one", creds.AccessKeyID == imdsserver.AccessKeyID},
		{"SecretAccessKey is the exported one", creds.SecretAccessKey == imdsserver.SecretAccessKey},
		{"Token is the exported one", creds.Token == imdsserver.SessionToken},
		{"LastUpdated is now", creds.LastUpdated.Equal(now)},
		{"Expiration is now+6h", creds.Expiration.Equal(now.Add(6 * time.Hour))},
		{"Expiration is UTC with Z", strings.HasSuffix(fields["Expiration"].(string), "Z")},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s: got %+v", c.name, creds)
		}
	}
}

func TestIdentityDocumentAndIAMInfo(t *testing.T) {
	s := imdsserver.New(imdsserver.Options{InstanceID: "i-0feedfacecafe0001"})

	w := do(s, http.MethodGet, "/latest/dynamic/instance-identity/document", nil)
	var doc struct {
		Region, InstanceID, AccountID, AvailabilityZone string
		PendingTime                                     time.Time
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatalf("decode identity document %q: %v", w.Body, err)
	}
	if doc.Region != "us-east-1" || doc.InstanceID != "i-0feedfacecafe0001" ||
		doc.AccountID != imdsserver.AccountID || doc.AvailabilityZone != "us-east-1a" || doc.PendingTime.IsZero() {
		t.Errorf("identity document = %+v", doc)
	}

	w = do(s, http.MethodGet, "/latest/meta-data/iam/info", nil)
	var info struct {
		Code               string
		LastUpdated        time.Time
		InstanceProfileArn string
		InstanceProfileID  string `json:"InstanceProfileId"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &info); err != nil {
		t.Fatalf("decode iam info %q: %v", w.Body, err)
	}
	wantArn := "arn:aws:iam::123456789012:instance-profile/" + imdsserver.DefaultRole
	if info.Code != "Success" || info.InstanceProfileArn != wantArn || info.InstanceProfileID == "" {
		t.Errorf("iam info = %+v", info)
	}
}

func TestRequestLog(t *testing.T) {
	clock := newFakeClock()
	s := imdsserver.New(imdsserver.Options{Now: clock.Now, RequireToken: true})
	do(s, http.MethodGet, "/latest/meta-data/instance-id?a=%2F", map[string]string{"User-Agent": "probe/1"})
	clock.Advance(time.Second)
	do(s, http.MethodPut, imdsserver.TokenPath, map[string]string{imdsserver.TokenTTLHeader: "abc"})

	got := s.Requests()
	if len(got) != 2 {
		t.Fatalf("logged %d requests, want 2: %+v", len(got), got)
	}
	first, second := got[0], got[1]
	if first.Method != "GET" || first.URI != "/latest/meta-data/instance-id?a=%2F" || first.Proto != "HTTP/1.1" ||
		first.Status != http.StatusUnauthorized || first.Header.Get("User-Agent") != "probe/1" ||
		first.RemoteAddr == "" || !first.Time.Equal(clock.Now().Add(-time.Second)) {
		t.Errorf("first = %+v", first)
	}
	if second.Method != "PUT" || second.URI != imdsserver.TokenPath || second.Status != http.StatusBadRequest ||
		!second.Time.Equal(clock.Now()) {
		t.Errorf("second = %+v", second)
	}

	// The result is a copy: editing it must not edit the log.
	got[0].Header.Set("User-Agent", "tampered")
	got[0].Status = 0
	if again := s.Requests()[0]; again.Header.Get("User-Agent") != "probe/1" || again.Status != http.StatusUnauthorized {
		t.Errorf("log changed through a returned copy: %+v", again)
	}

	s.Reset()
	if n := len(s.Requests()); n != 0 {
		t.Errorf("after Reset: %d requests logged", n)
	}
}

func ptr[T any](v T) *T { return &v }
