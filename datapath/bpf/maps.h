/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * maps.h - the classifier's maps (docs/architecture.md). Sizes here are defaults: userspace
 * sets max_entries before load (moa_links = max links, moa_state/moa_counters = 2x,
 * moa_events = ring buffer bytes).
 */
#ifndef MOA_MAPS_H
#define MOA_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"

#define MOA_DEFAULT_LINKS 65536

/* VNI -> parameters of both stages and the link's slot. Written by userspace only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOA_DEFAULT_LINKS);
	__type(key, __u32);
	__type(value, struct moa_link);
} moa_links SEC(".maps");

/* Timeline per link stage, index slot * MOA_NR_STAGES + stage. BPF-owned after userspace
 * zeroes it when it hands the slot out. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MOA_DEFAULT_LINKS * MOA_NR_STAGES);
	__type(key, __u32);
	__type(value, struct moa_stage_state);
} moa_state SEC(".maps");

/* Per-CPU counters per link stage, same index as moa_state. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MOA_DEFAULT_LINKS * MOA_NR_STAGES);
	__type(key, __u32);
	__type(value, struct moa_link_counters);
} moa_counters SEC(".maps");

/* Per-CPU global counters, one entry. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct moa_global_counters);
} moa_global SEC(".maps");

/* The box's record (struct moa_box), one entry; userspace only, no program reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct moa_box);
} moa_box SEC(".maps");

/* VXLAN ports besides vxlan_port (struct moa_port_set), one entry; userspace writes it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct moa_port_set);
} moa_vxlan_ports SEC(".maps");

/* The uplink's (or its slaves') root qdisc tree before sch_fq (struct moa_saved_qdiscs), by
 * device name; userspace only, allocated when written. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, char[16]);
	__type(value, struct moa_saved_qdiscs);
} moa_saved_qdiscs SEC(".maps");

/* The jitter's distribution tables (struct moa_dist_table), by enum moa_dist; userspace writes
 * them at load (datapath/distributions.py). Entry MOA_DIST_UNIFORM stays unused. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MOA_DIST_CUSTOM);	/* the built-in ones */
	__type(key, __u32);
	__type(value, struct moa_dist_table);
} moa_dist SEC(".maps");

/* Custom tables (struct moa_dist_table) by content key (stage_params.dist_key): userspace writes
 * one before the first link that uses it and removes it when no link does
 * (datapath/classifier.py). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOA_DIST_CUSTOM_MAX);
	__type(key, __u32);
	__type(value, struct moa_dist_table);
} moa_dist_custom SEC(".maps");

/* The normal CDF as quantile indexes (struct moa_dist_cdf), one entry; userspace writes it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct moa_dist_cdf);
} moa_dist_cdf SEC(".maps");

/* Drop events (struct moa_drop_event). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} moa_events SEC(".maps");

static __always_inline struct moa_global_counters *moa_global_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&moa_global, &zero);
}

#endif /* MOA_MAPS_H */
