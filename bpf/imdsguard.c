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
#include "imdsguard.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline void emit_connect(struct bpf_sock_addr *ctx, const struct endpoint_key *key,
					 __u64 cookie, __u8 action, __u8 reason, __u8 flags)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		/* The verdict counter is already exact; this says an event is missing. */
		count(COUNTER_EVENTS_LOST);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));

	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->netns_cookie = cookie;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	__builtin_memcpy(e->addr, key->addr, sizeof(e->addr));
	e->port = bpf_ntohs(key->port);
	e->kind = KIND_CONNECT;
	e->action = action;
	e->reason = reason;
	e->flags = flags;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

/* Returns 1 to let connect() proceed, 0 to fail it with EPERM. */
static __always_inline int judge_connect(struct bpf_sock_addr *ctx, const struct endpoint_key *key)
{
	if (!bpf_map_lookup_elem(&endpoints, key))
		return 1;

	struct config *cfg = get_config();
	if (!cfg)
		return 0; /* unreachable once loaded; fail closed for IMDS */

	__u64 cookie = bpf_get_netns_cookie(ctx);
	__u8 flags = 0;
	__u8 reason = REASON_NONE;
	if (cookie == cfg->host_netns_cookie)
		flags |= EVENT_HOST_NETNS;
	else if (cfg->flags & CONFIG_BLOCK_NON_HOST_NETNS)
		reason = REASON_NON_HOST_NETNS;

	__u8 action = verdict(cfg, reason);
	count(COUNTER_SLOT(KIND_CONNECT, action, reason));
	emit_connect(ctx, key, cookie, action, reason, flags);
	return action == ACTION_DENY ? 0 : 1;
}

SEC("cgroup/connect4")
int imds_connect4(struct bpf_sock_addr *ctx)
{
	struct endpoint_key key = {};
	__u32 ip = ctx->user_ip4; /* network byte order */

	key.addr[10] = 0xff;
	key.addr[11] = 0xff;
	__builtin_memcpy(&key.addr[12], &ip, sizeof(ip));
	key.port = (__be16)ctx->user_port;
	return judge_connect(ctx, &key);
}

SEC("cgroup/connect6")
int imds_connect6(struct bpf_sock_addr *ctx)
{
	struct endpoint_key key = {};
	__u32 w;

	/* user_ip6 only allows 4-byte loads; an IPv4-mapped address lands on the IPv4 key. */
	w = ctx->user_ip6[0];
	__builtin_memcpy(&key.addr[0], &w, 4);
	w = ctx->user_ip6[1];
	__builtin_memcpy(&key.addr[4], &w, 4);
	w = ctx->user_ip6[2];
	__builtin_memcpy(&key.addr[8], &w, 4);
	w = ctx->user_ip6[3];
	__builtin_memcpy(&key.addr[12], &w, 4);
	key.port = (__be16)ctx->user_port;
	return judge_connect(ctx, &key);
}
