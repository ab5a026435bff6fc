/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * classify.h - one packet through one stage: parse, look the VNI up, charge, decide.
 *
 * Hot path of a hit (docs/benchmarks.md): one hash lookup (moa_links), two array lookups the
 * verifier inlines (moa_counters, moa_state), bpf_ktime_get_ns, one division, two cmpxchg on
 * the stage's timeline (edt.h: the stage lock only for Gilbert-Elliott, drop events and
 * contention). No random number is drawn unless the link has loss or jitter, and a stage with
 * nothing configured touches neither the clock nor the timeline.
 */
#ifndef MOA_CLASSIFY_H
#define MOA_CLASSIFY_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"
#include "maps.h"
#include "parse.h"
#include "charge.h"
#include "loss.h"
#include "delay.h"
#include "edt.h"
#include "aqm.h"
#include "handover.h"
#include "tstamp.h"
#include "events.h"
#include "sojourn.h"
#include "corrupt.h"
#include "duplicate.h"

/* Does the stage need its shared state (timeline, delay ordering, Gilbert-Elliott, duplicate,
 * slots)? */
static __always_inline int moa_needs_state(const struct moa_stage_params *p, __u64 handover)
{
	return p->rate_bps || p->latency_ns || p->jitter_ns || handover ||
	       p->loss_model == MOA_LOSS_GILBERT_ELLIOTT ||
	       (p->flags & (MOA_F_DUPLICATE | MOA_F_SLOT));
}

static __always_inline int moa_classify(struct __sk_buff *skb, const enum moa_stage stage)
{
	const struct moa_stage_params *p;
	struct moa_global_counters *g;
	struct moa_link_counters *cnt;
	struct moa_stage_state *st;
	struct moa_step s = {};
	struct moa_link *link;
	struct moa_charge c;
	struct moa_draws d;
	struct moa_pkt pkt;
	__u64 handover = 0;
	__u32 idx;

	/* A duplicated packet's copy, back from moa_send_copy: classified already. */
	if (stage == MOA_STAGE_EGRESS && moa_is_copy(skb))
		return TC_ACT_OK;

	if (moa_parse(skb, &pkt) != MOA_PARSE_VXLAN) {
		g = moa_global_counters();
		if (g)
			g->non_vxlan++;
		return TC_ACT_OK;
	}

	link = bpf_map_lookup_elem(&moa_links, &pkt.vni);
	if (!link) {
		g = moa_global_counters();
		if (g)
			g->unknown_vni++;
		return TC_ACT_OK;
	}
	p = &link->stage[stage];
	idx = link->slot * MOA_NR_STAGES + stage;
	cnt = bpf_map_lookup_elem(&moa_counters, &idx);
	if (!cnt)	/* slot beyond the arrays: a userspace bug, never a reason to drop */
		return TC_ACT_OK;

	if (stage == MOA_STAGE_EGRESS) {
		handover = moa_handover_take(skb);
		if (handover) {
			cnt->handover++;
			g = moa_global_counters();
			if (g)
				g->handover++;
		}
	}
	moa_charge(skb, &pkt, p, &c);

	/*
	 * A link that is down drops every frame with its own reason. It is a parameter like any
	 * other (set and cleared by a map update, the timeline untouched), so frames on either
	 * side of the change keep their order; the lock is taken for the drop-event budget only.
	 */
	if (p->flags & MOA_F_DOWN) {
		st = bpf_map_lookup_elem(&moa_state, &idx);
		if (!st)
			return TC_ACT_OK;
		s.now = bpf_ktime_get_ns();
		s.reason = MOA_DROP_LINK_DOWN;
		bpf_spin_lock(&st->lock);
		moa_event_budget(st, &s);
		bpf_spin_unlock(&st->lock);
		goto drop;
	}

	if (!moa_needs_state(p, handover) && p->loss_model == MOA_LOSS_NONE)
		goto pass;

	moa_draw(p, &d);
	s.lost = moa_bernoulli_lost(p, &d);
	if (!moa_needs_state(p, handover) && !s.lost)
		goto pass;	/* Bernoulli loss only, kept: no lock */

	st = bpf_map_lookup_elem(&moa_state, &idx);
	if (!st)
		return TC_ACT_OK;
	s.now = bpf_ktime_get_ns();
	if (p->rate_bps)
		s.ser_ns = moa_ser_ns(c.wire, p->rate_bps);
	if (p->flags & MOA_F_TRACE)
		s.trace_bytes = moa_trace_bytes(c.bytes, c.segs);
	s.idx = idx;
	s.delay_ns = moa_delay_ns(p, st) + handover;
	if (p->aqm == MOA_AQM_PIE)
		s.aqm_rand = bpf_get_prandom_u32();
	if ((p->flags & MOA_F_ECN) && p->aqm != MOA_AQM_TAILDROP)
		s.can_mark = moa_inner_ect(skb, pkt.outer_len);
	moa_netem_draw(p, &s, stage == MOA_STAGE_EGRESS);

	moa_stage_step(st, p, &d, &s, &c, stage == MOA_STAGE_EGRESS);
	if (s.drop)
		goto drop;
	if (s.mark) {
		moa_set_ce(skb, pkt.outer_len);
		cnt->marks += c.segs;
	}

	if (stage == MOA_STAGE_EGRESS) {
		if (s.dup == 2 && s.dup_reason < MOA_NR_DROP_REASONS)	/* the copy did not fit */
			cnt->drops[s.dup_reason] += c.segs;
		if (s.dup == 1 && moa_send_copy(skb, s.dup_departure, s.now))
			__sync_fetch_and_add(&st->duplicated, c.segs);
		if (s.departure > s.now)
			moa_set_departure(skb, s.departure);
		else if (s.dup == 1)	/* the copy's departure is not the original's */
			skb->tstamp = 0;
	} else {
		/*
		 * No qdisc holds packets on ingress: the wait goes to the receiving VTEP's hold
		 * (port.h) or, without one, to the egress stage. Cut-through: the frame is handed
		 * on during its transmission on the sender's port, so it waits for the frames
		 * ahead of it and a frame finding its port idle is not held at all.
		 */
		__u64 wait = moa_port_wait(s.departure - s.ser_ns, s.ser_ns, s.now);

		if (wait)
			moa_handover_put(skb, wait);
	}
pass:
	/* Corruption: the egress stage's only (a LAN port never corrupts; on ingress the outer
	 * UDP checksum is still to be verified, which a flip would fail), passed packets only. */
	if (stage == MOA_STAGE_EGRESS && (p->flags & MOA_F_CORRUPT) &&
	    moa_chance(bpf_get_prandom_u32(), p->corrupt_threshold) &&
	    moa_corrupt(skb, pkt.outer_len, bpf_get_prandom_u32())) {
		st = bpf_map_lookup_elem(&moa_state, &idx);
		if (st)
			__sync_fetch_and_add(&st->corrupted, 1);
	}
	cnt->packets += c.segs;
	cnt->bytes += c.bytes;
	/* s.sojourn is 0 unless the timeline placed it. Bucket 0 (below 2^MOA_SOJOURN_SHIFT ns:
	 * every frame of a stage without a rate, or finding its queue empty) is not written: the
	 * reader derives it from packets (abi.h), so such a frame costs one comparison. */
	if (s.sojourn >> MOA_SOJOURN_SHIFT)
		cnt->sojourn[moa_sojourn_bucket(s.sojourn)] += c.segs;
	return TC_ACT_OK;
drop:
	if (s.reason < MOA_NR_DROP_REASONS)
		cnt->drops[s.reason] += c.segs;
	if (s.emit)
		moa_emit_drop(pkt.vni, stage, s.reason, s.now, c.bytes, c.segs);
	else
		moa_count_suppressed(cnt);
	return TC_ACT_SHOT;
}

#endif /* MOA_CLASSIFY_H */
