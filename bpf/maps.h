/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The maps every program of the daemon's object shares (policy, counters,
 * events) and the helpers that read them. Programs that are not the
 * daemon's (the judge's test object) do not include it.
 */
#ifndef IMDSGUARD_MAPS_H
#define IMDSGUARD_MAPS_H

#include "abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
} endpoints SEC(".maps");

/*
 * Ports no endpoint of any generation in the endpoints map uses, as bits
 * (bit port % 64): the connect hooks return at once for a port whose bit is
 * set, before building a key and looking it up, so connections to anything
 * but IMDS pay one inlined array read. Userspace widens the set of ports
 * (clears bits) before a new generation is written and narrows it only
 * after the old one is gone. Zero, as before userspace writes it, skips
 * nothing: the full check runs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} port_skip SEC(".maps");

static __always_inline int not_an_endpoint_port(__u32 user_port)
{
	__u32 zero = 0;
	__u64 *skip = bpf_map_lookup_elem(&port_skip, &zero);
	__u16 port = bpf_ntohs((__u16)user_port);
	return skip && (*skip & (1ULL << (port & 63)));
}

/*
 * The policy lives in two generations. Userspace writes a new policy into
 * the generation not in use, then flips policy_gen with one map update, so
 * every program run reads one generation from start to end: no request is
 * judged by a mix of old and new, and there is never no policy.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} policy_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct config);
} config_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * MAX_RULES);
	__type(key, __u32);
	__type(value, struct rule);
} rules SEC(".maps");

/* Not preallocated: most nodes have a few hundred cgroups, and a
 * preallocated table this size would hold 15 MiB whatever the policy. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 2 * 65536);
	__type(key, struct cgroup_key);
	__type(value, struct rule_list);
} cgroup_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &slot);
	if (c)
		*c += 1;
}

/* A zeroed event in the ring buffer, or NULL with the loss counted (the
 * verdict counters stay exact either way). */
static __always_inline struct event *event_begin(void)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_EVENTS_LOST);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	return e;
}

/*
 * Submit without waking the reader: a wake-up costs the writer several
 * microseconds (irq_work), more than judging the request. The daemon polls
 * the buffer instead, and is woken only once the buffer is a quarter full,
 * so a burst still cannot fill it before the daemon reads.
 */
static __always_inline __u64 ringbuf_wakeup(void)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);
	return avail > size / 4 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}
static __always_inline __u32 current_gen(void)
{
	__u32 zero = 0;
	__u32 *g = bpf_map_lookup_elem(&policy_gen, &zero);
	return g ? (*g & 1) : 0;
}

static __always_inline struct config *get_config_gen(__u32 gen)
{
	return bpf_map_lookup_elem(&config_map, &gen);
}
static __always_inline struct config *get_config(void)
{
	return get_config_gen(current_gen());
}

struct ancestor_walk {
	__u64 self;
	__u64 found;
	__u32 gen;
	__u32 pad;
};

/* bpf_loop callback: level i of the current task's cgroup, from the root
 * down; remembers the deepest ancestor with a subtree entry. */
static long ancestor_step(__u32 i, void *arg)
{
	struct ancestor_walk *w = arg;
	__u64 id = bpf_get_current_ancestor_cgroup_id(i);
	if (id == 0 || id == w->self)
		return 1; /* past the task's own cgroup */
	struct cgroup_key key = {.cgroup_id = id, .gen = w->gen, .subtree = 1};
	if (bpf_map_lookup_elem(&cgroup_rules, &key))
		w->found = id;
	return 0;
}

/*
 * A cgroup made since the daemon's last scan has no entry: rather than the
 * default list, its processes get the subtree list of its nearest ancestor
 * that has one, as strict as the policy could judge any cgroup there (a
 * process that makes a cgroup and moves into it escapes no rule). Called
 * in the task that connects, whose ancestors these are.
 */
static __always_inline void find_rules_of_new_cgroup(struct owner *o, __u32 gen)
{
	struct cgroup_key key = {.cgroup_id = o->cgroup_id, .gen = gen};
	o->subtree_of = 0;
	if (bpf_map_lookup_elem(&cgroup_rules, &key))
		return;
	struct ancestor_walk w = {.self = o->cgroup_id, .gen = gen};
	bpf_loop(MAX_CGROUP_LEVEL, ancestor_step, &w, 0);
	o->subtree_of = w.found;
}

/* The first rule matching owner o, or 0; *idx gets its index. The list is
 * the owner's cgroup's own, else the subtree list found at connect, else
 * the default (id 0). */
static __always_inline const struct rule *match_rule(__u32 gen, const struct owner *o, __u16 *idx)
{
	struct cgroup_key key = {.cgroup_id = o->cgroup_id, .gen = gen};
	struct rule_list *list = bpf_map_lookup_elem(&cgroup_rules, &key);
	if (!list && o->subtree_of) {
		key.cgroup_id = o->subtree_of;
		key.subtree = 1;
		list = bpf_map_lookup_elem(&cgroup_rules, &key);
	}
	if (!list) {
		key.cgroup_id = 0;
		key.subtree = 0;
		list = bpf_map_lookup_elem(&cgroup_rules, &key);
		if (!list)
			return 0;
	}
	__u32 n = list->n;
	if (n == 0)
		return 0;
	for (__u32 i = 0; i < RULES_PER_CGROUP; i++) {
		if (i >= n)
			break;
		__u32 k = gen * MAX_RULES + list->idx[i];
		const struct rule *r = bpf_map_lookup_elem(&rules, &k);
		if (!r)
			continue;
		if ((r->flags & RULE_MATCH_UID) && r->uid != o->uid)
			continue;
		if ((r->flags & RULE_MATCH_COMM) && (r->comm[0] != o->comm[0] || r->comm[1] != o->comm[1]))
			continue;
		*idx = list->idx[i];
		return r;
	}
	return 0;
}
#endif
