/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The judge's limits and state: what one judgement reads (struct judge),
 * what it decides (struct judgement) and the per-socket part it keeps
 * across writes (struct judge_state, embedded in the daemon's sock_state).
 */
#ifndef IMDSGUARD_HTTP_TYPES_H
#define IMDSGUARD_HTTP_TYPES_H

#include "../abi.h"

/* The judge's sizes (an enum, not #defines, so that they reach the BTF and
 * the test harness reads them from the generated bindings). */
enum judge_limit {
	/* Bytes of one message the judge examines; also the largest message it
	 * will hold back (cork). Keeping corked messages this small keeps them
	 * far below the kernel's sk_msg fragment limit, where corking silently
	 * stops working. */
	JUDGE_BUF = 16384,
	/* Largest header block (request line + headers) of one request. */
	HDR_MAX = 8192,
	/* Requests judged per program run; more are handled by a re-run. */
	MAX_REQS = 8,
	/* Normalised path kept for matching; longer paths are tracked by length. */
	NORM_MAX = 256,
	/* Path segments remembered for "..": deeper paths are refused. */
	SEG_MAX = 32,
	METHOD_MAX = 16,
};

enum verdict {
	VERDICT_PASS = 0,
	VERDICT_DROP = 1,
};

/* judgement.cred_budget when the policy sets no credential read limit */
#define CRED_UNLIMITED 0xffffffffU

/* Why the judge stopped walking the message. */
enum stop {
	STOP_END = 0,        /* all bytes consumed, at a request boundary or in a body */
	STOP_INCOMPLETE = 1, /* message ends inside a header block */
	STOP_DENY = 2,       /* a refused request (enforce mode) */
	STOP_ERROR = 3,      /* a request that cannot be parsed */
	STOP_FULL = 4,       /* MAX_REQS requests judged; the rest needs a re-run */
};

/* What the judge keeps of a socket across writes; the daemon's per-socket
 * state (struct sock_state) embeds it. */
struct judge_state {
	__u32 skip;       /* body bytes of an already judged request still to come */
	__u32 rerun_from; /* size of the message an apply_bytes re-run comes from, else 0 */
	/* 1: the server may be in the middle of a request (a socket adopted at
	 * start with bytes possibly already sent, or a stream audit mode could
	 * not follow), so the next write must start a new one: leading CR/LF
	 * could complete a request sent before the guard */
	__u32 unsynced;
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

/* Headers the judge recognises, by index. The proof and TTL headers' names
 * come from the policy's profile (struct profile), the others are HTTP's. */
enum header {
	H_TOKEN = 0,   /* the profile's proof: x-aws-ec2-metadata-token, metadata-flavor, ... */
	H_XFF = 1,     /* x-forwarded-for */
	H_CL = 2,      /* content-length */
	H_TE = 3,      /* transfer-encoding */
	H_TTL = 4,     /* the profile's token TTL: x-aws-ec2-metadata-token-ttl-seconds, ... */
	H_COUNT = 5,
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
	__u32 unsynced; /* judge_state.unsynced: no leading blanks before the first request */
	__u32 force_reason; /* refuse every parsed request for this reason (e.g. non-host netns) */
	__u32 cred_budget;  /* credential reads the writer may still make (CRED_UNLIMITED: no limit) */
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
	__u32 ttl;         /* the TTL header's value, saturated at 0xffffffff */
	__u32 ttl_headers; /* TTL headers seen: more than one is ambiguous */
	__u32 ttl_bad;     /* the TTL value is not all digits */

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

	/* the policy's profile, copied at the start of each judgement: the
	 * header names are compared at offsets the walk computes, and the
	 * judge reaches them through the parser it has at hand */
	struct profile prof;

	struct req_result reqs[MAX_REQS];
};

/* Everything one judgement needs; lives in a per-CPU map, far too large
 * for the 512-byte BPF stack. */
struct judge {
	__u8 buf[JUDGE_BUF];
	struct parser p;
	__u32 busy; /* set while a program uses this CPU's copy */
	/* the caller's, not the judge's: the credential read bound the
	 * writer's reads count against, kept here rather than in a register
	 * across the judgement (a register the verifier must track exactly
	 * through the whole judge would keep it from pruning its paths) */
	__u32 cred_bound;
};

/* Inputs and outputs of judge_message. */
struct judgement {
	__u32 len;          /* bytes of the message in buf */
	__u32 clear_flags;  /* config flags the writer's rule lifts */
	__u8 force_reason;  /* refuse every request for this reason (REASON_NONE: judge them) */
	__u32 msg_size;     /* whole message, may exceed what is in buf */
	__u32 cred_budget;  /* credential reads the writer may still make (CRED_UNLIMITED: no limit) */
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

#endif
