/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * One request's life in the parser: its start, the transitions both the
 * byte walk and the fast paths share, and its verdict when its header block
 * ends (finish_request).
 */
#ifndef IMDSGUARD_HTTP_REQUEST_H
#define IMDSGUARD_HTTP_REQUEST_H

#include "credential.h"

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
	p->ttl = 0;
	p->ttl_headers = 0;
	p->ttl_bad = 0;
	p->nlen = 0;
	p->seg_start = 0;
	p->seg_len = 0;
	p->seg_c0 = 0;
	p->seg_c1 = 0;
	p->nseg = 0;
}

/* The token PUT is the exact raw path of the profile's token flow
 * (/latest/api/token), optionally with a query: not a path that only
 * resolves to it (/latest/x/../api/token, //latest/api/token, %2F, a "#"
 * fragment), which a proxy or server in between could read otherwise. */
static __always_inline int is_token_put(const struct parser *p)
{
	if (p->method_len != 3 || p->method[0] != 'P' || p->method[1] != 'U' || p->method[2] != 'T')
		return 0;
	__u32 tl = p->prof.token_path_len;
	if (tl == 0 || tl > TOKEN_PATH_MAX)
		return 0;
	__u32 n = p->raw_path_len;
	const char *raw = p->reqs[MASKED(p->nreqs, MAX_REQS - 1)].path;
	if (n < tl || (n > tl && raw[MASKED(tl, PATH_LEN - 1)] != '?'))
		return 0;
	for (__u32 i = 0; i < TOKEN_PATH_MAX; i++) {
		if (i >= tl)
			break;
		if (raw[i] != p->prof.token_path[MASKED(i, 31)])
			return 0;
	}
	return 1;
}

/* A digit of the TTL header's value; anything else makes it unreadable
 * (the server refuses such a PUT, the judge refuses it first when the
 * profile caps the TTL). */
static __always_inline void ttl_byte(struct parser *p, __u8 c)
{
	if (c < '0' || c > '9' || p->value_ws) {
		p->ttl_bad = 1;
		return;
	}
	__u32 d = c - '0';
	p->ttl = p->ttl > (0xffffffffU - d) / 10 ? 0xffffffffU : p->ttl * 10 + d;
}

/* Whether a token PUT asks for no longer a life than the profile's cap. A
 * PUT without the TTL header is the server's to refuse. */
static __always_inline int ttl_within_cap(const struct parser *p)
{
	if (p->prof.max_ttl == 0 || p->ttl_headers == 0)
		return 1;
	return !p->ttl_bad && p->ttl <= p->prof.max_ttl;
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

/* What the request's proof (or its lack) makes of it: a token PUT (within
 * the TTL cap), a request on the service's legacy proof-less interface, one
 * without the proof, or none of these (REASON_NONE). */
static __always_inline __u8 proof_reason(const struct parser *p, const struct config *cfg, __u8 *flags)
{
	if (is_token_put(p)) {
		*flags |= REQ_TOKEN_PUT;
		return ttl_within_cap(p) ? REASON_NONE : REASON_TOKEN_TTL_OVER_CAP;
	}
	if (!(p->cfg_flags & CONFIG_REQUIRE_TOKEN))
		return REASON_NONE;
	if (!(*flags & REQ_HAS_TOKEN) || (cfg->legacy_count && legacy_path(p, cfg)))
		return REASON_IMDSV1_NO_TOKEN;
	return REASON_NONE;
}

/* A credential read the writer's budget allows (it is spent), or the
 * reason it is refused. The daemon counts the reads that reached the
 * server; the judge only spends within one message. */
static __always_inline __u8 spend_cred_read(struct parser *p)
{
	if (p->cred_budget == CRED_UNLIMITED)
		return REASON_NONE;
	if (p->cred_budget == 0)
		return REASON_CREDENTIAL_READ_LIMIT;
	p->cred_budget--;
	return REASON_NONE;
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
		else if (p->token_headers > 1 || p->ttl_headers > 1)
			reason = REASON_PARSE_ERROR; /* which one the server reads is unknown */
		else if ((flags & REQ_FORWARDED) && (p->cfg_flags & CONFIG_REFUSE_FORWARDED))
			reason = REASON_FORWARDED_REQUEST;
		else
			reason = proof_reason(p, cfg, &flags);
	}
	if (p->nlen > 0 && credential_path(p, cfg))
		flags |= REQ_CREDENTIAL;
	if ((flags & REQ_CREDENTIAL) && reason == REASON_NONE)
		reason = spend_cred_read(p);

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
		if ((p->name_alive & (1 << h)) && p->name_len == header_len(p, h))
			p->header = h;
	}
	if (p->header == H_TOKEN)
		p->token_headers++;
	if (p->header == H_TTL) {
		p->ttl_headers++;
		p->ttl = 0;
	}
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
	if (p->header == H_TTL && p->value_len == 0)
		p->ttl_bad = 1;
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

#endif
