package integration

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// cloudCase is one cloud's metadata service as its clients use it: the
// requests are byte for byte what the cloud's own clients send (google-auth
// and the gcloud guest agent, azure-identity, the OCI SDK, the Alibaba
// SDK's IMDS client, cloud-init for OpenStack).
type cloudCase struct {
	name   string
	dmi    []string // DMI files and values the node's firmware shows
	addrs  []string // where the service listens
	legit  string   // a credential read with the cloud's proof
	bare   string   // the same read without it ("" when the cloud has no proof)
	legacy string   // a request on the legacy proof-less interface, with the proof header
}

func cloudCases() []cloudCase {
	v4 := net.JoinHostPort(lab.IMDSv4, "80")
	return []cloudCase{
		{
			name:  "gcp",
			dmi:   []string{"sys_vendor", "Google", "product_name", "Google Compute Engine"},
			addrs: []string{v4, net.JoinHostPort(lab.GCPv6, "80")},
			legit: "GET /computeMetadata/v1/instance/service-accounts/default/token HTTP/1.1\r\nHost: metadata.google.internal\r\n" +
				"User-Agent: python-requests/2.31.0\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\nMetadata-Flavor: Google\r\n\r\n",
			bare: "GET /computeMetadata/v1/instance/service-accounts/default/token HTTP/1.1\r\nHost: metadata.google.internal\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
		},
		{
			name:  "azure",
			dmi:   []string{"sys_vendor", "Microsoft Corporation", "chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77"},
			addrs: []string{v4},
			legit: "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F HTTP/1.1\r\nHost: 169.254.169.254\r\n" +
				"Metadata: true\r\nUser-Agent: azsdk-python-identity/1.15.0 Python/3.11.2 (Linux-6.1.0-cloud-amd64-x86_64-with-glibc2.36)\r\nAccept: */*\r\n\r\n",
			bare: "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
		},
		{
			name:   "oci",
			dmi:    []string{"sys_vendor", "QEMU", "chassis_asset_tag", "OracleCloud.com"},
			addrs:  []string{v4, net.JoinHostPort(lab.OCIv6, "80")},
			legit:  "GET /opc/v2/identity/key.pem HTTP/1.1\r\nHost: 169.254.169.254\r\nAuthorization: Bearer Oracle\r\nUser-Agent: Oracle-PythonSDK/2.126.0\r\nAccept: */*\r\n\r\n",
			bare:   "GET /opc/v2/identity/key.pem HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: curl/7.88.1\r\n\r\n",
			legacy: "GET /opc/v1/identity/key.pem HTTP/1.1\r\nHost: 169.254.169.254\r\nAuthorization: Bearer Oracle\r\n\r\n",
		},
		{
			name:  "alibaba",
			dmi:   []string{"sys_vendor", "Alibaba Cloud", "product_name", "Alibaba Cloud ECS"},
			addrs: []string{net.JoinHostPort(lab.AlibabaV4, "80")},
			legit: "GET /latest/meta-data/ram/security-credentials/EcsRamRole HTTP/1.1\r\nHost: 100.100.100.200\r\n" +
				"X-aliyun-ecs-metadata-token: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\r\nUser-Agent: AlibabaCloud (linux; amd64) Go/1.22\r\n\r\n",
			bare: "GET /latest/meta-data/ram/security-credentials/EcsRamRole HTTP/1.1\r\nHost: 100.100.100.200\r\n\r\n",
		},
		{
			name:  "openstack",
			dmi:   []string{"sys_vendor", "OpenStack Foundation", "product_name", "OpenStack Nova"},
			addrs: []string{v4},
			legit: "GET /openstack/latest/password HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: Cloud-Init/23.1.1\r\nAccept: */*\r\n\r\n",
		},
		{
			name:  "generic",
			dmi:   []string{"sys_vendor", "LENOVO", "product_name", "20XW"},
			addrs: []string{v4},
			legit: "GET /latest/meta-data/iam/security-credentials/role HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
		},
	}
}

// Each cloud's profile, chosen by cloud: auto from the node's DMI strings,
// guards that cloud's service at its own addresses: its clients' requests
// pass unchanged, the same request without the proof fails with EACCES
// before the server reads a byte, a pod is refused at connect, and the
// credential read is flagged in an event that names the cloud.
func TestEveryCloudProfileGuardsItsService(t *testing.T) {
	for _, c := range cloudCases() {
		t.Run(c.name, func(t *testing.T) {
			l := lab.New(t)
			srv := serveAt(t, l, c.addrs)
			d := startDaemon(t, l, "--dmi-dir", daemon.FakeDMI(t, c.dmi[1], c.dmi[2:]...))
			log := d.WaitLog(`"msg":"cloud"`, 5*time.Second)
			if !strings.Contains(log, `"cloud":"`+c.name+`"`) {
				t.Fatalf("start log %s, want cloud %s", log, c.name)
			}
			for _, addr := range c.addrs {
				checkPasses(t, l, srv, addr, c.legit)
				if c.bare != "" {
					checkRefused(t, l, srv, addr, c.bare)
				}
				if c.legacy != "" {
					checkRefused(t, l, srv, addr, c.legacy)
				}
				if r := runClient(t, l, lab.Pod, "", "-mode", "connect", "-addr", addr); r.ConnectErrno != "EPERM" {
					t.Errorf("pod connect to %s: errno %q, want EPERM", addr, r.ConnectErrno)
				}
			}
			ev := d.WaitEvent("credential read", func(e event) bool { return e.Kind == "request" && e.Action == "allow" })
			if !ev.CredentialAccess || ev.Cloud != c.name {
				t.Errorf("event %+v: want credential_access and cloud %q", ev, c.name)
			}
		})
	}
}

// A token PUT asking for a longer life than maxTokenTTL fails with EACCES
// before the server sees it; one within the cap gets its token. Alibaba's
// flow has its own header names; AWS's is the default profile's.
func TestTokenTTLOverTheCapIsRefused(t *testing.T) {
	for _, c := range []struct{ cloud, addr, ttlHeader string }{
		{"aws", net.JoinHostPort(lab.IMDSv4, "80"), "X-aws-ec2-metadata-token-ttl-seconds"},
		{"alibaba", net.JoinHostPort(lab.AlibabaV4, "80"), "X-aliyun-ecs-metadata-token-ttl-seconds"},
	} {
		t.Run(c.cloud, func(t *testing.T) {
			l := lab.New(t)
			srv := serveAt(t, l, []string{c.addr})
			d := startDaemon(t, l, "--policy", writePolicy(t, t.TempDir(), "policy.yaml", "cloud: "+c.cloud+"\nmaxTokenTTL: 300\n"))
			put := func(ttl string) string {
				return "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n" + c.ttlHeader + ": " + ttl + "\r\nContent-Length: 0\r\n\r\n"
			}
			checkPasses(t, l, srv, c.addr, put("300"))
			for _, ttl := range []string{"301", "21600", "99999999999", "3e2"} {
				checkRefused(t, l, srv, c.addr, put(ttl))
			}
			ev := d.WaitEvent("refused token PUT", func(e event) bool { return e.Method == "PUT" && e.Action == "deny" })
			if ev.Reason != "token_ttl_over_cap" || ev.Path != "/latest/api/token" {
				t.Errorf("event %+v, want deny token_ttl_over_cap on the token path", ev)
			}
		})
	}
}

// serveAt serves the test IMDS server at each address in the lab's imds
// namespace: it answers every path and records every byte it reads.
func serveAt(t *testing.T, l *lab.Lab, addrs []string) *imdsserver.Server {
	t.Helper()
	srv := imdsserver.New(imdsserver.Options{})
	for _, a := range addrs {
		network := "tcp4"
		if strings.HasPrefix(a, "[") {
			network = "tcp6"
		}
		ln, err := l.Listen(lab.IMDS, network, a)
		if err != nil {
			t.Fatalf("listening on %s in imds: %v", a, err)
		}
		go srv.Serve(ln)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// checkPasses sends req from the node and wants it to reach the server
// byte for byte.
func checkPasses(t *testing.T, l *lab.Lab, srv *imdsserver.Server, addr, req string) {
	t.Helper()
	before := srv.ReceivedBytes()
	r := runClient(t, l, lab.Node, "", "-mode", "raw", "-addr", addr, "-write", req)
	if r.ConnectErrno != "" || len(r.Writes) != 1 || r.Writes[0].Errno != "" {
		t.Fatalf("%s %q: connect %q writes %+v, want it sent", addr, firstLine(req), r.ConnectErrno, r.Writes)
	}
	if got := receivedSince(srv, before); got != req {
		t.Fatalf("%s: server received %q, want exactly %q", addr, got, req)
	}
}

// checkRefused sends req from the node and wants the write to fail with
// EACCES and the server to read none of it.
func checkRefused(t *testing.T, l *lab.Lab, srv *imdsserver.Server, addr, req string) {
	t.Helper()
	before := srv.ReceivedBytes()
	r := runClient(t, l, lab.Node, "", "-mode", "raw", "-addr", addr, "-write", req)
	if len(r.Writes) != 1 || r.Writes[0].Errno != "EACCES" {
		t.Errorf("%s %q: writes %+v (connect %q), want EACCES", addr, firstLine(req), r.Writes, r.ConnectErrno)
	}
	if n := srv.ReceivedBytes() - before; n != 0 {
		t.Errorf("%s %q: the server read %d bytes of a refused request", addr, firstLine(req), n)
	}
}

// receivedSince is what the server read after it had read before bytes.
func receivedSince(srv *imdsserver.Server, before int) string {
	var all []byte
	for _, c := range srv.Conns() {
		all = append(all, c.Received...)
	}
	if before > len(all) {
		return ""
	}
	return string(all[before:])
}

func firstLine(req string) string {
	line, _, _ := strings.Cut(req, "\r\n")
	return line
}

// Past credentialReadsPerMinute a cgroup's credential read fails with
// EACCES before the server sees it; its other reads still pass. A rule's
// own bound replaces the policy's for the processes it matches, and each
// cgroup counts its own reads.
func TestCredentialReadsPastTheBoundAreRefused(t *testing.T) {
	l := lab.New(t)
	srv := startIMDS(t, l, imdsserver.Options{})
	tight, _ := l.NewSubCgroup(t, "tight")
	pol := "credentialReadsPerMinute: 3\nrules:\n  - name: tight\n    match: {cgroup: " + l.CgroupRel + "/" + filepath.Base(tight) +
		"}\n    credentialReadsPerMinute: 1\n"
	d := startDaemon(t, l, "--policy", writePolicy(t, t.TempDir(), "policy.yaml", pol))
	addr := net.JoinHostPort(lab.IMDSv4, "80")
	cred := "GET " + credPath + " HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: t\r\n\r\n"
	for range 3 {
		checkPasses(t, l, srv, addr, cred)
	}
	checkRefused(t, l, srv, addr, cred)
	checkPasses(t, l, srv, addr, "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: t\r\n\r\n")
	ev := d.WaitEvent("refused credential read", func(e event) bool { return e.Reason == "credential_read_limit" })
	if ev.Action != "deny" || !ev.CredentialAccess || ev.Cgroup != l.CgroupRel {
		t.Errorf("event %+v, want deny with credential_access in the lab's cgroup", ev)
	}
	// the rule's cgroup: one read, then refused, whatever the lab's count
	for i, want := range []string{"", "EACCES"} {
		before := srv.ReceivedBytes()
		r := runClient(t, l, lab.Node, tight, "-mode", "raw", "-addr", addr, "-write", cred)
		got := ""
		if len(r.Writes) == 1 {
			got = r.Writes[0].Errno
		}
		if got != want || (want == "") != (srv.ReceivedBytes()-before == len(cred)) {
			t.Errorf("read %d in the rule's cgroup: writes %+v, server read %d bytes; want errno %q", i+1, r.Writes, srv.ReceivedBytes()-before, want)
		}
	}
}
