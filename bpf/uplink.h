/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The node's last line: packets to an endpoint that no judged socket sent.
 *
 * The cgroup hooks see sockets of the inet families only. A process with
 * CAP_NET_RAW (which container runtimes grant by default) can build TCP
 * itself, on a raw IP socket or on AF_PACKET, from the host's namespace or
 * from a pod on a macvlan or ipvlan of the uplink: such packets pass no
 * socket hook and no forward chain. They all leave the node through the
 * egress of a device of the host's namespace (an upper device hands its
 * frames to the lower one's dev_queue_xmit), where imds_uplink runs as a
 * tc classifier.
 *
 * What leaves the node in any case stays as it is:
 *  - packets of sockets the judge owns (they have socket state);
 *  - forwarded packets (no socket: routed by this namespace, where the
 *    nftables forward chain judged them by their source before NAT);
 *  - TCP without payload (the stack's resets and acks of closed
 *    connections; a bare SYN or ACK gets nothing out of a server);
 *  - anything that is not TCP to an endpoint's address and port.
 * Everything else to an endpoint is dropped (counted, reported once per
 * socket).
 *
 * The same program runs on the devices of the pods an allowNonHostNetns
 * rule lets reach IMDS: their packets pass the forward chain by source
 * address, so a sidecar's hand-made TCP would too; inside the pod's
 * namespace its packet still carries its raw or packet socket. Two ways past every egress hook exist, PACKET_QDISC_BYPASS and
 * AF_XDP; imds_setsockopt refuses both.
 */
#ifndef IMDSGUARD_UPLINK_H
#define IMDSGUARD_UPLINK_H

#include "uplink_parse.h"
#include "sockopt.h"

#define TC_ACT_UNSPEC (-1)
#define TC_ACT_SHOT 2

/* Sockets whose refused packets were reported: one event per socket, the
 * counters count every packet. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} raw_reported SEC(".maps");

/* Whether the packet's socket is one the judge owns (it has state, made at
 * connect, at adoption or by sk_msg, and only for an endpoint's sockets),
 * or one it does not guard: a socket of a process outside the guarded
 * cgroup, which the other hooks let be too. */
static __always_inline int judged_socket(struct __sk_buff *skb, const struct config *cfg)
{
	if (cfg && bpf_skb_ancestor_cgroup_id(skb, cfg->scope_level) != cfg->scope_cgroup_id)
		return 1;
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 0;
	return bpf_sk_storage_get(&sock_states, sk, 0, 0) != 0;
}

/* Reports the first refused packet of a socket: its cgroup and uid are
 * the sender's; the packet context has no task. */
static __always_inline void report_raw_packet(struct __sk_buff *skb, const struct uplink_pkt *p, __u8 action)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u8 one = 1;
	if (bpf_map_update_elem(&raw_reported, &cookie, &one, BPF_NOEXIST))
		return;
	struct event *e = event_begin();
	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_skb_cgroup_id(skb);
	e->uid = bpf_get_socket_uid(skb);
	__builtin_memcpy(e->addr, p->key.addr, sizeof(e->addr));
	e->port = bpf_ntohs(p->key.port);
	e->kind = KIND_CONNECT;
	e->action = action;
	e->reason = REASON_RAW_PACKET;
	e->gen = p->key.gen;
	bpf_ringbuf_submit(e, ringbuf_wakeup());
}

/* On an Ethernet device: the host's uplinks, an allowed pod's veth,
 * macvlan or netkit device. */
SEC("tc")
int imds_uplink(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return TC_ACT_UNSPEC; /* forwarded: the forward chain's */
	struct uplink_pkt p = {};
	int r = parse_uplink(skb, &p);
	if (r == PARSE_OTHER)
		return TC_ACT_UNSPEC;
	if (r == PARSE_CHECK) {
		if (not_an_endpoint_port((__u32)p.key.port))
			return TC_ACT_UNSPEC;
		p.key.gen = current_gen();
		if (!bpf_map_lookup_elem(&endpoints, &p.key))
			return TC_ACT_UNSPEC;
	}
	/* A frame that cannot be read (PARSE_BAD: truncated IP, too many
	 * tags or extension headers) may be for an endpoint: the kernel's
	 * stack never builds one, so only a raw sender's is dropped. */
	struct config *cfg = get_config();
	if (judged_socket(skb, cfg))
		return TC_ACT_UNSPEC;
	if (r == PARSE_CHECK && !has_payload(skb, &p))
		return TC_ACT_UNSPEC;

	__u8 action = cfg ? verdict(cfg, REASON_RAW_PACKET) : ACTION_DENY;
	count(COUNTER_SLOT(KIND_CONNECT, action, REASON_RAW_PACKET));
	if (r == PARSE_CHECK)
		report_raw_packet(skb, &p, action);
	return action == ACTION_DENY ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}

/*
 * PACKET_QDISC_BYPASS sends a packet socket's frames straight to the
 * driver, and AF_XDP sockets (set up with SOL_XDP options) hand theirs to
 * it the same way: both skip every egress hook, imds_uplink included.
 * Under the guarded cgroup both are refused with EPERM. The kernel does
 * not run this hook for 32-bit (compat) setsockopt calls:
 * imds_setsockopt_all (sockopt_all.c) covers those where it loads.
 */
SEC("cgroup/setsockopt")
int imds_setsockopt(struct bpf_sockopt *ctx)
{
	return refuse_egress_bypass(ctx->level, ctx->optname) ? 0 : 1;
}

#endif
