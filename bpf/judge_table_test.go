package bpf

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Table-driven tests of the request judge (http/), replayed through the conn
// model of judge_harness_test.go. Each case is a sequence of write() calls on
// one socket; it states every request the judge must report (the events), the
// exact bytes the server must receive, and whether a write fails with EACCES.

// Request builders. Every request is complete HTTP/1.1 with CRLF line ends
// unless a case spells its bytes out.

const (
	imdsHost = "Host: 169.254.169.254"
	tokenHdr = "X-aws-ec2-metadata-token: AQAEAHNvbWV0b2tlbg=="
	ttlHdr   = "X-aws-ec2-metadata-token-ttl-seconds: 21600"
)

// httpReq builds "METHOD target HTTP/1.1" with the given header lines and the
// blank line that ends the header block.
func httpReq(method, target string, headers ...string) string {
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\n")
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// tokGet is an IMDSv2 GET: it carries a token.
func tokGet(path string) string { return httpReq("GET", path, imdsHost, tokenHdr) }

// bareGet is an IMDSv1 GET: no token.
func bareGet(path string) string { return httpReq("GET", path, imdsHost) }

// tokenPut is how IMDSv2 starts: it needs no token.
func tokenPut() string { return httpReq("PUT", "/latest/api/token", imdsHost, ttlHdr) }

// withBody builds a request announcing body with Content-Length, body appended.
func withBody(method, path, body string, headers ...string) string {
	headers = append(headers, "Content-Length: "+strconv.Itoa(len(body)))
	return httpReq(method, path, headers...) + body
}

// bytewise splits s into one write per byte.
func bytewise(s string) []string {
	out := make([]string, len(s))
	for i := range len(s) {
		out[i] = s[i : i+1]
	}
	return out
}

// splitAfter splits s into writes, each ending just after the next marker
// (searched from where the previous write ended); the rest is the last write.
func splitAfter(t *testing.T, s string, markers ...string) []string {
	t.Helper()
	var out []string
	for _, m := range markers {
		i := strings.Index(s, m)
		if i < 0 {
			t.Fatalf("marker %q not in %q", m, s)
		}
		out = append(out, s[:i+len(m)])
		s = s[i+len(m):]
	}
	return append(out, s)
}

// Expected verdicts, built by chaining: ok("GET", p).tok().cred().

func ok(method, path string) request {
	return request{Method: method, Path: path, Action: ActionAllow}
}

func refused(method, path string, why Reason) request {
	return request{Method: method, Path: path, Action: ActionDeny, Reason: why}
}

// noTok is a GET refused for its missing token.
func noTok(path string) request { return refused("GET", path, ReasonIMDSv1NoToken) }

// badReq is a GET refused because it cannot be parsed.
func badReq(path string) request { return refused("GET", path, ReasonParseError) }

func (r request) tok() request  { r.HasToken = true; return r }
func (r request) cred() request { r.Credential = true; return r }
func (r request) fwd() request  { r.Forwarded = true; return r }
func (r request) put() request  { r.TokenPut = true; return r }

// audited is r as audit mode reports it: refusals become audit.
func (r request) audited() request {
	if r.Action == ActionDeny {
		r.Action = ActionAudit
	}
	return r
}

type judgeCase struct {
	name   string
	cfg    judgeConfig
	writes []string  // one write() each
	want   []request // every final verdict, in order
	sent   string    // exactly what the server receives
	held   string    // bytes still held back (corked) after the last write
	eacces bool      // some write fails with EACCES
}

// pipelined builds n token GETs, the one at index bad (if >= 0) without a
// token, and what the judge reports for them up to and including bad.
func pipelined(n, bad int) (reqs []string, want []request) {
	for i := range n {
		p := fmt.Sprintf("/latest/meta-data/r%d", i)
		if i == bad {
			reqs = append(reqs, bareGet(p))
			want = append(want, noTok(p))
			continue
		}
		reqs = append(reqs, tokGet(p))
		if bad < 0 || i < bad {
			want = append(want, ok("GET", p).tok())
		}
	}
	return reqs, want
}

func judgeCases(t *testing.T) []judgeCase {
	const (
		scPath   = "/latest/meta-data/iam/security-credentials/role"
		idPath   = "/latest/meta-data/instance-id"
		tokPath  = "/latest/api/token"
		bodyFake = "GET /latest/meta-data/iam/security-credentials/role HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n"
	)
	audit := judgeConfig{audit: true}

	var cases []judgeCase
	add := func(c ...judgeCase) { cases = append(cases, c...) }

	// --- the token rule -------------------------------------------------
	add(
		judgeCase{name: "token GET allowed", writes: []string{tokGet(idPath)},
			want: []request{ok("GET", idPath).tok()}, sent: tokGet(idPath)},
		judgeCase{name: "token-less GET refused", writes: []string{bareGet(idPath)},
			want: []request{noTok(idPath)}, eacces: true},
		judgeCase{name: "token PUT passes without token", writes: []string{tokenPut()},
			want: []request{ok("PUT", tokPath).put()}, sent: tokenPut()},
		judgeCase{name: "token PUT with XFF refused",
			writes: []string{httpReq("PUT", tokPath, imdsHost, ttlHdr, "X-Forwarded-For: 10.0.0.1")},
			want:   []request{refused("PUT", tokPath, ReasonForwardedRequest).fwd()}, eacces: true},
		// the token path is compared after normalisation, exactly: a
		// trailing slash makes it another path, the query does not count
		judgeCase{name: "token PUT with trailing slash is not the token path",
			writes: []string{httpReq("PUT", tokPath+"/", imdsHost, ttlHdr)},
			want:   []request{refused("PUT", tokPath+"/", ReasonIMDSv1NoToken)}, eacces: true},
		judgeCase{name: "token PUT with query is the token path",
			writes: []string{httpReq("PUT", tokPath+"?x=1", imdsHost, ttlHdr)},
			want:   []request{ok("PUT", tokPath+"?x=1").put()}, sent: httpReq("PUT", tokPath+"?x=1", imdsHost, ttlHdr)},
		// the token path is the raw path, exactly: one that only resolves
		// to it is not the token PUT (a proxy or server in between may
		// resolve it otherwise), so it needs a token like any PUT
		judgeCase{name: "token PUT path that resolves to it is not the token path",
			writes: []string{httpReq("PUT", "/latest//api/./x/../token", imdsHost, ttlHdr)},
			want:   []request{refused("PUT", "/latest//api/./x/../token", ReasonIMDSv1NoToken)}, eacces: true},
		judgeCase{name: "token PUT via a dot segment is not the token path",
			writes: []string{httpReq("PUT", "/latest/meta-data/../api/token", imdsHost, ttlHdr)},
			want:   []request{refused("PUT", "/latest/meta-data/../api/token", ReasonIMDSv1NoToken)}, eacces: true},
		judgeCase{name: "token PUT with a fragment is not the token path",
			writes: []string{httpReq("PUT", tokPath+"#x", imdsHost, ttlHdr)},
			want:   []request{refused("PUT", tokPath+"#x", ReasonIMDSv1NoToken)}, eacces: true},
		judgeCase{name: "token PUT percent-encoded is not the token path",
			writes: []string{httpReq("PUT", "/latest/api/%74oken", imdsHost, ttlHdr)},
			want:   []request{refused("PUT", "/latest/api/%74oken", ReasonIMDSv1NoToken)}, eacces: true},
		judgeCase{name: "token PUT in absolute form is the token path",
			writes: []string{httpReq("PUT", "http://169.254.169.254"+tokPath, imdsHost, ttlHdr)},
			want:   []request{ok("PUT", tokPath).put()}, sent: httpReq("PUT", "http://169.254.169.254"+tokPath, imdsHost, ttlHdr)},
		judgeCase{name: "token PUT path is case-sensitive",
			writes: []string{httpReq("PUT", "/LATEST/API/TOKEN", imdsHost, ttlHdr)},
			want:   []request{refused("PUT", "/LATEST/API/TOKEN", ReasonIMDSv1NoToken)}, eacces: true},
		judgeCase{name: "GET of the token path needs a token",
			writes: []string{bareGet(tokPath)}, want: []request{noTok(tokPath)}, eacces: true},
		judgeCase{name: "PUT elsewhere without token refused",
			writes: []string{httpReq("PUT", idPath, imdsHost)},
			want:   []request{refused("PUT", idPath, ReasonIMDSv1NoToken)}, eacces: true},
		judgeCase{name: "other methods with token allowed",
			writes: []string{
				httpReq("HEAD", idPath, tokenHdr),
				httpReq("POST", idPath, tokenHdr, "Content-Length: 0"),
				httpReq("DELETE", idPath, tokenHdr),
				httpReq("OPTIONS", idPath, tokenHdr),
				httpReq("PUT", idPath, tokenHdr),
			},
			want: []request{
				ok("HEAD", idPath).tok(), ok("POST", idPath).tok(), ok("DELETE", idPath).tok(),
				ok("OPTIONS", idPath).tok(), ok("PUT", idPath).tok(),
			},
			sent: httpReq("HEAD", idPath, tokenHdr) + httpReq("POST", idPath, tokenHdr, "Content-Length: 0") +
				httpReq("DELETE", idPath, tokenHdr) + httpReq("OPTIONS", idPath, tokenHdr) + httpReq("PUT", idPath, tokenHdr)},
		judgeCase{name: "method reported by its first 8 bytes, 16 allowed",
			writes: []string{httpReq("ABCDEFGHIJKLMNOP", idPath, tokenHdr)},
			want:   []request{ok("ABCDEFGH", idPath).tok()},
			sent:   httpReq("ABCDEFGHIJKLMNOP", idPath, tokenHdr)},
	)

	// every method but the token PUT needs a token; one socket each, since
	// a refusal closes the socket to later writes
	for _, m := range []string{"HEAD", "POST", "DELETE", "OPTIONS", "PRI", "get"} {
		add(judgeCase{name: m + " without token refused", writes: []string{httpReq(m, idPath, imdsHost)},
			want: []request{refused(m, idPath, ReasonIMDSv1NoToken)}, eacces: true})
	}

	// --- token header look-alikes: names are parsed, never searched ----
	lookalike := func(name string, headers ...string) judgeCase {
		return judgeCase{name: name, writes: []string{httpReq("GET", idPath, headers...)},
			want: []request{noTok(idPath)}, eacces: true}
	}
	add(
		lookalike("ttl-seconds header is not a token", imdsHost, ttlHdr),
		lookalike("token name with suffix is not a token", "X-aws-ec2-metadata-tokenx: abc"),
		lookalike("token name prefix is not a token", "X-aws-ec2-metadata-toke: abc"),
		lookalike("token name inside another value is not a token", "X-Foo: X-aws-ec2-metadata-token: abc"),
		lookalike("empty token value is not a token", "X-aws-ec2-metadata-token:   \t "),
		lookalike("absent token value is not a token", "X-aws-ec2-metadata-token:"),
		judgeCase{name: "token in the query string is not a token",
			writes: []string{bareGet(idPath + "?X-aws-ec2-metadata-token=abc")},
			want:   []request{noTok(idPath + "?X-aws-ec2-metadata-token=abc")}, eacces: true},
		judgeCase{name: "token in a body is not a token",
			writes: []string{withBody("POST", idPath, tokenHdr+"\r\n\r\n", imdsHost)},
			want:   []request{refused("POST", idPath, ReasonIMDSv1NoToken)}, eacces: true},
		judgeCase{name: "token name any case, value trimmed of tabs",
			writes: []string{httpReq("GET", idPath, "x-AWS-EC2-metadata-TOKEN:\t abc \t")},
			want:   []request{ok("GET", idPath).tok()},
			sent:   httpReq("GET", idPath, "x-AWS-EC2-metadata-TOKEN:\t abc \t")},
		// which of two token headers a server reads is unknown (an empty
		// first one might count as no token at all): refused, fail closed
		judgeCase{name: "token header twice, first empty",
			writes: []string{httpReq("GET", idPath, "X-aws-ec2-metadata-token:", tokenHdr)},
			want:   []request{refused("GET", idPath, ReasonParseError).tok()}, eacces: true},
		judgeCase{name: "token header twice, both set",
			writes: []string{httpReq("GET", idPath, tokenHdr, tokenHdr)},
			want:   []request{refused("GET", idPath, ReasonParseError).tok()}, eacces: true},
		judgeCase{name: "token without blank after colon",
			writes: []string{httpReq("GET", idPath, "X-aws-ec2-metadata-token:abc")},
			want:   []request{ok("GET", idPath).tok()},
			sent:   httpReq("GET", idPath, "X-aws-ec2-metadata-token:abc")},
	)

	// --- X-Forwarded-For ------------------------------------------------
	add(
		judgeCase{name: "XFF with token refused",
			writes: []string{httpReq("GET", idPath, tokenHdr, "X-Forwarded-For: 10.0.0.1")},
			want:   []request{refused("GET", idPath, ReasonForwardedRequest).tok().fwd()}, eacces: true},
		judgeCase{name: "XFF without token refused as forwarded",
			writes: []string{httpReq("GET", idPath, "X-Forwarded-For: 10.0.0.1")},
			want:   []request{refused("GET", idPath, ReasonForwardedRequest).fwd()}, eacces: true},
		judgeCase{name: "lower-case XFF refused",
			writes: []string{httpReq("GET", idPath, "x-forwarded-for: 10.0.0.1", tokenHdr)},
			want:   []request{refused("GET", idPath, ReasonForwardedRequest).tok().fwd()}, eacces: true},
		judgeCase{name: "XFF allowed when not refused by config", cfg: judgeConfig{noRefuseForward: true},
			writes: []string{httpReq("GET", idPath, tokenHdr, "X-Forwarded-For: 10.0.0.1")},
			want:   []request{ok("GET", idPath).tok().fwd()},
			sent:   httpReq("GET", idPath, tokenHdr, "X-Forwarded-For: 10.0.0.1")},
		judgeCase{name: "X-Forwarded-Host is not XFF",
			writes: []string{httpReq("GET", idPath, tokenHdr, "X-Forwarded-Host: a", "X-Forwarded-Fort: b")},
			want:   []request{ok("GET", idPath).tok()},
			sent:   httpReq("GET", idPath, tokenHdr, "X-Forwarded-Host: a", "X-Forwarded-Fort: b")},
	)

	// --- parse errors: each trigger on its own, refused with a token ----
	bad := func(name, raw string, want request) judgeCase {
		return judgeCase{name: "parse error: " + name, writes: []string{raw}, want: []request{want}, eacces: true}
	}
	pad := func(n int) string { return "X-Pad: " + strings.Repeat("a", n) }
	// a header block of exactly HDR_MAX (8192) bytes, and one byte more
	padTo := 8192 - len(httpReq("GET", "/latest/meta-data/", tokenHdr, pad(0)))
	exact := httpReq("GET", "/latest/meta-data/", tokenHdr, pad(padTo))
	deep := strings.Repeat("/a", 40)
	add(
		judgeCase{name: "header block of exactly 8192 bytes allowed", writes: []string{exact},
			want: []request{ok("GET", "/latest/meta-data/").tok()}, sent: exact},
		bad("header block over 8192 bytes", httpReq("GET", "/latest/meta-data/", tokenHdr, pad(padTo+1)),
			badReq("/latest/meta-data/").tok()),
		bad("bare LF ends request line", "GET /latest/meta-data/ HTTP/1.1\n"+tokenHdr+"\n\n", badReq("/latest/meta-data/")),
		bad("bare LF ends header line", "GET / HTTP/1.1\r\n"+tokenHdr+"\n\r\n", badReq("/")),
		bad("bare LF ends header block", "GET / HTTP/1.1\r\n"+tokenHdr+"\r\n\n", badReq("/").tok()),
		bad("CR not followed by LF", "GET / HTTP/1.1\r\n"+tokenHdr+"\rX-Foo: y\r\n\r\n", badReq("/")),
		bad("CR inside header block end", "GET / HTTP/1.1\r\n"+tokenHdr+"\r\n\rX\r\n", badReq("/").tok()),
		bad("NUL in header value", "GET / HTTP/1.1\r\n"+tokenHdr+"\r\nX-Foo: a\x00b\r\n\r\n", badReq("/").tok()),
		bad("control byte in header value", "GET / HTTP/1.1\r\nX-Foo: a\x1bb\r\n"+tokenHdr+"\r\n\r\n", badReq("/")),
		bad("obs-fold with SP", "GET / HTTP/1.1\r\n"+tokenHdr+"\r\n folded\r\n\r\n", badReq("/").tok()),
		bad("obs-fold with HT", "GET / HTTP/1.1\r\nX-Foo: a\r\n\tX-aws-ec2-metadata-token: t\r\n\r\n", badReq("/")),
		bad("blank before colon", httpReq("GET", "/", "X-aws-ec2-metadata-token : abc"), badReq("/")),
		bad("tab before colon", httpReq("GET", "/", "X-aws-ec2-metadata-token\t: abc"), badReq("/")),
		bad("empty header name", httpReq("GET", "/", tokenHdr, ": abc"), badReq("/").tok()),
		bad("non-token char in header name", httpReq("GET", "/", tokenHdr, "X(Foo): a"), badReq("/").tok()),
		bad("header line without colon", httpReq("GET", "/", tokenHdr, "X-Foo"), badReq("/").tok()),
		bad("Transfer-Encoding chunked", httpReq("POST", idPath, tokenHdr, "Transfer-Encoding: chunked")+"0\r\n\r\n",
			refused("POST", idPath, ReasonParseError).tok()),
		bad("transfer-encoding any value", httpReq("GET", idPath, tokenHdr, "transfer-encoding: identity"),
			badReq(idPath).tok()),
		// no IMDS client sends a body but on PUT: a server ignoring the
		// Content-Length of a GET would read the body as a request
		bad("GET with a body", withBody("GET", idPath, "12345", tokenHdr), badReq(idPath).tok()),
		bad("HEAD with a body", withBody("HEAD", idPath, "12345", tokenHdr), refused("HEAD", idPath, ReasonParseError).tok()),
		bad("lower-case get with a body", withBody("get", idPath, "12345", tokenHdr), refused("get", idPath, ReasonParseError).tok()),
		bad("GET hiding a token-less request in its body", withBody("GET", idPath, bareGet(scPath), tokenHdr),
			badReq(idPath).tok()),
		judgeCase{name: "GET with Content-Length: 0 allowed",
			writes: []string{httpReq("GET", idPath, tokenHdr, "Content-Length: 0")},
			want:   []request{ok("GET", idPath).tok()}, sent: httpReq("GET", idPath, tokenHdr, "Content-Length: 0")},
		bad("conflicting Content-Length", httpReq("POST", idPath, tokenHdr, "Content-Length: 5", "Content-Length: 6")+"12345",
			refused("POST", idPath, ReasonParseError).tok()),
		bad("non-numeric Content-Length", httpReq("POST", idPath, tokenHdr, "Content-Length: 5x")+"12345",
			refused("POST", idPath, ReasonParseError).tok()),
		bad("negative Content-Length", httpReq("POST", idPath, tokenHdr, "Content-Length: -5")+"12345",
			refused("POST", idPath, ReasonParseError).tok()),
		bad("empty Content-Length", httpReq("POST", idPath, tokenHdr, "Content-Length:"),
			refused("POST", idPath, ReasonParseError).tok()),
		bad("invalid percent-encoding", tokGet("/latest/meta-data/%zz"), badReq("/latest/meta-data/%")),
		bad("truncated percent-encoding", tokGet("/latest/meta-data/%4"), badReq("/latest/meta-data/%4")),
		bad("percent-encoded NUL", tokGet("/latest/%00"), badReq("/latest/%00")),
		bad("asterisk-form target", httpReq("OPTIONS", "*", tokenHdr), refused("OPTIONS", "", ReasonParseError)),
		bad("authority-form target", httpReq("CONNECT", "169.254.169.254:80", tokenHdr), refused("CONNECT", "", ReasonParseError)),
		bad("relative target", tokGet("latest/meta-data/"), badReq("")),
		bad("over-deep path", tokGet(deep), badReq(deep[:2*33+1])),
		bad("method over 16 chars", httpReq("ABCDEFGHIJKLMNOPQ", idPath, tokenHdr), refused("ABCDEFGH", "", ReasonParseError)),
		bad("HTTP/2.0", "GET / HTTP/2.0\r\n"+tokenHdr+"\r\n\r\n", badReq("/")),
		bad("HTTP/1.10", "GET / HTTP/1.10\r\n"+tokenHdr+"\r\n\r\n", badReq("/")),
		bad("lower-case version", "GET / http/1.1\r\n"+tokenHdr+"\r\n\r\n", badReq("/")),
		bad("no version (HTTP/0.9)", "GET /\r\n"+tokenHdr+"\r\n\r\n", badReq("/")),
		bad("two blanks after method", "GET  / HTTP/1.1\r\n"+tokenHdr+"\r\n\r\n", badReq("")),
		bad("blank after version", "GET / HTTP/1.1 \r\n"+tokenHdr+"\r\n\r\n", badReq("/")),
		judgeCase{name: "deep path resolved by dot-dots allowed",
			writes: []string{tokGet("/latest" + strings.Repeat("/a/..", 50) + "/meta-data")},
			want:   []request{ok("GET", ("/latest" + strings.Repeat("/a/..", 50) + "/meta-data")[:128]).tok()},
			sent:   tokGet("/latest" + strings.Repeat("/a/..", 50) + "/meta-data")},
		judgeCase{name: "repeated equal Content-Length allowed",
			writes: []string{httpReq("POST", idPath, tokenHdr, "Content-Length: 3", "content-length: 3") + "abc"},
			want:   []request{ok("POST", idPath).tok()},
			sent:   httpReq("POST", idPath, tokenHdr, "Content-Length: 3", "content-length: 3") + "abc"},
	)

	// --- credential paths -------------------------------------------------
	// every version counts: the version segment is not part of the prefix
	var versions []string
	var versionsWant []request
	for _, v := range []string{"latest", "1.0", "2007-01-19", "2009-04-04", "2021-07-15", "anything"} {
		p := "/" + v + "/meta-data/iam/security-credentials/role"
		versions = append(versions, tokGet(p))
		versionsWant = append(versionsWant, ok("GET", p).tok().cred())
	}
	credOK := func(name, target string) judgeCase {
		return judgeCase{name: "credential: " + name, writes: []string{tokGet(target)},
			want: []request{ok("GET", target).tok().cred()}, sent: tokGet(target)}
	}
	notCred := func(name, target string) judgeCase {
		return judgeCase{name: "not credential: " + name, writes: []string{tokGet(target)},
			want: []request{ok("GET", target).tok()}, sent: tokGet(target)}
	}
	add(
		judgeCase{name: "credential: every version", writes: versions, want: versionsWant, sent: strings.Join(versions, "")},
		credOK("listing", "/latest/meta-data/iam/security-credentials"),
		credOK("listing with slash", "/2021-07-15/meta-data/iam/security-credentials/"),
		credOK("identity-credentials", "/1.0/meta-data/identity-credentials/ec2/security-credentials/ec2-instance"),
		credOK("iam/info", "/2007-01-19/meta-data/iam/info"),
		credOK("upper case", "/latest/META-DATA/IAM/Security-Credentials/role"),
		credOK("double slashes", "/latest//meta-data//iam///security-credentials/role"),
		credOK("dot segments", "/latest/./meta-data/./iam/security-credentials/./role"),
		credOK("dot-dot segments", "/latest/meta-data/x/../iam/y/z/../../security-credentials/role"),
		credOK("encoded slashes", "/latest/meta-data%2Fiam%2fsecurity-credentials/role"),
		credOK("encoded letters", "/latest/meta-data/%69am/%53ecurity-credentials/role"),
		credOK("encoded dot-dot", "/latest/meta-data/x/%2e%2E/iam/info"),
		credOK("with query", "/latest/meta-data/iam/security-credentials?x=1"),
		credOK("with fragment", "/latest/meta-data/iam/info#x"),
		notCred("suffixed segment", "/latest/meta-data/iam/security-credentialsx"),
		notCred("iam/information", "/latest/meta-data/iam/information"),
		notCred("iam alone", "/latest/meta-data/iam/"),
		notCred("no version segment", "/meta-data/iam/security-credentials/role"),
		notCred("dot-dot out of it", "/latest/meta-data/iam/security-credentials/../info2"),
		judgeCase{name: "credential flagged on a refused request",
			writes: []string{bareGet(scPath)}, want: []request{noTok(scPath).cred()}, eacces: true},
		judgeCase{name: "credential: absolute-form upper-case scheme and host",
			writes: []string{tokGet("HTTP://169.254.169.254" + scPath)},
			want:   []request{ok("GET", scPath).tok().cred()}, sent: tokGet("HTTP://169.254.169.254" + scPath)},
		judgeCase{name: "credential: absolute-form https with port refused without token",
			writes: []string{bareGet("hTTpS://169.254.169.254:80/latest/meta-data/identity-credentials/ec2/info")},
			want:   []request{noTok("/latest/meta-data/identity-credentials/ec2/info").cred()}, eacces: true},
		judgeCase{name: "absolute-form without path is /",
			writes: []string{tokGet("http://169.254.169.254")},
			want:   []request{ok("GET", "/").tok()}, sent: tokGet("http://169.254.169.254")},
		judgeCase{name: "path reported by its first 128 bytes",
			writes: []string{tokGet("/latest/meta-data/" + strings.Repeat("x", 200))},
			want:   []request{ok("GET", ("/latest/meta-data/" + strings.Repeat("x", 200))[:128]).tok()},
			sent:   tokGet("/latest/meta-data/" + strings.Repeat("x", 200))},
	)

	// --- whitespace, versions ---------------------------------------------
	add(
		judgeCase{name: "leading CR LF SP HT skipped", writes: []string{"\r\n \t\r\n" + tokGet(idPath)},
			want: []request{ok("GET", idPath).tok()}, sent: "\r\n \t\r\n" + tokGet(idPath)},
		// the blanks before a refused request are not part of it: the judge
		// sends them and refuses the request on the re-run, so the write
		// comes back short instead of failing
		judgeCase{name: "leading blanks before a refused request", writes: []string{"\r\n" + bareGet(idPath)},
			want: []request{noTok(idPath)}, sent: "\r\n"},
		judgeCase{name: "HTTP/1.0 accepted", writes: []string{"GET / HTTP/1.0\r\n" + tokenHdr + "\r\n\r\n"},
			want: []request{ok("GET", "/").tok()}, sent: "GET / HTTP/1.0\r\n" + tokenHdr + "\r\n\r\n"},
		judgeCase{name: "HTTP/1.0 without token refused", writes: []string{"GET / HTTP/1.0\r\n\r\n"},
			want: []request{noTok("/")}, eacces: true},
	)

	// --- split writes: judged like the same bytes in one write -----------
	scTok := tokGet(scPath)
	add(
		judgeCase{name: "split: byte by byte with token", writes: bytewise(scTok),
			want: []request{ok("GET", scPath).tok().cred()}, sent: scTok},
		judgeCase{name: "split: byte by byte without token", writes: bytewise(bareGet(scPath)),
			want: []request{noTok(scPath).cred()}, eacces: true},
		judgeCase{name: "split: inside the method and path", writes: splitAfter(t, scTok, "G", "ET /lat", "est/meta-data/iam/se"),
			want: []request{ok("GET", scPath).tok().cred()}, sent: scTok},
		judgeCase{name: "split: inside the token header name", writes: splitAfter(t, scTok, "X-aws-ec2-meta", "data-"),
			want: []request{ok("GET", scPath).tok().cred()}, sent: scTok},
		judgeCase{name: "split: between every CR and LF", writes: splitAfter(t, scTok, "\r", "\r", "\r", "\r"),
			want: []request{ok("GET", scPath).tok().cred()}, sent: scTok},
		judgeCase{name: "split: inside the token value", writes: splitAfter(t, scTok, "token: AQ", "AEAH"),
			want: []request{ok("GET", scPath).tok().cred()}, sent: scTok},
		judgeCase{name: "split: ttl-seconds header split after the token name",
			writes: splitAfter(t, httpReq("GET", idPath, "X-aws-ec2-metadata-token-ttl-seconds: 5"), "X-aws-ec2-metadata-token"),
			want:   []request{noTok(idPath)}, eacces: true},
		judgeCase{name: "split: token name split before its suffix",
			writes: splitAfter(t, httpReq("GET", idPath, "X-aws-ec2-metadata-tokenx: abc"), "token"),
			want:   []request{noTok(idPath)}, eacces: true},
		judgeCase{name: "split: empty token value split in its blanks",
			writes: splitAfter(t, httpReq("GET", idPath, "X-aws-ec2-metadata-token:  \t "), "token: ", " \t"),
			want:   []request{noTok(idPath)}, eacces: true},
		judgeCase{name: "split: XFF split in its name",
			writes: splitAfter(t, httpReq("GET", idPath, tokenHdr, "X-Forwarded-For: 1.2.3.4"), "X-Forw"),
			want:   []request{refused("GET", idPath, ReasonForwardedRequest).tok().fwd()}, eacces: true},
		judgeCase{name: "incomplete request held back, nothing sent",
			writes: []string{tokGet(idPath), "GET /x HTTP/1.1\r\nX-aws"},
			want:   []request{ok("GET", idPath).tok()}, sent: tokGet(idPath), held: "GET /x HTTP/1.1\r\nX-aws"},
		judgeCase{name: "complete request held back with an incomplete one",
			writes: []string{tokGet(idPath) + "GET /x HTTP/1.1\r\n"},
			held:   tokGet(idPath) + "GET /x HTTP/1.1\r\n"},
	)

	// --- pipelining and keep-alive --------------------------------------
	two := tokGet(idPath) + bareGet(scPath)
	p3, w3 := pipelined(3, 1)
	p9, w9 := pipelined(9, 4)
	p20bad, w20bad := pipelined(20, 11)
	p20, w20 := pipelined(20, -1)
	add(
		judgeCase{name: "pipelined 2: allowed then refused", writes: []string{two},
			want: []request{ok("GET", idPath).tok(), noTok(scPath).cred()}, sent: tokGet(idPath)},
		judgeCase{name: "pipelined 2: refused then allowed", writes: []string{bareGet(scPath) + tokGet(idPath)},
			want: []request{noTok(scPath).cred()}, eacces: true},
		judgeCase{name: "pipelined 3, second refused", writes: []string{strings.Join(p3, "")}, want: w3, sent: p3[0]},
		judgeCase{name: "pipelined 9, fifth refused", writes: []string{strings.Join(p9, "")}, want: w9, sent: strings.Join(p9[:4], "")},
		judgeCase{name: "pipelined 20, twelfth refused", writes: []string{strings.Join(p20bad, "")}, want: w20bad,
			sent: strings.Join(p20bad[:11], "")},
		judgeCase{name: "pipelined 20 allowed", writes: []string{strings.Join(p20, "")}, want: w20, sent: strings.Join(p20, "")},
		judgeCase{name: "pipelined 20 allowed with blank lines between", writes: []string{strings.Join(p20, "\r\n")},
			want: w20, sent: strings.Join(p20, "\r\n")},
		judgeCase{name: "keep-alive: allowed, allowed, refused",
			writes: []string{tokenPut(), tokGet(idPath), bareGet(scPath)},
			want:   []request{ok("PUT", tokPath).put(), ok("GET", idPath).tok(), noTok(scPath).cred()},
			sent:   tokenPut() + tokGet(idPath), eacces: true},
		// the drop verdict sticks to the socket (see conn): the write after
		// a refused request fails without being judged, and sends nothing
		judgeCase{name: "keep-alive: nothing passes after a refusal",
			writes: []string{tokenPut(), bareGet(scPath), tokGet(scPath)},
			want:   []request{ok("PUT", tokPath).put(), noTok(scPath).cred()},
			sent:   tokenPut(), eacces: true},
		judgeCase{name: "keep-alive: requests straddling writes",
			writes: []string{p20[0] + p20[1][:10], p20[1][10:] + p20[2] + p20[3][:40], p20[3][40:]},
			want:   w20[:4], sent: strings.Join(p20[:4], "")},
		judgeCase{name: "keep-alive: refused request straddling writes after an allowed one",
			writes: []string{p20[0] + bareGet(idPath)[:20], bareGet(idPath)[20:] + p20[1]},
			want:   []request{w20[0], noTok(idPath)}, sent: p20[0]},
	)

	// --- Content-Length bodies are skipped -------------------------------
	post := withBody("POST", idPath, bodyFake, tokenHdr)
	longBody := strings.Repeat("X-aws-ec2-metadata-token: t\r\n", 10)
	longPost := withBody("POST", idPath, longBody, tokenHdr)
	hdrLen := len(longPost) - len(longBody)
	add(
		judgeCase{name: "body with a fake request skipped", writes: []string{post + tokGet(idPath)},
			want: []request{ok("POST", idPath).tok(), ok("GET", idPath).tok()}, sent: post + tokGet(idPath)},
		judgeCase{name: "body with a fake request, then a refused request",
			writes: []string{withBody("POST", idPath, bodyFake, tokenHdr) + bareGet(scPath)},
			want:   []request{ok("POST", idPath).tok(), noTok(scPath).cred()}, sent: post},
		judgeCase{name: "body with token lines does not lend its token",
			writes: []string{longPost + bareGet(idPath)},
			want:   []request{ok("POST", idPath).tok(), noTok(idPath)}, sent: longPost},
		judgeCase{name: "body continuing over later writes",
			writes: []string{longPost[:hdrLen+5], longPost[hdrLen+5 : hdrLen+100], longPost[hdrLen+100:] + tokGet(idPath)},
			want:   []request{ok("POST", idPath).tok(), ok("GET", idPath).tok()}, sent: longPost + tokGet(idPath)},
		judgeCase{name: "body continuing over later writes, then refused",
			writes: []string{longPost[:hdrLen+30], longPost[hdrLen+30:] + bareGet(idPath)},
			want:   []request{ok("POST", idPath).tok(), noTok(idPath)}, sent: longPost},
		judgeCase{name: "body holding a fake request across writes",
			writes: []string{post[:len(post)-len(bodyFake)+20], post[len(post)-len(bodyFake)+20:], bareGet(idPath)},
			want:   []request{ok("POST", idPath).tok(), noTok(idPath)}, sent: post, eacces: true},
		judgeCase{name: "Content-Length 0", writes: []string{withBody("POST", idPath, "", tokenHdr) + tokGet(idPath)},
			want: []request{ok("POST", idPath).tok(), ok("GET", idPath).tok()}, sent: withBody("POST", idPath, "", tokenHdr) + tokGet(idPath)},
	)

	// --- audit mode and the token rule switched off ----------------------
	teReq := httpReq("POST", idPath, tokenHdr, "Transfer-Encoding: chunked") + "0\r\n\r\n"
	add(
		judgeCase{name: "audit: token-less reported, sent", cfg: audit, writes: []string{bareGet(scPath)},
			want: []request{noTok(scPath).cred().audited()}, sent: bareGet(scPath)},
		judgeCase{name: "audit: pipelined mix all sent", cfg: audit,
			writes: []string{tokGet(idPath) + bareGet(idPath) + httpReq("GET", scPath, tokenHdr, "X-Forwarded-For: a") + tokenPut()},
			want: []request{ok("GET", idPath).tok(), noTok(idPath).audited(),
				refused("GET", scPath, ReasonForwardedRequest).tok().fwd().cred().audited(), ok("PUT", tokPath).put()},
			sent: tokGet(idPath) + bareGet(idPath) + httpReq("GET", scPath, tokenHdr, "X-Forwarded-For: a") + tokenPut()},
		judgeCase{name: "audit: parse error passes the rest of the write", cfg: audit,
			writes: []string{teReq + bareGet(idPath), bareGet(scPath)},
			want:   []request{refused("POST", idPath, ReasonParseError).tok().audited(), noTok(scPath).cred().audited()},
			sent:   teReq + bareGet(idPath) + bareGet(scPath)},
		judgeCase{name: "audit: split token-less request", cfg: audit, writes: splitAfter(t, bareGet(scPath), "GET /", "\r"),
			want: []request{noTok(scPath).cred().audited()}, sent: bareGet(scPath)},
		judgeCase{name: "token not required: token-less allowed", cfg: judgeConfig{noRequireToken: true},
			writes: []string{bareGet(scPath) + httpReq("GET", idPath, "X-Forwarded-For: a")},
			want:   []request{ok("GET", scPath).cred(), refused("GET", idPath, ReasonForwardedRequest).fwd()},
			sent:   bareGet(scPath)},
		judgeCase{name: "token not required: parse errors still refused", cfg: judgeConfig{noRequireToken: true},
			writes: []string{"GET / HTTP/1.1\nHost: x\n\n"}, want: []request{badReq("/")}, eacces: true},
	)

	// --- messages larger than the judge's buffer -------------------------
	// many small requests: judged 8 per run, every one sent
	var small []string
	var smallWant []request
	for i := 0; len(strings.Join(small, "")) < 21000; i++ {
		p := fmt.Sprintf("/latest/meta-data/%d", i)
		small = append(small, tokGet(p))
		smallWant = append(smallWant, ok("GET", p).tok())
	}
	// the same, ending in a partial request: it cannot be held back
	tail := "GET /latest/meta-data/partial HTTP/1.1\r\nX-aws-ec2-meta"
	tailWant := badReq("/latest/meta-data/partial")
	// a few large requests, so that the buffer's end falls inside one
	var big []string
	var bigWant []request
	for i := range 6 {
		p := fmt.Sprintf("/latest/meta-data/big%d", i)
		big = append(big, httpReq("GET", p, tokenHdr, pad(3300)))
		bigWant = append(bigWant, ok("GET", p).tok())
	}
	hugeBody := withBody("POST", idPath, strings.Repeat(bodyFake, 300), tokenHdr)
	add(
		judgeCase{name: "large: 21 KB of small allowed requests", writes: []string{strings.Join(small, "")},
			want: smallWant, sent: strings.Join(small, "")},
		judgeCase{name: "large: 21 KB of small requests ending in a partial one",
			writes: []string{strings.Join(small, "") + tail},
			want:   append(slices.Clone(smallWant), tailWant), sent: strings.Join(small, "")},
		judgeCase{name: "large: 20 KB of large requests ending in a partial one",
			writes: []string{strings.Join(big, "") + tail},
			want:   append(slices.Clone(bigWant), tailWant), sent: strings.Join(big, "")},
		judgeCase{name: "large: 20 KB of large requests", writes: []string{strings.Join(big, "")},
			want: bigWant, sent: strings.Join(big, "")},
		judgeCase{name: "large: body over the buffer, then a request", writes: []string{hugeBody + tokGet(idPath)},
			want: []request{ok("POST", idPath).tok(), ok("GET", idPath).tok()}, sent: hugeBody + tokGet(idPath)},
		judgeCase{name: "large: body over the buffer, then a refused request", writes: []string{hugeBody + bareGet(idPath)},
			want: []request{ok("POST", idPath).tok(), noTok(idPath)}, sent: hugeBody},
		// the same through another chain of re-runs: a body over the
		// buffer, then more than MAX_REQS requests, then a partial one
		judgeCase{name: "large: body over the buffer, then 10 requests and a partial one",
			writes: []string{hugeBody + strings.Join(small[:10], "") + tail},
			want:   append([]request{ok("POST", idPath).tok()}, append(slices.Clone(smallWant[:10]), tailWant)...),
			sent:   hugeBody + strings.Join(small[:10], "")},
		judgeCase{name: "large: refused request in the middle",
			writes: []string{strings.Join(small[:150], "") + bareGet(scPath) + strings.Join(small[150:], "")},
			want:   append(slices.Clone(smallWant[:150]), noTok(scPath).cred()), sent: strings.Join(small[:150], "")},
	)
	return cases
}

func TestJudgeTable(t *testing.T) {
	runJudgeCases(t, judgeCases(t))
}

// runJudgeCases replays each case on a fresh socket and checks it.
func runJudgeCases(t *testing.T, cases []judgeCase) {
	t.Helper()
	jp := loadJudge(t, judgeConfig{})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			jp.setConfig(t, tc.cfg)
			c := newConn(jp)
			eacces := false
			for i, w := range tc.writes {
				n, err := c.write(t, []byte(w))
				switch {
				case err != nil:
					eacces = true
				case n < 0 || n > len(w):
					t.Errorf("write %d of %d bytes reported %d", i, len(w), n)
				}
			}
			if !slices.Equal(c.judged, tc.want) {
				t.Errorf("judged %s", diffReqs(c.judged, tc.want))
			}
			if string(c.sent) != tc.sent {
				t.Errorf("sent %s", diffBytes(string(c.sent), tc.sent))
			}
			if string(c.corked) != tc.held {
				t.Errorf("held back %s", diffBytes(string(c.corked), tc.held))
			}
			if eacces != tc.eacces {
				t.Errorf("EACCES = %v, want %v", eacces, tc.eacces)
			}
		})
	}
}

// diffReqs describes got against want around the first difference.
func diffReqs(got, want []request) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d requests, want %d; first difference at %d:", len(got), len(want), i)
	for k := max(i-1, 0); k < i+3; k++ {
		if k < len(got) {
			fmt.Fprintf(&b, "\n  got  %d: %+v", k, got[k])
		}
		if k < len(want) {
			fmt.Fprintf(&b, "\n  want %d: %+v", k, want[k])
		}
	}
	return b.String()
}

// diffBytes describes got against want, quoting only around the first
// difference so that large messages stay readable.
func diffBytes(got, want string) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	from := max(i-40, 0)
	return fmt.Sprintf("%d bytes, want %d; first difference at %d: got %q, want %q",
		len(got), len(want), i, got[from:min(i+40, len(got))], want[from:min(i+40, len(want))])
}
