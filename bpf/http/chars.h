/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Bytes and header names: character classes, the header names the judge
 * recognises, and the eight-bytes-at-a-time (SWAR) byte tests.
 */
#ifndef IMDSGUARD_HTTP_CHARS_H
#define IMDSGUARD_HTTP_CHARS_H

#include "types.h"

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
