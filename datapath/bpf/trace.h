/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * trace.h - trace-driven capacity: departures follow Mahimahi's delivery opportunities
 * (docs/semantics.md, "Trace-driven capacity").
 *
 * A trace link's serialisation is replaced by the time of the opportunity that carries the
 * packet's last byte. The stage keeps where the link is in its trace (struct moa_stage_state:
 * trace_origin, trace_idx, trace_left), so a packet costs no walk over opportunities: one that
 * finds bytes still waiting (now before the opportunity holding the last accepted byte) goes
 * on in that opportunity's leftover bytes, as mm-link fills one opportunity with several
 * packets; one that finds the link idle starts at the first opportunity after now, found by
 * a binary search, every opportunity in between wasted; its bytes then advance the position
 * by whole opportunities, by a division (a 64 KiB GSO packet spans ~44 of them). Runs under
 * the stage lock, like the AQM (the position is three words), in edt.h's moa_trace_stage.
 */
#ifndef MOA_TRACE_H
#define MOA_TRACE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"
#include "config.h"

#define MOA_NS_PER_MS 1000000ULL
/* The binary search's steps: 2^17 down to 1, enough to count up to MOA_TRACE_MAX - 1. */
#define MOA_TRACE_STEPS 18
#define MOA_ETH_HLEN 14

/* Traces (struct moa_trace) by content key (stage_params.trace_key): userspace writes one
 * before the first link that uses it and removes those no link uses when the map is full
 * (datapath/traces.py). Allocated when written: only the traces held take their 1 MiB. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOA_TRACE_KEYS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct moa_trace);
} moa_trace SEC(".maps");

/* Where a placement leaves the link in its trace (written back only if the packet passes). */
struct moa_trace_pos {
	__u64 origin;
	__u32 idx;
	__u32 left;
};

/* What a frame costs on a trace link: its IP packet, as mm-link counts the packets it reads,
 * so a full-MTU packet fills exactly one opportunity. Neither overhead nor cells apply. */
static __always_inline __u64 moa_trace_bytes(__u64 frame_bytes, __u32 segs)
{
	return frame_bytes - (__u64)segs * MOA_ETH_HLEN;	/* frames are >= 60 bytes */
}

/* 1 when a <= b, for a, b below 2^63: the sign of b - a, hidden from the compiler (which
 * would turn the shift back into a branch). */
static __always_inline __u64 moa_le(__u64 a, __u64 b)
{
	__u64 d = b - a;

	asm volatile("" : "+r"(d));
	return (d >> 63) ^ 1;
}

/* Opportunity i's time in ms. The mask is hidden from the compiler, which knows i's range and
 * would drop it: the 6.1 verifier loses that range across the search's or-ed bits and refuses
 * an index it cannot bound. */
static __always_inline __u64 moa_trace_ms(const struct moa_trace *tr, __u64 i)
{
	asm volatile("" : "+r"(i));
	return tr->t_ms[i & (MOA_TRACE_MAX - 1)];
}

/*
 * How many opportunities of one period are at or before rel ns from its start (rel < the
 * period, so at most len - 1): the index of the first one after rel. Without a branch on the
 * data, so the verifier walks it once rather than once per outcome (2^18 paths).
 */
static __always_inline __u32 moa_trace_count(const struct moa_trace *tr, __u32 len, __u64 rel)
{
	__u64 ms = rel / MOA_NS_PER_MS, pos = 0, step;
	int i;

	if (ms > 0xffffffffULL)	/* rel < period < 2^32 ms: not reached */
		ms = 0xffffffffULL;
#pragma unroll
	for (i = MOA_TRACE_STEPS - 1; i >= 0; i--) {
		step = 1ULL << i;
		pos += step * (moa_le(pos + step, len) &
			       moa_le(moa_trace_ms(tr, pos + step - 1), ms));
	}
	return pos;
}

/* The time of opportunity idx of the period starting at origin. */
static __always_inline __u64 moa_trace_time(const struct moa_trace *tr, __u64 origin, __u64 idx)
{
	return origin + moa_trace_ms(tr, idx) * MOA_NS_PER_MS;
}

/*
 * Place `bytes` on the trace from the stage's position at s->now, under the stage lock: *start
 * is the time of the opportunity carrying its first byte, *t_new of its last, *pos the position
 * after it. 1: tail drop (the bytes accepted and not yet delivered by now, plus these, would
 * exceed trace_queue), s->reason set; nothing is written here either way.
 */
static __always_inline int moa_trace_place(const struct moa_trace *tr,
					   const struct moa_stage_params *p,
					   const struct moa_stage_state *st, __u64 now, __u64 bytes,
					   struct moa_trace_pos *pos, __u64 *start, __u64 *t_new)
{
	__u32 len = tr->len;
	__u64 period = (__u64)tr->period_ms * MOA_NS_PER_MS;
	__u64 origin = st->trace_origin, idx = st->trace_idx, left = st->trace_left, k;

	if (!len || len > MOA_TRACE_MAX || !period)	/* not with userspace's checks */
		len = 1, period = MOA_NS_PER_MS;
	if (st->trace_key != p->trace_key) {	/* a new trace starts with this packet */
		origin = now;
		idx = 0;
		left = MOA_TRACE_OPP;
	}
	if (!left) {
		idx++;
		left = MOA_TRACE_OPP;
	}
	if (idx >= len) {
		idx = 0;
		origin += period;
	}

	if (now >= moa_trace_time(tr, origin, idx)) {
		/* Idle: nothing waits, every opportunity up to now is wasted (mm-link burns each
		 * one as its time passes). Whole periods at once, then a search in the last. */
		origin += (now - origin) / period * period;
		idx = moa_trace_count(tr, len, now - origin);
		left = MOA_TRACE_OPP;
	} else if (p->trace_queue) {
		/* Busy: opportunities after now up to idx carry the backlog. Counted from a period
		 * start at or before now (the position may be periods ahead of it). */
		__u64 m = now >= origin ? 0 : (origin - now + period - 1) / period;
		__u64 first = moa_trace_count(tr, len, now - (origin - m * period));
		__u64 backlog = (idx + m * len - first) * MOA_TRACE_OPP + (MOA_TRACE_OPP - left);

		if (backlog + bytes > p->trace_queue)
			return 1;
	}
	*start = moa_trace_time(tr, origin, idx);

	if (bytes <= left) {
		left -= bytes;
	} else {
		k = (bytes - left + MOA_TRACE_OPP - 1) / MOA_TRACE_OPP;
		left = k * MOA_TRACE_OPP - (bytes - left);
		idx += k;
		if (idx >= len) {
			origin += idx / len * period;
			idx %= len;
		}
	}
	*t_new = moa_trace_time(tr, origin, idx);
	pos->origin = origin;
	pos->idx = idx;
	pos->left = left;
	return 0;
}

#endif /* MOA_TRACE_H */
