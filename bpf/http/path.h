/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The request target's path, normalised as the judge walks it (".", ".."
 * and "//" resolved), so that what is matched is what a server resolves.
 */
#ifndef IMDSGUARD_HTTP_PATH_H
#define IMDSGUARD_HTTP_PATH_H

#include "types.h"

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

#endif
