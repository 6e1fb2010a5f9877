package policy

import (
	"github.com/imdsguard/imdsguard/internal/cloud"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/bpf"

	"github.com/imdsguard/imdsguard/internal/kernelpolicy"
)

func TestDefaultPolicy(t *testing.T) {
	p, err := Default(cloud.AWS)
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != ModeEnforce || !*p.BlockNonHostNetns {
		t.Fatalf("default policy: mode %q blockNonHostNetns %v, want enforce and true", p.Mode, *p.BlockNonHostNetns)
	}
	c, err := p.Compile()
	if err != nil {
		t.Fatal(err)
	}
	want := bpf.ConfigBlockNonHostNetns | bpf.ConfigRequireToken | bpf.ConfigRefuseForwarded
	if c.Config.Mode != bpf.ModeEnforce || c.Config.Flags != want || len(c.Endpoints) != 2 {
		t.Fatalf("compiled default: %+v", c)
	}
	if c.Config.PrefixCount != 3 || prefixString(c.Config.Prefixes[0].S[:], c.Config.Prefixes[0].Len) != "meta-data/iam/security-credentials" {
		t.Fatalf("compiled credential prefixes: %+v", c.Config.Prefixes[:c.Config.PrefixCount])
	}
}

func TestEmptyFileMeansDefaults(t *testing.T) {
	p, err := Parse([]byte("  \n"), "empty.yaml")
	if err != nil {
		t.Fatal(err)
	}
	d, _ := Default(cloud.AWS)
	got, _ := p.YAML()
	want, _ := d.YAML()
	if string(got) != string(want) {
		t.Fatalf("empty file:\n%s\nwant the defaults:\n%s", got, want)
	}
}

// TestParseErrors checks the messages of the checks that predate rules, each
// at its exact line and key (parse_test.go has the rest).
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []wantErr
	}{
		{"unknown key", "mode: enforce\nmdoe: audit\n", []wantErr{{2, "mdoe", `unknown key "mdoe" (did you mean "mode"?)`}}},
		{"feature not yet enforced", "mode: audit\nhopLimit: 1\n", []wantErr{{2, "hopLimit", `unknown key "hopLimit"`}}},
		{"credential path without version", `credentialPaths: ["meta-data/iam/info"]`, []wantErr{{1, "credentialPaths[0]", "must start with"}}},
		{"credential path only a version", "\ncredentialPaths: [\"/latest/\"]", []wantErr{{2, "credentialPaths[0]", "names no path"}}},
		{"credential path encoded", `credentialPaths: ["/latest/meta-data/iam%2Finfo"]`, []wantErr{{1, "credentialPaths[0]", "decoded"}}},
		{"credential path too long", `credentialPaths: ["/latest/` + strings.Repeat("a", 65) + `"]`, []wantErr{{1, "credentialPaths[0]", "longer than 64"}}},
		{"too many credential paths", `credentialPaths: ["/a/1","/a/2","/a/3","/a/4","/a/5","/a/6","/a/7","/a/8","/a/9"]`, []wantErr{{1, "credentialPaths", "at most 8 paths (got 9)"}}},
		{"requireToken not a bool", "requireToken: yes please\n", []wantErr{{1, "requireToken", `want a boolean (true or false), got the string "yes please"`}}},
		{"wrong type", "mode: audit\nblockNonHostNetns: maybe\n", []wantErr{{2, "blockNonHostNetns", "want a boolean"}}},
		{"bad mode", "mode: permissive\n", []wantErr{{1, "mode", `"permissive" is not a mode (want "enforce" or "audit")`}}},
		{"bad apiVersion", "apiVersion: v2\n", []wantErr{{1, "apiVersion", `"v2" is not supported (want "imdsguard.io/v1")`}}},
		{"bad kind", "kind: Pod\n", []wantErr{{1, "kind", `"Pod" is not supported (want "Policy")`}}},
		{"empty endpoints", "endpoints: []\n", []wantErr{{1, "endpoints", "must list at least one endpoint"}}},
		{"endpoint without port", `endpoints: ["169.254.169.254"]`, []wantErr{{1, "endpoints[0]", `"169.254.169.254" is not an address:port`}}},
		{"endpoint port 0", `endpoints: ["169.254.169.254:0"]`, []wantErr{{1, "endpoints[0]", "port must not be 0"}}},
		{"duplicate endpoint via mapped form", "endpoints:\n  - 169.254.169.254:80\n  - \"[::ffff:169.254.169.254]:80\"\n",
			[]wantErr{{3, "endpoints[1]", `"[::ffff:169.254.169.254]:80" is listed twice: it is the same endpoint as endpoints[0] (line 2)`}}},
		{"all errors at once", "mode: x\napiVersion: y\nendpoints: [\"a\"]\n", []wantErr{
			{1, "mode", `"x" is not a mode`},
			{2, "apiVersion", `"y" is not supported`},
			{3, "endpoints[0]", `"a" is not an address:port`},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), "p.yaml")
			checkErrors(t, tt.yaml, err, tt.want)
		})
	}
}

func TestEndpointKey(t *testing.T) {
	tests := []struct {
		in       string
		wantAddr [16]byte
	}{
		{"169.254.169.254:80", [16]byte{10: 0xff, 11: 0xff, 12: 169, 13: 254, 14: 169, 15: 254}},
		{"[::ffff:169.254.169.254]:80", [16]byte{10: 0xff, 11: 0xff, 12: 169, 13: 254, 14: 169, 15: 254}},
		{"[fd00:ec2::254]:80", [16]byte{0: 0xfd, 2: 0x0e, 3: 0xc2, 14: 0x02, 15: 0x54}},
	}
	for _, tt := range tests {
		ap, err := ParseEndpoint(tt.in)
		if err != nil {
			t.Fatalf("ParseEndpoint(%q): %v", tt.in, err)
		}
		k := kernelpolicy.EndpointKey(ap)
		if k.Addr != tt.wantAddr {
			t.Errorf("%s: addr % x, want % x", tt.in, k.Addr, tt.wantAddr)
		}
		// Port 80 in network byte order, read as a little-endian uint16.
		if k.Port != 0x5000 {
			t.Errorf("%s: port %#x, want 0x5000", tt.in, k.Port)
		}
	}
}

func TestAuditCompilesToAuditMode(t *testing.T) {
	p, err := Parse([]byte("mode: audit\nblockNonHostNetns: false\nrequireToken: false\nrefuseForwarded: false\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if c.Config.Mode != bpf.ModeAudit || c.Config.Flags&bpf.ConfigBlockNonHostNetns != 0 {
		t.Fatalf("compiled %+v, want audit mode without the netns flag", c)
	}
	if c.Config.Flags != 0 {
		t.Fatalf("flags %#x, want none", c.Config.Flags)
	}
}

func TestCredentialPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"/latest/meta-data/iam/security-credentials/": "meta-data/iam/security-credentials",
		"/2021-07-15/meta-data/IAM/info":              "meta-data/iam/info",
		"/latest//meta-data/./iam/x/../info":          "meta-data/iam/info",
	} {
		got, err := CredentialPrefix(in)
		if err != nil || got != want {
			t.Errorf("CredentialPrefix(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func prefixString(s []int8, n uint32) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(s[i])
	}
	return string(b)
}
