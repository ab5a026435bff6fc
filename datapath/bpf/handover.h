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
 * namespace (skb_scrub_packet keeps it unless the packet crosses namespaces).
 */
#ifndef MOA_HANDOVER_H
#define MOA_HANDOVER_H

#include <linux/bpf.h>
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

#endif /* MOA_HANDOVER_H */
