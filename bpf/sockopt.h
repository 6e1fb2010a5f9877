/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Which socket options open a way past every egress hook, shared by the
 * cgroup setsockopt guard (uplink.h) and the one on the LSM hook
 * (sockopt_all.c).
 */
#ifndef IMDSGUARD_SOCKOPT_H
#define IMDSGUARD_SOCKOPT_H

#include "maps.h"

#define SOL_PACKET 263
#define PACKET_QDISC_BYPASS 20
#define SOL_XDP 283

/* Whether a setsockopt of the guarded cgroup is to be refused: it turns
 * on PACKET_QDISC_BYPASS or sets up an AF_XDP socket, and the policy
 * enforces (audit only counts it). */
static __always_inline int refuse_egress_bypass(int level, int optname)
{
	if (level != SOL_XDP && !(level == SOL_PACKET && optname == PACKET_QDISC_BYPASS))
		return 0;
	struct config *cfg = get_config();
	__u8 action = cfg ? verdict(cfg, REASON_EGRESS_BYPASS) : ACTION_DENY;
	count(COUNTER_SLOT(KIND_CONNECT, action, REASON_EGRESS_BYPASS));
	return action == ACTION_DENY;
}

#endif
