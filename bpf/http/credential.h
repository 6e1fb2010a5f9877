/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Whether a normalised path is under one of the policy's credential
 * prefixes, whatever its version segment.
 */
#ifndef IMDSGUARD_HTTP_CREDENTIAL_H
#define IMDSGUARD_HTTP_CREDENTIAL_H

#include "chars.h"
#include "path.h"

struct cred_ctx {
	const struct parser *p;
	const struct cred_prefix *list; /* MAX_PREFIXES long */
	__u32 count;
	__u32 rest; /* offset in norm the prefixes are compared at */
	__u32 match;
};

/* One prefix per step, compared eight bytes at a time. */
static long cred_step(__u32 k, void *ctx)
{
	struct cred_ctx *cc = ctx;
	const struct parser *p = cc->p;

	if (k >= cc->count || k >= MAX_PREFIXES)
		return 1;
	const struct cred_prefix *cp = &cc->list[MASKED(k, MAX_PREFIXES - 1)];
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
	const struct cred_prefix *list;
	__u32 count;
	__u32 rest;
	__u32 k;
	__u32 i;
	__u32 match;
};

static long cred_step_bytes(__u32 unused, void *ctx)
{
	struct cred_bytes_ctx *cc = ctx;
	const struct parser *p = cc->p;
	__u32 k = cc->k;

	if (k >= cc->count || k >= MAX_PREFIXES)
		return 1;
	const struct cred_prefix *cp = &cc->list[MASKED(k, MAX_PREFIXES - 1)];
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

/* Whether norm from offset rest starts with one of the count prefixes of
 * list, at a segment boundary, case-insensitively. */
static __always_inline int prefix_match(const struct parser *p, const struct cred_prefix *list, __u32 count,
					__u32 rest)
{
#ifdef JUDGE_TEST_KNOBS
	if (judge_fast_off) {
		struct cred_bytes_ctx cb = {.p = p, .list = list, .count = count, .rest = rest};
		bpf_loop(MAX_PREFIXES * (PREFIX_MAX + 1), cred_step_bytes, &cb, 0);
		return cb.match;
	}
#endif
	struct cred_ctx cc = {.p = p, .list = list, .count = count, .rest = rest};
	bpf_loop(MAX_PREFIXES, cred_step, &cc, 0);
	return cc.match;
}

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
	return prefix_match(p, cfg->prefixes, cfg->prefix_count, rest);
}

/* Whether the normalised path, whole, is under one of the profile's legacy
 * interface prefixes ("/opc/v1"). */
static __always_inline int legacy_path(const struct parser *p, const struct config *cfg)
{
	if (p->nlen == 0)
		return 0;
	return prefix_match(p, cfg->legacy, cfg->legacy_count, 0);
}

#endif
