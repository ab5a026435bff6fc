/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * edt.h - one stage of one link: loss, queue, Earliest Departure Time timeline, delay.
 *
 * Order (docs/architecture.md): loss -> queue (tail drop) -> timeline (capacity) -> latency
 * and jitter (+ the ingress stage's handover delay on egress) -> departure clamped to the
 * link's last departure unless MOA_F_REORDER -> horizon -> AQM (aqm.h: CoDel on the sojourn
 * the placement gave, locked path only; a drop leaves the timeline as it was). A slotted
 * stage (MOA_F_SLOT, slot.h) moves the departure onto its slot before the clamp, locked path
 * only.
 *
 * The timeline of a stage is two words shared by every CPU (struct moa_stage_state): t_last,
 * the end of serialisation of the last accepted packet, and t_depart, the latest departure
 * handed out. Invariant: every change of either word is atomic against every other, so no
 * accepted packet's update of t_last is lost and, without MOA_F_REORDER, departures strictly
 * increase. Fast path (all but Gilbert-Elliott): cmpxchg t_depart up first, then cmpxchg the
 * commit of t_last, at most MOA_FAST_TRIES attempts. Locked path (Gilbert-Elliott, fallback):
 * under the stage lock, own both words by xchg(word, MOA_OWNED), then store the results.
 * Why this is correct, the memory order it needs and what it costs: docs/timeline.md.
 *
 * netem's reorder and duplicate (MOA_F_EARLY, MOA_F_DUPLICATE) take the locked path: their
 * decisions read and move stage state (early.h, chain.h), and a duplicated packet is placed
 * twice, its copy right after it (duplicate.h).
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
#include "early.h"
#include "slot.h"

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
	__u32 early_r;		/* in: the reorder draw (MOA_F_EARLY; early.h) */
	__u32 dup_r;		/* in: the duplicate draw (dup_on; duplicate.h) */
	__u8 dup_on;		/* in: this stage duplicates (MOA_F_DUPLICATE, egress) */
	__u8 early;		/* out: it skipped the delay (early.h) */
	__u8 dup;		/* out: 1 = its copy passed, leaving at dup_departure; 2 = the copy
			 * was dropped for dup_reason */
	__u8 dup_reason;	/* out: enum moa_drop_reason of a dropped copy */
	__u64 dup_departure;	/* out: the copy's departure */
	__u32 slot_segs;	/* in, MOA_F_SLOT: the packet's frames */
	__u32 slot_bytes;	/* in, MOA_F_SLOT: and their bytes */
	__u64 slot_gap[2];	/* in, MOA_F_SLOT: two gaps drawn outside the lock (slot.h) */
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
					      __u64 *t_new, __u64 *dep, struct moa_slot *sl)
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

	/* A slotted stage's locked path (the others pass no sl: compiled out there). */
	if (sl)
		*dep = moa_slot_place(p, sl, s->slot_gap, s->slot_segs, s->slot_bytes, *dep);

	/*
	 * fq orders a flow by tstamp: a departure before the last one would overtake it. Equal
	 * tstamps leave in the order the packets reach fq, which two CPUs can swap after leaving
	 * this step (seen in the VM around a run-time parameter change, when CPUs briefly use
	 * old and new parameters): a departure is strictly after the last one.
	 */
	if (!(p->flags & MOA_F_REORDER) && *dep <= td && !s->early)
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
		if (moa_timeline_place(p, s, tl, td, &t_new, &dep, 0))
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

/* The stage's netem reorder and duplicate draws, before the lock (can_dup: the egress stage,
 * the only one that duplicates). */
static __always_inline void moa_netem_draw(const struct moa_stage_params *p, struct moa_step *s,
					   int can_dup)
{
	if (!(p->flags & (MOA_F_EARLY | MOA_F_DUPLICATE)))
		return;
	if (p->flags & MOA_F_EARLY)
		s->early_r = bpf_get_prandom_u32();
	if (can_dup && (p->flags & MOA_F_DUPLICATE)) {
		s->dup_on = 1;
		s->dup_r = bpf_get_prandom_u32();
	}
}

/*
 * The locked path: owns both words by xchg under the lock (see the top of this file). `slotted`
 * is a constant at each call: a slotted stage has a copy of its own, so the verifier walks the
 * slot's branches once instead of once per combination of flag tests. A slotted stage may
 * also reorder and duplicate: the copy is moved onto a slot as a frame of its own.
 */
static __always_inline void moa_step_locked(struct moa_stage_state *st,
					    const struct moa_stage_params *p,
					    const struct moa_draws *d, struct moa_step *s,
					    const int slotted)
{
	__u64 tl = 0, td, t_new = 0, dep = 0, t_copy = 0, dep_copy = 0, sojourn;
	struct moa_slot sl = {}, sl_orig;
	int dup = 0;

	bpf_spin_lock(&st->lock);

	if (p->loss_model == MOA_LOSS_GILBERT_ELLIOTT)
		s->lost = moa_ge_step(&st->ge_bad, &p->ge, d);
	if (s->lost) {
		s->reason = MOA_DROP_LOSS;
		goto drop;
	}
	if ((p->flags & MOA_F_EARLY) && moa_early_pick(st, p, s->early_r)) {
		s->early = 1;
		s->delay_ns = 0;
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
	if (slotted) {
		sl.next = st->slot_next;
		sl.pkts = st->slot_pkts;
		sl.used = st->slot_used;
	}
	if (moa_timeline_place(p, s, tl, td, &t_new, &dep, slotted ? &sl : 0))
		goto restore;
	if (p->aqm != MOA_AQM_TAILDROP && p->rate_bps) {
		int v = moa_aqm(&st->aqm, p, s->now, tl > s->now ? tl : s->now, s->aqm_rand,
				s->can_mark);

		if (v == MOA_AQM_DROP) {
			s->reason = MOA_DROP_AQM;
			goto restore;
		}
		s->mark = v == MOA_AQM_MARK;
	}

	/* The copy: right after the original on the timeline, with the original's delay. It
	 * meets the queue and the horizon as a frame of its own (not the AQM, which judged the
	 * pair by the original); a copy that does not fit is dropped alone. */
	if (s->dup_on && moa_chain_pick(&p->dup, st->dup_prev, s->dup_r)) {
		dup = 1;
		sojourn = s->sojourn;
		sl_orig = sl;	/* a dropped copy leaves the slot as its original left it */
		if (moa_timeline_place(p, s, p->rate_bps ? t_new : 0, dep > td ? dep : td,
				       &t_copy, &dep_copy, slotted ? &sl : 0)) {
			s->dup = 2;
			s->dup_reason = s->reason;
			if (slotted)
				sl = sl_orig;
		} else {
			s->dup = 1;
			s->dup_departure = dep_copy;
			if (p->rate_bps)
				t_new = t_copy;
			if (dep_copy > td)	/* t_depart takes the later of the two below */
				td = dep_copy;
		}
		s->sojourn = sojourn;
	}
	if (s->dup_on)
		st->dup_prev = dup;
	if (p->flags & MOA_F_EARLY)
		moa_early_commit(st, p, s->early);

	/* Stores, not atomics: no one else writes a word that reads MOA_OWNED. t_depart first,
	 * so that a fast attempt reading the new t_last does not find t_depart still owned. */
	MOA_WRITE_ONCE(st->t_depart, dep > td ? dep : td);
	if (p->rate_bps)
		MOA_WRITE_ONCE(st->t_last, t_new);
	if (slotted) {	/* under the lock, read by no one else */
		st->slot_next = sl.next;
		st->slot_pkts = sl.pkts;
		st->slot_used = sl.used;
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

static __always_inline void moa_stage_step(struct moa_stage_state *st,
					   const struct moa_stage_params *p,
					   const struct moa_draws *d, struct moa_step *s,
					   const struct moa_charge *c, const int may_slot)
{
	/* Slots keep state beside the timeline: the locked path, its gaps drawn before it. Only
	 * an egress stage is ever slotted (may_slot: a constant, so ingress has no slot code). */
	if (may_slot && (p->flags & MOA_F_SLOT)) {
		s->slot_segs = c->segs;
		s->slot_bytes = c->bytes;
		s->slot_gap[0] = moa_slot_gap(p);
		s->slot_gap[1] = moa_slot_gap(p);
		moa_step_locked(st, p, d, s, 1);
		return;
	}
	/* Gilbert-Elliott, the AQM and netem's reorder and duplicate keep state beside the
	 * timeline: the locked path. */
	if (p->loss_model != MOA_LOSS_GILBERT_ELLIOTT && p->aqm == MOA_AQM_TAILDROP &&
	    !(p->flags & (MOA_F_EARLY | MOA_F_DUPLICATE))) {
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
	moa_step_locked(st, p, d, s, 0);
}

#endif /* MOA_EDT_H */
