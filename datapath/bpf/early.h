/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * early.h - netem's reorder: some packets skip the delay and so overtake the delayed ones
 * (docs/semantics.md, "Reordering (netem's reorder)").
 *
 * netem's rule, with its gap G (early_gap; 1 when none is given): a packet is a candidate once
 * G - 1 packets were delayed since the last early one, and a candidate goes early with the
 * reorder probability (a correlated decision, chain.h). A candidate that is delayed keeps the
 * next packet a candidate, so with P = 1 exactly every G-th packet goes early and with P < 1 the
 * share early is P / (1 + (G - 1) P). The count of delayed packets and the last decision are
 * stage state under the stage lock (the locked path, edt.h), and change only when the packet
 * passes: a dropped packet is neither early nor delayed, as in netem, where a packet dropped
 * before its queue never reaches the counter.
 *
 * An early packet keeps everything but the delay: it is charged its serialisation on the
 * timeline like any other packet (the queue ahead of it included, so it overtakes only the
 * packets still in their delay: the link's capacity is never exceeded), gets no latency and no
 * jitter, and is not held behind the last departure (MOA_F_REORDER or not). sch_fq orders a
 * flow's packets by their departure, so the early one leaves first.
 */
#ifndef MOA_EARLY_H
#define MOA_EARLY_H

#include <linux/bpf.h>
#include "abi.h"
#include "chain.h"

/* Under st->lock: does this packet go early? r: its uniform draw (made before the lock). */
static __always_inline int moa_early_pick(const struct moa_stage_state *st,
					  const struct moa_stage_params *p, __u32 r)
{
	if (st->early_count + 1 < p->early_gap)	/* inside the gap: delayed, no decision */
		return 0;
	return moa_chain_pick(&p->early, st->early_prev, r);
}

/* Under st->lock, once the packet passed: the count and the chain move on. */
static __always_inline void moa_early_commit(struct moa_stage_state *st,
					     const struct moa_stage_params *p, int early)
{
	if (early) {
		st->early_count = 0;
		st->early_prev = 1;
		return;
	}
	if (st->early_count + 1 >= p->early_gap)	/* a candidate that was delayed */
		st->early_prev = 0;
	if (st->early_count < p->early_gap)	/* saturates: a candidate stays one */
		st->early_count++;
}

#endif /* MOA_EARLY_H */
