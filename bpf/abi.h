/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The ABI between imdsguard's programs and the daemon: types, enums and
 * limits, and the pure functions of them. No maps: the HTTP judge (http/)
 * includes only this header, so its test object carries none of the
 * daemon's maps. The daemon reads these layouts through the Go types bpf2go
 * generates from the objects' BTF (bpf/abi.go names them), so a field or
 * value added here shows up there.
 */
#ifndef IMDSGUARD_ABI_H
#define IMDSGUARD_ABI_H

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
	REASON_TOKEN_TTL_OVER_CAP = 13, /* a token PUT asking for a longer life than the policy's cap */
	REASON_CREDENTIAL_READ_LIMIT = 14, /* the owner's cgroup read credentials more often than the policy allows */
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
	/* a profile's header names (lower case) and its token path; names are
	 * kept in buffers HDR_NAME_BUF long so that eight bytes can be read
	 * from any offset below HDR_NAME_MAX + 16 */
	HDR_NAME_MAX = 48,
	HDR_NAME_BUF = 72,
	TOKEN_PATH_MAX = 31,
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

/*
 * The cloud's metadata service (internal/cloud): the header that proves a
 * legitimate client (a token, or a fixed value such as GCP's
 * Metadata-Flavor), and where there is a token flow, the PUT path issuing
 * tokens and the header asking for their lifetime.
 */
struct profile {
	__u8 proof_len;      /* 0: the service asks for no proof */
	__u8 ttl_len;        /* 0: no token flow */
	__u8 token_path_len; /* 0: no token flow */
	__u8 pad;
	__u32 max_ttl;       /* longest token life (seconds) a PUT may ask for; 0: no cap */
	char proof[HDR_NAME_BUF];
	char ttl[HDR_NAME_BUF];
	char token_path[TOKEN_PATH_MAX + 1];
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
	/* credential reads one cgroup may make per minute; 0: no limit */
	__u32 cred_reads_per_min;
	__u32 pad2;
	struct cred_prefix prefixes[MAX_PREFIXES];
	struct profile prof;
	/* path prefixes of the service's legacy, proof-less interface (OCI's
	 * /opc/v1), whole paths: refused like a request without the proof */
	__u32 legacy_count;
	__u32 pad1;
	struct cred_prefix legacy[MAX_PREFIXES];
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
	/* credential reads per minute for the processes it matches, in place
	 * of config.cred_reads_per_min; 0: the policy's */
	__u32 cred_reads_per_min;
	__u32 pad;
};

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

static __always_inline __u8 verdict(const struct config *cfg, __u8 reason)
{
	if (reason == REASON_NONE)
		return ACTION_ALLOW;
	return cfg->mode == MODE_AUDIT ? ACTION_AUDIT : ACTION_DENY;
}

#endif
