//go:build ignore

// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Connect-time enforcement. Attached to the cgroup v2 root, these programs see
 * the connect() of every socket of every process, whatever its network
 * namespace, so one attachment covers the host and every container. They
 * return at once unless the destination is an IMDS endpoint: every other
 * connection (including 169.254.170.2 and the EKS Pod Identity agent) passes
 * untouched.
 */
#include "abi.h"
#include "maps.h"
#include "owner.h"
#include "http/judge.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2

/* Only the fields read; CO-RE finds them in the running kernel's layout. */
struct tcp_sock {
	__u32 write_seq; /* sequence number just past the bytes queued */
} __attribute__((preserve_access_index));

/* struct sock starts every tcp_sock (tcp_sock -> inet_connection_sock ->
 * inet_sock -> sock), so its fields are read through the tcp_sock pointer.
 * sk_shutdown is a plain u8 on every supported kernel (6.1 on). */
struct sock {
	__u8 sk_shutdown;
} __attribute__((preserve_access_index));
#define SEND_SHUTDOWN 2
#define AF_INET6 10
#define SOCK_STREAM 1

/* Per-socket state, kept across writes (sk_storage). */
struct sock_state {
	struct judge_state judge; /* where the judge stands in the socket's stream */
	__u32 flags;      /* enum sock_flag */
	__u32 isn;        /* initial sequence number, seen by the egress guard */
	__u32 pad;
	__u64 passed;     /* payload bytes the judge let through */
	struct owner owner; /* who requests are judged by (SOCK_OWNED) */
};

enum sock_flag {
	/* Connected to an IMDS endpoint under the guard (set at connect): the
	 * egress guard checks that every payload byte it sends was judged. */
	SOCK_GUARDED = 1 << 0,
	/* The egress guard has seen the SYN and knows the ISN. */
	SOCK_ISN = 1 << 1,
	/* An unjudged write was reported already (once per socket). */
	SOCK_REPORTED = 1 << 2,
	/* owner holds the task that connected (set at connect), or for a
	 * socket adopted at start, the first task that wrote to it. */
	SOCK_OWNED = 1 << 3,
	/* An adopted connection was reported already (once per socket). */
	SOCK_ADOPTION_REPORTED = 1 << 4,
	/* The stream the server reads and the judge's parted (urgent data):
	 * every later segment is dropped, every later write refused. */
	SOCK_POISONED = 1 << 5,
	/* Counted in open_conns (from the active open until the close). */
	SOCK_COUNTED = 1 << 6,
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
} sock_states SEC(".maps");

/*
 * Open IMDS connections by owner: its cgroup, and its uid unless root (a
 * root process can remove the guard anyway). Counted from the active open
 * (sockops TCP_CONNECT_CB) to the close (STATE_CB, see count_close), which
 * every socket reaches, established or not; the connect hooks refuse a socket
 * whose owner holds its share. Entries of cgroups gone are removed by the
 * daemon's rescans.
 */
enum conn_scope {
	CONN_CGROUP = 0, /* id is a cgroup id */
	CONN_UID = 1,    /* id is a uid */
	CONN_NODE = 2,   /* the node's total, id 0 */
};

struct conn_key {
	__u64 id;
	__u32 scope; /* enum conn_scope */
	__u32 pad;
};

/* The socket map's size: past it a connection could not be judged, so it
 * is refused at connect (an errno) rather than left to hang. */
#define MAX_IMDS_SOCKS 65536

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, __s64);
} open_conns SEC(".maps");

/* Credential reads by cgroup, in windows of a minute from a cgroup's first
 * read (credentialReadsPerMinute). LRU: a cgroup gone, or one that stopped
 * reading, gives its entry up first. */
struct cred_window {
	__u64 start_ns;
	__u32 count;
	__u32 pad;
};

#define CRED_WINDOW_NS (60ULL * 1000 * 1000 * 1000)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct cred_window);
} cred_reads SEC(".maps");

/* The credential read bound of a process the rule (or none) matches. */
static __always_inline __u32 cred_limit(const struct config *cfg, const struct rule *r)
{
	return r && r->cred_reads_per_min ? r->cred_reads_per_min : cfg->cred_reads_per_min;
}

/* How many credential reads the cgroup may still make this minute, under
 * limit. A global function, as spend_cred_reads: the verifier checks each
 * once, and its result is one unknown number to the caller, not paths to
 * follow through the whole judge. */
__attribute__((noinline)) __u32 cred_budget(__u32 limit, __u64 cgroup_id)
{
	if (limit == 0)
		return CRED_UNLIMITED;
	struct cred_window *w = bpf_map_lookup_elem(&cred_reads, &cgroup_id);
	if (!w || bpf_ktime_get_ns() - w->start_ns >= CRED_WINDOW_NS)
		return limit;
	return w->count >= limit ? 0 : limit - w->count;
}

/* Counts n credential reads the cgroup made (they reached the server). */
__attribute__((noinline)) int spend_cred_reads(__u32 limit, __u64 cgroup_id, __u32 n)
{
	if (n == 0 || limit == 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct cred_window *w = bpf_map_lookup_elem(&cred_reads, &cgroup_id);
	if (w && now - w->start_ns < CRED_WINDOW_NS) {
		__sync_fetch_and_add(&w->count, n);
		return 0;
	}
	struct cred_window fresh = {.start_ns = now, .count = n};
	bpf_map_update_elem(&cred_reads, &cgroup_id, &fresh, BPF_ANY);
	return 0;
}

/* The counts a connection of o is in, in the order they are checked: the
 * node's, its cgroup's and, unless o is root, its uid's. Returns how many. */
static __always_inline __u32 conn_keys(const struct owner *o, struct conn_key k[3])
{
	k[0] = (struct conn_key){.scope = CONN_NODE};
	k[1] = (struct conn_key){.id = o->cgroup_id, .scope = CONN_CGROUP};
	k[2] = (struct conn_key){.id = o->uid, .scope = CONN_UID};
	return o->uid == 0 ? 2 : 3;
}

/* Whether key holds max open connections or more. A key the map has no
 * room for is refused too: a full map fails closed for the newcomer. */
static __always_inline int at_limit(struct conn_key *key, __u32 max)
{
	__s64 *n = bpf_map_lookup_elem(&open_conns, key);
	if (n)
		return *n >= (__s64)max;
	__s64 zero = 0;
	long err = bpf_map_update_elem(&open_conns, key, &zero, BPF_NOEXIST);
	return err != 0 && err != -17; /* EEXIST: made meanwhile */
}

static __always_inline int over_connection_limit(const struct config *cfg, const struct owner *o)
{
	struct conn_key k[3];
	__u32 max[3] = {MAX_IMDS_SOCKS, cfg->max_conns_cgroup, cfg->max_conns_uid};
	__u32 n = conn_keys(o, k);
	for (__u32 i = 0; i < 3; i++) {
		if (i < n && at_limit(&k[i], max[i]))
			return 1;
	}
	return 0;
}

static __always_inline void add_conn(const struct owner *o, __s64 d)
{
	struct conn_key k[3];
	__u32 n = conn_keys(o, k);
	for (__u32 i = 0; i < 3; i++) {
		__s64 *c = i < n ? bpf_map_lookup_elem(&open_conns, &k[i]) : 0;
		if (c)
			__sync_fetch_and_add(c, d);
	}
}

static __always_inline void emit_connect(struct bpf_sock_addr *ctx, const struct endpoint_key *key,
					 __u64 cookie, const struct owner *o, __u8 action, __u8 reason, __u8 flags,
					 __u16 rule)
{
	struct event *e = event_begin();
	if (!e)
		return;
	event_owner(e, o);
	e->netns_cookie = cookie;
	__builtin_memcpy(e->addr, key->addr, sizeof(e->addr));
	e->port = bpf_ntohs(key->port);
	e->kind = KIND_CONNECT;
	e->action = action;
	e->reason = reason;
	e->flags = flags;
	e->gen = key->gen;
	e->rule = rule;
	bpf_ringbuf_submit(e, ringbuf_wakeup());
}

/*
 * An IPPROTO_MPTCP socket connects through a TCP subflow, and it is the
 * subflow these hooks see. Sockmap cannot hold MPTCP subflows, so the
 * request judge would never see its requests and the egress guard would
 * hold them back until the client gave up: such a connection is refused at
 * connect, with an errno, instead.
 */
static __always_inline int is_mptcp_subflow(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	return sk && bpf_skc_to_mptcp_sock(sk) != 0;
}

/* Returns 1 to let connect() proceed, 0 to fail it with EPERM. */
static __always_inline int judge_connect(struct bpf_sock_addr *ctx, struct endpoint_key *key)
{
	__u32 gen = current_gen();
	key->gen = gen;
	if (!bpf_map_lookup_elem(&endpoints, key))
		return 1;

	struct config *cfg = get_config_gen(gen);
	if (!cfg)
		return 0; /* unreachable once loaded; fail closed for IMDS */

	__u16 idx = 0;
	struct owner o;
	owner_of_current(&o);
	find_rules_of_new_cgroup(&o, gen);
	const struct rule *rule = match_rule(gen, &o, &idx);
	__u32 rflags = rule ? rule->flags : 0;
	__u64 cookie = bpf_get_netns_cookie(ctx);
	__u8 flags = 0;
	__u8 reason = REASON_NONE;
	int host = cookie == cfg->host_netns_cookie;
	if (host)
		flags |= EVENT_HOST_NETNS;
	if (rflags & RULE_DENY)
		reason = REASON_POLICY_RULE;
	else if (is_mptcp_subflow(ctx))
		reason = REASON_UNSUPPORTED_PROTOCOL;
	else if (!host && (cfg->flags & CONFIG_BLOCK_NON_HOST_NETNS) && !(rflags & RULE_ALLOW_NON_HOST_NETNS))
		reason = REASON_NON_HOST_NETNS;
	else if (ctx->type == SOCK_STREAM && over_connection_limit(cfg, &o))
		reason = REASON_CONNECTION_LIMIT;

	__u8 action = verdict(cfg, reason);
	count(COUNTER_SLOT(KIND_CONNECT, action, reason));
	emit_connect(ctx, key, cookie, &o, action, reason, flags, rule ? idx + 1 : 0);
	if (action == ACTION_DENY)
		return 0;

	/* From here every payload byte of this TCP socket must pass the
	 * request judge; the egress guard holds back any that did not (a
	 * write that started before the connection was established, or TCP
	 * Fast Open data, reaches the stack before sk_msg is attached). */
	if (ctx->type == SOCK_STREAM) {
		struct bpf_sock *sk = ctx->sk;
		if (!sk)
			return 0;
		struct sock_state *st = bpf_sk_storage_get(&sock_states, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st)
			return cfg->mode == MODE_AUDIT; /* cannot guard it: refuse in enforce mode */
		st->flags = SOCK_GUARDED | SOCK_OWNED;
		st->passed = 0;
		st->owner = o;
	}
	return 1;
}

SEC("cgroup/connect4")
int imds_connect4(struct bpf_sock_addr *ctx)
{
	if (not_an_endpoint_port(ctx->user_port))
		return 1;
	struct endpoint_key key = {};

	addr_v4(key.addr, ctx->user_ip4);
	key.port = (__be16)ctx->user_port;
	return judge_connect(ctx, &key);
}

SEC("cgroup/connect6")
int imds_connect6(struct bpf_sock_addr *ctx)
{
	if (not_an_endpoint_port(ctx->user_port))
		return 1;
	struct endpoint_key key = {};

	/* an IPv4-mapped address lands on the IPv4 key */
	addr_v6(key.addr, CTX_U32(ctx->user_ip6[0]), CTX_U32(ctx->user_ip6[1]),
		CTX_U32(ctx->user_ip6[2]), CTX_U32(ctx->user_ip6[3]));
	key.port = (__be16)ctx->user_port;
	return judge_connect(ctx, &key);
}

/*
 * Request-time enforcement: sockops puts every established TCP socket to an
 * IMDS endpoint into imds_socks; the sk_msg program attached to that map
 * judges every HTTP request written to those sockets (http/judge.h).
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_IMDS_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} imds_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct judge);
} judges SEC(".maps");

/* remote_port of sock_ops and sk_msg contexts holds the port in network byte
 * order, in the upper or the lower 16 bits depending on the kernel; a port is
 * never 0, so whichever half is set is the port. */
static __always_inline __be16 ctx_port(__u32 p)
{
	return (p & 0xffff) ? (__be16)p : (__be16)(p >> 16);
}

/* The active open of a socket the connect hooks let through is counted
 * against its owner, and its close asked for. */
static __always_inline void count_open(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return;
	struct sock_state *st = bpf_sk_storage_get(&sock_states, sk, 0, 0);
	if (!st || !(st->flags & SOCK_GUARDED) || (st->flags & SOCK_COUNTED))
		return;
	st->flags |= SOCK_COUNTED;
	add_conn(&st->owner, 1);
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* A connection gives its share back when its owner is done with it:
 * closed (FIN_WAIT1 from established, LAST_ACK after the peer's FIN) or
 * ended (CLOSE: reset, refused, timed out), not only once TIME_WAIT ends. */
static __always_inline void count_close(struct bpf_sock_ops *skops)
{
	__u32 state = skops->args[1];
	if (state != BPF_TCP_CLOSE && state != BPF_TCP_FIN_WAIT1 && state != BPF_TCP_LAST_ACK)
		return;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return;
	struct sock_state *st = bpf_sk_storage_get(&sock_states, sk, 0, 0);
	if (!st || !(st->flags & SOCK_COUNTED))
		return;
	st->flags &= ~SOCK_COUNTED;
	add_conn(&st->owner, -1);
}

SEC("sockops")
int imds_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op == BPF_SOCK_OPS_STATE_CB) {
		count_close(skops);
		return 1;
	}
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	if (not_an_endpoint_port(ctx_port(skops->remote_port)))
		return 1;
	if (skops->op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		count_open(skops);
		return 1;
	}

	struct endpoint_key key = {};
	if (skops->family == AF_INET)
		addr_v4(key.addr, skops->remote_ip4);
	else if (skops->family == AF_INET6)
		addr_v6(key.addr, CTX_U32(skops->remote_ip6[0]), CTX_U32(skops->remote_ip6[1]),
			CTX_U32(skops->remote_ip6[2]), CTX_U32(skops->remote_ip6[3]));
	else {
		return 1;
	}
	key.port = ctx_port(skops->remote_port);
	key.gen = current_gen();
	if (!bpf_map_lookup_elem(&endpoints, &key))
		return 1;

	__u64 cookie = bpf_get_socket_cookie(skops);
	if (bpf_sock_hash_update(skops, &imds_socks, &cookie, BPF_ANY))
		count(COUNTER_UNGUARDED); /* reported by the daemon: this socket is not judged */
	return 1;
}

/*
 * What every request event of one program run shares. The events are
 * emitted from a bpf_loop callback, which the verifier checks once: the
 * same code unrolled MAX_REQS times, with its branches, grows past the
 * verifier's budget of one million instructions on Linux 6.1 (6.18 prunes
 * it to a fifth of that).
 */
struct emit_ctx {
	const struct config *cfg;
	struct judge *j;
	const struct owner *owner;
	__u64 netns_cookie;
	__u8 addr[16];
	__u32 from; /* index of the first request to report */
	__u32 gen;
	__u16 port; /* host byte order */
	__u16 rule;
	__u32 cred_served; /* credential reads reported allowed (they reach the server) */
};

static __always_inline void msg_endpoint(struct sk_msg_md *msg, struct emit_ctx *c)
{
	if (msg->family == AF_INET)
		addr_v4(c->addr, msg->remote_ip4);
	else
		addr_v6(c->addr, CTX_U32(msg->remote_ip6[0]), CTX_U32(msg->remote_ip6[1]),
			CTX_U32(msg->remote_ip6[2]), CTX_U32(msg->remote_ip6[3]));
	c->port = bpf_ntohs(ctx_port(msg->remote_port));
}

static __always_inline void emit_request(const struct emit_ctx *c, const struct req_result *r)
{
	count(COUNTER_SLOT(KIND_REQUEST, r->action, r->reason));
	if (r->flags & REQ_CREDENTIAL)
		count(COUNTER_CREDENTIAL + (r->action < ACTION_MAX ? r->action : 0));
	struct event *e = event_begin();
	if (!e)
		return;
	event_owner(e, c->owner);
	e->netns_cookie = c->netns_cookie;
	__builtin_memcpy(e->addr, c->addr, sizeof(e->addr));
	e->port = c->port;
	e->kind = KIND_REQUEST;
	e->action = r->action;
	e->reason = r->reason;
	e->gen = c->gen;
	e->rule = c->rule;
	if (e->netns_cookie == c->cfg->host_netns_cookie)
		e->flags |= EVENT_HOST_NETNS;
	if (r->flags & REQ_HAS_TOKEN)
		e->flags |= EVENT_HAS_TOKEN;
	if (r->flags & REQ_CREDENTIAL)
		e->flags |= EVENT_CREDENTIAL_ACCESS;
	e->path_len = r->path_len;
	e->method_len = r->method_len;
	__builtin_memcpy(e->method, r->method, METHOD_LEN);
	__builtin_memcpy(e->path, r->path, PATH_LEN);
	bpf_ringbuf_submit(e, ringbuf_wakeup());
}

/* bpf_loop callback: reports request from + i. */
static long emit_one(__u32 i, void *arg)
{
	struct emit_ctx *c = arg;
	__u32 k = c->from + i;
	if (k >= MAX_REQS)
		return 1;
	const struct req_result *r = &c->j->p.reqs[k];
	emit_request(c, r);
	if ((r->flags & REQ_CREDENTIAL) && r->reason == REASON_NONE)
		c->cred_served++;
	return 0;
}

/* Reports a verdict on the whole socket (not on a request of it) as one
 * request event with the reason; returns the action. */
static __always_inline __u8 report_socket(struct emit_ctx *c, __u8 reason)
{
	struct req_result *r = &c->j->p.reqs[0];
	__builtin_memset(r, 0, sizeof(*r));
	r->reason = reason;
	r->action = verdict(c->cfg, reason);
	c->from = 0;
	bpf_loop(1, emit_one, c, 0);
	return r->action;
}

/* Messages up to this size are copied word by word; larger ones by a helper
 * (a loop over 16 KiB would cost the verifier once per word). */
#define COPY_WORDS 64

/* Copies the first len bytes of the message into buf; returns the count.
 * The bytes a write brings are usually in the message's first fragment
 * already; only when they are not does bpf_msg_pull_data make them so. */
static __always_inline __u32 copy_msg(struct sk_msg_md *msg, struct judge *j, __u32 len)
{
	if (len == 0 || len > JUDGE_BUF)
		return 0;
	__u8 *data = msg->data;
	__u8 *end = msg->data_end;
	if ((void *)(data + len) > (void *)end) {
		if (bpf_msg_pull_data(msg, 0, len, 0))
			return 0;
		data = msg->data;
		end = msg->data_end;
		if ((void *)(data + len) > (void *)end)
			return 0;
	}
	if (len > COPY_WORDS * 8 || len < 8)
		return bpf_probe_read_kernel(j->buf, len, data) ? 0 : len;
	/* 8-byte words, then one last word ending at len (overlapping the
	 * one before) */
	for (__u32 i = 0; i < COPY_WORDS * 8; i += 8) {
		if (i + 8 > len || (void *)(data + i + 8) > (void *)end)
			break;
		store64(&j->buf[i], *(__u64 *)(data + i));
	}
	__u32 last = MASKED(len - 8, COPY_WORDS * 8 - 1);
	if ((void *)(data + last + 8) > (void *)end)
		return 0;
	store64(&j->buf[last], *(__u64 *)(data + last));
	return len;
}

/* Counts a request refused (or audited) before it was judged. */
static __always_inline void count_unjudged(const struct config *cfg, __u8 reason)
{
	count(COUNTER_SLOT(KIND_REQUEST, verdict(cfg, reason), reason));
}

/* The stream the server reads is the stream judged: the bytes the socket
 * has queued since its SYN must be the bytes the judge let through. More
 * means bytes entered without the judge (Fast Open data, a write that
 * raced the connect, a write the kernel sent without running this
 * program): the socket is poisoned, so that no later judged write can
 * lift the egress guard over them. Fewer means judged bytes the kernel did
 * not take (a non-blocking write that could not be pushed): they are not
 * counted. Returns 1 when the write is to be dropped. */
static __always_inline int stream_disagrees(struct bpf_sock *sk, struct sock_state *st, struct emit_ctx *ec)
{
	if (!(st->flags & SOCK_ISN))
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	__u32 queued = tp->write_seq - (st->isn + 1);
	__s32 extra = (__s32)(queued - (__u32)st->passed);
	if (extra < 0) {
		st->passed += extra;
		return 0;
	}
	if (extra == 0)
		return 0;
	st->flags |= SOCK_POISONED;
	return report_socket(ec, REASON_UNJUDGED_WRITE) == ACTION_DENY;
}

/* Whether the writer shut the socket for writing (shutdown(SHUT_WR), or a
 * reset). Such a write is passed unjudged: tcp_bpf_sendmsg runs this
 * program before the TCP stack looks at sk_shutdown, and a pass hands the
 * bytes to tcp_sendmsg_locked, which, under the same socket lock that
 * shutdown() takes to set the flag, refuses them with EPIPE (and SIGPIPE)
 * as it would without the guard. Nothing is queued, so nothing unjudged
 * can reach the server, and no byte is counted as passed. */
static __always_inline int shut_for_writing(struct bpf_sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	return ((struct sock *)tp)->sk_shutdown & SEND_SHUTDOWN;
}

/* Why every request of this write is refused whatever it says (the
 * owner's deny rule, another network namespace), or REASON_NONE. */
static __always_inline __u8 forced_reason(const struct config *cfg, __u32 rflags, __u64 netns_cookie)
{
	if (rflags & RULE_DENY)
		return REASON_POLICY_RULE;
	if ((cfg->flags & CONFIG_BLOCK_NON_HOST_NETNS) && !(rflags & RULE_ALLOW_NON_HOST_NETNS) &&
	    netns_cookie != cfg->host_netns_cookie)
		return REASON_NON_HOST_NETNS;
	return REASON_NONE;
}

/* The socket's judge state, made at its first write; NULL (counted) when
 * the write cannot be judged at all. */
static __always_inline struct sock_state *judged_state(struct sk_msg_md *msg, const struct config *cfg, struct judge *j)
{
	struct bpf_sock *sk = msg->sk;
	if (!sk)
		return 0;
	struct sock_state *st = bpf_sk_storage_get(&sock_states, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count_unjudged(cfg, REASON_PARSE_ERROR);
		return 0;
	}
	if (st->flags & SOCK_POISONED) {
		count_unjudged(cfg, REASON_URGENT_DATA);
		return 0;
	}
	/* another writer preempted on this CPU is using the scratch space */
	if (j->busy) {
		count_unjudged(cfg, REASON_PARSE_ERROR);
		return 0;
	}
	return st;
}

/* The owner's rule: deny refuses every request, allowV1 lifts the token
 * rule, allowNonHostNetns the netns one. A socket of another network
 * namespace gets here only if it was adopted at start or connected in
 * audit mode: its requests are refused. The owner is the task that
 * connected; a socket adopted at start has none recorded and takes the
 * first task that writes to it. */
static __always_inline const struct rule *owner_rule(struct sock_state *st, __u32 gen, __u16 *idx)
{
	if (!(st->flags & SOCK_OWNED)) {
		owner_of_current(&st->owner);
		find_rules_of_new_cgroup(&st->owner, gen);
		st->flags |= SOCK_OWNED;
	}
	return match_rule(gen, &st->owner, idx);
}

/* Acts on the judgement: events, cork or pass, apply. */
static __always_inline int apply_judgement(struct sk_msg_md *msg, struct sock_state *st, struct judgement *jm, struct emit_ctx *ec)
{
	if (jm->emit_to > jm->emit_from) {
		ec->from = jm->emit_from;
		bpf_loop(jm->emit_to - jm->emit_from, emit_one, ec, 0);
	}
	if (jm->cork)
		bpf_msg_cork_bytes(msg, jm->cork);
	else if (jm->verdict == VERDICT_PASS)
		st->passed += jm->apply ? jm->apply : jm->msg_size;
	if (jm->apply)
		bpf_msg_apply_bytes(msg, jm->apply);
	return jm->verdict == VERDICT_DROP ? SK_DROP : SK_PASS;
}

SEC("sk_msg")
int imds_msg(struct sk_msg_md *msg)
{
	__u32 zero = 0;
	__u32 gen = current_gen();
	struct config *cfg = get_config_gen(gen);
	if (!cfg)
		return SK_DROP;
	int fail = cfg->mode == MODE_AUDIT ? SK_PASS : SK_DROP;
	struct judge *j = bpf_map_lookup_elem(&judges, &zero);
	if (!j)
		return fail;
	if (msg->sk && shut_for_writing(msg->sk))
		return SK_PASS;
	struct sock_state *st = judged_state(msg, cfg, j);
	if (!st)
		return fail;
	j->busy = 1;

	__u32 size = msg->size;
	__u32 want = size < JUDGE_BUF ? size : JUDGE_BUF;
	__u32 len = copy_msg(msg, j, want);
	if (len != want) {
		j->busy = 0;
		count_unjudged(cfg, REASON_PARSE_ERROR);
		return fail;
	}
	__u16 idx = 0;
	const struct rule *rule = owner_rule(st, gen, &idx);
	__u64 netns_cookie = bpf_get_netns_cookie(msg);
	/* what every event of this run shares */
	struct emit_ctx ec = {
		.cfg = cfg, .j = j, .owner = &st->owner, .netns_cookie = netns_cookie, .gen = gen,
		.rule = rule ? idx + 1 : 0,
	};
	msg_endpoint(msg, &ec);

	/* A connection opened before the guard may stand inside a body or a
	 * half-written request (a POST announcing 100 bytes, 10 sent): the
	 * server's view of its stream is unknown, so nothing written on it
	 * can be judged. Enforce mode refuses every write on it (the drop
	 * verdict sticks to the socket, so later writes fail unjudged); audit
	 * mode reports it once and judges as well as it can. */
	if (st->judge.unsynced && !(st->flags & SOCK_ADOPTION_REPORTED)) {
		st->flags |= SOCK_ADOPTION_REPORTED;
		if (report_socket(&ec, REASON_ADOPTED_CONNECTION) == ACTION_DENY) {
			j->busy = 0;
			return SK_DROP;
		}
	}
	if (stream_disagrees(msg->sk, st, &ec)) {
		j->busy = 0;
		return SK_DROP;
	}
	__u32 rflags = rule ? rule->flags : 0;
	__u32 clear = (rflags & RULE_ALLOW_V1) ? CONFIG_REQUIRE_TOKEN : 0;
	j->cred_bound = cred_limit(cfg, rule);
	struct judgement jm = {
		.len = len, .clear_flags = clear, .force_reason = forced_reason(cfg, rflags, netns_cookie),
		.msg_size = size, .cred_budget = cred_budget(j->cred_bound, st->owner.cgroup_id),
	};
	judge_message(j, cfg, &st->judge, &jm);
	int ret = apply_judgement(msg, st, &jm, &ec);
	spend_cred_reads(j->cred_bound, st->owner.cgroup_id, ec.cred_served);
	j->busy = 0;
	return ret;
}

/*
 * Adoption of connections opened before the guard: a socket iterator, run
 * once per network namespace at start, puts every established TCP socket to
 * an IMDS endpoint into imds_socks (as sockops does for new ones) and marks
 * its judge state unsynced (see struct judge_state). Only the fields used are declared; CO-RE
 * finds them in the running kernel's layout.
 */
struct in6_addr___ig {
	__u8 s6_addr[16];
};

struct sock_common {
	__be32 skc_daddr;
	__be16 skc_dport;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr___ig skc_v6_daddr;
} __attribute__((preserve_access_index));

struct bpf_iter_meta {
	void *seq;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

SEC("iter/tcp")
int imds_adopt(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc || skc->skc_state != BPF_TCP_ESTABLISHED)
		return 0;

	struct endpoint_key key = {};
	if (skc->skc_family == AF_INET) {
		addr_v4(key.addr, skc->skc_daddr);
	} else if (skc->skc_family == AF_INET6) {
		__builtin_memcpy(key.addr, skc->skc_v6_daddr.s6_addr, 16);
	} else {
		return 0;
	}
	key.port = skc->skc_dport;
	key.gen = current_gen();
	if (!bpf_map_lookup_elem(&endpoints, &key))
		return 0;

	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	struct sock_state *st = bpf_sk_storage_get(&sock_states, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st)
		st->judge.unsynced = 1;
	__u64 cookie = bpf_get_socket_cookie(skc);
	long err = bpf_map_update_elem(&imds_socks, &cookie, skc, BPF_NOEXIST);
	if (err == 0)
		count(COUNTER_ADOPTED);
	else if (err != -17 /* EEXIST: sockops already has it */)
		count(COUNTER_UNGUARDED);
	return 0;
}

/*
 * Egress guard. sk_msg only sees writes made after sockops put the socket
 * in imds_socks; a write that entered the TCP stack earlier (a blocking
 * write racing a non-blocking connect, TCP Fast Open data) would be sent
 * unjudged. For sockets marked SOCK_GUARDED at connect, this checks every
 * outgoing segment: payload beyond what the judge let through is dropped
 * (TCP keeps retrying it; the peer never gets it) and reported once.
 * Packets to ports no endpoint uses return after one array read; others
 * after a socket-storage lookup.
 */
struct tcphdr___ig {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res;
	__u8 flags;
};

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_URG 0x20

/* Reports a guarded socket's segment, from packet context: the writer is
 * not known here, only the socket and the task that connected it. */
static __always_inline void report_segment(struct __sk_buff *skb, struct sock_state *st, const struct config *cfg,
					   __u8 reason, __u8 ipver, __be16 dport)
{
	__u8 action = verdict(cfg, reason);
	count(COUNTER_SLOT(KIND_REQUEST, action, reason));
	struct event *e = event_begin();
	if (!e)
		return;
	event_owner(e, &st->owner);
	e->kind = KIND_REQUEST;
	e->action = action;
	e->reason = reason;
	e->port = bpf_ntohs(dport);
	if (ipver == 4) {
		__u32 ip = 0;
		bpf_skb_load_bytes(skb, 16, &ip, 4);
		addr_v4(e->addr, ip);
	} else {
		bpf_skb_load_bytes(skb, 24, e->addr, 16);
	}
	bpf_ringbuf_submit(e, ringbuf_wakeup());
}

SEC("cgroup_skb/egress")
int imds_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	/* Every packet of every socket in the cgroup comes here; only sockets
	 * connected to an endpoint are guarded, so other ports return before
	 * the socket lookups. */
	if (not_an_endpoint_port(ctx_port(skb->remote_port)))
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	struct sock_state *st = bpf_sk_storage_get(&sock_states, sk, 0, 0);
	if (!st || !(st->flags & SOCK_GUARDED))
		return 1;

	struct config *cfg = get_config();
	if (!cfg)
		return 1;
	int fail = cfg->mode == MODE_AUDIT ? 1 : 0;

	/* network header first: IPv4 or IPv6 (IPv4-mapped sockets send IPv4) */
	__u8 vihl;
	if (bpf_skb_load_bytes(skb, 0, &vihl, 1))
		return fail;
	__u32 l4, iplen;
	if ((vihl >> 4) == 4) {
		__u8 proto;
		__be16 tot;
		if (bpf_skb_load_bytes(skb, 9, &proto, 1) || bpf_skb_load_bytes(skb, 2, &tot, 2) || proto != 6)
			return fail;
		l4 = (vihl & 0xf) * 4;
		iplen = bpf_ntohs(tot);
	} else if ((vihl >> 4) == 6) {
		__u8 next;
		__be16 plen;
		if (bpf_skb_load_bytes(skb, 6, &next, 1) || bpf_skb_load_bytes(skb, 4, &plen, 2) || next != 6)
			return fail; /* extension headers: not from a TCP client socket */
		l4 = 40;
		iplen = 40 + bpf_ntohs(plen);
	} else {
		return fail;
	}
	struct tcphdr___ig th;
	if (bpf_skb_load_bytes(skb, l4, &th, sizeof(th)))
		return fail;
	__u32 hlen = l4 + (th.doff_res >> 4) * 4;
	__u32 seq = bpf_ntohl(th.seq);
	if (th.flags & TCP_FLAG_SYN) {
		st->isn = seq;
		st->flags |= SOCK_ISN;
	}
	/* Urgent data (MSG_OOB): a server reads the urgent byte out of band,
	 * or not at all, so its stream and the judge's part there. The
	 * socket is poisoned: this and every later segment is dropped, every
	 * later write refused (sk_msg), reported once. */
	if ((th.flags & TCP_FLAG_URG) || (st->flags & SOCK_POISONED)) {
		if (!(st->flags & SOCK_POISONED)) {
			st->flags |= SOCK_POISONED;
			report_segment(skb, st, cfg, REASON_URGENT_DATA, vihl >> 4, th.dest);
		}
		return fail;
	}
	if (iplen <= hlen)
		return 1; /* no payload */
	__u32 payload = iplen - hlen;
	if (st->flags & SOCK_ISN) {
		/* stream offset just past this segment's payload; data starts at
		 * ISN+1, after the SYN (which may itself carry Fast Open data) */
		__u32 start = seq + ((th.flags & TCP_FLAG_SYN) ? 1 : 0) - (st->isn + 1);
		__u32 end = start + payload;
		if ((__s32)(end - (__u32)st->passed) <= 0)
			return 1; /* every byte was judged (first sending or a retransmission) */
	}

	if (!(st->flags & SOCK_REPORTED)) {
		st->flags |= SOCK_REPORTED;
		report_segment(skb, st, cfg, REASON_UNJUDGED_WRITE, vihl >> 4, th.dest);
	}
	return fail;
}

#include "uplink.h"
