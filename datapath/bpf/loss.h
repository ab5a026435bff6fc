/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * loss.h - random loss: Bernoulli and Gilbert-Elliott.
 *
 * Probabilities are thresholds over 2^32 (abi.h): a uniform 32-bit random number r drops when
 * (u64)r < threshold, so 0 never drops and 2^32 always does. Random numbers are drawn before
 * the stage lock is taken (no helper calls while a bpf_spin_lock is held); the Gilbert-Elliott
 * state transition, which reads and writes shared state, happens under it (edt.h).
 *
 * A GSO packet is one skb: it is lost or kept as a whole (every frame with the same fate), so
 * the expected frame loss is the configured probability, with losses clustered per skb.
 */
#ifndef MOA_LOSS_H
#define MOA_LOSS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"

/* Random numbers one packet's loss needs, drawn outside the lock; zero when not needed. */
struct moa_draws {
	__u32 loss;	/* loss decision */
	__u32 ge;	/* Gilbert-Elliott state transition */
};

static __always_inline int moa_chance(__u32 r, __u64 threshold)
{
	return (__u64)r < threshold;
}

static __always_inline void moa_draw(const struct moa_stage_params *p, struct moa_draws *d)
{
	d->loss = 0;
	d->ge = 0;
	if (p->loss_model != MOA_LOSS_NONE)
		d->loss = bpf_get_prandom_u32();
	if (p->loss_model == MOA_LOSS_GILBERT_ELLIOTT)
		d->ge = bpf_get_prandom_u32();
}

/* Bernoulli: decided without shared state. */
static __always_inline int moa_bernoulli_lost(const struct moa_stage_params *p,
					      const struct moa_draws *d)
{
	return p->loss_model == MOA_LOSS_BERNOULLI && moa_chance(d->loss, p->loss_threshold);
}

/*
 * Gilbert-Elliott, under the stage lock: the packet is lost with the loss probability of the
 * current state, then the state moves (good -> bad with p_good_to_bad, bad -> good with
 * p_bad_to_good). Stationary share of bad: p / (p + r); mean loss
 * (r * loss_good + p * loss_bad) / (p + r).
 */
static __always_inline int moa_ge_step(__u32 *bad, const struct moa_gilbert_elliott *ge,
				       const struct moa_draws *d)
{
	int lost;

	if (*bad) {
		lost = moa_chance(d->loss, ge->loss_bad);
		if (moa_chance(d->ge, ge->p_bad_to_good))
			*bad = 0;
	} else {
		lost = moa_chance(d->loss, ge->loss_good);
		if (moa_chance(d->ge, ge->p_good_to_bad))
			*bad = 1;
	}
	return lost;
}

#endif /* MOA_LOSS_H */
