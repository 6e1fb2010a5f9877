package policy

import (
	"slices"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/internal/cloud"
)

func TestCloudProfileGivesTheDefaults(t *testing.T) {
	for _, c := range []struct {
		doc, detected string
		profile       string
		requireToken  bool
		endpoint      string
	}{
		{"", cloud.AWS, cloud.AWS, true, "[fd00:ec2::254]:80"},
		{"", cloud.GCP, cloud.GCP, true, "169.254.169.254:80"},
		{"", cloud.Generic, cloud.Generic, false, "169.254.169.254:80"},
		{"cloud: azure\n", cloud.AWS, cloud.Azure, true, "169.254.169.254:80"},
		{"cloud: alibaba\n", cloud.Generic, cloud.Alibaba, true, "100.100.100.200:80"},
		{"cloud: openstack\n", cloud.AWS, cloud.OpenStack, false, "169.254.169.254:80"},
		{"cloud: oci\n", cloud.AWS, cloud.OCI, true, "[fd00:c1::a9fe:a9fe]:80"},
	} {
		p, err := ParseIn([]byte(c.doc), "p.yaml", c.detected)
		if err != nil {
			t.Fatalf("%q detected %s: %v", c.doc, c.detected, err)
		}
		if p.Profile.Name != c.profile || *p.RequireToken != c.requireToken || !slices.Contains(p.Endpoints, c.endpoint) {
			t.Errorf("%q detected %s: profile %s requireToken %v endpoints %v; want %s, %v, with %s",
				c.doc, c.detected, p.Profile.Name, *p.RequireToken, p.Endpoints, c.profile, c.requireToken, c.endpoint)
		}
		want, _ := cloud.Lookup(c.profile)
		if !slices.Equal(p.CredentialPaths, want.CredentialPaths) {
			t.Errorf("%q: credential paths %v, want the profile's %v", c.doc, p.CredentialPaths, want.CredentialPaths)
		}
	}
}

func TestEndpointsAndCredentialPathsOverrideTheProfile(t *testing.T) {
	p, err := ParseIn([]byte("cloud: gcp\nendpoints: [\"10.0.0.1:8080\"]\ncredentialPaths: [/v1/secret]\n"), "p.yaml", cloud.AWS)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Endpoints, []string{"10.0.0.1:8080"}) || !slices.Equal(p.CredentialPaths, []string{"/v1/secret"}) {
		t.Errorf("endpoints %v credentialPaths %v: the policy's own lists must win", p.Endpoints, p.CredentialPaths)
	}
}

func TestCloudErrors(t *testing.T) {
	for _, c := range []struct{ doc, detected, want string }{
		{"cloud: ec2\n", cloud.AWS, `p.yaml:1: cloud: "ec2" is not a cloud (want one of auto, aws, gcp, azure, oci, alibaba, openstack, generic)`},
		{"cloud: AWS\n", cloud.AWS, `"AWS" is not a cloud`},
		{"cloud: [aws]\n", cloud.AWS, "p.yaml:1: cloud:"},
		{"requireToken: true\n", cloud.Generic, "p.yaml:1: requireToken: cloud generic (detected by cloud: auto) asks clients for no token or header"},
		{"cloud: openstack\nrequireToken: true\n", cloud.AWS, "p.yaml:2: requireToken: cloud openstack (named by cloud) asks clients for no token"},
		{"cloud: gcp\nmaxTokenTTL: 60\n", cloud.AWS, "p.yaml:2: maxTokenTTL: cloud gcp (named by cloud) has no tokens to cap"},
		{"maxTokenTTL: 0\n", cloud.AWS, "p.yaml:1: maxTokenTTL: want an integer from 1 to 21600, got the number 0"},
		{"maxTokenTTL: 21601\n", cloud.AWS, "want an integer from 1 to 21600, got the number 21601"},
	} {
		_, err := ParseIn([]byte(c.doc), "p.yaml", c.detected)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one containing %q", c.doc, err, c.want)
		}
	}
}

func TestCompileWritesTheProfile(t *testing.T) {
	p, err := ParseIn([]byte("cloud: oci\n"), "p.yaml", cloud.AWS)
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Compile()
	if err != nil {
		t.Fatal(err)
	}
	prof := c.Config.Prof
	if got := chars(prof.Proof[:prof.ProofLen]); got != "authorization" || prof.TokenPathLen != 0 || prof.MaxTtl != 0 {
		t.Errorf("oci profile: proof %q token path %d max ttl %d; want authorization and no token flow", got, prof.TokenPathLen, prof.MaxTtl)
	}
	if c.Config.LegacyCount != 2 || chars(c.Config.Legacy[0].S[:c.Config.Legacy[0].Len]) != "/opc/v1" {
		t.Errorf("oci legacy paths: %d, first %q", c.Config.LegacyCount, chars(c.Config.Legacy[0].S[:c.Config.Legacy[0].Len]))
	}

	p, err = ParseIn([]byte("maxTokenTTL: 300\n"), "p.yaml", cloud.Alibaba)
	if err != nil {
		t.Fatal(err)
	}
	if c, err = p.Compile(); err != nil {
		t.Fatal(err)
	}
	prof = c.Config.Prof
	if chars(prof.Proof[:prof.ProofLen]) != "x-aliyun-ecs-metadata-token" || chars(prof.Ttl[:prof.TtlLen]) != "x-aliyun-ecs-metadata-token-ttl-seconds" ||
		chars(prof.TokenPath[:prof.TokenPathLen]) != "/latest/api/token" || prof.MaxTtl != 300 {
		t.Errorf("alibaba profile with maxTokenTTL 300: %+v", prof)
	}
}

func chars(s []int8) string {
	b := make([]byte, len(s))
	for i, c := range s {
		b[i] = byte(c)
	}
	return string(b)
}

func TestCredentialReadsPerMinuteReachesTheKernel(t *testing.T) {
	p, err := Parse([]byte("credentialReadsPerMinute: 30\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if c.Config.CredReadsPerMin != 30 {
		t.Errorf("config bound %d, want 30", c.Config.CredReadsPerMin)
	}
	if d, _ := Default(cloud.AWS); d.CredentialReadsPerMinute != 0 {
		t.Errorf("default bound %d, want none", d.CredentialReadsPerMinute)
	}
	for doc, want := range map[string]string{
		"credentialReadsPerMinute: 0\n":       "p.yaml:1: credentialReadsPerMinute: want an integer from 1 to 1000000, got the number 0",
		"credentialReadsPerMinute: lots\n":    `got the string "lots"`,
		"credentialReadsPerMinute: 1000001\n": "want an integer from 1 to 1000000",
	} {
		if _, err := Parse([]byte(doc), "p.yaml"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one containing %q", doc, err, want)
		}
	}
}

func TestARuleSetsItsOwnCredentialReadBound(t *testing.T) {
	doc := "credentialReadsPerMinute: 30\nrules:\n  - name: batch\n    match: {cgroup: /system.slice/batch.service}\n    credentialReadsPerMinute: 600\n"
	p, err := Parse([]byte(doc), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if c.Rules[0].CredReadsPerMin != 600 || c.Config.CredReadsPerMin != 30 {
		t.Errorf("rule bound %d, policy bound %d; want 600 and 30", c.Rules[0].CredReadsPerMin, c.Config.CredReadsPerMin)
	}
	assertRoundTrip(t, p)
	// a bound of its own may be looser: a grant, which needs a cgroup
	_, err = Parse([]byte("rules:\n  - name: all\n    match: {uid: 0}\n    credentialReadsPerMinute: 600\n"), "p.yaml")
	if err == nil || !strings.Contains(err.Error(), "a rule that grants credentialReadsPerMinute must also match a cgroup") {
		t.Errorf("rule without a cgroup: %v", err)
	}
}
