/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * edt.h - one stage of one link: loss, queue, Earliest Departure Time timeline, delay.
 *
 * Order (docs/architecture.md): loss -> queue (tail drop) -> timeline (capacity) -> latency
 * and jitter (+ the ingress stage's handover delay on egress) -> departure clamped to the
 * link's last departure unless MOA_F_REORDER -> horizon.
 *
 * Why a spin lock. The timeline is a read-modify-write of several words: read t_last, judge the
 * backlog against the queue, advance t_last, and keep t_depart (jitter ordering), ge_bad and
 * the event budget consistent with it. Kernel selftest test_tc_edt.c and Cilium's edt.h update
 * t_last without synchronisation; with two CPUs sending on one link both read the same t_last,
 * both see the same backlog and both leave at the same time, so the link carries more than its
 * rate and the queue limit is exceeded. A single atomic (cmpxchg loop on t_last) would cover
 * t_last alone but not the queue decision together with t_depart and the Gilbert-Elliott
 * state, and BPF has no bounded retry loop worth having on the hot path. bpf_spin_lock in the
 * map value (struct moa_stage_state) makes the whole step atomic per link stage; contention is
 * per link, so links never serialise each other, and the critical section is a few
 * comparisons: the random numbers, the serialisation time (a division) and bpf_ktime_get_ns()
 * are computed before the lock is taken, since no helper may be called while it is held.
 * Tested: tests/test_classifier_edt.py::test_two_cpus_one_link (no lost update).
 *
 * Cost (docs/benchmarks.md): a hit with capacity is baseline + ~120 ns against a target of +40;
 * the lock and unlock are ~50 ns of it, bpf_ktime_get_ns ~33 ns, parse + lookup + counters ~33.
 * A lock-free timeline (t_last advanced by a bounded cmpxchg loop, needs -mcpu=v3; the queue
 * decision made against the t_last the cmpxchg validates; the lock kept for Gilbert-Elliott,
 * the jitter/handover ordering clamp on t_depart and the event budget) could save at most the
 * lock's ~50 ns on the plain capacity path and still leaves the clock read over the target.
 * Decision for now: the lock stays until such a variant is built and shown, with `moa bench
 * datapath` in the same run conditions, to be faster and to pass the two-CPU, spacing and
 * queue tests; a departure that ignores t_depart would let a latency lowered at run time or a
 * varying handover reorder a link's packets, so that clamp must stay exact in any variant.
 */
#ifndef MOA_EDT_H
#define MOA_EDT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"
#include "config.h"
#include "loss.h"

/* What one packet gets from the stage. */
struct moa_step {
	__u64 now;		/* in: bpf_ktime_get_ns() */
	__u64 ser_ns;		/* in: serialisation time at rate_bps (0 without rate) */
	__u64 delay_ns;		/* in: latency + jitter sample + handover, added after capacity */
	int lost;		/* in: Bernoulli decision (made outside the lock) */
	__u64 departure;	/* out: when the packet may leave (monotonic ns) */
	__u8 drop;		/* out: 1 = drop for `reason` */
	__u8 reason;		/* out: enum moa_drop_reason */
	__u8 emit;		/* out: within the event budget: report the drop */
};

/* Under st->lock. Decides the drop-event budget of a dropped packet. */
static __always_inline void moa_event_budget(struct moa_stage_state *st, struct moa_step *s)
{
	if (s->now - st->ev_window >= event_window_ns) {
		st->ev_window = s->now;
		st->ev_used = 0;
	}
	if (st->ev_used < event_budget) {
		st->ev_used++;
		s->emit = 1;
	}
}

static __always_inline void moa_stage_step(struct moa_stage_state *st,
					   const struct moa_stage_params *p,
					   const struct moa_draws *d, struct moa_step *s)
{
	__u64 now = s->now, t_new = 0, dep;

	bpf_spin_lock(&st->lock);

	if (p->loss_model == MOA_LOSS_GILBERT_ELLIOTT)
		s->lost = moa_ge_step(&st->ge_bad, &p->ge, d);
	if (s->lost) {
		s->reason = MOA_DROP_LOSS;
		goto drop;
	}

	if (p->rate_bps) {
		__u64 start = st->t_last > now ? st->t_last : now;

		/*
		 * Tail drop: the backlog ahead of it plus itself would exceed the queue. A packet
		 * that finds the queue empty is always taken, as an idle port always takes the
		 * frame it starts sending: a GRO/GSO packet is many frames judged at once, and one
		 * larger than the whole queue (64 KiB into a 2 ms LAN port queue at 50 Mbit/s)
		 * would otherwise never pass - TCP through such a link collapsed in the VM tier.
		 */
		if (p->queue_ns && start > now && (start - now) + s->ser_ns > p->queue_ns) {
			s->reason = MOA_DROP_QUEUE;
			goto drop;
		}
		t_new = start + s->ser_ns;
		dep = t_new + s->delay_ns;
	} else {
		dep = now + s->delay_ns;
	}

	/*
	 * fq orders a flow by tstamp: a departure before the last one would overtake it. Equal
	 * tstamps leave in the order the packets reach fq, which two CPUs can swap after leaving
	 * this lock (seen in the VM around a run-time parameter change, when CPUs briefly use
	 * old and new parameters): a departure is strictly after the last one.
	 */
	if (!(p->flags & MOA_F_REORDER) && dep <= st->t_depart)
		dep = st->t_depart + 1;

	/* Checked before anything is committed: a horizon drop leaves the timeline as it was. */
	if (dep - now > horizon_ns) {
		s->reason = MOA_DROP_HORIZON;
		goto drop;
	}

	if (p->rate_bps)
		st->t_last = t_new;
	if (dep > st->t_depart)
		st->t_depart = dep;
	s->departure = dep;
	bpf_spin_unlock(&st->lock);
	return;

drop:
	s->drop = 1;
	moa_event_budget(st, s);
	bpf_spin_unlock(&st->lock);
}

#endif /* MOA_EDT_H */
