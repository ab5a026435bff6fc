/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * duplicate.h - netem's duplicate: a share of the packets sent twice (docs/semantics.md,
 * "Duplication").
 *
 * The egress stage decides under the stage lock (a correlated decision, chain.h) and places the
 * copy on the timeline right after the original (edt.h), so both are charged to the link. The
 * copy leaves through bpf_clone_redirect to the uplink's own egress with its own departure in
 * skb->tstamp; the original's departure is written after the clone. The clone passes the
 * uplink's tc egress again, where this classifier runs: it carries dup_mark (config.h) in
 * skb->mark, and a frame with that bit is passed as it is, the bit cleared, its departure kept
 * - classified once, counted once (its stage's `duplicated`, not `packets`).
 *
 * A GSO packet is duplicated whole, as it is lost whole (loss.h). The clone counts one level
 * of the kernel's transmit recursion. What survives the clone (the departure and its clock
 * type): docs/kernel-facts.md, "Duplication".
 */
#ifndef MOA_DUPLICATE_H
#define MOA_DUPLICATE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "config.h"
#include "tstamp.h"

/* Egress, before anything: a copy coming back from moa_send_copy? Clears the bit. */
static __always_inline int moa_is_copy(struct __sk_buff *skb)
{
	__u32 bit = dup_mark, mark;

	if (!bit)
		return 0;
	mark = skb->mark;
	if (!(mark & bit))
		return 0;
	skb->mark = mark & ~bit;
	return 1;
}

/* Send the copy of skb, leaving at `departure` (not before now). 1 when the clone was sent. */
static __always_inline int moa_send_copy(struct __sk_buff *skb, __u64 departure, __u64 now)
{
	__u32 bit = dup_mark;
	long err;

	if (!bit)
		return 0;
	if (departure > now)
		moa_set_departure(skb, departure);
	skb->mark |= bit;
	err = bpf_clone_redirect(skb, skb->ifindex, 0);
	skb->mark &= ~bit;
	return !err;
}

#endif /* MOA_DUPLICATE_H */
