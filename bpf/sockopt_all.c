//go:build ignore

// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The setsockopt guard for every caller. The cgroup setsockopt hook
 * (imds_setsockopt) does not run for 32-bit compat calls (int 0x80 from
 * any process, where the kernel has IA32 emulation), so a packet socket
 * could still turn on PACKET_QDISC_BYPASS and send past the uplink guard.
 * security_socket_setsockopt runs for every setsockopt, compat and
 * io_uring ones included; this program returns EPERM from it for the
 * same options, to the same guarded cgroup tree.
 *
 * fmod_ret needs BTF and BPF trampolines, and some kernels refuse BPF
 * tracing altogether (lockdown, an LSM): it is its own object, loaded
 * where the kernel allows, so that the rest loads everywhere.
 */
#include "abi.h"
#include "maps.h"
#include "sockopt.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define EPERM 1

/* security_socket_setsockopt(struct socket *sock, int level, int optname) */
SEC("fmod_ret/security_socket_setsockopt")
int imds_setsockopt_all(unsigned long long *ctx)
{
	int level = (int)ctx[1], optname = (int)ctx[2];
	if (level != SOL_XDP && level != SOL_PACKET)
		return 0;
	/* only the tree the cgroup hooks guard, as for every other hook */
	struct config *cfg = get_config();
	if (cfg && bpf_get_current_ancestor_cgroup_id(cfg->scope_level) != cfg->scope_cgroup_id)
		return 0;
	return refuse_egress_bypass(level, optname) ? -EPERM : 0;
}
