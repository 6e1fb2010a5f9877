// Package cloud knows each cloud's instance metadata service: where it
// listens, what request proves a legitimate client, and which paths hand
// out credentials. A policy names a profile (or "auto", see Detect); the
// policy package turns it into the kernel's tables. It imports nothing of
// the daemon's, so the facts stay in one small, reviewable table.
package cloud

import "slices"

// Names of the profiles, as a policy's cloud key spells them.
const (
	Auto      = "auto" // detect at start (Detect)
	AWS       = "aws"
	GCP       = "gcp"
	Azure     = "azure"
	OCI       = "oci"
	Alibaba   = "alibaba"
	OpenStack = "openstack"
	// Generic is what auto falls back to when no cloud is recognised: the
	// link-local address guarded against pods, credential paths of the
	// EC2-style services logged, and no proof required (there is no
	// request a client of an unknown service is known to send).
	Generic = "generic"
)

// Proof is the request a legitimate client of a metadata service sends:
// a header on every request, with a fixed value or (Value "") any value,
// such as a session token. Where the token comes from a PUT, TokenPath is
// that path and TTLHeader the header asking for the token's lifetime in
// seconds, at most MaxTTL.
type Proof struct {
	Header    string // lower case
	Value     string // "" for any non-empty value
	TokenPath string
	TTLHeader string // lower case
	MaxTTL    int
}

// Profile is one cloud's metadata service.
type Profile struct {
	Name      string
	Endpoints []string // host:port, IPv4 and IPv6
	// Proof is nil where the service asks for none (OpenStack, Generic):
	// there only pods are refused and credential reads logged.
	Proof *Proof
	// CredentialPaths are flagged as credential reads (any first segment:
	// "/latest/…" and "/2021-07-15/…" alike, see the policy's key).
	CredentialPaths []string
	// LegacyPaths are path prefixes of the service's older, proof-less
	// interface (OCI's /opc/v1/): refused like a request without the proof.
	LegacyPaths []string
	// Sources says where the facts above come from, and what is not
	// verified (docs/clouds.md shows it).
	Sources string
}

// HasProof reports whether the profile's service asks clients for a proof.
func (p Profile) HasProof() bool { return p.Proof != nil }

// ec2CredentialPaths are the EC2-style credential paths (AWS, and the
// services that copy its layout).
var ec2CredentialPaths = []string{
	"/latest/meta-data/iam/security-credentials/",
	"/latest/meta-data/identity-credentials/",
	"/latest/meta-data/iam/info",
}

// profiles returns the table afresh each call: callers may change what
// they get without touching anyone else's copy.
func profiles() []Profile {
	return []Profile{
		{
			Name:      AWS,
			Endpoints: []string{"169.254.169.254:80", "[fd00:ec2::254]:80"},
			Proof: &Proof{Header: "x-aws-ec2-metadata-token", TokenPath: "/latest/api/token",
				TTLHeader: "x-aws-ec2-metadata-token-ttl-seconds", MaxTTL: 21600},
			CredentialPaths: slices.Clone(ec2CredentialPaths),
			Sources:         "AWS EC2 user guide, 'Use the Instance Metadata Service' (IMDSv2); verified against the AWS SDK's IMDS client (aws-sdk-go-v2 feature/ec2/imds) in the lab",
		},
		{
			Name:      GCP,
			Endpoints: []string{"169.254.169.254:80", "[fd20:ce::254]:80"},
			Proof:     &Proof{Header: "metadata-flavor", Value: "Google"},
			CredentialPaths: []string{
				"/computeMetadata/v1/instance/service-accounts/",
				"/computeMetadata/v1/instance/attributes/kube-env",
			},
			Sources: "Compute Engine docs, 'About VM metadata' (Metadata-Flavor: Google on every request); the IPv6 address fd20:ce::254 is not verified",
		},
		{
			Name:            Azure,
			Endpoints:       []string{"169.254.169.254:80"},
			Proof:           &Proof{Header: "metadata", Value: "true"},
			CredentialPaths: []string{"/metadata/identity/oauth2/token"},
			Sources:         "Azure IMDS docs (Metadata: true; X-Forwarded-For refused) and managed identities docs; the WireServer (168.63.129.16) is not guarded",
		},
		{
			Name:            OCI,
			Endpoints:       []string{"169.254.169.254:80", "[fd00:c1::a9fe:a9fe]:80"},
			Proof:           &Proof{Header: "authorization", Value: "Bearer Oracle"},
			CredentialPaths: []string{"/opc/v2/identity/"},
			LegacyPaths:     []string{"/opc/v1/", "/openstack/"},
			Sources:         "OCI docs, 'Getting Instance Metadata' (IMDSv2: /opc/v2 with Authorization: Bearer Oracle; /opc/v1 and /openstack legacy); the IPv6 address is not verified",
		},
		{
			Name:      Alibaba,
			Endpoints: []string{"100.100.100.200:80"},
			Proof: &Proof{Header: "x-aliyun-ecs-metadata-token", TokenPath: "/latest/api/token",
				TTLHeader: "x-aliyun-ecs-metadata-token-ttl-seconds", MaxTTL: 21600},
			CredentialPaths: []string{"/latest/meta-data/ram/security-credentials/"},
			Sources:         "Alibaba Cloud ECS docs, 'Instance metadata' (security hardening mode); not verified against a client",
		},
		{
			Name:      OpenStack,
			Endpoints: []string{"169.254.169.254:80"},
			CredentialPaths: append([]string{"/openstack/latest/password", "/openstack/latest/vendor_data2.json"},
				ec2CredentialPaths...),
			Sources: "OpenStack Nova metadata service docs (no tokens); not verified against a client",
		},
		{
			Name:            Generic,
			Endpoints:       []string{"169.254.169.254:80"},
			CredentialPaths: slices.Clone(ec2CredentialPaths),
			Sources:         "no cloud recognised: pods refused, EC2-style credential reads logged, no proof required",
		},
	}
}

// Names returns the names a policy's cloud key accepts.
func Names() []string {
	out := []string{Auto}
	for _, p := range profiles() {
		out = append(out, p.Name)
	}
	return out
}

// Lookup returns the profile named name (lower case), or false.
func Lookup(name string) (Profile, bool) {
	for _, p := range profiles() {
		if p.Name == name {
			return p, true
		}
	}
	return Profile{}, false
}

// All returns every profile, in the order docs/clouds.md lists them.
func All() []Profile { return profiles() }

// Known reports whether name is a profile or auto.
func Known(name string) bool { return slices.Contains(Names(), name) }
