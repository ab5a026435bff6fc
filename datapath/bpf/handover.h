/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * handover.h - the ingress stage tells the egress stage how long the packet waits in the
 * sending LAN member's emulated port.
 *
 * Encoding in skb->mark under mark_mask (config.h; contiguous bits, default 0xffff0000):
 *   field = round(delay_ns / 1024), saturated at the field's maximum; field 0 = no handover.
 * The unit is 1.024 us (a shift instead of a division); a 16-bit field reaches 67.1 ms, a
 * longer port delay saturates there. The egress stage adds field * 1024 ns to the departure
 * after its own capacity stage, clears the bits, and counts moa_global_counters.handover.
 * skb->mark survives VXLAN decapsulation, bridging and encapsulation within one network
 * namespace (skb_scrub_packet keeps it unless the packet crosses namespaces). Where the wait is
 * turned into a departure on a box with sch_fq: port.h.
 *
 * The wait itself (moa_port_wait) is cut-through: the frame is handed on when its transmission
 * on the sender's port begins, so it waits for the frames ahead of it and a frame finding its
 * port idle carries no handover at all.
 *
 * Phase. A flooding sender's port is always busy, so its frames reach the shared queue exactly
 * one serialisation time apart, and the shared queue, full, frees room exactly as often: the
 * two timelines lock at a fixed phase, and whoever arrives inside the window that phase leaves
 * after each freed slot wins every slot (Floyd and Jacobson, "On traffic phase effects in
 * packet-switched gateways", 1992: drop-tail with deterministic timing). In the VM the slower
 * sender kept 0.14-0.17 of C in one phase and 0.28-0.30 in another. Real ports are not that
 * exact (clock drift, frame sizes, interrupt timing), so a frame that waited at its port is
 * handed on at a uniformly random point of its own transmission: its start plus U [0, 1) of
 * its serialisation time. Within the frame's own transmission, it can neither overtake the
 * frame before it (which had left by the start) nor change the port's rate (the port's
 * timeline is untouched); it costs half a frame time of delay on average, only to frames
 * that queued.
 */
#ifndef MOA_HANDOVER_H
#define MOA_HANDOVER_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "config.h"

#define MOA_HANDOVER_SHIFT 10	/* unit: 1024 ns */

/* Egress: the handover delay in ns (0 = none); clears the mark bits it read. */
static __always_inline __u64 moa_handover_take(struct __sk_buff *skb)
{
	__u32 mask = mark_mask, mark = skb->mark;

	if (!(mark & mask))
		return 0;
	skb->mark = mark & ~mask;
	return (__u64)((mark & mask) / (mask & -mask)) << MOA_HANDOVER_SHIFT;
}

/* Ingress: write the port delay (ns) into the mark bits, replacing what was there. */
static __always_inline void moa_handover_put(struct __sk_buff *skb, __u64 delay_ns)
{
	__u32 mask = mark_mask, low, max;
	__u64 units;

	if (!mask)
		return;
	low = mask & -mask;
	max = mask / low;
	units = (delay_ns + (1 << (MOA_HANDOVER_SHIFT - 1))) >> MOA_HANDOVER_SHIFT;
	if (units > max)
		units = max;
	skb->mark = (skb->mark & ~mask) | ((__u32)units * low);
}

/* Ingress stage: the wait handed on for a frame whose transmission on the sender's port starts
 * at `start` and takes `ser_ns` (cut-through, and the phase dither above); 0 = none. */
static __always_inline __u64 moa_port_wait(__u64 start, __u64 ser_ns, __u64 now)
{
	__u64 r, dither;

	if (start <= now)
		return 0;	/* the port was idle: on at once, nothing to hold */
	r = bpf_get_prandom_u32();
	dither = ser_ns < (1ULL << 32) ? (ser_ns * r) >> 32 : (ser_ns >> 32) * r;
	return start - now + dither;
}

#endif /* MOA_HANDOVER_H */
