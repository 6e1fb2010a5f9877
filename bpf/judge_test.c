//go:build ignore

// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Test-only program: runs the sk_msg program's request judge (http/) on
 * bytes handed in by BPF_PROG_TEST_RUN, which the kernel cannot do for
 * sk_msg programs themselves. Never loaded by the daemon.
 */
/* judge_fast_off (http/credential.h): the tests compare the fast paths with the
 * byte-by-byte walk */
#define JUDGE_TEST_KNOBS
#include "http/judge.h"
#include "uplink_parse.h"

char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct judge);
} test_judges SEC(".maps");

/* The policy the judge applies: this object's own, none of the daemon's
 * maps (the judge's headers include only abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} test_config SEC(".maps");

/* The test run's context: input bytes by user pointer, state in and out,
 * the judgement and every request's result out. */
struct judge_run {
	__u64 data;     /* user pointer to the message's first bytes */
	__u32 len;      /* bytes at data (at most JUDGE_BUF) */
	__u32 msg_size; /* size of the whole message */
	__u32 force_reason;
	__u32 clear_flags; /* config flags a rule lifts (allowV1: CONFIG_REQUIRE_TOKEN) */
	/* struct judge_state, flattened: the verifier refuses loads through a
	 * context pointer the compiler has offset to reach a nested struct */
	__u32 skip;
	__u32 rerun_from;
	__u32 unsynced;
	/* struct judgement */
	__u32 verdict;
	__u32 cork;
	__u32 apply;
	__u32 emit_from;
	__u32 emit_to;
	__u32 nreqs;
	__u32 fast_off; /* 1: the judge walks byte by byte, without its fast paths */
	__u32 cred_budget; /* judgement.cred_budget */
	struct req_result reqs[MAX_REQS];
	/* the parser's state after the walk: the tests check the fast paths
	 * leave it as the byte-by-byte walk does (its requests are in reqs) */
	struct parser parser;
};

/* Keeps struct judge_run and the judge's enums in the BTF so bpf2go
 * generates their Go types and values. */
const struct judge_run *unused_judge_run __attribute__((unused));
const enum judge_limit *unused_judge_limit __attribute__((unused));
const enum req_flag *unused_req_flag __attribute__((unused));

SEC("syscall")
int judge_test(struct judge_run *run)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&test_config, &zero);
	struct judge *j = bpf_map_lookup_elem(&test_judges, &zero);
	if (!cfg || !j)
		return -1;
	__u32 len = run->len;
	if (len > JUDGE_BUF)
		return -2;
	if (len && bpf_copy_from_user(j->buf, len, (void *)run->data))
		return -3;

	judge_fast_off = run->fast_off;
	struct judge_state st = {.skip = run->skip, .rerun_from = run->rerun_from, .unsynced = run->unsynced};
	struct judgement jm = {
		.len = len, .clear_flags = run->clear_flags, .force_reason = run->force_reason,
		.msg_size = run->msg_size, .cred_budget = run->cred_budget,
	};
	judge_message(j, cfg, &st, &jm);

	run->skip = st.skip;
	run->rerun_from = st.rerun_from;
	run->unsynced = st.unsynced;
	run->verdict = jm.verdict;
	run->cork = jm.cork;
	run->apply = jm.apply;
	run->emit_from = jm.emit_from;
	run->emit_to = jm.emit_to;
	run->nreqs = j->p.nreqs;
#pragma unroll
	for (int k = 0; k < MAX_REQS; k++)
		run->reqs[k] = j->p.reqs[k];
	/* its requests are in reqs already */
	__builtin_memcpy(&run->parser, &j->p, __builtin_offsetof(struct parser, reqs));
	return 0;
}

/* The uplink guard's frame parser on a crafted frame: returns the parse
 * result (enum uplink_parse) plus 4 if the segment carries payload, and
 * leaves what it read in uplink_seen. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct uplink_pkt);
} uplink_seen SEC(".maps");

SEC("tc")
int uplink_parse_test(struct __sk_buff *skb)
{
	struct uplink_pkt p = {};
	int r = parse_uplink(skb, &p);
	if (r == PARSE_CHECK && has_payload(skb, &p))
		r += 4;
	__u32 zero = 0;
	bpf_map_update_elem(&uplink_seen, &zero, &p, BPF_ANY);
	return r;
}
