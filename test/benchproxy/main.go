// Command benchproxy is the userspace metadata proxy `make bench` compares
// imdsguard with: the kube2iam/kiam approach, where every IMDS request of a
// pod goes through an HTTP proxy on the node (there reached by an iptables
// DNAT; the bench points its client at the proxy directly). It is Go's
// httputil.ReverseProxy and nothing else: no credential logic, so what it
// costs is the least such a proxy can cost.
//
// It prints "ready" on stdout once it listens.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	upstream := flag.String("upstream", "http://169.254.169.254:80", "the metadata service")
	flag.Parse()
	target, err := url.Parse(*upstream)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchproxy:", err)
		os.Exit(2)
	}
	proxy := &httputil.ReverseProxy{
		// Rewrite, not Director: it adds no X-Forwarded-For, which IMDS
		// refuses on the token PUT (and which kube2iam does not send
		// either).
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
		},
		// Keep-alive to the upstream, as a long-running proxy has.
		Transport: &http.Transport{
			MaxIdleConns:        64,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchproxy:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "benchproxy:", err)
		os.Exit(1)
	}
}
