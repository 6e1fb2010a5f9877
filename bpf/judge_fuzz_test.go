package bpf

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// FuzzJudgeSplitInvariance checks that how an application splits a byte
// stream into write() calls does not change what the judge decides: the
// stream replayed as one write and replayed as several writes (cut at points
// derived from splitSeed) must yield the same judged requests and the same
// bytes at the server. It also checks, on both replays, that nothing refused
// or unjudged reaches the server.
//
// Differences that are legitimate are kept out rather than excused:
// streams over 8000 bytes (the 16 KiB message limits depend on how bytes are
// grouped) are skipped, and only enforce mode is used (audit mode resyncs
// after a parse error at the next write, which depends on the split).
func FuzzJudgeSplitInvariance(f *testing.F) {
	for i, s := range fuzzSeeds() {
		// every seventh split seed replays byte by byte (see splitStream)
		f.Add([]byte(s), uint64(i))
		f.Add([]byte(s), uint64(i)*0x9e3779b97f4a7c15+1)
	}
	jp := loadJudge(f, judgeConfig{})
	f.Fuzz(func(t *testing.T, stream []byte, splitSeed uint64) {
		if len(stream) == 0 || len(stream) > 8000 {
			t.Skip("outside the size where splitting must not matter")
		}
		parts := splitStream(stream, splitSeed)
		whole := replay(t, jp, [][]byte{stream})
		split := replay(t, jp, parts)
		checkReplay(t, jp, stream, "one write", whole)
		checkReplay(t, jp, stream, fmt.Sprintf("%d writes", len(parts)), split)

		if len(whole.held) == 0 {
			// everything was decided: the split must decide the same
			if !slices.Equal(whole.judged, split.judged) {
				t.Errorf("split into %q: judged %s", parts, diffReqs(split.judged, whole.judged))
			}
			if !bytes.Equal(whole.sent, split.sent) {
				t.Errorf("split into %q: sent %s", parts, diffBytes(string(split.sent), string(whole.sent)))
			}
			if len(split.held) != 0 {
				t.Errorf("split into %q: holds back %q, one write holds nothing", parts, split.held)
			}
			return
		}
		// The stream ends inside a header block. One write holds back the
		// complete requests before it too (the whole message is corked);
		// earlier writes of the split may have passed some of them. So the
		// split judged what one write judged, then only allowed requests,
		// and sent at least as much.
		if len(split.held) == 0 || split.dropped {
			t.Fatalf("split into %q: holds back nothing (dropped %v), one write holds %q", parts, split.dropped, whole.held)
		}
		if len(split.judged) < len(whole.judged) || !slices.Equal(split.judged[:len(whole.judged)], whole.judged) {
			t.Errorf("split into %q: judged %s", parts, diffReqs(split.judged, whole.judged))
		}
		for _, r := range split.judged[len(whole.judged):] {
			if r.Action != ActionAllow {
				t.Errorf("split into %q: judged %+v where one write holds the bytes back", parts, r)
			}
		}
		if !bytes.HasPrefix(split.sent, whole.sent) {
			t.Errorf("split into %q: sent %s", parts, diffBytes(string(split.sent), string(whole.sent)))
		}
	})
}

// replayed is the outcome of writing a stream on a fresh socket.
type replayed struct {
	judged  []request
	sent    []byte
	held    []byte // still corked after the last write
	dropped bool   // a drop verdict stuck to the socket
}

func replay(t *testing.T, jp *judgeProg, parts [][]byte) replayed {
	t.Helper()
	c := newConn(jp)
	var r replayed
	for _, p := range parts {
		// the count a write reports says little once bytes were held
		// back (a drop can follow bytes of earlier writes being sent):
		// the conn's own record of the drop is what counts
		_, _ = c.write(t, p)
	}
	r.judged, r.sent, r.held, r.dropped = c.judged, c.sent, c.corked, c.dropped
	return r
}

// checkReplay asserts what must hold for any stream, however written, in
// enforce mode with the token and forwarding rules on.
func checkReplay(t *testing.T, jp *judgeProg, stream []byte, how string, r replayed) {
	t.Helper()
	// the server receives a prefix of the stream, the rest is held or dropped
	if !bytes.HasPrefix(stream, r.sent) {
		t.Fatalf("%s: sent bytes are not a prefix of the stream: %q", how, r.sent)
	}
	if !r.dropped && !bytes.Equal(append(slices.Clone(r.sent), r.held...), stream) {
		t.Fatalf("%s: sent %d + held %d bytes, stream has %d", how, len(r.sent), len(r.held), len(stream))
	}
	var allowed []request
	for i, q := range r.judged {
		switch {
		case q.Action == ActionAllow && q.Reason == ReasonNone:
			allowed = append(allowed, q)
		case q.Action == ActionDeny && q.Reason != ReasonNone:
			// a refusal ends what the socket may send: it must come last
			if i != len(r.judged)-1 || !r.dropped {
				t.Errorf("%s: refused request %d of %d not the socket's last verdict (dropped %v): %+v",
					how, i, len(r.judged), r.dropped, q)
			}
		default:
			t.Errorf("%s: inconsistent verdict %+v", how, q)
		}
		if q.Action != ActionAllow {
			continue
		}
		if !q.HasToken && !q.TokenPut {
			t.Errorf("%s: token-less request allowed: %+v", how, q)
		}
		if q.Forwarded {
			t.Errorf("%s: forwarded request allowed: %+v", how, q)
		}
		if q.TokenPut && q.Method != "PUT" {
			t.Errorf("%s: token PUT flagged on %+v", how, q)
		}
	}
	if r.dropped && (len(r.judged) == 0 || r.judged[len(r.judged)-1].Action != ActionDeny) {
		t.Errorf("%s: socket refused without a refused request", how)
	}
	// What the server received, judged on its own, must be exactly the
	// allowed requests, complete: no byte of a refused request, no partial
	// request, nothing unjudged.
	c := newConn(jp)
	if n, err := c.write(t, r.sent); len(r.sent) > 0 && (err != nil || n != len(r.sent)) {
		t.Errorf("%s: bytes sent are refused when written again (n=%d, %v): %q", how, n, err, r.sent)
	}
	if len(c.corked) != 0 {
		t.Errorf("%s: bytes sent end inside a request: %q", how, c.corked)
	}
	if !slices.Equal(c.judged, allowed) {
		t.Errorf("%s: bytes sent judged again: %s", how, diffReqs(c.judged, allowed))
	}
}

// splitStream cuts stream into writes at points derived from seed: byte by
// byte for one seed in seven (short streams only, it costs a judge run per
// byte on an ever longer corked message), else at up to 16 random points.
func splitStream(stream []byte, seed uint64) [][]byte {
	if seed%7 == 0 && len(stream) <= 512 {
		parts := make([][]byte, len(stream))
		for i := range stream {
			parts[i] = stream[i : i+1]
		}
		return parts
	}
	if len(stream) < 2 {
		return [][]byte{stream}
	}
	r := rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
	cuts := map[int]bool{}
	for range 1 + r.IntN(min(len(stream)-1, 16)) {
		cuts[1+r.IntN(len(stream)-1)] = true
	}
	var parts [][]byte
	last := 0
	for i := 1; i < len(stream); i++ {
		if cuts[i] {
			parts = append(parts, stream[last:i])
			last = i
		}
	}
	return append(parts, stream[last:])
}

// fuzzSeeds are byte streams one socket could carry: valid and invalid
// requests, pipelined ones, bodies, incomplete tails.
func fuzzSeeds() []string {
	const (
		sc = "/latest/meta-data/iam/security-credentials/role"
		id = "/latest/meta-data/instance-id"
	)
	fake := "GET " + sc + " HTTP/1.1\r\n" + tokenHdr + "\r\n\r\n"
	var ten strings.Builder
	for i := range 10 {
		ten.WriteString(tokGet(fmt.Sprintf("/latest/meta-data/%d", i)))
	}
	return []string{
		tokGet(sc),
		bareGet(sc),
		tokenPut() + tokGet(sc),
		tokGet(id) + bareGet(sc) + tokGet(id),
		withBody("POST", id, fake, tokenHdr) + tokGet(id),
		withBody("POST", id, tokenHdr+"\r\n\r\n", tokenHdr) + bareGet(id),
		withBody("PUT", "/latest/api/token", fake, ttlHdr) + tokGet(sc) + withBody("POST", id, "x", tokenHdr),
		httpReq("GET", id, tokenHdr, "X-Forwarded-For: 10.0.0.1"),
		httpReq("PUT", "/latest/api/token", "x-forwarded-for: a", ttlHdr),
		"GET / HTTP/1.1\n" + tokenHdr + "\n\n",
		"GET / HTTP/1.1\r\n" + tokenHdr + "\r\n folded\r\n\r\n",
		httpReq("POST", id, tokenHdr, "Transfer-Encoding: chunked") + "0\r\n\r\n",
		httpReq("POST", id, tokenHdr, "Content-Length: 1", "Content-Length: 2") + "ab",
		tokGet("HTTP://169.254.169.254" + sc),
		tokGet("/latest/meta-data%2F%69am/./x/../security-credentials//role?a=%zz"),
		"\r\n \t" + tokGet(id) + "\r\n\r\n" + tokGet(sc),
		ten.String(),
		tokGet(id) + "GET " + sc + " HTTP/1.1\r\nX-aws-ec2-meta",
		"GET / HTTP/1.0\r\n" + tokenHdr + "\r\n\r\n" + bareGet("/"),
		httpReq("GET", id, ttlHdr, "X-aws-ec2-metadata-tokenx: a", "X-Foo: X-aws-ec2-metadata-token: a"),
		httpReq("GET", id, "X-aws-ec2-metadata-token: \t "),
		httpReq("ABCDEFGHIJKLMNOPQ", id, tokenHdr),
		tokGet(strings.Repeat("/a", 40)),
		httpReq("OPTIONS", "*", tokenHdr) + tokGet(id),
		withBody("POST", id, strings.Repeat("z", 300), tokenHdr) + tokGet(id) + bareGet(id),
		// what the fast paths take eight bytes at a time
		"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\n" +
			"User-Agent: aws-sdk-go-v2/1.30.3 os/linux lang/go#1.22.5 md/GOOS#linux\r\n" +
			"X-aws-ec2-metadata-token: " + strings.Repeat("A", 56) + "\r\nAccept-Encoding: gzip\r\n\r\n",
		httpReq("GET", "/latest/meta-data/abcdefgh%2F..%2Fiam/security-credentials", "X-aws-ec2-metadata-token:\t \t \t \t abc",
			"X-Forwarded-Fo: \x80\xff", "Content-Lengthy: 5"),
		httpReq("GET", "/"+strings.Repeat("seg0123/", 20), tokenHdr),
	}
}
