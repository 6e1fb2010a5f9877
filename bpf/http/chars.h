/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Bytes and header names: character classes, the header names the judge
 * recognises, and the eight-bytes-at-a-time (SWAR) byte tests.
 */
#ifndef IMDSGUARD_HTTP_CHARS_H
#define IMDSGUARD_HTTP_CHARS_H

#include "types.h"

/* HTTP's own header names the judge tracks, lower case, zero-padded so
 * that eight bytes can be read from any offset below HDR_NAME_MAX + 16 (the
 * fast paths compare eight at a time). The proof's and the TTL's names are
 * the profile's (p->prof), padded the same way. */
static const char hdr_names[H_COUNT][HDR_NAME_BUF] = {
	[H_XFF] = "x-forwarded-for",
	[H_CL] = "content-length",
	[H_TE] = "transfer-encoding",
};
#define HDR_XFF_LEN 15
#define HDR_CL_LEN 14
#define HDR_TE_LEN 17

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

/* The tracked name h: the profile's for the proof and the TTL. */
static __always_inline const char *tracked_name(const struct parser *p, __u32 h)
{
	switch (h) {
	case H_TOKEN:
		return p->prof.proof;
	case H_TTL:
		return p->prof.ttl;
	case H_XFF:
		return hdr_names[H_XFF];
	case H_CL:
		return hdr_names[H_CL];
	}
	return hdr_names[H_TE];
}

static __always_inline __u32 header_len(const struct parser *p, __u32 h)
{
	switch (h) {
	case H_TOKEN:
		return p->prof.proof_len;
	case H_TTL:
		return p->prof.ttl_len;
	case H_XFF:
		return HDR_XFF_LEN;
	case H_CL:
		return HDR_CL_LEN;
	case H_TE:
		return HDR_TE_LEN;
	}
	return 0;
}

static __always_inline int name_char_matches(const struct parser *p, __u32 h, __u32 i, __u8 c)
{
	return i < header_len(p, h) && tracked_name(p, h)[MASKED(i, 63)] == c;
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

#endif
