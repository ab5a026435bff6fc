/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * slot.h - departures released in slots (netem's `slot`; docs/semantics.md, "Slots").
 *
 * A slotted stage keeps, beside its timeline, when its current slot opens (slot_next) and the
 * frames and bytes released in it so far. A packet's departure d (after capacity and delay,
 * before the ordering clamp and the horizon: edt.h) is moved onto a slot:
 *
 *   1. the current slot cannot take it (it already released something, and this packet's
 *      frames or bytes would pass slot_packets or slot_bytes): the next slot opens one gap
 *      after the current one opened;
 *   2. the packet is not ready when the slot opens (d > slot_next): a slot opens one gap after
 *      it is ready, d + gap (a link that was idle waits a gap for its next opportunity, as
 *      netem's dequeue re-anchors a slot the head packet was not due for);
 *   3. it leaves when the slot opens, and counts against the slot.
 *
 * The ordering clamp after it then spreads a slot's packets 1 ns apart (the slot's k-th packet
 * leaves at slot_next + k), so departures still strictly increase without MOA_F_REORDER.
 * A packet larger than a whole slot takes one slot alone.
 *
 * The gaps are random: both are drawn before the stage lock (moa_slot_draw: no helper calls
 * while a bpf_spin_lock is held) and at most one of each is used. The slot's words change
 * under the lock only, and only with a packet that passes (a horizon or AQM drop leaves them
 * as they were), so a slotted stage always takes the locked path (edt.h).
 */
#ifndef MOA_SLOT_H
#define MOA_SLOT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"
#include "maps.h"

/* The slot's words of a stage, copied under the lock and written back when the packet passes. */
struct moa_slot {
	__u64 next;	/* when the slot opens */
	__u32 pkts;	/* frames released in it */
	__u32 used;	/* their bytes */
};

/* One gap between slot openings: uniform in [gap, gap + span], or gap + span * a table value
 * (in 1/MOA_DIST_SCALE, as the delay's jitter: delay.h), clamped at 0. span < 2^32 (userspace
 * bounds the gaps), so the products fit 64 bits. */
static __always_inline __u64 moa_slot_gap(const struct moa_stage_params *p)
{
	const struct moa_dist_table *tab;
	__u32 r = bpf_get_prandom_u32(), key = p->slot_dist;
	__u64 span = p->slot_span_ns, off;
	__s16 t;

	if (key == MOA_DIST_UNIFORM)
		return p->slot_gap_ns + (((__u64)r * (span + 1)) >> 32);
	tab = bpf_map_lookup_elem(&moa_dist, &key);
	if (!tab)
		return p->slot_gap_ns;
	t = tab->v[r & (MOA_DIST_SIZE - 1)];
	if (t < 0) {
		off = (span * (__u64)(-(__s32)t)) / MOA_DIST_SCALE;
		return p->slot_gap_ns > off ? p->slot_gap_ns - off : 0;
	}
	return p->slot_gap_ns + (span * (__u64)t) / MOA_DIST_SCALE;
}

/* Under the lock: the departure `dep` moved onto the slot that releases it. */
static __always_inline __u64 moa_slot_place(const struct moa_stage_params *p, struct moa_slot *sl,
					    const __u64 gap[2], __u32 segs, __u32 bytes, __u64 dep)
{
	if (sl->pkts && ((__u64)sl->pkts + segs > p->slot_packets ||
			 (__u64)sl->used + bytes > p->slot_bytes)) {
		sl->next += gap[0];
		sl->pkts = 0;
		sl->used = 0;
	}
	if (dep > sl->next) {
		sl->next = dep + gap[1];
		sl->pkts = 0;
		sl->used = 0;
	}
	/* Without a limit (0xffffffff) the count may wrap, harmlessly: it is compared in 64 bits
	 * with a limit no 32-bit count passes. With one, it stays below limit + one packet. */
	sl->pkts += segs;
	sl->used += bytes;
	return sl->next;
}

#endif /* MOA_SLOT_H */
