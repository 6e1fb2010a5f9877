package instance

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// imds answers like IMDSv2: a token for a PUT with a TTL, the instance id
// for a GET with that token, 401 otherwise. All on loopback.
func imds(t *testing.T, id string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" && r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") != "":
			w.Write([]byte("tok-1"))
		case r.Method == http.MethodGet && r.URL.Path == "/latest/meta-data/instance-id" && r.Header.Get("X-aws-ec2-metadata-token") == "tok-1":
			w.Write([]byte(id + "\n"))
		default:
			http.Error(w, "unauthorized", http.StatusUnauthorized)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestFetchReadsTheInstanceIDWithAToken(t *testing.T) {
	srv := imds(t, "i-0123456789abcdef0")
	id, err := Fetch(context.Background(), srv.Listener.Addr().String(), "")
	if err != nil || id != "i-0123456789abcdef0" {
		t.Fatalf("Fetch = %q, %v; want the instance id", id, err)
	}
}

func TestFetchRefusesWhatIsNoInstanceID(t *testing.T) {
	srv := imds(t, "<html>login</html>")
	if id, err := Fetch(context.Background(), srv.Listener.Addr().String(), ""); err == nil || !strings.Contains(err.Error(), "unexpected instance id") {
		t.Fatalf("Fetch = %q, %v; want an error naming the odd answer", id, err)
	}
}

// A server that accepts and never answers does not hold up a daemon that
// is told to stop: Fetch returns when its context ends.
func TestFetchEndsWithItsContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	if _, err := Fetch(ctx, ln.Addr().String(), ""); err == nil {
		t.Fatal("Fetch from a silent server succeeded")
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Fetch took %s after its context ended, want it to return at once", took)
	}
}
