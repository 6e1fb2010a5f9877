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
#ifndef IMDSGUARD_HTTP_JUDGE_H
#define IMDSGUARD_HTTP_JUDGE_H

#include "fast.h"

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

/* What the walk does after a step that returned r: go on (0) or stop (1),
 * having recorded the request r finished. A global function, verified
 * once: inlined after the steps of a callback, it was verified again for
 * every step count a callback can stop at (the loop counter keeps those
 * paths apart), which took the judge past the verifier's million
 * instructions on 6.18.44. */
__attribute__((noinline)) int step_result(struct judge *j, const struct config *cfg, int r)
{
	if (!j || !cfg)
		return 1;
	struct parser *p = &j->p;
	if (r == STEP_NEXT)
		return 0;
	if (r == STEP_STOP)
		return 1;
	if (r == STEP_ERROR)
		p->pos++; /* the refused request covers what was read of it, including this byte */
	if (finish_request(p, cfg, r == STEP_ERROR ? REASON_PARSE_ERROR : REASON_NONE))
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

/* One bpf_loop iteration: up to STEPS_PER_CALLBACK steps, or until a request
 * is finished. Returns 1 to stop. */
static long parse_step(__u32 i, void *ctx)
{
	struct loop_ctx *lc = ctx;
	int r = STEP_NEXT;

	for (__u32 m = 0; m < STEPS_PER_CALLBACK; m++) {
		r = judge_step(lc->j);
		if (r != STEP_NEXT)
			break;
	}
	return step_result(lc->j, lc->cfg, r) ? 1 : 0; /* a callback returns 0 or 1 */
}

/*
 * judge_message walks j->buf[0..len) (the first bytes of a message of
 * jm->msg_size bytes) for a socket in state *st, and fills jm. It updates
 * *st only when its verdict is final.
 */
__attribute__((noinline)) int judge_message(struct judge *j, const struct config *cfg, struct judge_state *st,
					    struct judgement *jm)
{
	if (!j || !cfg || !st || !jm)
		return 0;
	struct parser *p = &j->p;
	__u32 len = jm->len;
	__u32 clear_flags = jm->clear_flags;
	__u8 force_reason = jm->force_reason;
	__u32 rerun_from = st->rerun_from;

	p->cfg_flags = cfg->flags & ~clear_flags;
	p->prof = cfg->prof;
	p->cred_budget = jm->cred_budget;
	p->unsynced = st->unsynced;
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
#define COMMIT_SYNC() do { if (!p->unsynced) st->unsynced = 0; } while (0)
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
			st->unsynced = 1;
			return 0;
		}
		if (start > 0) {
			/* send the judged requests before it; the re-run refuses it */
			jm->emit_to = n - 1;
			jm->apply = start;
			st->skip = 0;
			COMMIT_SYNC();
			st->rerun_from = origin;
			return 0;
		}
		jm->emit_from = n - 1;
		jm->emit_to = n;
		jm->verdict = VERDICT_DROP;
		return 0;
	}
	case STOP_FULL:
		jm->emit_to = n;
		jm->apply = p->boundary;
		st->skip = 0;
		COMMIT_SYNC();
		st->rerun_from = origin;
		return 0;
	case STOP_INCOMPLETE:
		if (jm->msg_size > len || rerun_from > JUDGE_BUF) {
			/* a message this large cannot be held back safely */
			if (p->boundary > 0) {
				jm->emit_to = n;
				jm->apply = p->boundary;
				st->skip = 0;
				COMMIT_SYNC();
				st->rerun_from = origin;
				return 0;
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
			return 0;
		}
		/* hold everything back until the next write; judge it all again then */
		jm->cork = jm->msg_size + 1;
		return 0;
	default: /* STOP_END */
		jm->emit_to = n;
		st->skip = p->skip;
		COMMIT_SYNC();
		if (jm->msg_size > len) {
			/* the buffer is judged; the re-run judges the rest */
			jm->apply = p->pos;
			st->rerun_from = origin;
		}
		return 0;
	}
}

#endif
