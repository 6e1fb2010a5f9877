/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The byte-at-a-time state machine: one function per parser state, and
 * step_byte, which feeds one byte (or one run of body bytes) to the current
 * state's function.
 */
#ifndef IMDSGUARD_HTTP_STATES_H
#define IMDSGUARD_HTTP_STATES_H

#include "request.h"

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
		if ((alive & (1 << h)) && !name_char_matches(p, h, p->name_len, lc_))
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
	if (p->header == H_TTL)
		ttl_byte(p, c);
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

#endif
