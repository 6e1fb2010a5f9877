package imdsserver

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names and limits of the IMDSv2 session protocol.
const (
	TokenPath      = "/latest/api/token"
	TokenHeader    = "X-aws-ec2-metadata-token"
	TokenTTLHeader = "X-aws-ec2-metadata-token-ttl-seconds"
	MaxTokenTTL    = 21600 // seconds; AWS's upper bound (6 hours)
)

// The fake instance's identity and credentials. They are exported so that
// tests can check whether a client did (or did not) obtain them. The keys are
// AWS's documentation examples, not real secrets.
const (
	Region           = "us-east-1"
	AvailabilityZone = "us-east-1a"
	AccountID        = "123456789012"
	ImageID          = "ami-0123456789abcdef0"
	InstanceType     = "t3.micro"
	AccessKeyID      = "ASIAIOSFODNN7EXAMPLE"
	SecretAccessKey  = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
	SessionToken     = "IQoJb3JpZ2luX2VjEImdsguardTestSessionTokenNotARealOne"

	// AWS rotates role credentials well before they expire; 6h is what it
	// typically reports.
	credentialLifetime = 6 * time.Hour
	tokenBytes         = 32
)

// A route renders one metadata path's body at a given time.
type route func(now time.Time) (string, error)

// response is what the server decided to answer, kept apart from writing it
// so the status can be logged before the client can see it.
type response struct {
	status int
	header http.Header
	body   string
}

func errorResponse(status int, detail string) response {
	body := http.StatusText(status)
	if detail != "" {
		body += ": " + detail
	}
	return response{status: status, body: body}
}

func methodNotAllowed(allow string) response {
	r := errorResponse(http.StatusMethodNotAllowed, "")
	r.header = http.Header{}
	r.header.Set("Allow", allow)
	return r
}

// ServeHTTP answers one IMDS request and logs it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	resp := s.respond(r, now)
	s.logRequest(r, now, resp.status)

	h := w.Header()
	for k, v := range resp.header {
		h[k] = v
	}
	// AWS labels every answer text/plain, JSON documents included.
	h.Set("Content-Type", "text/plain")
	h.Set("Content-Length", strconv.Itoa(len(resp.body)))
	h.Set("Server", "EC2ws")
	w.WriteHeader(resp.status)
	// A write error means the client went away; there is no one to tell.
	_, _ = io.WriteString(w, resp.body)
}

func (s *Server) respond(r *http.Request, now time.Time) response {
	if r.URL.Path == TokenPath {
		return s.issueToken(r, now)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return methodNotAllowed("GET, HEAD")
	}
	// A token that is present is always checked, even when tokens are
	// optional: AWS answers 401 rather than falling back to IMDSv1.
	if tokens := r.Header.Values(TokenHeader); len(tokens) > 0 {
		if !s.validToken(tokens[0], now) {
			return errorResponse(http.StatusUnauthorized, "invalid or expired token")
		}
	} else if s.requireToken.Load() {
		return errorResponse(http.StatusUnauthorized, "token required")
	}
	render, ok := s.lookup(r.URL.Path)
	if !ok {
		return errorResponse(http.StatusNotFound, "")
	}
	body, err := render(now)
	if err != nil {
		return errorResponse(http.StatusInternalServerError, err.Error())
	}
	return response{status: http.StatusOK, body: body}
}

// lookup finds the route for path. Like IMDS, it ignores whether a trailing
// slash is present: botocore asks for "placement/availability-zone/".
func (s *Server) lookup(path string) (route, bool) {
	if render, ok := s.routes[path]; ok {
		return render, true
	}
	if trimmed, found := strings.CutSuffix(path, "/"); found {
		render, ok := s.routes[trimmed]
		return render, ok
	}
	render, ok := s.routes[path+"/"]
	return render, ok
}

func (s *Server) issueToken(r *http.Request, now time.Time) response {
	if r.Method != http.MethodPut {
		return methodNotAllowed(http.MethodPut)
	}
	// AWS refuses token requests that went through a proxy, so a token cannot
	// be obtained on behalf of another host.
	if len(r.Header.Values("X-Forwarded-For")) > 0 {
		return errorResponse(http.StatusForbidden, "X-Forwarded-For not allowed")
	}
	ttl, err := parseTTL(r.Header.Get(TokenTTLHeader))
	if err != nil {
		return errorResponse(http.StatusBadRequest, err.Error())
	}
	token, err := newToken()
	if err != nil {
		return errorResponse(http.StatusInternalServerError, err.Error())
	}

	s.mu.Lock()
	// Sweep here so the token table cannot grow past the live tokens.
	for t, exp := range s.tokens {
		if !now.Before(exp) {
			delete(s.tokens, t)
		}
	}
	s.tokens[token] = now.Add(time.Duration(ttl) * time.Second)
	s.mu.Unlock()

	h := http.Header{}
	h.Set(TokenTTLHeader, strconv.Itoa(ttl))
	return response{status: http.StatusOK, header: h, body: token}
}

func parseTTL(v string) (int, error) {
	ttl, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("parse %s %q: %w", TokenTTLHeader, v, err)
	}
	if ttl < 1 || ttl > MaxTokenTTL {
		return 0, fmt.Errorf("%s %d outside 1..%d", TokenTTLHeader, ttl, MaxTokenTTL)
	}
	return ttl, nil
}

func newToken() (string, error) {
	b := make([]byte, tokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func (s *Server) validToken(token string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.tokens[token]
	if !ok {
		return false
	}
	if !now.Before(exp) {
		delete(s.tokens, token)
		return false
	}
	return true
}

func (s *Server) buildRoutes() map[string]route {
	text := func(body string) route {
		return func(time.Time) (string, error) { return body, nil }
	}
	// Listings have no trailing newline: botocore pastes the role listing
	// straight into the next URL.
	list := func(entries ...string) route { return text(strings.Join(entries, "\n")) }
	const md = "/latest/meta-data/"
	return map[string]route{
		"/latest/":                       list("dynamic", "meta-data"),
		md:                               list("ami-id", "iam/", "instance-id", "instance-type", "placement/"),
		md + "ami-id":                    text(ImageID),
		md + "instance-id":               text(s.instanceID),
		md + "instance-type":             text(InstanceType),
		md + "iam/":                      list("info", "security-credentials/"),
		md + "iam/info":                  s.iamInfo,
		md + "iam/security-credentials/": text(s.role),
		md + "iam/security-credentials/" + s.role:    s.credentials,
		md + "placement/":                            list("availability-zone", "region"),
		md + "placement/availability-zone":           text(AvailabilityZone),
		md + "placement/region":                      text(Region),
		"/latest/dynamic/":                           list("instance-identity/"),
		"/latest/dynamic/instance-identity/":         list("document"),
		"/latest/dynamic/instance-identity/document": s.identityDocument,
	}
}

// timestamp formats t the way IMDS does: RFC 3339, UTC, whole seconds.
func timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func toJSON(what string, v any) (string, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", fmt.Errorf("marshal %s: %w", what, err)
	}
	return string(b), nil
}

func (s *Server) credentials(now time.Time) (string, error) {
	// Field order and names are AWS's; SDKs decode by name.
	return toJSON("credentials", struct {
		Code            string `json:"Code"`
		LastUpdated     string `json:"LastUpdated"`
		Type            string `json:"Type"`
		AccessKeyID     string `json:"AccessKeyId"`
		SecretAccessKey string `json:"SecretAccessKey"`
		Token           string `json:"Token"`
		Expiration      string `json:"Expiration"`
	}{
		Code:            "Success",
		LastUpdated:     timestamp(now),
		Type:            "AWS-HMAC",
		AccessKeyID:     AccessKeyID,
		SecretAccessKey: SecretAccessKey,
		Token:           SessionToken,
		Expiration:      timestamp(now.Add(credentialLifetime)),
	})
}

func (s *Server) iamInfo(now time.Time) (string, error) {
	return toJSON("iam info", struct {
		Code               string `json:"Code"`
		LastUpdated        string `json:"LastUpdated"`
		InstanceProfileArn string `json:"InstanceProfileArn"`
		InstanceProfileID  string `json:"InstanceProfileId"`
	}{
		Code:               "Success",
		LastUpdated:        timestamp(now),
		InstanceProfileArn: "arn:aws:iam::" + AccountID + ":instance-profile/" + s.role,
		InstanceProfileID:  "AIPAIOSFODNN7EXAMPLE1",
	})
}

func (s *Server) identityDocument(time.Time) (string, error) {
	// The null fields are present on real instances; some parsers expect them.
	return toJSON("identity document", struct {
		AccountID               string   `json:"accountId"`
		Architecture            string   `json:"architecture"`
		AvailabilityZone        string   `json:"availabilityZone"`
		BillingProducts         []string `json:"billingProducts"`
		DevpayProductCodes      []string `json:"devpayProductCodes"`
		MarketplaceProductCodes []string `json:"marketplaceProductCodes"`
		ImageID                 string   `json:"imageId"`
		InstanceID              string   `json:"instanceId"`
		InstanceType            string   `json:"instanceType"`
		KernelID                *string  `json:"kernelId"`
		PendingTime             string   `json:"pendingTime"`
		PrivateIP               string   `json:"privateIp"`
		RamdiskID               *string  `json:"ramdiskId"`
		Region                  string   `json:"region"`
		Version                 string   `json:"version"`
	}{
		AccountID:        AccountID,
		Architecture:     "x86_64",
		AvailabilityZone: AvailabilityZone,
		ImageID:          ImageID,
		InstanceID:       s.instanceID,
		InstanceType:     InstanceType,
		PendingTime:      timestamp(s.started),
		PrivateIP:        "10.0.0.10",
		Region:           Region,
		Version:          "2017-09-30",
	})
}
