/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Minimal replacement for the kernel's <linux/types.h>, so that the vendored
 * uapi <linux/bpf.h> compiles for the BPF target without the host's libc or
 * asm headers (they differ between distributions and architectures).
 */
#ifndef __IMDSGUARD_LINUX_TYPES_H
#define __IMDSGUARD_LINUX_TYPES_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;

typedef __u16 __le16;
typedef __u16 __be16;
typedef __u32 __le32;
typedef __u32 __be32;
typedef __u64 __le64;
typedef __u64 __be64;

typedef __u16 __sum16;
typedef __u32 __wsum;

typedef __u64 __aligned_u64 __attribute__((aligned(8)));

typedef _Bool bool;
#define true 1
#define false 0

#endif
