/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Who a socket belongs to: the task that connected it, read at connect,
 * and how an event names it.
 */
#ifndef IMDSGUARD_OWNER_H
#define IMDSGUARD_OWNER_H

#include "abi.h"

/* Only the fields read; CO-RE finds them in the running kernel's layout. */
struct task_struct {
	struct task_struct *real_parent;
	int tgid;
	char comm[TASK_COMM_LEN];
} __attribute__((preserve_access_index));

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

#endif
