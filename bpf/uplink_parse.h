/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * How the uplink guard (uplink.h) reads a frame leaving the node: past up
 * to two VLAN tags, IPv4 options and IPv6 extension headers, to the TCP
 * destination and whether the segment carries payload. Kept apart from the
 * guard's maps so that the test object (judge_test.c) runs it on crafted
 * frames.
 */
#ifndef IMDSGUARD_UPLINK_PARSE_H
#define IMDSGUARD_UPLINK_PARSE_H

#include "abi.h"

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define IPPROTO_TCP 6
#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXT 4

/* What the uplink guard needs of a packet. */
struct uplink_pkt {
	struct endpoint_key key; /* destination address and port, policy generation */
	__u32 l3;                /* offset of the IP header */
	__u32 l4;                /* offset of the TCP header */
	__u32 ip_end;            /* offset just past the IP packet, as its header says */
	__u8 more_fragments;     /* the first fragment of a datagram */
	__u8 ipver;
};

enum uplink_parse {
	PARSE_CHECK = 0, /* TCP whose destination is in pkt */
	PARSE_OTHER = 1, /* not TCP, or a later fragment: nothing to check */
	PARSE_BAD = 2,   /* cannot be read: only the owner of the socket knows */
};

/* The Ethernet type past up to MAX_VLAN_TAGS tags; *l3 gets its end. */
static __always_inline int parse_l2(struct __sk_buff *skb, __u32 *l3, __be16 *type)
{
	__u32 off = 12;
	for (int i = 0; i <= MAX_VLAN_TAGS; i++) {
		if (bpf_skb_load_bytes(skb, off, type, 2))
			return PARSE_BAD;
		if (*type != bpf_htons(ETH_P_8021Q) && *type != bpf_htons(ETH_P_8021AD)) {
			*l3 = off + 2;
			return PARSE_CHECK;
		}
		off += 4;
	}
	return PARSE_BAD; /* more tags than any frame the node sends */
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct uplink_pkt *p)
{
	__u8 h[20];
	if (bpf_skb_load_bytes(skb, p->l3, h, sizeof(h)) || (h[0] >> 4) != 4 || (h[0] & 0xf) < 5)
		return PARSE_BAD;
	if (h[9] != IPPROTO_TCP)
		return PARSE_OTHER;
	__u16 frag = ((__u16)h[6] << 8 | h[7]);
	if (frag & 0x1fff)
		return PARSE_OTHER; /* a later fragment: nothing without the first */
	p->more_fragments = (frag & 0x2000) != 0;
	p->l4 = p->l3 + (h[0] & 0xf) * 4;
	p->ip_end = p->l3 + ((__u16)h[2] << 8 | h[3]);
	__u32 daddr;
	__builtin_memcpy(&daddr, &h[16], 4);
	addr_v4(p->key.addr, daddr);
	p->ipver = 4;
	return PARSE_CHECK;
}

/* IPv6: past hop-by-hop, routing, destination options and fragment
 * headers to TCP. */
static __always_inline int parse_ipv6(struct __sk_buff *skb, struct uplink_pkt *p)
{
	__u8 h[8];
	if (bpf_skb_load_bytes(skb, p->l3, h, sizeof(h)) || (h[0] >> 4) != 6)
		return PARSE_BAD;
	if (bpf_skb_load_bytes(skb, p->l3 + 24, p->key.addr, 16))
		return PARSE_BAD;
	__u16 plen = (__u16)h[4] << 8 | h[5];
	__u8 next = h[6];
	__u32 off = p->l3 + 40;
	for (int i = 0; i < MAX_IPV6_EXT; i++) {
		if (next != 0 && next != 43 && next != 60 && next != 44)
			break;
		__u8 x[4];
		if (bpf_skb_load_bytes(skb, off, x, sizeof(x)))
			return PARSE_BAD;
		if (next == 44) {
			__u16 frag = (__u16)x[2] << 8 | x[3];
			if (frag & 0xfff8)
				return PARSE_OTHER;
			p->more_fragments = frag & 1;
			off += 8;
		} else {
			off += ((__u32)x[1] + 1) * 8;
		}
		next = x[0];
	}
	if (next == 0 || next == 43 || next == 60 || next == 44)
		return PARSE_BAD; /* more extension headers than a client sends */
	if (next != IPPROTO_TCP)
		return PARSE_OTHER;
	p->l4 = off;
	/* a zero payload length is a jumbogram: treat it as the largest */
	p->ip_end = plen ? p->l3 + 40 + plen : 0xffffffff;
	p->ipver = 6;
	return PARSE_CHECK;
}

/* Finds the TCP destination of an IP packet in an Ethernet frame. */
static __always_inline int parse_uplink(struct __sk_buff *skb, struct uplink_pkt *p)
{
	__be16 type;
	int r = parse_l2(skb, &p->l3, &type);
	if (r != PARSE_CHECK)
		return r;
	if (type == bpf_htons(ETH_P_IP))
		r = parse_ipv4(skb, p);
	else if (type == bpf_htons(ETH_P_IPV6))
		r = parse_ipv6(skb, p);
	else
		return PARSE_OTHER;
	if (r != PARSE_CHECK)
		return r;
	if (bpf_skb_load_bytes(skb, p->l4 + 2, &p->key.port, 2))
		return PARSE_BAD;
	return PARSE_CHECK;
}

/* Whether the TCP segment carries payload, or may (a first fragment). */
static __always_inline int has_payload(struct __sk_buff *skb, const struct uplink_pkt *p)
{
	if (p->more_fragments)
		return 1;
	__u8 doff;
	if (bpf_skb_load_bytes(skb, p->l4 + 12, &doff, 1))
		return 1;
	return p->ip_end > p->l4 + (doff >> 4) * 4;
}

#endif
