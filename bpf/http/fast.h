/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The fast paths: runs of bytes along the grammar's common path, leaving
 * exactly the state the byte walk (states.h) would leave.
 */
#ifndef IMDSGUARD_HTTP_FAST_H
#define IMDSGUARD_HTTP_FAST_H

#include "states.h"

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
		if (nl + t > header_len(p, h)) {
			alive &= ~(1 << h); /* longer than the name */
			continue;
		}
		const char *name = tracked_name(p, h);
		for (__u32 i = 0; i < HDR_NAME_MAX; i += 8) {
			FAST_BOUND(i);
			if (i >= t)
				break;
			/* x | 0x20 is lower(x) for the letters, and leaves the
			 * digits and "-" as they are; of the other token
			 * characters, none becomes a letter, digit or "-" either
			 * way: against the names' bytes it compares as lower() */
			__u64 x = word_at(j, pos + i) | (ONES * 0x20);
			__u64 diff = x ^ load64(&name[MASKED(nl + i, HDR_NAME_MAX + 15)]);
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


/* P_VALUE_OWS, P_VALUE of any header but Content-Length and the TTL (whose
 * digits the byte walk reads): blanks and value bytes, then the CR;
 * P_HDR_LF: the LF. */
static __always_inline void fast_value(struct judge *j, __u32 lim)
{
	struct parser *p = &j->p;
	__u32 state = FRESH(p->state);
	if ((state != P_VALUE_OWS && state != P_VALUE) || p->header == H_CL || p->header == H_TTL)
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

#endif
