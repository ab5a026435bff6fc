/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * chain.h - a correlated yes/no per packet: netem's reorder and duplicate with a correlation
 * (docs/semantics.md, "Reordering (netem's reorder)" and "Duplication").
 *
 * netem mixes each new uniform draw with the previous one (its `get_crandom`), which pulls the
 * share of yes away from the configured P as the correlation grows. Here the state is the last
 * decision itself: yes with after_yes after a yes, with after_no after a no (struct moa_chain,
 * set by userspace to P + rho (1 - P) and P (1 - rho)). That chain's stationary share of yes is
 * exactly P and the correlation of two successive decisions exactly rho (the same chain as
 * correlated loss, docs/semantics.md "Loss"). Without a correlation both are P: independent.
 *
 * The uniform draw is made before the stage lock; the state (one byte of moa_stage_state) is
 * read under it and written only when the packet passes (edt.h), so every CPU steps one chain.
 */
#ifndef MOA_CHAIN_H
#define MOA_CHAIN_H

#include <linux/bpf.h>
#include "abi.h"
#include "loss.h"

/* The decision for uniform draw r after the decision `prev` (0 or 1). */
static __always_inline int moa_chain_pick(const struct moa_chain *c, __u8 prev, __u32 r)
{
	return moa_chance(r, prev ? c->after_yes : c->after_no);
}

#endif /* MOA_CHAIN_H */
