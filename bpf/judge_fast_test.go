package bpf

import (
	"fmt"
	"strings"
	"testing"
)

// The judge's fast paths (http/fast.h fast_chain) take runs of bytes eight at a
// time or in bounded loops; the byte-by-byte walk through step_byte is the
// reference. loadJudge's judgeProg runs every judgement both ways and
// compares the outputs and the parser's whole state (crossCheck), so these
// tests only need to put every byte value in every place a fast path reads,
// at every offset within an eight-byte word, with the message ending just
// before, at and just after it.

// fastContexts are requests with one byte left open ("\x00" marks it), each
// in a place a fast path takes: the byte must end the run exactly where the
// walk would, or be taken exactly as the walk takes it.
var fastContexts = []string{
	"G\x00T /latest/meta-data/ HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n",                        // method
	"GET\x00/latest/meta-data/ HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n",                        // blank after method
	"GET \x00latest/meta-data/ HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n",                        // target start
	"GET /lat\x00st/meta-data/ HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n",                        // path segment
	"GET /latest/\x00eta-data/ HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n",                        // segment start
	"GET /latest/.\x00/meta-data/ HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n",                     // after "."
	"GET /latest/..\x00/meta-data/ HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n",                    // after ".."
	"GET /latest/meta-data\x00 HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n",                        // path end
	"GET /latest/meta-data?a=b\x00c HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n",                   // query
	"GET http://169.254.1\x0069.254/latest/meta-data/ HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n", // authority
	"GET / HTTP/1\x001\r\n" + tokenHdr + "\r\n\r\n",                                         // version
	"GET / HTTP/1.\x00\r\n" + tokenHdr + "\r\n\r\n",                                         // version digit
	"GET / HTTP/1.1\x00\n" + tokenHdr + "\r\n\r\n",                                          // request line CR
	"GET / HTTP/1.1\r\x00" + tokenHdr + "\r\n\r\n",                                          // request line LF
	"GET / HTTP/1.1\r\n\x00" + tokenHdr + "\r\n\r\n",                                        // line start
	"GET / HTTP/1.1\r\nX-aws-ec2-meta\x00ata-token: abc\r\n\r\n",                            // tracked name
	"GET / HTTP/1.1\r\nX-aws-ec2-metadata-token\x00 abc\r\n\r\n",                            // tracked name end
	"GET / HTTP/1.1\r\nX-aws-ec2-metadata-token\x00: abc\r\n\r\n",                           // tracked name, one more
	"GET / HTTP/1.1\r\nX-Forwarded-Fo\x00: a\r\n" + tokenHdr + "\r\n\r\n",                   // XFF, last byte
	"GET / HTTP/1.1\r\nContent-Lengt\x00: 0\r\n" + tokenHdr + "\r\n\r\n",                    // CL, last byte
	"GET / HTTP/1.1\r\nTransfer-Encoding\x00: x\r\n" + tokenHdr + "\r\n\r\n",                // TE, one more
	"GET / HTTP/1.1\r\nUser-Age\x00t: x\r\n" + tokenHdr + "\r\n\r\n",                        // other name
	"GET / HTTP/1.1\r\nX-aws-ec2-metadata-token:\x00abc\r\n\r\n",                            // before the value
	"GET / HTTP/1.1\r\nX-aws-ec2-metadata-token: \x00\r\n\r\n",                              // the only value byte
	"GET / HTTP/1.1\r\nX-aws-ec2-metadata-token: abcdefg\x00ijklmnop\r\n\r\n",               // in the value
	"GET / HTTP/1.1\r\nX-aws-ec2-metadata-token: abc \x00\r\n\r\n",                          // after a blank
	"GET / HTTP/1.1\r\nUser-Agent: aws-sdk-go/1.0 \x00s/linux\r\n" + tokenHdr + "\r\n\r\n",  // other value
	"GET / HTTP/1.1\r\nContent-Length: 1\x00\r\n" + tokenHdr + "\r\n\r\n",                   // Content-Length
	"GET / HTTP/1.1\r\nHost: a\r\x00" + tokenHdr + "\r\n\r\n",                               // header line LF
	"GET / HTTP/1.1\r\n" + tokenHdr + "\r\n\x00\n",                                          // block end CR
	"GET / HTTP/1.1\r\n" + tokenHdr + "\r\n\r\x00",                                          // block end LF
}

// withPad moves the open byte of a context n bytes further, by padding the
// segment, name or value it is in (or the request before it), so that it
// falls at every offset of an eight-byte word.
func withPad(ctx string, n int) string {
	if n == 0 {
		return ctx
	}
	i := strings.IndexByte(ctx, 0)
	// a byte of the same run before the open one: repeated, the run is
	// only longer (a method of 3 letters stays under 16)
	prev := ctx[i-1]
	switch {
	case prev >= 'a' && prev <= 'z', prev >= 'A' && prev <= 'Z', prev >= '0' && prev <= '9', prev == '-':
		return ctx[:i] + strings.Repeat(string(prev), n) + ctx[i:]
	}
	// otherwise a blank line or header before the request line's end
	return strings.Repeat("\r\n", n) + ctx
}

func TestJudgeFastPathsEveryByte(t *testing.T) {
	jp := loadJudge(t, judgeConfig{})
	runs := 0
	for ci, ctx := range fastContexts {
		for pad := range 9 {
			tmpl := withPad(ctx, pad)
			at := strings.IndexByte(tmpl, 0)
			for b := range 256 {
				if testing.Short() && !inShortSample(byte(b), ci+pad) {
					continue
				}
				msg := []byte(tmpl)
				msg[at] = byte(b)
				// whole, and ending just before, at and just after the byte
				for _, n := range []int{len(msg), at, at + 1, at + 2} {
					if n > len(msg) {
						continue
					}
					jp.run(t, msg[:n], sockState{})
					runs++
				}
			}
			if t.Failed() {
				t.Fatalf("context %d, padded by %d: %q", ci, pad, tmpl)
			}
		}
	}
	t.Logf("%d judgements compared", runs)
}

// shortSpecials are the bytes the grammar treats apart from their class:
// in -short mode every one of them is still tried in every place.
const shortSpecials = "\x00\t\n\r !\"#%+-./0129:;?@AFZ[\\]afz{|}~\x7f\x80\xff"

// inShortSample says whether -short tries byte b in place k (the kernel
// matrix runs the judge under emulation, some 30 times slower): the bytes
// of shortSpecials, and one in eight of the rest, a different eighth in
// each place, so that every byte value is still tried in some places.
func inShortSample(b byte, k int) bool {
	return strings.IndexByte(shortSpecials, b) >= 0 || (int(b)+k)%8 == 0
}

// TestJudgeFastPathsEveryLength judges requests cut at every length, in
// enforce and audit mode, for sockets in every state the judge starts in.
func TestJudgeFastPathsEveryLength(t *testing.T) {
	jp := loadJudge(t, judgeConfig{})
	sdk := "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\n" +
		"User-Agent: aws-sdk-go-v2/1.30.3 os/linux lang/go#1.22.5 md/GOOS#linux md/GOARCH#amd64\r\n" +
		"X-aws-ec2-metadata-token: " + strings.Repeat("A", 56) + "\r\nAccept-Encoding: gzip\r\n\r\n"
	streams := []string{
		sdk + sdk,
		tokenPut() + withBody("POST", "/latest/meta-data/x", "0123456789", tokenHdr) + sdk,
		"\r\n" + tokGet("http://169.254.169.254:80/latest/./a/../b//c%2Fd?x=%zz#f") + tokGet("/"),
		httpReq("GET", "/latest/meta-data/"+strings.Repeat("seg/", 40), tokenHdr),
		httpReq("get", "/"+strings.Repeat("x", 300), "x-aws-ec2-metadata-token:\t \tv v\t", "A: b", "bb:c"),
	}
	for _, cfg := range []judgeConfig{{}, {audit: true}} {
		jp.setConfig(t, cfg)
		for _, s := range streams {
			for n := range len(s) + 1 {
				for _, st := range []sockState{{}, {unsynced: 1}, {skip: 3}, {force: ReasonNonHostNetns}} {
					jp.run(t, []byte(s[:n]), st)
				}
			}
		}
	}
}

// TestJudgeCredentialPrefixLengths compares the prefix match eight bytes at
// a time with the byte-by-byte one (crossCheck) for prefixes ending at
// every offset of a word, paths that end inside, at and after them, and
// normalised paths running past the 256 bytes the judge keeps.
func TestJudgeCredentialPrefixLengths(t *testing.T) {
	base := "meta-data/iam/security-credentials/role-name-0123456789abcdefghij"
	for _, plen := range []int{1, 2, 7, 8, 9, 15, 16, 17, 34, 63, 64} {
		prefix := base[:plen]
		jp := loadJudge(t, judgeConfig{prefixes: []string{"zz", prefix, strings.ToUpper(prefix[:1]) + prefix[1:]}})
		for _, version := range []string{"latest", strings.Repeat("v", 200), strings.Repeat("v", 220)} {
			for n := 0; n <= len(base); n++ {
				for _, tail := range []string{"", "/", "x", "/x"} {
					path := "/" + version + "/" + strings.ToUpper(base[:n]) + tail
					out := jp.run(t, []byte(tokGet(path)), sockState{})
					if out.Nreqs != 1 {
						t.Fatalf("%q: %d requests", path, out.Nreqs)
					}
					// the reference: a prefix matches at a segment boundary
					// (the path's end, or a "/" within the 256 bytes kept),
					// case-insensitively, within the 256 bytes kept
					rest := base[:n] + tail
					at := len(version) + 2 + plen
					want := at <= 256 && strings.HasPrefix(strings.ToLower(rest), prefix) &&
						(len(rest) == plen || (at < 256 && rest[plen] == '/'))
					if got := reqFrom(out.Reqs[0]).Credential; got != want {
						t.Errorf("prefix %q, path %q: credential %v, want %v", prefix, path, got, want)
					}
				}
			}
		}
	}
}

// fastCases are table cases for what the fast paths must stop at.
func fastCases(t *testing.T) []judgeCase {
	const idPath = "/latest/meta-data/instance-id"
	tok := func(headers ...string) string {
		return httpReq("GET", idPath, append([]string{tokenHdr}, headers...)...)
	}
	bad := func(name, raw string, want request) judgeCase {
		return judgeCase{name: "fast: " + name, writes: []string{raw}, want: []request{want}, eacces: true}
	}
	good := func(name, raw string, want ...request) judgeCase {
		return judgeCase{name: "fast: " + name, writes: []string{raw}, want: want, sent: raw}
	}
	okTok := request{Method: "GET", Path: idPath, Action: ActionAllow, HasToken: true}
	badTok := request{Method: "GET", Path: idPath, Action: ActionDeny, Reason: ReasonParseError, HasToken: true}
	var cases []judgeCase
	// bytes that end a header value, at every offset of an eight-byte word
	for off := range 9 {
		v := strings.Repeat("v", off)
		cases = append(cases,
			bad(fmt.Sprintf("NUL in a value after %d bytes", off), tok("X-Foo: "+v+"\x00abcdefgh"), badTok),
			bad(fmt.Sprintf("DEL in a value after %d bytes", off), tok("X-Foo: "+v+"\x7fabcdefgh"), badTok),
			bad(fmt.Sprintf("0x1f in a value after %d bytes", off), tok("X-Foo: "+v+"\x1fabcdefgh"), badTok),
			bad(fmt.Sprintf("bare LF in a value after %d bytes", off), tok("X-Foo: "+v+"\nX-Bar: abcdefgh"), badTok),
			bad(fmt.Sprintf("CR without LF in a value after %d bytes", off), tok("X-Foo: "+v+"\rX-Bar: abcdefgh"), badTok),
			good(fmt.Sprintf("SP and HT in a value after %d bytes", off), tok("X-Foo: "+v+" a\tb  \t c\t"), okTok),
			good(fmt.Sprintf("bytes over 0x7f in a value after %d bytes", off), tok("User-Agent: "+v+"\x80\xff\xc3\xa9abcdefgh"), okTok),
			bad(fmt.Sprintf("blank in a name after %d bytes", off), tok("X-Foo"+v+" : a"), badTok),
			bad(fmt.Sprintf("separator in a name after %d bytes", off), tok("X-Foo"+v+"(: a"), badTok),
			bad(fmt.Sprintf("DEL in a name after %d bytes", off), tok("X-Foo"+v+"\x7f: a"), badTok),
			// a refused path byte is not reported with the path
			bad(fmt.Sprintf("NUL in a path after %d bytes", off), "GET /latest/meta-data/"+v+"\x00x HTTP/1.1\r\n"+tokenHdr+"\r\n\r\n",
				badReq("/latest/meta-data/"+v)),
			bad(fmt.Sprintf("HT in a path after %d bytes", off), "GET /latest/meta-data/"+v+"\tx HTTP/1.1\r\n"+tokenHdr+"\r\n\r\n",
				badReq("/latest/meta-data/"+v)),
		)
		// a token value of blanks only, crossing words, is no token
		cases = append(cases, judgeCase{name: fmt.Sprintf("fast: token value of %d blanks", 8+off),
			writes: []string{httpReq("GET", idPath, "X-aws-ec2-metadata-token: "+strings.Repeat(" \t", 4+off/2)+strings.Repeat(" ", off%2))},
			want:   []request{noTok(idPath)}, eacces: true})
		// "%" decoded in the middle of a segment taken eight bytes at a time
		// (with no segment to drop, ".." drops meta-data)
		p := "/latest/meta-data/" + v + "%2F..%2Fiam/security-credentials/role"
		want := ok("GET", p).tok()
		if off > 0 {
			want = want.cred()
		}
		cases = append(cases, judgeCase{name: fmt.Sprintf("fast: percent after %d path bytes", off), writes: []string{tokGet(p)},
			want: []request{want}, sent: tokGet(p)})
	}
	// names that become a tracked name late, or stop being one late
	for _, c := range []struct {
		header string
		want   request
	}{
		{"x-aws-ec2-metadata-tokenx: abc", noTok(idPath)},
		{"X-AWS-EC2-METADATA-TOKEN-: abc", noTok(idPath)},
		{"X-aws-ec2-metadata-toke: abc", noTok(idPath)},
		{"X-aws-ec2-metadata-tokeN: abc", ok("GET", idPath).tok()},
		{"X-aws-ec2-metadata-token:abc", ok("GET", idPath).tok()},
		{"x-aws-ec2-metadata-token_: abc", noTok(idPath)},
		{"x-aws-ec2-metadata-token^: abc", noTok(idPath)},
		{"x-aws-ec2-metadata~token: abc", noTok(idPath)},
	} {
		raw := httpReq("GET", idPath, c.header)
		tc := judgeCase{name: "fast: name " + c.header, writes: []string{raw}, want: []request{c.want}}
		if c.want.Action == ActionAllow {
			tc.sent = raw
		} else {
			tc.eacces = true
		}
		cases = append(cases, tc)
	}
	cases = append(cases,
		good("X-Forwarded-Fo is not XFF", tok("X-Forwarded-Fo: a", "X-Forwarded-For2: b", "X-Forwarded-Forx: c"), okTok),
		bad("XFF in upper case", tok("X-FORWARDED-FOR: a"), request{Method: "GET", Path: idPath, Action: ActionDeny,
			Reason: ReasonForwardedRequest, HasToken: true, Forwarded: true}),
		good("Transfer-Encodingx is not TE", tok("Transfer-Encodingx: chunked"), okTok),
		// Content-Lengthy announces no body: what follows is a request
		good("Content-Lengthy is not Content-Length", tok("Content-Lengthy: 5")+tok(), okTok, okTok),
		// the same name as Content-Length is: a body, skipped (on a POST:
		// a GET with a body is refused)
		good("CONTENT-LENGTH is Content-Length", httpReq("POST", idPath, tokenHdr, "CONTENT-LENGTH: 5")+"abcde"+tok(),
			ok("POST", idPath).tok(), okTok),
		bad("CONTENT-LENGTH on a GET is a body", tok("CONTENT-LENGTH: 5")+"abcde"+tok(), badReq(idPath).tok()),
		bad("HTTP/1.2", "GET / HTTP/1.2\r\n"+tokenHdr+"\r\n\r\n", badReq("/")),
		bad("HTTP/1.1 then a byte", "GET / HTTP/1.1x\r\n"+tokenHdr+"\r\n\r\n", badReq("/")),
		bad("method of 17 letters", httpReq("GETGETGETGETGETGE", idPath, tokenHdr), refused("GETGETGE", "", ReasonParseError)),
	)
	// a value running exactly to the end of the message: held back, then
	// judged whole once the rest arrives
	for _, split := range []string{"token: ", "token: A", "token: AQAEAHNv", "token: AQAEAHNvbWV0b2tlbg=="} {
		raw := tok()
		cases = append(cases, judgeCase{name: "fast: value up to the end of the message: " + split,
			writes: splitAfter(t, raw, split), want: []request{okTok}, sent: raw})
		first := splitAfter(t, raw, split)[0]
		cases = append(cases, judgeCase{name: "fast: value up to the end of the message, rest never sent: " + split,
			writes: []string{first}, held: first})
	}
	// a header value crossing the end of the judge's buffer (16384 bytes):
	// the request is not complete within it; the bytes before it are sent,
	// and the re-run judges it whole
	lead := httpReq("GET", idPath, tokenHdr)
	lead = lead[:len(lead)-2] + "X-Pad: "
	for _, q := range []int{0, 1, 7, 8, 9, 15, 16} {
		// a body long enough that byte 16384 is the value's q-th
		post := withBody("POST", idPath, strings.Repeat("b", 16000), tokenHdr)
		post = withBody("POST", idPath, strings.Repeat("b", 16000+judgeBuf-q-len(post)-len(lead)), tokenHdr)
		if len(post)+len(lead) != judgeBuf-q {
			t.Fatalf("value at %d, want %d", len(post)+len(lead), judgeBuf-q)
		}
		raw := post + lead + strings.Repeat("p", q+30) + "\r\n\r\n"
		cases = append(cases, judgeCase{name: fmt.Sprintf("fast: value crossing the buffer's end after %d bytes", q),
			writes: []string{raw}, want: []request{ok("POST", idPath).tok(), okTok}, sent: raw})
	}
	return cases
}

func TestJudgeFastPathCases(t *testing.T) {
	runJudgeCases(t, fastCases(t))
}
