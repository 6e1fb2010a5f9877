/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Types and maps shared by every imdsguard program. The userspace side
 * (internal/loader, internal/events) reads these layouts through the Go types
 * bpf2go generates from this file's BTF, so a field added here shows up there.
 */
#ifndef IMDSGUARD_H
#define IMDSGUARD_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TASK_COMM_LEN 16
#define METHOD_LEN 8
#define PATH_LEN 128

/* Values of enums are part of the map and event ABI: append, never renumber. */
enum action {
	ACTION_ALLOW = 0,
	ACTION_DENY = 1,
	ACTION_AUDIT = 2,
	ACTION_MAX = 3,
};

enum reason {
	REASON_NONE = 0,
	REASON_NON_HOST_NETNS = 1,
	REASON_IMDSV1_NO_TOKEN = 2,
	REASON_PARSE_ERROR = 3,
	REASON_FORWARDED_REQUEST = 4,
	REASON_POLICY_RULE = 5,
	REASON_UNJUDGED_WRITE = 6, /* payload that did not pass the request judge */
	REASON_UNSUPPORTED_PROTOCOL = 7, /* a socket the judge cannot follow (MPTCP) */
	REASON_ADOPTED_CONNECTION = 8, /* opened before the guard: where its stream stands is unknown */
	REASON_URGENT_DATA = 9, /* MSG_OOB: the server's stream and the judge's part */
	REASON_CONNECTION_LIMIT = 10, /* the owner's cgroup or uid holds its share of connections */
	REASON_RAW_PACKET = 11, /* a packet to an endpoint that no judged socket sent (uplink guard) */
	REASON_EGRESS_BYPASS = 12, /* PACKET_QDISC_BYPASS or AF_XDP: sends past every egress hook */
	REASON_MAX = 16,
};

enum kind {
	KIND_CONNECT = 0,
	KIND_REQUEST = 1,
	KIND_MAX = 2,
};

enum mode {
	MODE_ENFORCE = 0,
	MODE_AUDIT = 1,
};

/* config.flags */
enum config_flag {
	CONFIG_BLOCK_NON_HOST_NETNS = 1 << 0,
	CONFIG_REQUIRE_TOKEN = 1 << 1,
	CONFIG_REFUSE_FORWARDED = 1 << 2,
};

/* Sizes both sides need (enum, not #define, so that they reach the BTF
 * and bpf2go generates them for Go). */
enum limit {
	/* credential path prefixes, stored lower case and without their
	 * version segment ("meta-data/iam/security-credentials/") */
	PREFIX_MAX = 64,
	MAX_PREFIXES = 8,
	/* rules of one policy generation (policy.rules), and how many of them
	 * one cgroup's list holds */
	MAX_RULES = 1024,
	RULES_PER_CGROUP = 16,
	/* deepest cgroup level the ancestor walk looks at (root is level 0) */
	MAX_CGROUP_LEVEL = 64,
	/* endpoints of both policy generations */
	MAX_ENDPOINTS = 64,
};

/* event.flags */
enum event_flag {
	EVENT_HOST_NETNS = 1 << 0,
	EVENT_HAS_TOKEN = 1 << 1,
	EVENT_CREDENTIAL_ACCESS = 1 << 2,
};

/*
 * Counter slots: one per (kind, action, reason), plus bookkeeping slots at the
 * end. Counters are per-CPU so the hot path never contends on a cache line;
 * userspace sums them.
 */
#define COUNTER_SLOT(kind, action, reason) \
	((kind) * ACTION_MAX * REASON_MAX + (action) * REASON_MAX + (reason))
enum counter_extra {
	COUNTER_EVENTS_LOST = KIND_MAX * ACTION_MAX * REASON_MAX,
	COUNTER_UNGUARDED, /* IMDS sockets sockops could not put under sk_msg */
	COUNTER_ADOPTED,   /* IMDS sockets found established at start and put under sk_msg */
	COUNTER_CREDENTIAL, /* credential-path requests, one slot per action (+ACTION_*) */
	COUNTER_MAX = 128,
};

/*
 * IMDS endpoints, keyed by IPv6 address (IPv4 stored IPv4-mapped, so that a
 * connect6 to ::ffff:169.254.169.254 finds the IPv4 endpoint) and port.
 */
struct endpoint_key {
	__u8 addr[16];
	__be16 port;
	__u16 gen; /* policy generation (0 or 1), see policy_gen */
};

struct endpoint_value {
	__u32 id;
};

struct cred_prefix {
	__u32 len;
	char s[PREFIX_MAX];
};

struct config {
	__u64 host_netns_cookie;
	__u32 mode;
	__u32 flags;
	__u32 prefix_count;
	/* open IMDS connections one cgroup, and one non-root uid, may hold:
	 * no workload can fill the socket map for the others */
	__u32 max_conns_cgroup;
	__u32 max_conns_uid;
	/* the guarded cgroup and its level (0 for the root): the uplink guard,
	 * which is no cgroup hook, judges only sockets below it */
	__u32 scope_level;
	__u64 scope_cgroup_id;
	struct cred_prefix prefixes[MAX_PREFIXES];
};

struct event {
	__u64 ts_ns; /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	__u64 cgroup_id;
	__u64 netns_cookie;
	__u32 pid; /* thread group id, as userspace calls a pid */
	__u32 ppid;
	__u32 tid;
	__u32 pad0;
	__u32 uid;
	__u32 gid;
	__u8 addr[16];
	__u16 port; /* host byte order */
	__u8 kind;
	__u8 action;
	__u8 reason;
	__u8 flags;
	__u16 path_len; /* length of the whole path, may exceed PATH_LEN */
	__u8 method_len;
	__u8 gen;   /* policy generation the verdict came from */
	__u16 rule; /* index + 1 of the policy rule that matched, 0 for none */
	__u8 pad[2];
	char comm[TASK_COMM_LEN];
	char method[METHOD_LEN];
	char path[PATH_LEN];
};

/* Keep struct event and the enums in the BTF so bpf2go generates their Go
 * types and values (bpf/abi.go names them): one source for both sides. */
const struct event *unused_event __attribute__((unused));
const enum action *unused_action __attribute__((unused));
const enum reason *unused_reason __attribute__((unused));
const enum kind *unused_kind __attribute__((unused));
const enum mode *unused_mode __attribute__((unused));
const enum config_flag *unused_config_flag __attribute__((unused));
const enum event_flag *unused_event_flag __attribute__((unused));
const enum counter_extra *unused_counter_extra __attribute__((unused));
const enum limit *unused_limit __attribute__((unused));

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

/* Rules, first match wins (policy.rules). */
#define TASK_COMM_WORDS 2

enum rule_flag {
	RULE_DENY = 1 << 0,
	RULE_ALLOW_V1 = 1 << 1,
	RULE_ALLOW_NON_HOST_NETNS = 1 << 2,
	RULE_MATCH_COMM = 1 << 3,
	RULE_MATCH_UID = 1 << 4,
};
const enum rule_flag *unused_rule_flag __attribute__((unused)); /* for bpf2go, as above */

struct rule {
	__u32 flags;
	__u32 uid;
	__u64 comm[TASK_COMM_WORDS]; /* NUL-padded, compared as two words */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * MAX_RULES);
	__type(key, __u32);
	__type(value, struct rule);
} rules SEC(".maps");

/*
 * For each cgroup, the rules that can match a process in it, in policy
 * order: userspace resolves the rules' cgroup globs to ids and leaves out
 * rules a process of that cgroup can never match. Cgroup id 0 holds the
 * list for every other cgroup (the rules without a cgroup condition).
 */
struct cgroup_key {
	__u64 cgroup_id;
	__u32 gen;
	/* 0: the list of cgroup_id itself; 1: the list of the cgroups below
	 * it that have no entry of their own (made since the daemon's last
	 * scan): every rule that could apply to one of them and grants
	 * nothing it might not match */
	__u32 subtree;
};


struct rule_list {
	__u32 n;
	__u16 idx[RULES_PER_CGROUP];
};

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

/* Only the fields read; CO-RE finds them in the running kernel's layout. */
struct task_struct {
	struct task_struct *real_parent;
	int tgid;
	char comm[TASK_COMM_LEN];
} __attribute__((preserve_access_index));

/*
 * Who a socket's requests are judged and reported by: the task that
 * connected it. The connect hooks run in that task on every kernel, while
 * sk_msg programs lack bpf_get_current_comm on 6.1 and 6.12 (and the
 * writer of a request may be a kernel thread, as with io_uring's SQPOLL),
 * so the judge takes the owner recorded at connect from socket storage.
 */
struct owner {
	__u64 cgroup_id;
	__u32 pid; /* thread group id, as userspace calls a pid */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 pad;
	__u64 comm[TASK_COMM_WORDS]; /* NUL-padded, compared as two words */
	/* for a cgroup without an entry of its own: its nearest ancestor with
	 * a subtree entry, found at connect; 0 if none */
	__u64 subtree_of;
};

/* Fills in the current task: its ids, cgroup and command, and its parent
 * read in the kernel (the parent may be gone by the time the daemon reads
 * the event). The command is read from the task rather than with
 * bpf_get_current_comm, which sk_msg programs lack on 6.1 and 6.12: one
 * way for every hook and kernel. */
static __always_inline void owner_of_current(struct owner *o)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct task_struct *parent = 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	int ppid = 0;

	o->cgroup_id = bpf_get_current_cgroup_id();
	o->pid = pid_tgid >> 32;
	o->tid = (__u32)pid_tgid;
	o->uid = (__u32)uid_gid;
	o->gid = uid_gid >> 32;
	o->pad = 0;
	o->subtree_of = 0;
	o->comm[0] = 0;
	o->comm[1] = 0;
	bpf_probe_read_kernel(o->comm, TASK_COMM_LEN, &t->comm);
	if (!bpf_probe_read_kernel(&parent, sizeof(parent), &t->real_parent) && parent)
		bpf_probe_read_kernel(&ppid, sizeof(ppid), &parent->tgid);
	o->ppid = ppid;
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

/* An IPv4 address (network byte order) as the IPv4-mapped IPv6 address
 * ::ffff:a.b.c.d every key and event holds. addr must be zeroed. */
static __always_inline void addr_v4(__u8 *addr, __u32 ip)
{
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(&addr[12], &ip, 4);
}

/* A 4-byte load of a context field that the compiler must not merge with
 * its neighbour into one 8-byte load: user_ip6 and remote_ip6 only allow
 * 4-byte loads. */
#define CTX_U32(field) (*(volatile __u32 *)&(field))

/* An IPv6 address from its four network-order words (read them with
 * CTX_U32). */
static __always_inline void addr_v6(__u8 *addr, __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	__builtin_memcpy(&addr[0], &w0, 4);
	__builtin_memcpy(&addr[4], &w1, 4);
	__builtin_memcpy(&addr[8], &w2, 4);
	__builtin_memcpy(&addr[12], &w3, 4);
}

/* Fills in who the event is about: the socket's owner. */
static __always_inline void event_owner(struct event *e, const struct owner *o)
{
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = o->cgroup_id;
	e->pid = o->pid;
	e->ppid = o->ppid;
	e->tid = o->tid;
	e->uid = o->uid;
	e->gid = o->gid;
	__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
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

static __always_inline __u8 verdict(const struct config *cfg, __u8 reason)
{
	if (reason == REASON_NONE)
		return ACTION_ALLOW;
	return cfg->mode == MODE_AUDIT ? ACTION_AUDIT : ACTION_DENY;
}

#endif
