/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The HTTP/1.x request judge shared by the sk_msg program and the test-only
 * program (the kernel cannot test-run sk_msg programs, so the logic lives
 * here, in functions both call).
 *
 * The judge sees the bytes of one sk_msg: everything the application wrote
 * that has not been sent yet. It walks them with a byte-at-a-time state
 * machine (step_byte) driven by bpf_loop (a bounded loop of this size would
 * not pass the verifier); fast paths (fast_chain) take the common runs of
 * bytes, a header line or more at a time, leaving exactly the state the
 * byte-at-a-time walk would leave. It decides what the kernel should do with
 * the bytes:
 *
 *  - PASS: every request in the message is complete and allowed (a body
 *    announced by Content-Length may continue in later writes: `skip`);
 *  - PASS + apply_bytes: the first `apply` bytes are complete, allowed
 *    requests; the kernel sends them and runs the program again on the rest;
 *  - PASS + cork: the message ends inside a request's header block; the
 *    kernel holds every byte back until the next write and runs the program
 *    again on the whole accumulated message (so a split request is judged
 *    exactly like the same request in one write);
 *  - DROP: the message starts with a refused request; the write fails with
 *    EACCES and none of its bytes, nor those held back before it, are sent.
 *
 * Events are only produced for final verdicts, so a request re-examined
 * after a cork is reported once.
 */
#ifndef IMDSGUARD_HTTP_H
#define IMDSGUARD_HTTP_H

#include "imdsguard.h"

/* Bytes of one message the judge examines; also the largest message it will
 * hold back (cork). Keeping corked messages this small keeps them far below
 * the kernel's sk_msg fragment limit, where corking silently stops working. */
#define JUDGE_BUF 16384
/* Largest header block (request line + headers) of one request. */
#define HDR_MAX 8192
/* Requests judged per program run; more are handled by a re-run. */
#define MAX_REQS 8
/* Normalised path kept for matching; longer paths are tracked by length. */
#define NORM_MAX 256
/* Path segments remembered for "..": deeper paths are refused. */
#define SEG_MAX 32
#define METHOD_MAX 16

enum verdict {
	VERDICT_PASS = 0,
	VERDICT_DROP = 1,
};

/* Why the judge stopped walking the message. */
enum stop {
	STOP_END = 0,        /* all bytes consumed, at a request boundary or in a body */
	STOP_INCOMPLETE = 1, /* message ends inside a header block */
	STOP_DENY = 2,       /* a refused request (enforce mode) */
	STOP_ERROR = 3,      /* a request that cannot be parsed */
	STOP_FULL = 4,       /* MAX_REQS requests judged; the rest needs a re-run */
};

/* Per-socket state, kept across writes (sk_storage). */
struct sock_state {
	__u32 skip;       /* body bytes of an already judged request still to come */
	__u32 rerun_from; /* size of the message an apply_bytes re-run comes from, else 0 */
	__u32 flags;      /* enum sock_flag */
	__u32 isn;        /* initial sequence number, seen by the egress guard */
	__u64 passed;     /* payload bytes the judge let through */
	struct owner owner; /* who requests are judged by (SOCK_OWNED) */
};

enum sock_flag {
	/* Adopted at start with bytes possibly already sent: the server may be
	 * in the middle of a request, so the next write must start a new one
	 * (leading CR/LF could complete a request sent before the guard). */
	SOCK_UNSYNCED = 1 << 0,
	/* Connected to an IMDS endpoint under the guard (set at connect): the
	 * egress guard checks that every payload byte it sends was judged. */
	SOCK_GUARDED = 1 << 1,
	/* The egress guard has seen the SYN and knows the ISN. */
	SOCK_ISN = 1 << 2,
	/* An unjudged write was reported already (once per socket). */
	SOCK_REPORTED = 1 << 3,
	/* owner holds the task that connected (set at connect), or for a
	 * socket adopted at start, the first task that wrote to it. */
	SOCK_OWNED = 1 << 4,
	/* An adopted connection was reported already (once per socket). */
	SOCK_ADOPTION_REPORTED = 1 << 5,
	/* The stream the server reads and the judge's parted (urgent data):
	 * every later segment is dropped, every later write refused. */
	SOCK_POISONED = 1 << 6,
	/* Counted in open_conns (from the active open until the close). */
	SOCK_COUNTED = 1 << 7,
};

/* req_result.flags */
enum req_flag {
	REQ_HAS_TOKEN = 1 << 0,
	REQ_CREDENTIAL = 1 << 1,
	REQ_FORWARDED = 1 << 2,
	REQ_TOKEN_PUT = 1 << 3,
};

struct req_result {
	__u32 start;          /* offset of the request in the message */
	__u32 end;            /* offset just past its header block */
	__u32 content_length;
	__u16 path_len;       /* length of the path as sent (may exceed PATH_LEN) */
	__u8 action;
	__u8 reason;
	__u8 flags;
	__u8 method_len;
	__u8 pad[2];
	char method[METHOD_LEN];
	char path[PATH_LEN];
};

/* Parser states. */
enum pstate {
	P_PRE = 0,       /* between requests: skipping CR/LF/SP/HT */
	P_BODY,          /* skipping a Content-Length body */
	P_METHOD,
	P_TARGET_START,
	P_SCHEME,        /* absolute-form: "http://" or "https://" */
	P_AUTHORITY,
	P_PATH,
	P_PCT1,
	P_PCT2,
	P_QUERY,
	P_VERSION,
	P_REQLINE_LF,
	P_LINE_START,
	P_NAME,
	P_VALUE_OWS,
	P_VALUE,
	P_HDR_LF,
	P_END_LF,
};

/* Headers the judge recognises, by index. */
enum header {
	H_TOKEN = 0,   /* x-aws-ec2-metadata-token */
	H_XFF = 1,     /* x-forwarded-for */
	H_CL = 2,      /* content-length */
	H_TE = 3,      /* transfer-encoding */
	H_COUNT = 4,
	H_NONE = 255,
};

struct parser {
	__u32 pos;
	__u32 len;
	__u32 state;
	__u32 stop;
	__u32 req_start;
	__u32 skip;
	__u32 nreqs;
	__u32 boundary; /* offset of the first byte not covered by a final verdict */
	__u32 unsynced; /* SOCK_UNSYNCED: no leading blanks before the first request */
	__u32 force_reason; /* refuse every parsed request for this reason (e.g. non-host netns) */
	__u32 cfg_flags;    /* config flags in force for this writer (a rule may lift some) */

	/* current request */
	__u32 method_len;
	__u32 scheme_pos;
	__u32 version_pos;
	__u32 raw_path_len;
	__u32 pct_val;
	__u32 name_len;
	__u32 name_alive; /* bit per enum header still matching the name so far */
	__u32 header;     /* enum header whose value is being read, or H_NONE */
	__u32 value_len;  /* non-blank value bytes */
	__u32 value_ws;   /* blank seen after value bytes */
	__u32 cl;
	__u32 cl_digits;
	__u32 cl_seen;
	__u32 cl_first; /* the first Content-Length, to refuse conflicting ones */
	__u32 token_headers; /* token headers seen: more than one is ambiguous */
	__u32 flags; /* enum req_flag */
	__u32 te;

	/* normalised path: "/" segments with ".", ".." and "//" resolved */
	__u32 nlen;      /* logical length (may exceed NORM_MAX) */
	__u32 seg_start; /* logical offset where the current segment starts */
	__u32 seg_len;
	__u32 seg_c0;
	__u32 seg_c1;
	__u32 nseg;
	__u32 segs[SEG_MAX];
	char norm[NORM_MAX];
	char method[METHOD_LEN];

	struct req_result reqs[MAX_REQS];
};

/* Everything one judgement needs; lives in a per-CPU map, far too large
 * for the 512-byte BPF stack. */
struct judge {
	__u8 buf[JUDGE_BUF];
	struct parser p;
	__u32 busy; /* set while a program uses this CPU's copy */
};

/* Inputs and outputs of judge_message. */
struct judgement {
	__u32 msg_size;     /* whole message, may exceed what is in buf */
	__u32 verdict;      /* enum verdict */
	__u32 cork;         /* hold bytes back until the message has this many */
	__u32 apply;        /* verdict covers only this many bytes, then re-run */
	__u32 emit_from;    /* reqs[emit_from..emit_to) are final: report them */
	__u32 emit_to;
};

/* idx & mask, with the mask kept: the compiler drops a mask it can prove
 * redundant from an earlier comparison, but the verifier only trusts the
 * register the mask was applied to. */
#define MASKED(idx, mask) ({ __u32 __v = (idx); asm volatile("" : "+r"(__v)); __v & (mask); })

/* Eight bytes from any address, in one load. The compiler splits a load it
 * cannot prove aligned into eight byte loads (the BPF target has no
 * unaligned access in its model); the JITs of x86-64 and arm64 load
 * unaligned words, and the verifier accepts them on those (no strict
 * alignment), so the word is declared aligned. */
static __always_inline __u64 load64(const void *p)
{
	return *(const __u64 *)__builtin_assume_aligned(p, 8);
}

struct loop_ctx {
	struct judge *j;
	const struct config *cfg;
};

/* Header names, lower case, matched byte by byte as they arrive. */
static const char hdr_token[] = "x-aws-ec2-metadata-token";
static const char hdr_xff[] = "x-forwarded-for";
static const char hdr_cl[] = "content-length";
static const char hdr_te[] = "transfer-encoding";
#define HDR_TOKEN_LEN (sizeof(hdr_token) - 1)
#define HDR_XFF_LEN (sizeof(hdr_xff) - 1)
#define HDR_CL_LEN (sizeof(hdr_cl) - 1)
#define HDR_TE_LEN (sizeof(hdr_te) - 1)

static __always_inline int is_tchar(__u8 c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
	case '+': case '-': case '.': case '^': case '_': case '`': case '|': case '~':
		return 1;
	}
	return 0;
}

static __always_inline __u8 lower(__u8 c)
{
	return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

static __always_inline int hexval(__u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static __always_inline int name_char_matches(__u32 h, __u32 i, __u8 c)
{
	switch (h) {
	case H_TOKEN:
		return i < HDR_TOKEN_LEN && hdr_token[MASKED(i, 31)] == c;
	case H_XFF:
		return i < HDR_XFF_LEN && hdr_xff[MASKED(i, 15)] == c;
	case H_CL:
		return i < HDR_CL_LEN && hdr_cl[MASKED(i, 15)] == c;
	case H_TE:
		return i < HDR_TE_LEN && hdr_te[MASKED(i, 31)] == c;
	}
	return 0;
}

static __always_inline __u32 header_len(__u32 h)
{
	switch (h) {
	case H_TOKEN:
		return HDR_TOKEN_LEN;
	case H_XFF:
		return HDR_XFF_LEN;
	case H_CL:
		return HDR_CL_LEN;
	case H_TE:
		return HDR_TE_LEN;
	}
	return 0;
}

static __always_inline void start_request(struct parser *p)
{
	p->req_start = p->pos;
	p->state = P_METHOD;
	p->method_len = 0;
	p->scheme_pos = 0;
	p->version_pos = 0;
	p->raw_path_len = 0;
	p->pct_val = 0;
	p->name_len = 0;
	p->name_alive = 0;
	p->header = H_NONE;
	p->value_len = 0;
	p->value_ws = 0;
	p->cl = 0;
	p->cl_digits = 0;
	p->cl_seen = 0;
	p->cl_first = 0;
	p->token_headers = 0;
	p->flags = 0;
	p->te = 0;
	p->nlen = 0;
	p->seg_start = 0;
	p->seg_len = 0;
	p->seg_c0 = 0;
	p->seg_c1 = 0;
	p->nseg = 0;
}

static __always_inline void raw_path_byte(struct parser *p, __u8 c)
{
	__u32 n = p->nreqs;
	if (n < MAX_REQS && p->raw_path_len < PATH_LEN)
		p->reqs[MASKED(n, MAX_REQS - 1)].path[MASKED(p->raw_path_len, PATH_LEN - 1)] = c;
	p->raw_path_len++;
}

static __always_inline void norm_put(struct parser *p, __u8 c)
{
	if (p->nlen < NORM_MAX)
		p->norm[MASKED(p->nlen, NORM_MAX - 1)] = c;
	p->nlen++;
}

/* Resolves the current segment if it is "." (dropped) or ".." (dropped with
 * the one before it; at the root it stays at the root). Returns 1 if it was
 * one of them. */
static __always_inline int drop_dot_segment(struct parser *p)
{
	if (p->seg_len == 1 && p->seg_c0 == '.') {
		p->nlen = p->seg_start;
		return 1;
	}
	if (p->seg_len == 2 && p->seg_c0 == '.' && p->seg_c1 == '.') {
		if (p->nseg > 0) {
			p->nseg--;
			p->nlen = p->segs[MASKED(p->nseg, SEG_MAX - 1)];
		} else {
			p->nlen = 1;
		}
		return 1;
	}
	return 0;
}

/* Ends the current path segment at a "/": resolves "." and "..", drops an
 * empty one ("//"), keeps any other with its "/". Returns -1 when the path
 * is too deep to normalise. */
static __always_inline int end_segment(struct parser *p)
{
	if (!drop_dot_segment(p) && p->seg_len > 0) {
		if (p->nseg >= SEG_MAX)
			return -1;
		p->segs[MASKED(p->nseg, SEG_MAX - 1)] = p->seg_start;
		p->nseg++;
		norm_put(p, '/');
	}
	p->seg_start = p->nlen;
	p->seg_len = 0;
	return 0;
}

/* One decoded path byte. */
static __always_inline int path_byte(struct parser *p, __u8 c)
{
	if (c == '/')
		return end_segment(p);
	if (c < 0x20 || c == 0x7f)
		return -1; /* decoded control bytes: refuse rather than guess */
	if (p->seg_len == 0)
		p->seg_c0 = c;
	else if (p->seg_len == 1)
		p->seg_c1 = c;
	p->seg_len++;
	norm_put(p, c);
	return 0;
}

/* Ends the path: a final "." or ".." is resolved as by end_segment, but a
 * final kept segment gets no "/" ("/a/b" stays "/a/b", "/a/b/" keeps its
 * slash because its last segment is empty). */
static __always_inline void end_path(struct parser *p)
{
	drop_dot_segment(p);
}

static __always_inline __u8 norm_at(const struct parser *p, __u32 i)
{
	if (i >= p->nlen || i >= NORM_MAX)
		return 0;
	return p->norm[MASKED(i, NORM_MAX - 1)];
}

/* Eight bytes at a time (SWAR): the high bit of each byte of x below n
 * (1 <= n <= 0x80), or equal to b; exact, no carry crosses bytes. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static __always_inline __u64 bytes_below(__u64 x, __u64 n)
{
	return ~(((x & ~HIGHS) + ONES * (0x80 - n)) | x) & HIGHS;
}

static __always_inline __u64 bytes_equal(__u64 x, __u64 b)
{
	return bytes_below(x ^ (ONES * b), 1);
}

/* Bytes flagged by bytes_below/bytes_equal. */
static __always_inline __u64 bytes_count(__u64 m)
{
	return ((m >> 7) * ONES) >> 56;
}

struct cred_ctx {
	const struct parser *p;
	const struct config *cfg;
	__u32 rest; /* offset in norm where the path after the version starts */
	__u32 match;
};

/* One prefix per step, compared eight bytes at a time. */
static long cred_step(__u32 k, void *ctx)
{
	struct cred_ctx *cc = ctx;
	const struct config *cfg = cc->cfg;
	const struct parser *p = cc->p;

	if (k >= cfg->prefix_count || k >= MAX_PREFIXES)
		return 1;
	const struct cred_prefix *cp = &cfg->prefixes[MASKED(k, MAX_PREFIXES - 1)];
	__u32 plen = cp->len;
	if (plen == 0 || plen > PREFIX_MAX)
		return 0;
	__u32 rest = cc->rest;
	/* norm_at reads bytes before this as they are, later ones as 0 */
	__u32 avail = p->nlen < NORM_MAX ? p->nlen : NORM_MAX;
	for (__u32 w = 0; w < PREFIX_MAX / 8; w++) {
		__u32 i = w * 8;
		if (i >= plen)
			break;
		__u32 at = rest + i;
		/* the bytes norm_at(p, at .. at + 7) returns */
		__u64 x = load64(&p->norm[MASKED(at, NORM_MAX - 1)]);
		if (at >= avail)
			x = 0;
		else if (avail - at < 8)
			x &= (1ULL << ((avail - at) * 8)) - 1;
		/* lower(): 0x20 added to the bytes 'A' to 'Z' */
		x += (bytes_below(x, 'Z' + 1) & ~bytes_below(x, 'A')) >> 2;
		__u64 y = load64(&cp->s[MASKED(w, PREFIX_MAX / 8 - 1) * 8]);
		__u64 diff = x ^ y;
		if (plen - i < 8)
			diff &= (1ULL << ((plen - i) * 8)) - 1;
		if (diff)
			return 0;
	}
	/* whole prefix matched: it must end at a segment boundary */
	__u32 at = rest + plen;
	if (at >= p->nlen || norm_at(p, at) == '/') {
		cc->match = 1;
		return 1;
	}
	return 0;
}

#ifdef JUDGE_TEST_KNOBS
/* The byte-at-a-time comparison cred_step replaces (one byte of one prefix
 * per step), kept in the test program so that the tests can compare. */
struct cred_bytes_ctx {
	const struct parser *p;
	const struct config *cfg;
	__u32 rest;
	__u32 k;
	__u32 i;
	__u32 match;
};

static long cred_step_bytes(__u32 unused, void *ctx)
{
	struct cred_bytes_ctx *cc = ctx;
	const struct config *cfg = cc->cfg;
	const struct parser *p = cc->p;
	__u32 k = cc->k;

	if (k >= cfg->prefix_count || k >= MAX_PREFIXES)
		return 1;
	const struct cred_prefix *cp = &cfg->prefixes[MASKED(k, MAX_PREFIXES - 1)];
	__u32 plen = cp->len;
	__u32 i = cc->i;
	if (plen == 0 || plen > PREFIX_MAX) {
		cc->k = k + 1;
		cc->i = 0;
		return 0;
	}
	if (i >= plen) {
		__u32 at = cc->rest + plen;
		if (at >= p->nlen || norm_at(p, at) == '/') {
			cc->match = 1;
			return 1;
		}
		cc->k = k + 1;
		cc->i = 0;
		return 0;
	}
	if (lower(norm_at(p, cc->rest + i)) != (__u8)cp->s[MASKED(i, PREFIX_MAX - 1)]) {
		cc->k = k + 1;
		cc->i = 0;
		return 0;
	}
	cc->i = i + 1;
	return 0;
}

/* 1 turns the fast paths off, and the prefix comparison back to one byte
 * per step: the tests compare. */
__u32 judge_fast_off;
#endif

/* Matches the normalised path against the policy's credential prefixes,
 * which are stored without their version segment ("meta-data/iam/info"):
 * every version ("latest", "2021-07-15", "1.0", …) counts. A prefix matches
 * at a segment boundary, case-insensitively. */
static __always_inline int credential_path(const struct parser *p, const struct config *cfg)
{
	/* norm is "/<version>/<rest>" */
	__u32 rest;
	if (p->nseg >= 2)
		rest = p->segs[1];
	else if (p->nseg == 1)
		rest = p->seg_start;
	else
		return 0;
#ifdef JUDGE_TEST_KNOBS
	if (judge_fast_off) {
		struct cred_bytes_ctx cb = {.p = p, .cfg = cfg, .rest = rest};
		bpf_loop(MAX_PREFIXES * (PREFIX_MAX + 1), cred_step_bytes, &cb, 0);
		return cb.match;
	}
#endif
	struct cred_ctx cc = {.p = p, .cfg = cfg, .rest = rest};
	bpf_loop(MAX_PREFIXES, cred_step, &cc, 0);
	return cc.match;
}

static const char token_path[] = "/latest/api/token";
#define TOKEN_PATH_LEN (sizeof(token_path) - 1)

/* The token PUT is the exact raw path /latest/api/token, optionally with a
 * query: not a path that only resolves to it (/latest/x/../api/token,
 * //latest/api/token, %2F, a "#" fragment), which a proxy or server in
 * between could read otherwise. */
static __always_inline int is_token_put(const struct parser *p)
{
	if (p->method_len != 3 || p->method[0] != 'P' || p->method[1] != 'U' || p->method[2] != 'T')
		return 0;
	__u32 n = p->raw_path_len;
	const char *raw = p->reqs[MASKED(p->nreqs, MAX_REQS - 1)].path;
	if (n < TOKEN_PATH_LEN || (n > TOKEN_PATH_LEN && raw[TOKEN_PATH_LEN] != '?'))
		return 0;
	for (__u32 i = 0; i < TOKEN_PATH_LEN; i++) {
		if (raw[i] != token_path[MASKED(i, 31)])
			return 0;
	}
	return 1;
}

/* Whether the method may carry a body. IMDS clients send none but on the
 * token PUT; a GET or HEAD with one is refused, as a server that ignores
 * its Content-Length would read the body as the next request. */
static __always_inline int body_allowed(const struct parser *p)
{
	const char *m = p->method;
	if (p->method_len == 3)
		return m[0] == 'P' && m[1] == 'U' && m[2] == 'T';
	if (p->method_len == 4)
		return m[0] == 'P' && m[1] == 'O' && m[2] == 'S' && m[3] == 'T';
	if (p->method_len == 5)
		return m[0] == 'P' && m[1] == 'A' && m[2] == 'T' && m[3] == 'C' && m[4] == 'H';
	return 0;
}

/* Records the request ending at p->pos (exclusive) with a reason, and says
 * whether the walk goes on. */
static __always_inline long finish_request(struct parser *p, const struct config *cfg, __u8 reason)
{
	__u32 n = p->nreqs;
	if (n >= MAX_REQS)
		return 1;
	struct req_result *r = &p->reqs[MASKED(n, MAX_REQS - 1)];
	__u8 flags = p->flags;

	if (reason == REASON_NONE) {
		if (p->force_reason)
			reason = p->force_reason;
		else if (p->te)
			reason = REASON_PARSE_ERROR; /* chunked bodies cannot be followed */
		else if (p->cl && !body_allowed(p))
			reason = REASON_PARSE_ERROR; /* a body on GET, HEAD, ... */
		else if (p->token_headers > 1)
			reason = REASON_PARSE_ERROR; /* which one the server reads is unknown */
		else if ((flags & REQ_FORWARDED) && (p->cfg_flags & CONFIG_REFUSE_FORWARDED))
			reason = REASON_FORWARDED_REQUEST;
		else if (is_token_put(p))
			flags |= REQ_TOKEN_PUT;
		else if (!(flags & REQ_HAS_TOKEN) && (p->cfg_flags & CONFIG_REQUIRE_TOKEN))
			reason = REASON_IMDSV1_NO_TOKEN;
	}
	if (p->nlen > 0 && credential_path(p, cfg))
		flags |= REQ_CREDENTIAL;

	r->start = p->req_start;
	r->end = p->pos;
	r->content_length = p->cl;
	r->path_len = p->raw_path_len > 0xffff ? 0xffff : p->raw_path_len;
	r->reason = reason;
	r->action = verdict(cfg, reason);
	r->flags = flags;
	r->method_len = p->method_len > METHOD_LEN ? METHOD_LEN : p->method_len;
	__builtin_memcpy(r->method, p->method, METHOD_LEN);
	p->nreqs = n + 1;

	if (reason == REASON_PARSE_ERROR) {
		p->stop = STOP_ERROR;
		return 1;
	}
	if (r->action == ACTION_DENY) {
		p->stop = STOP_DENY;
		return 1;
	}
	p->skip = p->cl;
	p->state = p->cl ? P_BODY : P_PRE;
	p->boundary = p->pos; /* everything before the body is judged */
	p->unsynced = 0;      /* the server's view is known again */
	return 0;
}

/* Transitions shared by step_byte and the fast paths, so that both leave
 * exactly the same state. */

/* The "/" that starts the path (origin-form, or after the authority). */
static __always_inline void path_begin(struct parser *p)
{
	p->state = P_PATH;
	raw_path_byte(p, '/');
	p->nlen = 0;
	norm_put(p, '/');
	p->seg_start = 1;
}

/* The first byte of a header line, a token character: a name begins. */
static __always_inline void name_begin(struct parser *p)
{
	p->state = P_NAME;
	p->name_len = 0;
	p->name_alive = (1 << H_COUNT) - 1;
	p->header = H_NONE;
}

/* The ":" after a header name: which header it is. */
static __always_inline void name_end(struct parser *p)
{
	p->header = H_NONE;
	for (__u32 h = 0; h < H_COUNT; h++) {
		if ((p->name_alive & (1 << h)) && p->name_len == header_len(h))
			p->header = h;
	}
	if (p->header == H_TOKEN)
		p->token_headers++;
	if (p->header == H_XFF)
		p->flags |= REQ_FORWARDED;
	if (p->header == H_TE)
		p->te = 1;
	if (p->header == H_CL) {
		p->cl_digits = 0;
		p->cl = 0;
	}
	p->value_len = 0;
	p->value_ws = 0;
	p->state = P_VALUE_OWS;
}

/* The LF that ends a header line; -1 if the line is refused. */
static __always_inline int line_end(struct parser *p)
{
	if (p->header == H_TOKEN && p->value_len > 0)
		p->flags |= REQ_HAS_TOKEN;
	if (p->header == H_CL) {
		if (p->cl_digits == 0)
			return -1;
		if (p->cl_seen && p->cl != p->cl_first)
			return -1; /* conflicting lengths */
		p->cl_seen = 1;
		p->cl_first = p->cl;
	}
	p->state = P_LINE_START;
	return 0;
}

/* What one byte of the walk did. */
enum step {
	STEP_NEXT = 0,  /* the byte is consumed; go on */
	STEP_STOP = 1,  /* the walk is over, p->stop says why */
	STEP_DONE = 2,  /* the byte is consumed and ends the request's header block */
	STEP_ERROR = 3, /* the request cannot be parsed (the byte is not consumed) */
};

/* The byte-at-a-time state machine: one byte (or one run of body bytes). */
/* Each state's step returns enum step: STEP_NEXT when the byte is part of
 * the request (step_byte then moves past it). */
static __always_inline int st_method(struct parser *p, __u8 c)
{
	if (c == ' ') {
		if (p->method_len == 0)
			return STEP_ERROR;
		p->state = P_TARGET_START;
		return STEP_NEXT;
	}
	if (!is_tchar(c) || p->method_len >= METHOD_MAX)
		return STEP_ERROR;
	if (p->method_len < METHOD_LEN)
		p->method[MASKED(p->method_len, METHOD_LEN - 1)] = c;
	p->method_len++;
	return STEP_NEXT;
}

/* P_PRE: blanks between requests, then a request's first byte. */
static __always_inline int st_pre(struct parser *p, __u8 c)
{
	if (c == '\r' || c == '\n' || c == ' ' || c == '\t') {
		if (p->unsynced) {
			start_request(p);
			return STEP_ERROR;
		}
		p->boundary = p->pos + 1;
		return STEP_NEXT;
	}
	if (p->nreqs >= MAX_REQS) {
		p->stop = STOP_FULL;
		return STEP_STOP;
	}
	start_request(p);
	return st_method(p, c); /* c is the method's first byte */
}

static __always_inline int st_target_start(struct parser *p, __u8 c)
{
	if (c == '/') {
		path_begin(p);
		return STEP_NEXT;
	}
	if (c == 'h' || c == 'H') {
		p->state = P_SCHEME;
		p->scheme_pos = 1;
		return STEP_NEXT;
	}
	/* asterisk-form, authority-form or garbage: nothing a metadata
	 * client sends; refuse rather than guess how the server reads it */
	return STEP_ERROR;
}

/* "http://" or "https://", any case */
static __always_inline int st_scheme(struct parser *p, __u8 c)
{
	static const char http[] = "http://";
	__u32 sp = p->scheme_pos;
	__u8 lc_ = lower(c);
	if (sp == 4 && lc_ == 's') {
		p->scheme_pos = 0x100 | 4; /* saw "https" */
		return STEP_NEXT;
	}
	__u32 k = sp & 0xff;
	if (k < 7 && lc_ == (__u8)http[MASKED(k, 7)]) {
		p->scheme_pos = (sp & 0x100) | (k + 1);
		if (k + 1 == 7)
			p->state = P_AUTHORITY;
		return STEP_NEXT;
	}
	return STEP_ERROR;
}

static __always_inline int st_authority(struct parser *p, __u8 c)
{
	if (c == '/') {
		path_begin(p);
		return STEP_NEXT;
	}
	if (c == ' ') { /* "http://host" with no path is "/" */
		raw_path_byte(p, '/');
		p->nlen = 0;
		norm_put(p, '/');
		p->seg_start = 1;
		p->state = P_VERSION;
		return STEP_NEXT;
	}
	if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#')
		return STEP_ERROR;
	return STEP_NEXT;
}

static __always_inline int st_path(struct parser *p, __u8 c)
{
	if (c == ' ') {
		end_path(p);
		p->state = P_VERSION;
		return STEP_NEXT;
	}
	if (c <= 0x20 || c >= 0x7f)
		return STEP_ERROR;
	raw_path_byte(p, c);
	if (c == '?' || c == '#') {
		end_path(p);
		p->state = P_QUERY;
		return STEP_NEXT;
	}
	if (c == '%') {
		p->state = P_PCT1;
		return STEP_NEXT;
	}
	return path_byte(p, c) < 0 ? STEP_ERROR : STEP_NEXT;
}

/* P_PCT1 and P_PCT2: the two hex digits of a percent escape */
static __always_inline int st_pct(struct parser *p, __u8 c)
{
	int v = hexval(c);
	if (v < 0)
		return STEP_ERROR;
	raw_path_byte(p, c);
	if (p->state == P_PCT1) {
		p->pct_val = v;
		p->state = P_PCT2;
		return STEP_NEXT;
	}
	p->state = P_PATH;
	return path_byte(p, (__u8)(p->pct_val * 16 + v)) < 0 ? STEP_ERROR : STEP_NEXT;
}

static __always_inline int st_query(struct parser *p, __u8 c)
{
	if (c == ' ') {
		p->state = P_VERSION;
		return STEP_NEXT;
	}
	if (c <= 0x20 || c >= 0x7f)
		return STEP_ERROR;
	raw_path_byte(p, c);
	return STEP_NEXT;
}

/* exactly "HTTP/1.0" or "HTTP/1.1" */
static __always_inline int st_version(struct parser *p, __u8 c)
{
	static const char v11[] = "HTTP/1.";
	__u32 k = p->version_pos;
	if (k < 7) {
		if (c != (__u8)v11[MASKED(k, 7)])
			return STEP_ERROR;
	} else if (k == 7) {
		if (c != '0' && c != '1')
			return STEP_ERROR;
	} else if (c == '\r') {
		p->state = P_REQLINE_LF;
		return STEP_NEXT;
	} else {
		return STEP_ERROR;
	}
	p->version_pos = k + 1;
	return STEP_NEXT;
}

/* P_REQLINE_LF and P_HDR_LF: the LF after a line's CR */
static __always_inline int st_lf(struct parser *p, __u8 c)
{
	if (c != '\n')
		return STEP_ERROR; /* CR without LF */
	if (p->state == P_HDR_LF)
		return line_end(p) < 0 ? STEP_ERROR : STEP_NEXT;
	p->state = P_LINE_START;
	return STEP_NEXT;
}

static __always_inline int st_name(struct parser *p, __u8 c)
{
	if (c == ':') {
		name_end(p);
		return STEP_NEXT;
	}
	if (!is_tchar(c))
		return STEP_ERROR; /* includes blanks before the colon */
	__u8 lc_ = lower(c);
	__u32 alive = p->name_alive;
	for (__u32 h = 0; h < H_COUNT; h++) {
		if ((alive & (1 << h)) && !name_char_matches(h, p->name_len, lc_))
			alive &= ~(1 << h);
	}
	p->name_alive = alive;
	p->name_len++;
	return STEP_NEXT;
}

static __always_inline int st_line_start(struct parser *p, __u8 c)
{
	if (c == '\r') {
		p->state = P_END_LF;
		return STEP_NEXT;
	}
	/* a line starting with SP/HT continues the previous header
	 * (obs-fold): refused, it is how header smuggling starts */
	if (!is_tchar(c))
		return STEP_ERROR;
	name_begin(p);
	return st_name(p, c);
}

static __always_inline int st_value(struct parser *p, __u8 c)
{
	if (c == '\r') {
		p->state = P_HDR_LF;
		return STEP_NEXT;
	}
	if (c == ' ' || c == '\t') {
		p->value_ws = 1;
		return STEP_NEXT;
	}
	if ((c < 0x20) || c == 0x7f)
		return STEP_ERROR; /* bare LF, NUL, other controls */
	if (p->header == H_CL) {
		if (c < '0' || c > '9' || p->value_ws || p->cl_digits >= 9)
			return STEP_ERROR;
		p->cl = p->cl * 10 + (c - '0');
		p->cl_digits++;
	}
	p->value_len++;
	return STEP_NEXT;
}

static __always_inline int st_value_ows(struct parser *p, __u8 c)
{
	if (c == ' ' || c == '\t')
		return STEP_NEXT;
	p->state = P_VALUE;
	return st_value(p, c);
}

/* One byte of the request line or header block, by the parser's state. */
static __always_inline int step_state(struct parser *p, __u8 c)
{
	switch (p->state) {
	case P_PRE:
		return st_pre(p, c);
	case P_METHOD:
		return st_method(p, c);
	case P_TARGET_START:
		return st_target_start(p, c);
	case P_SCHEME:
		return st_scheme(p, c);
	case P_AUTHORITY:
		return st_authority(p, c);
	case P_PATH:
		return st_path(p, c);
	case P_PCT1:
	case P_PCT2:
		return st_pct(p, c);
	case P_QUERY:
		return st_query(p, c);
	case P_VERSION:
		return st_version(p, c);
	case P_REQLINE_LF:
	case P_HDR_LF:
		return st_lf(p, c);
	case P_LINE_START:
		return st_line_start(p, c);
	case P_NAME:
		return st_name(p, c);
	case P_VALUE_OWS:
		return st_value_ows(p, c);
	case P_VALUE:
		return st_value(p, c);
	case P_END_LF:
		if (c != '\n')
			return STEP_ERROR;
		p->pos++;
		return STEP_DONE;
	}
	return STEP_ERROR;
}

/* Skips what is left of a body; the walk goes on at the next request. */
static __always_inline int step_body(struct parser *p)
{
	__u32 avail = p->len - p->pos;
	__u32 n = p->skip < avail ? p->skip : avail;
	p->pos += n;
	p->skip -= n;
	p->boundary = p->pos;
	if (p->skip == 0)
		p->state = P_PRE;
	return STEP_NEXT;
}

static __always_inline int step_byte(struct judge *j)
{
	struct parser *p = &j->p;

	if (p->pos >= p->len) {
		if (p->state == P_PRE || p->state == P_BODY) {
			p->stop = STOP_END;
			p->boundary = p->pos;
		} else {
			p->stop = STOP_INCOMPLETE;
		}
		return STEP_STOP;
	}
	if (p->state == P_BODY)
		return step_body(p);
	if (p->state != P_PRE && p->pos - p->req_start >= HDR_MAX)
		return STEP_ERROR; /* header block over its bound */

	int r = step_state(p, j->buf[MASKED(p->pos, JUDGE_BUF - 1)]);
	if (r == STEP_NEXT)
		p->pos++;
	return r;
}

/*
 * Fast paths. Walking a request byte by byte through step_byte costs a
 * dispatch on the state and a function call per byte. fast_chain takes the
 * bytes along the common path of the grammar (the start of a request, the
 * method, an origin-form target's path segments, the version, a header line
 * whose value is not a Content-Length, the blank line ending the block):
 * one run per state, mostly eight bytes at a time (SWAR: each byte's class
 * computed in parallel in a 64-bit word), and the transitions between the
 * runs, through the same helpers step_byte uses (path_begin, name_end,
 * line_end, ...). It leaves exactly the state step_byte would leave byte by
 * byte, and stops before any byte it does not take the plain way (one that
 * step_byte refuses, or handles in a state fast_chain has no run for: "%",
 * "?" after the path, a Content-Length value, obs-fold, ...), before the
 * header block's bound and at the end of the buffer; step_byte takes that
 * byte next. The test program can turn the fast paths off (judge_fast_off),
 * and the tests compare every judgement and the parser's state both ways.
 *
 * Each run reads the parser's state from memory and writes it back (FRESH),
 * so the verifier sees the same state after a run whatever byte count it
 * took: the runs are checked one after the other, not once per combination
 * of their lengths.
 */
#define FAST_MAX 64

/* Hides the loop counter from the compiler, which would otherwise drop a
 * bound it finds implied by another exit (a method ends by its 16th byte):
 * the verifier only knows a loop ends by its explicit bound. */
#define FAST_BOUND(k) asm volatile("" : "+r"(k))
/* A field read from memory again, not from a register holding what was
 * written: the verifier knows nothing about its value. */
#define FRESH(x) (*(volatile __u32 *)&(x))

/* Byte classes as 128-bit sets, one word for 0x00-0x3f, one for 0x40-0x7f;
 * no byte over 0x7f is in any of them. */
#define CBIT(c) (1ULL << ((c) & 63))
#define CRANGE(a, b) ((~0ULL << ((a) & 63)) & (~0ULL >> (63 - ((b) & 63))))
/* visible ASCII, 0x21-0x7e */
#define VCHAR_LO CRANGE(0x21, 0x3f)
#define VCHAR_HI CRANGE(0x40, 0x7e)
/* token characters (is_tchar) */
#define TCHAR_LO (CBIT('!') | CRANGE('#', '\'') | CBIT('*') | CBIT('+') | CBIT('-') | CBIT('.') | \
		  CRANGE('0', '9'))
#define TCHAR_HI (CRANGE('A', 'Z') | CBIT('^') | CBIT('_') | CBIT('`') | CRANGE('a', 'z') | CBIT('|') | \
		  CBIT('~'))
/* path bytes taken as they are: visible, not "/", "%", "?" or "#" */
#define PATH_LO (VCHAR_LO & ~(CBIT('/') | CBIT('%') | CBIT('?') | CBIT('#')))
#define PATH_HI VCHAR_HI
/* authority bytes: visible, not "/", "?" or "#" */
#define AUTH_LO (VCHAR_LO & ~(CBIT('/') | CBIT('?') | CBIT('#')))
#define AUTH_HI VCHAR_HI

static __always_inline int in_set(__u8 c, __u64 lo, __u64 hi)
{
	__u64 w = c < 64 ? lo : hi;
	return c < 128 && ((w >> (c & 63)) & 1);
}

static __always_inline __u8 buf_at(const struct judge *j, __u32 i)
{
	return j->buf[MASKED(i, JUDGE_BUF - 1)];
}

static __always_inline __u64 word_at(const struct judge *j, __u32 i)
{
	/* buf is followed by the parser: the 8 bytes are in the map value
	 * even at the end of buf. Callers classify only bytes before lim;
	 * copy_run may copy later ones, past the length it records. */
	return load64(&j->buf[MASKED(i, JUDGE_BUF - 1)]);
}

/* First offset the fast paths may not take: the end of the buffer, or of
 * the header block's bound (step_byte refuses a byte at req_start + HDR_MAX
 * or beyond). */
static __always_inline __u32 fast_limit(const struct parser *p)
{
	__u32 lim = p->req_start + HDR_MAX;
	return lim < p->len ? lim : p->len;
}

/* P_PRE: the first byte of a request (not a blank, which step_byte skips
 * or refuses) starts it, as step_byte does; fast_method takes the byte. */
static __always_inline void fast_pre(struct judge *j)
{
	struct parser *p = &j->p;
	__u32 pos = FRESH(p->pos);
	if (p->state != P_PRE || pos >= p->len || p->nreqs >= MAX_REQS)
		return;
	__u8 c = buf_at(j, pos);
	if (c == '\r' || c == '\n' || c == ' ' || c == '\t')
		return;
	start_request(p);
}

/* P_METHOD: token characters, up to METHOD_MAX; then the blank. */
static __always_inline void fast_method(struct judge *j, __u32 lim)
{
	struct parser *p = &j->p;
	if (FRESH(p->state) != P_METHOD)
		return;
	__u32 pos = FRESH(p->pos);
	if (pos >= lim)
		return;
	__u32 n = lim - pos;
	__u32 k;
	for (k = 0; k < FAST_MAX; k++) {
		FAST_BOUND(k);
		if (k >= n)
			break;
		__u8 c = buf_at(j, pos + k);
		if (c == ' ') {
			if (p->method_len == 0)
				break;
			p->state = P_TARGET_START;
			k++;
			break;
		}
		if (!in_set(c, TCHAR_LO, TCHAR_HI) || p->method_len >= METHOD_MAX)
			break;
		if (p->method_len < METHOD_LEN)
			p->method[MASKED(p->method_len, METHOD_LEN - 1)] = c;
		p->method_len++;
	}
	p->pos = pos + k;
}

/* P_TARGET_START: the "/" of an origin-form target. */
static __always_inline void fast_target(struct judge *j, __u32 lim)
{
	struct parser *p = &j->p;
	if (FRESH(p->state) != P_TARGET_START)
		return;
	__u32 pos = FRESH(p->pos);
	if (pos >= lim || buf_at(j, pos) != '/')
		return;
	path_begin(p);
	p->pos = pos + 1;
}

/* P_AUTHORITY: host and port, skipped; then the path's "/". */
static __always_inline void fast_authority(struct judge *j, __u32 lim)
{
	struct parser *p = &j->p;
	if (FRESH(p->state) != P_AUTHORITY)
		return;
	__u32 pos = FRESH(p->pos);
	if (pos >= lim)
		return;
	__u32 n = lim - pos;
	__u32 k;
	for (k = 0; k < FAST_MAX; k++) {
		FAST_BOUND(k);
		if (k >= n)
			break;
		__u8 c = buf_at(j, pos + k);
		if (c == '/') {
			path_begin(p);
			k++;
			break;
		}
		if (!in_set(c, AUTH_LO, AUTH_HI))
			break;
	}
	p->pos = pos + k;
}

/* The high bit of each byte of x that is not a letter, a digit or "-"
 * (all token characters). */
static __always_inline __u64 bytes_not_alnum_dash(__u64 x)
{
	__u64 l = x | (ONES * 0x20); /* letters to lower case, and others */
	__u64 letter = bytes_below(l, 'z' + 1) & ~bytes_below(l, 'a');
	__u64 digit = bytes_below(x, '9' + 1) & ~bytes_below(x, '0');
	return ~(letter | digit | bytes_equal(x, '-')) & HIGHS;
}

/* Index of the first byte flagged in m (m != 0). */
static __always_inline __u32 first_flagged(__u64 m)
{
	return bytes_count(((m & -m) - 1) & HIGHS);
}

/* The n first bytes of a word (n < 8). */
static __always_inline __u64 low_bytes(__u32 n)
{
	return (1ULL << (n * 8)) - 1;
}

/* The high bit of each byte of x a path segment does not take as it is. */
static __always_inline __u64 bytes_not_path(__u64 x)
{
	return bytes_below(x, 0x21) | (~bytes_below(x, 0x7f) & HIGHS) | bytes_equal(x, '/') | bytes_equal(x, '%') |
	       bytes_equal(x, '?') | bytes_equal(x, '#');
}

static __always_inline void store64(void *p, __u64 v)
{
	*(__u64 *)__builtin_assume_aligned(p, 8) = v; /* see load64 */
}

/* Copies n bytes (n <= FAST_MAX + 8) of the message from pos to dst[at..],
 * eight at a time; whole words fit (at + n + 8 <= size), or at >= size and
 * nothing is kept. The bytes of the last word past n are past the length
 * the caller records: no one reads them, the next bytes taken overwrite
 * them. */
static __always_inline void copy_run(struct judge *j, char *dst, __u32 at, __u32 size, __u32 pos, __u32 n)
{
	for (__u32 i = 0; i < FAST_MAX + 8; i += 8) {
		FAST_BOUND(i);
		__u32 to = MASKED(at + i, size - 1);
		if (i >= n || at >= size || to > size - 8) /* (never the last: for the verifier) */
			break;
		store64(&dst[to], word_at(j, pos + i));
	}
}

/* Whether copy_run can take n bytes at dst[at..]. */
static __always_inline int copy_fits(__u32 at, __u32 size, __u32 n)
{
	return at >= size || at + n + 8 <= size;
}

/* The plain bytes of a path segment from p->pos: for each, raw_path_byte
 * and path_byte, taken all at once. */
static __always_inline void path_run(struct judge *j, char *raw_path, __u32 lim)
{
	struct parser *p = &j->p;
	__u32 pos = FRESH(p->pos);
	__u32 end = pos;
	for (__u32 w = 0; w < FAST_MAX / 8; w++) {
		FAST_BOUND(w);
		if (end + 8 > lim)
			break;
		__u64 m = bytes_not_path(word_at(j, end));
		if (m) {
			end += first_flagged(m);
			goto scanned;
		}
		end += 8;
	}
	p->pos = end;
	end = FRESH(p->pos);
	for (__u32 k = 0; k < 8; k++) {
		FAST_BOUND(k);
		if (end >= lim || !in_set(buf_at(j, end), PATH_LO, PATH_HI))
			break;
		end++;
	}
scanned:
	p->pos = end;
	/* read back: one unknown count for the verifier, not one per exit */
	__u32 n = FRESH(p->pos) - pos;
	if (n == 0)
		return;
	__u32 raw = p->raw_path_len;
	__u32 nlen = p->nlen;
	if (!copy_fits(raw, PATH_LEN, n) || !copy_fits(nlen, NORM_MAX, n)) {
		/* near the end of the raw or normalised path: step_byte takes
		 * these bytes one at a time */
		p->pos = pos;
		return;
	}
	__u32 sl = p->seg_len;
	if (sl == 0)
		p->seg_c0 = buf_at(j, pos);
	if (sl <= 1 && sl + n >= 2)
		p->seg_c1 = buf_at(j, pos + 1 - sl);
	p->seg_len = sl + n;
	p->raw_path_len = raw + n;
	p->nlen = nlen + n;
	copy_run(j, raw_path, raw, PATH_LEN, pos, n);
	copy_run(j, p->norm, nlen, NORM_MAX, pos, n);
}

/* Path segments taken per fast_path; a longer path takes another step. */
#define FAST_SEGS 8

/* P_PATH: segments and the "/" between them; then the blank before the
 * version. "%", "?", "#" and anything refused are left to step_byte. */
static __always_inline void fast_path(struct judge *j, __u32 lim)
{
	struct parser *p = &j->p;
	if (FRESH(p->state) != P_PATH)
		return;
	__u32 r = p->nreqs;
	if (r >= MAX_REQS)
		return;
	char *raw_path = p->reqs[MASKED(r, MAX_REQS - 1)].path;
	for (__u32 s = 0; s < FAST_SEGS; s++) {
		FAST_BOUND(s);
		path_run(j, raw_path, lim);
		__u32 pos = FRESH(p->pos);
		if (pos >= lim)
			return;
		__u8 c = buf_at(j, pos);
		if (c == ' ') {
			end_path(p);
			p->state = P_VERSION;
			p->pos = pos + 1;
			return;
		}
		if (c != '/' || p->nseg >= SEG_MAX)
			return; /* left to step_byte (end_segment might refuse the "/") */
		raw_path_byte(p, c);
		end_segment(p);
		p->pos = pos + 1;
	}
}

/* P_QUERY: visible bytes, reported with the path; then the blank. */
static __always_inline void fast_query(struct judge *j, __u32 lim)
{
	struct parser *p = &j->p;
	if (FRESH(p->state) != P_QUERY)
		return;
	__u32 pos = FRESH(p->pos);
	if (pos >= lim)
		return;
	__u32 n = lim - pos;
	__u32 k;
	for (k = 0; k < FAST_MAX; k++) {
		FAST_BOUND(k);
		if (k >= n)
			break;
		__u8 c = buf_at(j, pos + k);
		if (c == ' ') {
			p->state = P_VERSION;
			k++;
			break;
		}
		if (!in_set(c, VCHAR_LO, VCHAR_HI))
			break;
		raw_path_byte(p, c);
	}
	p->pos = pos + k;
}

/* P_VERSION: "HTTP/1.0" or "HTTP/1.1", its CR; P_REQLINE_LF: the LF. */
static __always_inline void fast_version(struct judge *j, __u32 lim)
{
	static const char v11[] = "HTTP/1.";
	struct parser *p = &j->p;
	if (FRESH(p->state) != P_VERSION)
		return;
	__u32 pos = FRESH(p->pos);
	if (pos + 8 <= lim && p->version_pos == 0) {
		/* the whole version at once, as the loop below takes it */
		__u64 x = word_at(j, pos);
		if (x == 0x312e312f50545448ULL /* "HTTP/1.1" */ || x == 0x302e312f50545448ULL /* "HTTP/1.0" */) {
			p->version_pos = 8;
			p->pos = pos + 8;
			pos = FRESH(p->pos);
		}
	}
	if (pos >= lim)
		return;
	__u32 n = lim - pos;
	__u32 k;
	for (k = 0; k < 10; k++) {
		FAST_BOUND(k);
		if (k >= n)
			break;
		__u8 c = buf_at(j, pos + k);
		__u32 vp = p->version_pos;
		if (vp < 7) {
			if (c != (__u8)v11[MASKED(vp, 7)])
				break;
		} else if (vp == 7) {
			if (c != '0' && c != '1')
				break;
		} else if (vp == 8 && c == '\r') {
			p->state = P_REQLINE_LF;
			k++;
			break;
		} else {
			break;
		}
		p->version_pos = vp + 1;
	}
	pos += k;
	p->pos = pos;
	if (FRESH(p->state) == P_REQLINE_LF && pos < lim && buf_at(j, pos) == '\n') {
		p->state = P_LINE_START;
		p->pos = pos + 1;
	}
}

/* The high bit of each byte of x that is not a token character (is_tchar):
 * controls, blank, DEL, bytes over 0x7f and the separators. */
static __always_inline __u64 bytes_not_tchar(__u64 x)
{
	return bytes_below(x, 0x21) | (~bytes_below(x, 0x7f) & HIGHS) | bytes_equal(x, '"') |
	       bytes_equal(x, '(') | bytes_equal(x, ')') | bytes_equal(x, ',') | bytes_equal(x, '/') |
	       (bytes_below(x, '@' + 1) & ~bytes_below(x, ':')) | (bytes_below(x, ']' + 1) & ~bytes_below(x, '[')) |
	       bytes_equal(x, '{') | bytes_equal(x, '}');
}

/* The tracked names, lower case, zero-padded so that eight bytes can be
 * read from any offset below 32. */
static const char hdr_names[H_COUNT][40] = {
	[H_TOKEN] = "x-aws-ec2-metadata-token",
	[H_XFF] = "x-forwarded-for",
	[H_CL] = "content-length",
	[H_TE] = "transfer-encoding",
};

/* P_LINE_START: a token character begins a name. P_NAME: token characters
 * (the tracked names still matching narrow), then the ":". */
static __always_inline void fast_name(struct judge *j, __u32 lim)
{
	struct parser *p = &j->p;
	__u32 state = FRESH(p->state);
	__u32 pos = FRESH(p->pos);
	if (pos >= lim)
		return;
	if (state == P_LINE_START) {
		if (!in_set(buf_at(j, pos), TCHAR_LO, TCHAR_HI))
			return;
		name_begin(p);
	} else if (state != P_NAME) {
		return;
	}
	__u32 nl = p->name_len;
	/* the token characters from pos on, eight at a time */
	__u32 end = pos;
	for (__u32 w = 0; w < FAST_MAX / 8; w++) {
		FAST_BOUND(w);
		if (end + 8 > lim)
			break;
		__u64 x = word_at(j, end);
		if (!bytes_not_alnum_dash(x)) {
			end += 8; /* letters, digits and "-" only, the common case */
			continue;
		}
		__u64 m = bytes_not_tchar(x);
		if (m) {
			end += first_flagged(m);
			goto counted;
		}
		end += 8;
	}
	p->pos = end;
	end = FRESH(p->pos);
	for (__u32 k = 0; k < 8; k++) {
		FAST_BOUND(k);
		if (end >= lim || !in_set(buf_at(j, end), TCHAR_LO, TCHAR_HI))
			break;
		end++;
	}
counted:
	p->pos = end;
	p->name_len = nl + (end - pos);
	/* Which tracked names survive those bytes: each one still alive is
	 * compared on its own, eight bytes at a time. The count is read back
	 * from memory, so the verifier sees one unknown count here, not one
	 * state per count the loops above can end with. */
	__u32 t = FRESH(p->name_len) - nl;
	__u32 alive = p->name_alive;
#pragma unroll
	for (__u32 h = 0; h < H_COUNT; h++) {
		if (!(alive & (1 << h)))
			continue;
		if (nl + t > header_len(h)) {
			alive &= ~(1 << h); /* longer than the name */
			continue;
		}
		for (__u32 i = 0; i < 32; i += 8) {
			FAST_BOUND(i);
			if (i >= t)
				break;
			/* x | 0x20 is lower(x) for the letters, and leaves the
			 * digits and "-" as they are; of the other token
			 * characters, none becomes a letter, digit or "-" either
			 * way: against the names' bytes it compares as lower() */
			__u64 x = word_at(j, pos + i) | (ONES * 0x20);
			__u64 diff = x ^ load64(&hdr_names[h][MASKED(nl + i, 31)]);
			if (t - i < 8)
				diff &= low_bytes(t - i);
			if (diff) {
				alive &= ~(1 << h);
				break;
			}
		}
	}
	p->name_alive = alive;
	pos = FRESH(p->pos);
	if (pos < lim && buf_at(j, pos) == ':') {
		name_end(p);
		p->pos = pos + 1;
	}
}


/* P_VALUE_OWS, P_VALUE of any header but Content-Length: blanks and value
 * bytes, then the CR; P_HDR_LF: the LF. */
static __always_inline void fast_value(struct judge *j, __u32 lim)
{
	struct parser *p = &j->p;
	__u32 state = FRESH(p->state);
	if ((state != P_VALUE_OWS && state != P_VALUE) || p->header == H_CL)
		return;
	__u32 pos = FRESH(p->pos);
	if (pos >= lim)
		return;
	__u32 n = lim - pos;
	__u32 in_value = state == P_VALUE;
	__u32 vlen = p->value_len;
	__u32 ws = p->value_ws;
	__u32 k;
	/* byte by byte up to the first value byte, then eight bytes at a time
	 * while none of them ends the value (or is refused), then byte by
	 * byte again */
	for (k = 0; k < 8; k++) {
		FAST_BOUND(k);
		if (k >= n || in_value)
			break;
		__u8 c = buf_at(j, pos + k);
		if (c == ' ' || c == '\t')
			continue; /* blanks before the value are not in it */
		if (c < 0x20 || c == 0x7f)
			break; /* the CR, or a byte refused */
		in_value = 1;
		vlen++;
	}
	p->pos = pos + k;
	p->value_len = vlen;
	if (!in_value)
		goto bytes;
	p->state = P_VALUE;
	pos = FRESH(p->pos);
	vlen = FRESH(p->value_len);
	for (k = 0; k < FAST_MAX / 8 * 2; k++) {
		FAST_BOUND(k);
		if (pos + 8 > lim)
			break;
		__u64 x = word_at(j, pos);
		if (!(bytes_below(x, 0x21) | (~bytes_below(x, 0x7f) & HIGHS))) {
			/* visible ASCII only, the common case: no blank, no end */
			vlen += 8;
			pos += 8;
			continue;
		}
		__u64 ht = bytes_equal(x, '\t');
		__u64 blank = ht | bytes_equal(x, ' ');
		__u64 end = (bytes_below(x, 0x20) & ~ht) | bytes_equal(x, 0x7f);
		if (end) {
			/* the CR, or a byte refused: the bytes before it */
			__u32 before = first_flagged(end);
			blank &= low_bytes(before);
			if (blank)
				ws = 1;
			p->value_len = vlen + before - bytes_count(blank);
			p->pos = pos + before;
			goto done;
		}
		if (blank) {
			ws = 1;
			vlen -= bytes_count(blank);
		}
		vlen += 8;
		pos += 8;
	}
	p->pos = pos;
	p->value_len = vlen;
bytes:
	pos = FRESH(p->pos);
	vlen = FRESH(p->value_len);
	if (pos >= lim)
		goto done;
	n = lim - pos;
	for (k = 0; k < 8; k++) {
		FAST_BOUND(k);
		if (k >= n)
			break;
		__u8 c = buf_at(j, pos + k);
		if (c == ' ' || c == '\t') {
			ws |= in_value; /* blanks before the value are not in it */
			continue;
		}
		if (c < 0x20 || c == 0x7f)
			break; /* the CR, or a byte refused */
		in_value = 1;
		vlen++;
	}
	if (in_value)
		p->state = P_VALUE;
	p->value_len = vlen;
	pos += k;
	p->pos = pos;
done:
	p->value_ws = ws;
	pos = FRESH(p->pos);
	if (pos >= lim || buf_at(j, pos) != '\r')
		return;
	p->state = P_HDR_LF;
	p->pos = ++pos;
	if (pos >= lim || buf_at(j, pos) != '\n')
		return;
	line_end(p); /* cannot refuse: not a Content-Length */
	p->pos = pos + 1;
}

/* P_LINE_START: the CR LF ending the header block. Returns STEP_DONE once
 * both are taken. */
static __always_inline int fast_end(struct judge *j, __u32 lim)
{
	struct parser *p = &j->p;
	if (FRESH(p->state) != P_LINE_START)
		return STEP_NEXT;
	__u32 pos = FRESH(p->pos);
	if (pos + 1 >= lim || buf_at(j, pos) != '\r' || buf_at(j, pos + 1) != '\n')
		return STEP_NEXT;
	p->state = P_END_LF;
	p->pos = pos + 2;
	return STEP_DONE;
}

static __always_inline int fast_chain(struct judge *j)
{
	struct parser *p = &j->p;
	fast_pre(j);
	__u32 state = FRESH(p->state);
	if (state == P_PRE || state == P_BODY)
		return STEP_NEXT;
	__u32 lim = fast_limit(p);
	if (state < P_LINE_START) {
		/* the request line */
		fast_method(j, lim);
		fast_target(j, lim);
		fast_authority(j, lim);
		fast_path(j, lim);
		fast_query(j, lim);
		fast_version(j, lim);
	}
	fast_name(j, lim);
	fast_value(j, lim);
	return fast_end(j, lim);
}

/* One step of the walk: the bytes the fast paths take, or if they take
 * none, a byte through the state machine. A global function: the verifier
 * checks it once, on its own, rather than once per path into it. */
__attribute__((noinline)) int judge_step(struct judge *j)
{
	if (!j)
		return STEP_STOP;
#ifdef JUDGE_TEST_KNOBS
	if (judge_fast_off)
		return step_byte(j);
#endif
	__u32 pos = j->p.pos;
	int r = fast_chain(j);
	if (r != STEP_NEXT || FRESH(j->p.pos) != pos)
		return r;
	return step_byte(j);
}

/* Steps per bpf_loop callback: each takes at least a byte. */
#define STEPS_PER_CALLBACK 16

/* One bpf_loop iteration: up to STEPS_PER_CALLBACK steps, or until a request
 * is finished. Returns 1 to stop. */
static long parse_step(__u32 i, void *ctx)
{
	struct loop_ctx *lc = ctx;
	struct judge *j = lc->j;
	struct parser *p = &j->p;
	int r = STEP_NEXT;

	for (__u32 m = 0; m < STEPS_PER_CALLBACK; m++) {
		r = judge_step(j);
		if (r != STEP_NEXT)
			break;
	}
	if (r == STEP_NEXT)
		return 0;
	if (r == STEP_STOP)
		return 1;
	if (r == STEP_ERROR)
		p->pos++; /* the refused request covers what was read of it, including this byte */
	if (finish_request(p, lc->cfg, r == STEP_ERROR ? REASON_PARSE_ERROR : REASON_NONE))
		return 1;
	if (p->pos >= p->len) {
		/* what step_byte does next, between requests (or in a body) at
		 * the end, without another iteration */
		p->stop = STOP_END;
		p->boundary = p->pos;
		return 1;
	}
	return 0;
}

/*
 * judge_message walks j->buf[0..len) (the first bytes of a message of
 * jm->msg_size bytes) for a socket in state *st, and fills jm. It updates
 * *st only when its verdict is final.
 */
static __always_inline void judge_message(struct judge *j, __u32 len, const struct config *cfg,
					  struct sock_state *st, struct judgement *jm, __u8 force_reason,
					  __u32 clear_flags)
{
	struct parser *p = &j->p;
	__u32 rerun_from = st->rerun_from;

	p->cfg_flags = cfg->flags & ~clear_flags;
	p->unsynced = st->flags & SOCK_UNSYNCED;
	p->force_reason = force_reason;
	p->pos = 0;
	p->len = len > JUDGE_BUF ? JUDGE_BUF : len;
	p->stop = STOP_END;
	p->nreqs = 0;
	p->boundary = 0;
	p->req_start = 0;
	p->skip = st->skip;
	p->state = st->skip ? P_BODY : P_PRE;

	jm->verdict = VERDICT_PASS;
	jm->cork = 0;
	jm->apply = 0;
	jm->emit_from = 0;
	jm->emit_to = 0;
	st->rerun_from = 0;

	/* an apply_bytes re-run remembers the size of the message it comes
	 * from: the largest one decides whether holding bytes back is safe */
	__u32 origin = jm->msg_size > rerun_from ? jm->msg_size : rerun_from;
	struct loop_ctx lc = {.j = j, .cfg = cfg};
	/* the socket becomes synced once a request was judged and passed */
#define COMMIT_SYNC() do { if (!p->unsynced) st->flags &= ~SOCK_UNSYNCED; } while (0)
	/* each step consumes a byte or ends the walk; +2 for the final step */
	bpf_loop(JUDGE_BUF + 2, parse_step, &lc, 0);

	__u32 n = p->nreqs;
	if (n > MAX_REQS)
		n = MAX_REQS;

	switch (p->stop) {
	case STOP_DENY:
	case STOP_ERROR: {
		__u32 last = (n - 1) & (MAX_REQS - 1);
		__u32 start = p->reqs[last].start;
		if (p->stop == STOP_ERROR && cfg->mode == MODE_AUDIT) {
			/* cannot follow the stream any further: pass this write, start
			 * afresh with the next one */
			jm->emit_to = n;
			st->skip = 0;
			st->flags |= SOCK_UNSYNCED;
			return;
		}
		if (start > 0) {
			/* send the judged requests before it; the re-run refuses it */
			jm->emit_to = n - 1;
			jm->apply = start;
			st->skip = 0;
			COMMIT_SYNC();
			st->rerun_from = origin;
			return;
		}
		jm->emit_from = n - 1;
		jm->emit_to = n;
		jm->verdict = VERDICT_DROP;
		return;
	}
	case STOP_FULL:
		jm->emit_to = n;
		jm->apply = p->boundary;
		st->skip = 0;
		COMMIT_SYNC();
		st->rerun_from = origin;
		return;
	case STOP_INCOMPLETE:
		if (jm->msg_size > len || rerun_from > JUDGE_BUF) {
			/* a message this large cannot be held back safely */
			if (p->boundary > 0) {
				jm->emit_to = n;
				jm->apply = p->boundary;
				st->skip = 0;
				COMMIT_SYNC();
				st->rerun_from = origin;
				return;
			}
			/* report the partial request as refused */
			if (n < MAX_REQS) {
				p->pos = len;
				finish_request(p, cfg, REASON_PARSE_ERROR);
				n = p->nreqs > MAX_REQS ? MAX_REQS : p->nreqs;
			}
			jm->emit_from = n - 1;
			jm->emit_to = n;
			jm->verdict = cfg->mode == MODE_AUDIT ? VERDICT_PASS : VERDICT_DROP;
			return;
		}
		/* hold everything back until the next write; judge it all again then */
		jm->cork = jm->msg_size + 1;
		return;
	default: /* STOP_END */
		jm->emit_to = n;
		st->skip = p->skip;
		COMMIT_SYNC();
		if (jm->msg_size > len) {
			/* the buffer is judged; the re-run judges the rest */
			jm->apply = p->pos;
			st->rerun_from = origin;
		}
		return;
	}
}

#endif
