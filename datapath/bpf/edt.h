/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * edt.h - one stage of one link: loss, queue, Earliest Departure Time timeline, delay.
 *
 * Order (docs/architecture.md): loss -> queue (tail drop) -> timeline (capacity) -> latency
 * and jitter (+ the ingress stage's handover delay on egress) -> departure clamped to the
 * link's last departure unless MOA_F_REORDER -> horizon -> AQM (aqm.h: CoDel on the sojourn
 * the placement gave, locked path only; a drop leaves the timeline as it was). A trace link
 * (trace.h, locked path only) places the packet on its trace's opportunities instead of
 * serialising it at rate_bps.
 *
 * The timeline of a stage is two words shared by every CPU (struct moa_stage_state): t_last,
 * the end of serialisation of the last accepted packet, and t_depart, the latest departure
 * handed out. Invariant: every change of either word is atomic against every other, so no
 * accepted packet's update of t_last is lost and, without MOA_F_REORDER, departures strictly
 * increase. Fast path (all but Gilbert-Elliott): cmpxchg t_depart up first, then cmpxchg the
 * commit of t_last, at most MOA_FAST_TRIES attempts. Locked path (Gilbert-Elliott, fallback):
 * under the stage lock, own both words by xchg(word, MOA_OWNED), then store the results.
 * Why this is correct, the memory order it needs and what it costs: docs/timeline.md.
 */
#ifndef MOA_EDT_H
#define MOA_EDT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"
#include "config.h"
#include "loss.h"
#include "charge.h"
#include "aqm.h"
#include "maps.h"
#include "trace.h"

/* t_last / t_depart while a locked step owns them: never a time (2^64 ns is 584 years). */
#define MOA_OWNED (~0ULL)

/* Fast-path attempts before a packet takes the locked path (each failure means another step
 * changed the word, so under contention the link is making progress regardless). */
#define MOA_FAST_TRIES 4

#define MOA_READ_ONCE(x) (*(volatile __typeof__(x) *)&(x))
#define MOA_WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))

/* What one packet gets from the stage. */
struct moa_step {
	__u64 now;		/* in: bpf_ktime_get_ns() */
	__u64 ser_ns;		/* in: serialisation time at rate_bps (0 without rate) */
	__u64 delay_ns;		/* in: latency + jitter sample + handover, added after capacity */
	int lost;		/* in: Bernoulli decision (made outside the lock) */
	int can_mark;		/* in: ECN on and the inner packet ECN-capable (aqm.h) */
	__u32 aqm_rand;		/* in: PIE's uniform draw (made outside the lock) */
	__u32 trace_bytes;	/* in: with MOA_F_TRACE, what the trace is charged (trace.h) */
	__u32 idx;		/* in: with MOA_F_TRACE, the stage's index in moa_state */
	__u64 departure;	/* out: when the packet may leave (monotonic ns) */
	__u64 sojourn;		/* out: start of its serialisation - now (0 without a rate) */
	__u8 drop;		/* out: 1 = drop for `reason` */
	__u8 reason;		/* out: enum moa_drop_reason */
	__u8 emit;		/* out: within the event budget: report the drop */
	__u8 mark;		/* out: the AQM marked it: set CE */
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

/*
 * Where the packet goes on a timeline whose words read tl (t_last, used with a rate) and td
 * (t_depart): tail drop -> capacity -> delay -> strictly after the last departure -> horizon.
 * Both paths call it with the values they hold; it writes nothing shared, so a drop (1,
 * s->reason set) leaves the timeline as it was. 0: *t_new and *dep are the packet's.
 */
static __always_inline int moa_timeline_place(const struct moa_stage_params *p,
					      struct moa_step *s, __u64 tl, __u64 td,
					      __u64 *t_new, __u64 *dep)
{
	__u64 now = s->now;

	if (p->rate_bps) {
		__u64 start = tl > now ? tl : now;

		/*
		 * Tail drop: the backlog ahead of it plus itself would exceed the queue. A packet
		 * that finds the queue empty is always taken, as an idle port always takes the
		 * frame it starts sending: a GRO/GSO packet is many frames judged at once, and one
		 * larger than the whole queue (64 KiB into a 2 ms LAN port queue at 50 Mbit/s)
		 * would otherwise never pass - TCP through such a link collapsed in the VM tier.
		 */
		if (p->queue_ns && start > now && (start - now) + s->ser_ns > p->queue_ns) {
			s->reason = MOA_DROP_QUEUE;
			return 1;
		}
		*t_new = start + s->ser_ns;
		*dep = *t_new + s->delay_ns;
		s->sojourn = start - now;	/* the last placement is the one committed */
	} else {
		*dep = now + s->delay_ns;
	}

	/*
	 * fq orders a flow by tstamp: a departure before the last one would overtake it. Equal
	 * tstamps leave in the order the packets reach fq, which two CPUs can swap after leaving
	 * this step (seen in the VM around a run-time parameter change, when CPUs briefly use
	 * old and new parameters): a departure is strictly after the last one.
	 */
	if (!(p->flags & MOA_F_REORDER) && *dep <= td)
		*dep = td + 1;

	if (*dep - now > horizon_ns) {
		s->reason = MOA_DROP_HORIZON;
		return 1;
	}
	return 0;
}

/* Outcome of the fast path. */
enum moa_fast {
	MOA_FAST_PASS,		/* s->departure is set: the packet leaves */
	MOA_FAST_DROP,		/* s->reason is set: the packet is dropped, nothing written */
	MOA_FAST_LOCKED,	/* contention or a locked step in progress: take the locked path */
};

/* The fast path: the timeline by cmpxchg, no lock (see the top of this file). */
static __always_inline enum moa_fast moa_step_fast(struct moa_stage_state *st,
						   const struct moa_stage_params *p,
						   struct moa_step *s)
{
	__u64 tl = 0, td, t_new = 0, dep = 0, seen;
	int i;

	if (p->rate_bps)
		tl = MOA_READ_ONCE(st->t_last);
#pragma unroll
	for (i = 0; i < MOA_FAST_TRIES; i++) {
		td = MOA_READ_ONCE(st->t_depart);
		if (tl == MOA_OWNED || td == MOA_OWNED)
			return MOA_FAST_LOCKED;
		if (moa_timeline_place(p, s, tl, td, &t_new, &dep))
			return MOA_FAST_DROP;

		/* 1. t_depart first, so that whoever takes t_last after our commit sees dep. */
		seen = __sync_val_compare_and_swap(&st->t_depart, td, dep > td ? dep : td);
		if (seen != td) {
			if (p->rate_bps)
				tl = MOA_READ_ONCE(st->t_last);
			continue;
		}
		/* 2. t_last: the commit. On failure dep stays in t_depart as a phantom. */
		if (p->rate_bps) {
			seen = __sync_val_compare_and_swap(&st->t_last, tl, t_new);
			if (seen != tl) {
				tl = seen;
				continue;
			}
		}
		s->departure = dep;
		return MOA_FAST_PASS;
	}
	return MOA_FAST_LOCKED;
}

/* The locked path: owns both words by xchg under the lock (see the top of this file). */
static __always_inline void moa_step_locked(struct moa_stage_state *st,
					    const struct moa_stage_params *p,
					    const struct moa_draws *d, struct moa_step *s,
					    const struct moa_trace *tr)
{
	__u64 tl = 0, td, t_new = 0, dep = 0, start, tail;
	struct moa_trace_pos pos = {};
	int traced = 0;

	bpf_spin_lock(&st->lock);

	if (p->loss_model == MOA_LOSS_GILBERT_ELLIOTT)
		s->lost = moa_ge_step(&st->ge_bad, &p->ge, d);
	if (s->lost) {
		s->reason = MOA_DROP_LOSS;
		goto drop;
	}

	/* Both words are taken before anything is decided (in either order: the model check
	 * passes both). A fast attempt that committed t_last before we took it had raised
	 * t_depart before that, so td holds its departure. */
	td = __sync_lock_test_and_set(&st->t_depart, MOA_OWNED);
	if (td == MOA_OWNED)	/* only userspace can have written it: no departure yet */
		td = 0;
	if (p->rate_bps) {
		tl = __sync_lock_test_and_set(&st->t_last, MOA_OWNED);
		if (tl == MOA_OWNED)
			tl = 0;
	}
	start = tl > s->now ? tl : s->now;
	tail = tl;
	if (tr) {
		/* trace.h: the opportunity of the last byte stands for the end of serialisation
		 * (a trace link's queue_ns is 0, its limit trace_queue is in bytes); delay, order
		 * and horizon as for any link. Only in moa_trace_stage: inlined, tr is NULL. */
		if (moa_trace_place(tr, p, st, s->now, s->trace_bytes, &pos, &start, &tail)) {
			s->reason = MOA_DROP_QUEUE;
			goto restore;
		}
		s->ser_ns = 0;
		traced = 1;
	}
	if (moa_timeline_place(p, s, tail, td, &t_new, &dep))
		goto restore;
	if (traced)
		s->sojourn = start - s->now;
	if (p->aqm != MOA_AQM_TAILDROP && p->rate_bps) {
		int v = moa_aqm(&st->aqm, p, s->now, start, s->aqm_rand, s->can_mark);

		if (v == MOA_AQM_DROP) {
			s->reason = MOA_DROP_AQM;
			goto restore;
		}
		s->mark = v == MOA_AQM_MARK;
	}

	/* Stores, not atomics: no one else writes a word that reads MOA_OWNED. t_depart first,
	 * so that a fast attempt reading the new t_last does not find t_depart still owned. */
	MOA_WRITE_ONCE(st->t_depart, dep > td ? dep : td);
	if (p->rate_bps)
		MOA_WRITE_ONCE(st->t_last, t_new);
	if (traced) {
		st->trace_origin = pos.origin;
		st->trace_idx = pos.idx;
		st->trace_left = pos.left;
		st->trace_key = p->trace_key;
	}
	s->departure = dep;
	bpf_spin_unlock(&st->lock);
	return;

restore:
	MOA_WRITE_ONCE(st->t_depart, td);
	if (p->rate_bps)
		MOA_WRITE_ONCE(st->t_last, tl);
drop:
	s->drop = 1;
	moa_event_budget(st, s);
	bpf_spin_unlock(&st->lock);
}

/*
 * A trace link's step (trace.h): the locked path with the trace, as a global function. The
 * verifier checks a global function once, on its own, rather than once for every way the
 * classifier reaches it: inline, the trace's placement multiplied the program's verification
 * forty-fold (docs/architecture.md, "The classifier"). Its pointers are plain memory to it,
 * so it looks the stage's state up itself (the lock must be in a map value). A missing trace
 * (never: userspace writes it before the link) leaves the packet unshaped.
 */
__noinline int moa_trace_stage(const struct moa_stage_params *p, const struct moa_draws *d,
			       struct moa_step *s)
{
	const struct moa_trace *tr;
	struct moa_stage_state *st;
	__u32 idx, key;

	if (!p || !d || !s)
		return 0;
	idx = s->idx;
	key = p->trace_key;
	st = bpf_map_lookup_elem(&moa_state, &idx);
	tr = bpf_map_lookup_elem(&moa_trace, &key);
	if (!st || !tr) {
		s->departure = s->now + s->delay_ns;
		return 0;
	}
	moa_step_locked(st, p, d, s, tr);
	return 0;
}

static __always_inline void moa_stage_step(struct moa_stage_state *st,
					   const struct moa_stage_params *p,
					   const struct moa_draws *d, struct moa_step *s)
{
	/* Gilbert-Elliott, the AQM and a trace keep state beside the timeline: the locked path. */
	if (p->loss_model != MOA_LOSS_GILBERT_ELLIOTT && p->aqm == MOA_AQM_TAILDROP &&
	    !(p->flags & MOA_F_TRACE)) {
		enum moa_fast r = s->lost ? MOA_FAST_DROP : moa_step_fast(st, p, s);

		if (r == MOA_FAST_PASS)
			return;
		if (r == MOA_FAST_DROP) {
			if (s->lost)
				s->reason = MOA_DROP_LOSS;
			s->drop = 1;
			bpf_spin_lock(&st->lock);	/* the drop-event budget only */
			moa_event_budget(st, s);
			bpf_spin_unlock(&st->lock);
			return;
		}
	}
	if (p->flags & MOA_F_TRACE)
		moa_trace_stage(p, d, s);
	else
		moa_step_locked(st, p, d, s, NULL);
}

#endif /* MOA_EDT_H */
