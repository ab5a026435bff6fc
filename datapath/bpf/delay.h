/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * delay.h - a stage's latency and jitter: the delay added after its capacity stage (edt.h).
 *
 * Uniform jitter without correlation (the default) is a uniform sample in [-jitter, +jitter]
 * drawn from 64 random bits. Otherwise the draw is a quantile index q in 0 .. MOA_DIST_SIZE - 1
 * and the delay latency + jitter * table[q] / MOA_DIST_SCALE (uniform: q's share of the range,
 * refined within it by further random bits). Either way the delay is clamped at 0.
 *
 * Correlation keeps the configured distribution (docs/semantics.md, "Delay distributions"): a
 * latent standard normal z follows z' = rho z + sqrt(1 - rho^2) e with e a normal draw (the
 * normal table), so z' is normal whatever rho is; q is z' through the normal CDF (moa_dist_cdf),
 * hence uniform, and table[q] has the table's distribution. Userspace picks rho so that the
 * delays, not z, have the configured lag-1 correlation. z lives in the stage state; two CPUs
 * drawing at once may both start from the same z, which changes the chain a little and never
 * the marginal (each z' is still normal).
 *
 * Random numbers are drawn here, before the stage lock is taken (no helper calls while a
 * bpf_spin_lock is held), and only when the stage has jitter.
 */
#ifndef MOA_DELAY_H
#define MOA_DELAY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"
#include "maps.h"

#define MOA_DIST_MASK (MOA_DIST_SIZE - 1)

/* The quantile index of a correlated draw: the latent chain one step on, through the CDF. */
static __always_inline __u32 moa_correlated_quantile(const struct moa_stage_params *p,
						     struct moa_stage_state *st, __u32 r)
{
	const struct moa_dist_table *normal;
	const struct moa_dist_cdf *cdf;
	__u32 key = MOA_DIST_NORMAL, zero = 0, idx;
	__s64 z, e, j;

	normal = bpf_map_lookup_elem(&moa_dist, &key);
	cdf = bpf_map_lookup_elem(&moa_dist_cdf, &zero);
	if (!normal || !cdf)
		return r & MOA_DIST_MASK;
	e = normal->v[r & MOA_DIST_MASK];
	z = *(volatile __s64 *)&st->delay_z;
	z = ((__s64)p->delay_rho * z + (__s64)p->delay_innov * e) >> 16;
	*(volatile __s64 *)&st->delay_z = z;
	j = (z >> 2) + MOA_CDF_SIZE / 2;	/* z / MOA_DIST_SCALE * 2048 */
	if (j < 0)
		j = 0;
	if (j > MOA_CDF_SIZE - 1)
		j = MOA_CDF_SIZE - 1;
	/* Bound the index where it is used: clang folds the clamp into the pointer otherwise, and
	 * the verifier then sees an offset that may be negative. */
	idx = (__u32)j;
	asm volatile("" : "+r"(idx));
	idx &= MOA_CDF_SIZE - 1;
	return cdf->u[idx] & MOA_DIST_MASK;
}

static __always_inline __u64 moa_delay_ns(const struct moa_stage_params *p,
					  struct moa_stage_state *st)
{
	__u64 lat = p->latency_ns, jit = p->jitter_ns, r, off, span;
	const struct moa_dist_table *tab;
	__u32 q, key;
	__s16 t;

	if (!jit)
		return lat;
	r = ((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32();
	if (p->dist == MOA_DIST_UNIFORM && !p->delay_innov) {
		off = r % (2 * jit + 1);	/* 0 .. 2 * jitter */
		return lat + off > jit ? lat + off - jit : 0;
	}
	q = p->delay_innov ? moa_correlated_quantile(p, st, (__u32)r) : (__u32)r & MOA_DIST_MASK;
	if (p->dist == MOA_DIST_UNIFORM) {
		/* q's share of 0 .. 2 * jitter, plus a uniform offset within it (12 more bits) */
		span = 2 * jit + 1;
		off = ((__u64)q * span + ((((r >> 32) & MOA_DIST_MASK) * span) >> 12)) >> 12;
		return lat + off > jit ? lat + off - jit : 0;
	}
	if (p->dist == MOA_DIST_CUSTOM) {
		key = p->dist_key;
		tab = bpf_map_lookup_elem(&moa_dist_custom, &key);
		/* Keeps the two lookups two call sites: merged, the map would be a register
		 * and the verifier would no longer inline the built-in tables' array lookup
		 * (+10 ns). */
		asm volatile("" : "+r"(tab));
	} else {
		key = p->dist;
		tab = bpf_map_lookup_elem(&moa_dist, &key);
	}
	if (!tab)
		return lat;
	t = tab->v[q & MOA_DIST_MASK];
	/* jitter * t / MOA_DIST_SCALE without a signed division (BPF before v4 has none) */
	if (t < 0) {
		off = (jit * (__u64)(-(__s32)t)) / MOA_DIST_SCALE;
		return lat > off ? lat - off : 0;
	}
	return lat + (jit * (__u64)t) / MOA_DIST_SCALE;
}

#endif /* MOA_DELAY_H */
