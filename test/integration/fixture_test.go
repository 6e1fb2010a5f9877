package integration

import (
	"fmt"
	"net"
	"net/http"
	"testing"

	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// startIMDS serves our IMDS test server on both IMDS endpoints inside the
// lab's imds namespace.
func startIMDS(t testing.TB, l *lab.Lab, opts imdsserver.Options) *imdsserver.Server {
	t.Helper()
	srv := imdsserver.New(opts)
	for _, a := range []struct{ network, addr string }{
		{"tcp4", net.JoinHostPort(lab.IMDSv4, "80")},
		{"tcp6", net.JoinHostPort(lab.IMDSv6, "80")},
	} {
		ln, err := l.Listen(lab.IMDS, a.network, a.addr)
		if err != nil {
			t.Fatalf("listening on %s in imds: %v", a.addr, err)
		}
		go srv.Serve(ln)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// startNeighbours serves the link-local services pods must keep reaching
// (ECS credentials, EKS Pod Identity agent); each answers with its own name.
func startNeighbours(t testing.TB, l *lab.Lab) map[string]string {
	t.Helper()
	want := map[string]string{
		net.JoinHostPort(lab.ECSv4, "80"):         "ecs-credentials",
		net.JoinHostPort(lab.PodIdentityV4, "80"): "pod-identity-v4",
		net.JoinHostPort(lab.PodIdentityV6, "80"): "pod-identity-v6",
		net.JoinHostPort(lab.IMDSv4, "8080"):      "imds-address-other-port",
	}
	for addr, name := range want {
		network := "tcp4"
		if net.ParseIP(must(net.SplitHostPort(addr))).To4() == nil {
			network = "tcp6"
		}
		ln, err := l.Listen(lab.IMDS, network, addr)
		if err != nil {
			t.Fatalf("listening on %s in imds: %v", addr, err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, name)
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	return want
}

func must(host, _ string, err error) string {
	if err != nil {
		panic(err)
	}
	return host
}
