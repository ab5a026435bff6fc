/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * config.h - load-time settings of the classifier.
 *
 * `const volatile` globals live in .rodata: userspace writes them through their BTF offsets
 * before load (datapath/classifier.py, ClassifierConfig), after which the verifier treats them
 * as constants, so a disabled feature costs nothing on the hot path.
 */
#ifndef MOA_CONFIG_H
#define MOA_CONFIG_H

#include <linux/types.h>

/* UDP destination port that carries VXLAN (IANA 4789). */
const volatile __u32 vxlan_port = 4789;

/*
 * Bits of skb->mark that carry the ingress stage's port delay to the egress stage
 * (handover.h). 0 disables the handover.
 */
const volatile __u32 mark_mask = 0xffff0000;

/*
 * The bit of skb->mark a duplicated packet's copy carries back into the uplink's egress, so
 * that the classifier passes it untouched instead of classifying it again (duplicate.h). One
 * bit outside mark_mask (checked at load); 0 disables duplication.
 */
const volatile __u32 dup_mark = 0x00008000;

/*
 * A departure further ahead of now than this is dropped (MOA_DROP_HORIZON) rather than handed
 * to sch_fq, whose own horizon (moa sets the same, rounded up to fq's µs) would drop it
 * silently. A service sets the box's horizon here (moa serve --horizon, 30 s by default, raised
 * at start to what the box holds) and refuses a link that could go beyond it
 * (datapath/limits.py); 10 s is fq's default, for a classifier loaded without it.
 */
const volatile __u64 horizon_ns = 10ULL * 1000 * 1000 * 1000;

/* Drop events per link stage and window (events.h): a flood of drops cannot swamp the ring. */
const volatile __u32 event_budget = 64;
const volatile __u64 event_window_ns = 100ULL * 1000 * 1000;

#endif /* MOA_CONFIG_H */
