/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * delay.h - a stage's latency and jitter: the delay added after its capacity stage (edt.h).
 *
 * The delay is latency plus a uniform sample in [-jitter, +jitter], clamped at 0 (the rules
 * keep jitter <= latency, so the clamp only guards the arithmetic). The sample is drawn here,
 * before the stage lock is taken (no helper calls while a bpf_spin_lock is held), and only when
 * the stage has jitter.
 */
#ifndef MOA_DELAY_H
#define MOA_DELAY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"

static __always_inline __u64 moa_delay_ns(const struct moa_stage_params *p)
{
	__u64 lat = p->latency_ns, jit = p->jitter_ns, r, off;

	if (!jit)
		return lat;
	r = ((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32();
	off = r % (2 * jit + 1);	/* 0 .. 2 * jitter */
	return lat + off > jit ? lat + off - jit : 0;
}

#endif /* MOA_DELAY_H */
