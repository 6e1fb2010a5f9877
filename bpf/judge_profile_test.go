package bpf

import (
	"strings"
	"testing"
)

// The judge takes the proof header, the TTL header and the token path from
// the policy's profile: every other cloud's clients are judged as AWS's
// are, by their own header names. These cases run through the same conn
// model as the table, fast paths cross-checked against the byte walk.

var (
	gcpProfile     = judgeProfile{proof: "metadata-flavor"}
	ociProfile     = judgeProfile{proof: "authorization", legacy: []string{"/opc/v1", "/openstack"}}
	alibabaProfile = judgeProfile{proof: "x-aliyun-ecs-metadata-token", ttl: "x-aliyun-ecs-metadata-token-ttl-seconds",
		tokenPath: "/latest/api/token", maxTTL: 21600}
	awsCapped = judgeProfile{proof: awsProfile.proof, ttl: awsProfile.ttl, tokenPath: awsProfile.tokenPath, maxTTL: 300}
	noProof   = judgeProfile{}
)

func profileCases() []judgeCase {
	const (
		gcpTok  = "/computeMetadata/v1/instance/service-accounts/default/token"
		ociKey  = "/opc/v2/identity/key.pem"
		aliCred = "/latest/meta-data/ram/security-credentials/role"
		ttlPut  = "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: %s\r\n\r\n"
	)
	gcp := judgeConfig{profile: &gcpProfile, prefixes: []string{"v1/instance/service-accounts"}}
	oci := judgeConfig{profile: &ociProfile}
	ali := judgeConfig{profile: &alibabaProfile}
	capped := judgeConfig{profile: &awsCapped}
	put := func(ttl string) string { return strings.Replace(ttlPut, "%s", ttl, 1) }
	gcpGet := httpReq("GET", gcpTok, "Host: metadata.google.internal", "Metadata-Flavor: Google")
	ociGet := httpReq("GET", ociKey, imdsHost, "Authorization: Bearer Oracle")
	aliGet := httpReq("GET", aliCred, imdsHost, "X-aliyun-ecs-metadata-token: QUFBQQ==")
	return []judgeCase{
		{name: "gcp: Metadata-Flavor is the proof", cfg: gcp, writes: []string{gcpGet},
			want: []request{ok("GET", gcpTok).tok().cred()}, sent: gcpGet},
		{name: "gcp: proof header in any case, byte by byte", cfg: gcp,
			writes: bytewise(httpReq("GET", gcpTok, "METADATA-FLAVOR: Google")),
			want:   []request{ok("GET", gcpTok).tok().cred()}, sent: httpReq("GET", gcpTok, "METADATA-FLAVOR: Google")},
		{name: "gcp: without Metadata-Flavor", cfg: gcp, writes: []string{bareGet(gcpTok)},
			want: []request{noTok(gcpTok).cred()}, eacces: true},
		{name: "gcp: AWS's token is no proof there", cfg: gcp, writes: []string{tokGet(gcpTok)},
			want: []request{noTok(gcpTok).cred()}, eacces: true},
		{name: "gcp: an empty Metadata-Flavor is none", cfg: gcp, writes: []string{httpReq("GET", gcpTok, "Metadata-Flavor: ")},
			want: []request{noTok(gcpTok).cred()}, eacces: true},
		{name: "gcp: a longer name that starts like it is none", cfg: gcp, writes: []string{httpReq("GET", gcpTok, "Metadata-Flavor-X: Google")},
			want: []request{noTok(gcpTok).cred()}, eacces: true},
		{name: "gcp: two proof headers are ambiguous", cfg: gcp,
			writes: []string{httpReq("GET", gcpTok, "Metadata-Flavor: Google", "Metadata-Flavor: Google")},
			want:   []request{badReq(gcpTok).tok().cred()}, eacces: true},
		{name: "gcp: no token PUT", cfg: gcp, writes: []string{tokenPut()},
			want: []request{refused("PUT", "/latest/api/token", ReasonIMDSv1NoToken)}, eacces: true},
		{name: "oci: Authorization on /opc/v2", cfg: oci, writes: []string{ociGet}, want: []request{ok("GET", ociKey).tok()}, sent: ociGet},
		{name: "oci: /opc/v2 without it", cfg: oci, writes: []string{bareGet(ociKey)}, want: []request{noTok(ociKey)}, eacces: true},
		{name: "oci: the legacy /opc/v1 even with it", cfg: oci,
			writes: []string{httpReq("GET", "/opc/v1/instance/", imdsHost, "Authorization: Bearer Oracle")},
			want:   []request{noTok("/opc/v1/instance/").tok()}, eacces: true},
		{name: "oci: the legacy path by another spelling", cfg: oci,
			writes: []string{httpReq("GET", "/OPC/./v1/instance/", imdsHost, "Authorization: Bearer Oracle")},
			want:   []request{noTok("/OPC/./v1/instance/").tok()}, eacces: true},
		{name: "oci: /openstack legacy", cfg: oci,
			writes: []string{httpReq("GET", "/openstack", imdsHost, "Authorization: Bearer Oracle")},
			want:   []request{noTok("/openstack").tok()}, eacces: true},
		{name: "oci: /opc/v10 is not /opc/v1", cfg: oci,
			writes: []string{httpReq("GET", "/opc/v10/x", imdsHost, "Authorization: Bearer Oracle")},
			want:   []request{ok("GET", "/opc/v10/x").tok()}, sent: httpReq("GET", "/opc/v10/x", imdsHost, "Authorization: Bearer Oracle")},
		{name: "alibaba: its token", cfg: ali, writes: []string{aliGet}, want: []request{ok("GET", aliCred).tok()}, sent: aliGet},
		{name: "alibaba: its token PUT", cfg: ali,
			writes: []string{httpReq("PUT", "/latest/api/token", imdsHost, "X-aliyun-ecs-metadata-token-ttl-seconds: 21600")},
			want:   []request{ok("PUT", "/latest/api/token").put()}, sent: httpReq("PUT", "/latest/api/token", imdsHost, "X-aliyun-ecs-metadata-token-ttl-seconds: 21600")},
		{name: "alibaba: over the cap", cfg: ali,
			writes: []string{httpReq("PUT", "/latest/api/token", imdsHost, "X-aliyun-ecs-metadata-token-ttl-seconds: 21601")},
			want:   []request{refused("PUT", "/latest/api/token", ReasonTokenTTLOverCap).put()}, eacces: true},
		{name: "ttl cap: at the cap", cfg: capped, writes: []string{put("300")},
			want: []request{ok("PUT", "/latest/api/token").put()}, sent: put("300")},
		{name: "ttl cap: one over", cfg: capped, writes: []string{put("301")},
			want: []request{refused("PUT", "/latest/api/token", ReasonTokenTTLOverCap).put()}, eacces: true},
		{name: "ttl cap: past 32 bits", cfg: capped, writes: []string{put("4294967596")},
			want: []request{refused("PUT", "/latest/api/token", ReasonTokenTTLOverCap).put()}, eacces: true},
		{name: "ttl cap: not a number", cfg: capped, writes: []string{put("3e2")},
			want: []request{refused("PUT", "/latest/api/token", ReasonTokenTTLOverCap).put()}, eacces: true},
		{name: "ttl cap: a blank inside", cfg: capped, writes: []string{put("3 00")},
			want: []request{refused("PUT", "/latest/api/token", ReasonTokenTTLOverCap).put()}, eacces: true},
		{name: "ttl cap: empty", cfg: capped, writes: []string{put("")},
			want: []request{refused("PUT", "/latest/api/token", ReasonTokenTTLOverCap).put()}, eacces: true},
		{name: "ttl cap: blanks around it", cfg: capped, writes: []string{put("  300  ")},
			want: []request{ok("PUT", "/latest/api/token").put()}, sent: put("  300  ")},
		{name: "ttl cap: byte by byte", cfg: capped, writes: bytewise(put("301")),
			want: []request{refused("PUT", "/latest/api/token", ReasonTokenTTLOverCap).put()}, eacces: true},
		{name: "ttl cap: two TTL headers are ambiguous", cfg: capped,
			writes: []string{"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-aws-ec2-metadata-token-ttl-seconds: 99999\r\n\r\n"},
			want:   []request{refused("PUT", "/latest/api/token", ReasonParseError)}, eacces: true},
		{name: "ttl cap: a GET's TTL header is the server's business", cfg: capped,
			writes: []string{httpReq("GET", "/latest/meta-data/", tokenHdr, "X-aws-ec2-metadata-token-ttl-seconds: 99999")},
			want:   []request{ok("GET", "/latest/meta-data/").tok()}, sent: httpReq("GET", "/latest/meta-data/", tokenHdr, "X-aws-ec2-metadata-token-ttl-seconds: 99999")},
		{name: "no proof: token-less requests pass", cfg: judgeConfig{profile: &noProof, noRequireToken: true},
			writes: []string{bareGet("/latest/meta-data/iam/security-credentials/r")},
			want:   []request{ok("GET", "/latest/meta-data/iam/security-credentials/r").cred()}, sent: bareGet("/latest/meta-data/iam/security-credentials/r")},
	}
}

// A budget of credential reads (what the daemon's per-cgroup count leaves
// this minute) is spent request by request within one message.
func credBudgetCases() []judgeCase {
	const cred = "/latest/meta-data/iam/security-credentials/role"
	one, none := uint32(1), uint32(0)
	two := tokGet(cred) + tokGet(cred)
	return []judgeCase{
		{name: "budget 1: the first read passes, the second is refused", cfg: judgeConfig{credBudget: &one}, writes: []string{two},
			want: []request{ok("GET", cred).tok().cred(), refused("GET", cred, ReasonCredentialLimit).tok().cred()},
			sent: tokGet(cred)}, // the write is short: its first request was sent
		{name: "budget 0: refused", cfg: judgeConfig{credBudget: &none}, writes: []string{tokGet(cred)},
			want: []request{refused("GET", cred, ReasonCredentialLimit).tok().cred()}, eacces: true},
		{name: "budget 0: other paths pass", cfg: judgeConfig{credBudget: &none}, writes: []string{tokGet("/latest/meta-data/instance-id")},
			want: []request{ok("GET", "/latest/meta-data/instance-id").tok()}, sent: tokGet("/latest/meta-data/instance-id")},
		{name: "budget 0 in audit mode: reported, passed", cfg: judgeConfig{credBudget: &none, audit: true}, writes: []string{tokGet(cred)},
			want: []request{refused("GET", cred, ReasonCredentialLimit).tok().cred().audited()}, sent: tokGet(cred)},
		{name: "a token-less read is refused for its token, not counted", cfg: judgeConfig{credBudget: &one}, writes: []string{bareGet(cred)},
			want: []request{noTok(cred).cred()}, eacces: true},
	}
}

func TestJudgeCredentialBudget(t *testing.T) {
	runJudgeCases(t, credBudgetCases())
}

func TestJudgeProfiles(t *testing.T) {
	runJudgeCases(t, profileCases())
}
