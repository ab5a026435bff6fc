/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * pair.h - maps and records of the point-to-point redirect pair (pair_redirect.bpf.c).
 *
 * A point-to-point link is two VTEPs in the box joined like a wire: whatever one decapsulates
 * is sent out of the other, link-local frames (LLDP, LACP, STP) included, which a bridge would
 * consume. Keyed by the ingress VTEP's ifindex; one set of maps serves every pair in the box.
 *
 * The records that cross the kernel/user boundary (struct moa_pair_peer, enum
 * moa_pair_counter) live in abi.h; datapath/pair.py reads them from this object's BTF.
 */
#ifndef MOA_PAIR_H
#define MOA_PAIR_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"

#define MOA_PAIR_DEFAULT_VTEPS 65536

/* ifindex -> peer. Read by both programs; written by userspace only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOA_PAIR_DEFAULT_VTEPS);
	__type(key, __u32);
	__type(value, struct moa_pair_peer);
} moa_pair_peers SEC(".maps");

/*
 * ifindex -> peer device, for bpf_redirect_map. The kernel resolves the value's ifindex in the
 * network namespace of the process that WRITES the entry (docs/kernel-facts.md): userspace writes
 * it from the box's namespace (the netlink thread).
 *
 * Not pinned (no "moa_" prefix, which is what the loader pins): the kernel adds
 * BPF_F_RDONLY_PROG to every devmap's flags, so libbpf refuses to reuse a pinned one ("parameter
 * mismatch") and a devmap cannot be created with that flag. Each load has its own devmap; an
 * attached XDP program keeps its own alive, and a pair is always attached and written by the
 * same load (a pair from before a restart keeps its old program and devmap).
 */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, MOA_PAIR_DEFAULT_VTEPS);
	__type(key, __u32);
	__type(value, __u32);
} pair_devmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MOA_PAIR_NR_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} moa_pair_stats SEC(".maps");

static __always_inline void pair_count(__u32 counter)
{
	__u64 *c = bpf_map_lookup_elem(&moa_pair_stats, &counter);

	if (c)
		*c += 1;
}

#endif /* MOA_PAIR_H */
