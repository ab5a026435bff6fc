/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * aqm.h - CoDel (RFC 8289) and PIE (RFC 8033) on the EDT timeline, and the CE mark that
 * replaces their drop.
 *
 * On a timeline every packet's wait is known when it arrives (docs/semantics.md, "Queue
 * management"): it starts serialisation at start = max(t_last, now), so its sojourn - what a
 * FIFO in front of a link of that rate would measure when it dequeues the packet - is
 * start - now, and start is its dequeue time. CoDel's decisions are made at dequeue from the
 * dequeued packet's sojourn and the dequeue time, and packets are dequeued in arrival order, so
 * the whole of CoDel can run at enqueue with start as its clock: a dropped packet leaves the
 * timeline untouched, as a packet dropped at dequeue takes no link time.
 *
 * RFC 8289's dequeue() may drop several packets in one call (its while loop) and, after the
 * drop that enters the dropping state, returns the next packet without judging it. Per packet,
 * that is `pending`: the packet after a drop belongs to the same dequeue() when it was already
 * queued at the drop's dequeue time (it arrived by then: its start is that same time); if it
 * arrived later, the RFC's dequeue had found the queue empty (first_above_time = 0 and, in the
 * loop, leaving the dropping state) and this packet begins a dequeue() of its own.
 *
 * One deviation, forced by deciding at enqueue: the RFC's "queue.bytes() <= MAXPACKET" counts
 * the bytes behind the dequeued packet, which arrive after it; here it is the backlog the packet
 * found ahead of it, as time at the rate (sojourn <= serialisation of a full frame).
 *
 * The control law is t + floor(interval / sqrt(count)), computed exactly in integers as
 * isqrt(interval^2 / count) (interval at most 3 s: interval^2 < 2^63). With ECN (MOA_F_ECN), a
 * packet whose inner IP header says ECT(0), ECT(1) or CE is marked CE where CoDel would drop
 * it, and is sent; as in Linux's codel, a mark in the loop schedules the next drop and ends that
 * dequeue. PIE: below, at moa_pie.
 *
 * moa_aqm and what it calls run under the stage lock (edt.h's locked path): no helper calls.
 * Whether a packet is ECN-capable is read before the lock, the CE mark written after it.
 */
#ifndef MOA_AQM_H
#define MOA_AQM_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "abi.h"
#include "parse.h"
#include "charge.h"

/* moa_aqm_state.pending: what the packet after a drop is to the RFC's dequeue(). */
enum moa_codel_pending {
	MOA_CODEL_NONE = 0,
	MOA_CODEL_LOOP = 1,	/* dropped in the while loop: next is judged, then the next drop */
	MOA_CODEL_ENTER = 2,	/* dropped entering the dropping state: next is returned as is */
};

/* What the AQM does with a packet. */
enum moa_aqm_verdict {
	MOA_AQM_PASS = 0,
	MOA_AQM_DROP = 1,
	MOA_AQM_MARK = 2,	/* set CE and send */
};

/* MAXPACKET: a full Ethernet frame (1514 bytes), charged like any frame (charge.h). */
#define MOA_AQM_MAXPACKET 1514

/*
 * floor(sqrt(x)) for x < 2^63, bit by bit in 32 fixed steps without a branch (a branch per step
 * would give the verifier 2^32 paths): x >= t is read from the sign of x - t.
 */
static __always_inline __u64 moa_isqrt(__u64 x)
{
	__u64 r = 0, bit = 1ULL << 62, t, ge;
	int i;

	/* Products, not masks: a verifier that splits a [-1, 0] scalar at an AND (6.18) would
	 * otherwise walk 2^32 paths again. */
#pragma unroll
	for (i = 0; i < 32; i++) {
		t = r + bit;
		ge = ((x - t) >> 63) ^ 1;	/* 1 when x >= t */
		x -= t * ge;
		r = (r >> 1) + bit * ge;
		bit >>= 2;
	}
	return r;
}

/* RFC 8289 control_law(t, count): t + interval / sqrt(count), in whole ns. */
static __always_inline __u64 moa_codel_law(__u64 t, __u64 interval, __u32 count)
{
	if (!count)
		count = 1;
	return t + moa_isqrt(interval * interval / count);
}

/*
 * RFC 8289 dodequeue()'s judgement of one packet dequeued at `start` after waiting `sojourn`:
 * 1 = ok_to_drop. MAXPACKET's serialisation time is computed only when the sojourn is above
 * target.
 */
static __always_inline int moa_codel_judge(struct moa_codel_state *a,
					   const struct moa_stage_params *p,
					   __u64 start, __u64 sojourn)
{
	if (sojourn < p->aqm_target_ns ||
	    sojourn <= moa_ser_ns(moa_frame_wire(p, MOA_AQM_MAXPACKET), p->rate_bps)) {
		a->first_above_time = 0;
		return 0;
	}
	if (a->first_above_time == 0) {
		a->first_above_time = start + p->aqm_interval_ns;
		return 0;
	}
	return start >= a->first_above_time;
}

/*
 * One packet, arrived at `now`, dequeued (its serialisation starting) at `start` >= now.
 * can_mark: ECN is on and the packet is ECN-capable.
 *
 * The branches only decide; the control law (32 steps of square root) is computed once, at the
 * end, into drop_next or, after a drop in the loop, into next_drop: that is the drop time the
 * RFC's loop schedules if the next packet is still above target, and the same arithmetic as a
 * mark's (which schedules it at once). One site keeps the verifier's walk short.
 */
static __always_inline int moa_codel(struct moa_codel_state *a, const struct moa_stage_params *p,
				     __u64 now, __u64 start, int can_mark)
{
	__u64 sojourn = start - now, base = 0;
	int v = MOA_AQM_PASS, law = 0, ok;
	__u32 delta;

	if (a->pending) {
		__u8 was = a->pending;

		a->pending = MOA_CODEL_NONE;
		if (now > a->last_deq) {
			/* Not queued when the last drop was dequeued: the RFC found the queue
			 * empty there. This packet starts a dequeue() of its own, below. */
			a->first_above_time = 0;
			if (was == MOA_CODEL_LOOP)
				a->dropping = 0;
		} else if (was == MOA_CODEL_ENTER) {
			moa_codel_judge(a, p, start, sojourn);	/* returned without a verdict */
			return MOA_AQM_PASS;
		} else {
			/* The loop: judged, then the next drop scheduled, then the loop's test. */
			if (!moa_codel_judge(a, p, start, sojourn)) {
				a->dropping = 0;
				return MOA_AQM_PASS;
			}
			a->drop_next = a->next_drop;
			goto loop_test;
		}
	}

	/* RFC 8289 dequeue() at `start`. */
	ok = moa_codel_judge(a, p, start, sojourn);
	if (a->dropping) {
		if (!ok) {
			a->dropping = 0;
			return MOA_AQM_PASS;
		}
		goto loop_test;
	}
	if (!ok)
		return MOA_AQM_PASS;

	/* Entering the dropping state (the Linux variant of the count's restart, as the RFC). */
	a->dropping = 1;
	delta = a->count - a->lastcount;
	a->count = 1;
	if (delta > 1 && (__s64)(start - a->drop_next) < (__s64)(16ULL * p->aqm_interval_ns))
		a->count = delta;
	a->lastcount = a->count;
	base = start;
	law = 1;
	if (can_mark) {
		v = MOA_AQM_MARK;
	} else {
		v = MOA_AQM_DROP;
		a->pending = MOA_CODEL_ENTER;
		a->last_deq = start;
	}
	goto law;

loop_test:
	if (start < a->drop_next)
		return MOA_AQM_PASS;
	/* The loop's drop (or, with ECN, its mark, which ends that dequeue). */
	a->count++;
	base = a->drop_next;
	law = 2;
	if (can_mark) {
		v = MOA_AQM_MARK;
	} else {
		v = MOA_AQM_DROP;
		a->pending = MOA_CODEL_LOOP;
		a->last_deq = start;
	}

law:
	if (law) {
		__u64 t = moa_codel_law(base, p->aqm_interval_ns, a->count);

		if (law == 2 && v == MOA_AQM_DROP)
			a->next_drop = t;
		else
			a->drop_next = t;
	}
	return v;
}

/*
 * PIE (RFC 8033) on the same timeline. PIE decides at enqueue, as here, from a drop probability
 * it updates every T_UPDATE (aqm_interval_ns) from the queue delay; the update is made lazily,
 * by the first packet that arrives T_UPDATE or more after the last one, with the queue delay
 * that packet finds (its sojourn: exact on a timeline, where RFC 8033 estimates it). alpha 1/8,
 * beta 1 + 1/4 (per second), MAX_BURST 150 ms, the probability's scaling, its 2 % step limit
 * above 10 %, its decay by 0.98 and the derandomisation of section 5.1 as the RFC gives them;
 * "queue_.byte_length() <= 2 * MEAN_PKTSIZE" is the backlog ahead of the packet as time at the
 * rate (two full frames). Fixed point over 2^32 throughout; a queue delay over 4 s counts as 4 s.
 */
#define MOA_PIE_ONE (1ULL << 32)
#define MOA_PIE_MAX_BURST 150000000U
#define MOA_PIE_QDELAY_MAX 4000000000ULL
/* RFC 8033's constants over 2^32, rounded up where they bound "below", to the nearest where
 * they are a value (0.02). */
#define MOA_PIE_P_1E6 4295ULL
#define MOA_PIE_P_1E5 42950ULL
#define MOA_PIE_P_1E4 429497ULL
#define MOA_PIE_P_1E3 4294968ULL
#define MOA_PIE_P_1E2 42949673ULL
#define MOA_PIE_P_1E1 429496730ULL		/* prob < 0.1 */
#define MOA_PIE_P_02 858993460ULL		/* prob < 0.2 */
#define MOA_PIE_STEP_MAX 85899346ULL		/* 0.02 */
#define MOA_PIE_ACCU_LOW 3650722202ULL		/* accu < 0.85 */
#define MOA_PIE_ACCU_HIGH 36507222016ULL	/* accu >= 8.5 */
#define MOA_PIE_MARK_MAX 429496729ULL		/* prob <= 0.1: ECN marks instead of drops */

/* |d| * mul / div with d's sign, without a signed division (BPF before v4 has none). */
static __always_inline __s64 moa_scale_s(__s64 d, __u64 mul, __u64 div)
{
	__u64 m = d < 0 ? (__u64)-d : (__u64)d;

	m = m * mul / div;
	return d < 0 ? -(__s64)m : (__s64)m;
}

/* RFC 8033 calculate_drop_prob(), with the queue delay `qdelay` (<= MOA_PIE_QDELAY_MAX). */
static __always_inline void moa_pie_update(struct moa_pie_state *a,
					   const struct moa_stage_params *p, __u64 now,
					   __u64 qdelay)
{
	__u64 ref = p->aqm_target_ns, old = a->qdelay_old, prob = a->drop_prob;
	__s64 dp, np;
	int shift;

	/* alpha (qdelay - ref) + beta (qdelay - old), in s, over 2^32 */
	dp = moa_scale_s((__s64)qdelay - (__s64)ref, 1ULL << 29, 1000000000ULL) +
	     moa_scale_s((__s64)qdelay - (__s64)old, 671088640ULL, 125000000ULL);
	/*
	 * The RFC's scaling, p / 2048 below 1e-6 ... p / 2 below 0.1, as a shift computed without
	 * a branch: a shift amount known per path would be kept apart by the verifier (it needs
	 * its value), multiplying the paths after it. (X - 1 - prob) >> 63 is prob >= X.
	 */
	shift = 11 - 2 * (int)(((MOA_PIE_P_1E6 - 1 - prob) >> 63) +
			       ((MOA_PIE_P_1E5 - 1 - prob) >> 63) +
			       ((MOA_PIE_P_1E4 - 1 - prob) >> 63) +
			       ((MOA_PIE_P_1E3 - 1 - prob) >> 63) +
			       ((MOA_PIE_P_1E2 - 1 - prob) >> 63)) -
		(int)((MOA_PIE_P_1E1 - 1 - prob) >> 63);
	dp = dp < 0 ? -(__s64)((__u64)-dp >> shift) : (__s64)((__u64)dp >> shift);
	if (prob >= MOA_PIE_P_1E1 && dp > (__s64)MOA_PIE_STEP_MAX)
		dp = MOA_PIE_STEP_MAX;
	np = (__s64)prob + dp;
	if (qdelay < ref / 2 && old < ref / 2)
		np = moa_scale_s(np, 49, 50);	/* * 0.98 */
	if (np < 0)
		np = 0;
	if (np > (__s64)MOA_PIE_ONE)
		np = MOA_PIE_ONE;
	a->drop_prob = np;
	a->burst_allowance = a->burst_allowance > p->aqm_interval_ns ?
			     a->burst_allowance - p->aqm_interval_ns : 0;
	if (a->drop_prob == 0 && qdelay < ref / 2 && old < ref / 2)
		a->burst_allowance = MOA_PIE_MAX_BURST;
	a->qdelay_old = qdelay;
	a->last_update = now;
}

/* One packet arrived at `now`, finding `sojourn` of backlog ahead; u: a uniform 32-bit draw. */
static __always_inline int moa_pie(struct moa_pie_state *a, const struct moa_stage_params *p,
				   __u64 now, __u64 sojourn, __u32 u, int can_mark)
{
	__u64 qdelay = sojourn < MOA_PIE_QDELAY_MAX ? sojourn : MOA_PIE_QDELAY_MAX;
	int drop = 0;

	if (!a->started) {
		a->started = 1;
		a->last_update = now;
		a->burst_allowance = MOA_PIE_MAX_BURST;
	} else if (now - a->last_update >= p->aqm_interval_ns) {
		moa_pie_update(a, p, now, qdelay);
	}

	/* drop_early() */
	if ((a->qdelay_old < p->aqm_target_ns / 2 && a->drop_prob < MOA_PIE_P_02) ||
	    sojourn <= moa_ser_ns(2 * moa_frame_wire(p, MOA_AQM_MAXPACKET), p->rate_bps))
		return MOA_AQM_PASS;
	if (a->drop_prob == 0)
		a->accu_prob = 0;
	a->accu_prob += a->drop_prob;
	if (a->accu_prob < MOA_PIE_ACCU_LOW)
		return MOA_AQM_PASS;
	if (a->accu_prob >= MOA_PIE_ACCU_HIGH) {
		drop = 1;
	} else if ((__u64)u < a->drop_prob) {
		a->accu_prob = 0;
		drop = 1;
	}
	/* enque(): an early drop only once the burst allowance is spent */
	if (!drop || a->burst_allowance)
		return MOA_AQM_PASS;
	if (can_mark && a->drop_prob <= MOA_PIE_MARK_MAX)
		return MOA_AQM_MARK;
	a->accu_prob = 0;
	return MOA_AQM_DROP;
}

/*
 * The stage's AQM on one packet (locked path, after its placement): CoDel or PIE on the state of
 * its own kind, zeroed when the link's kind changed since the state was last used.
 */
static __always_inline int moa_aqm(struct moa_aqm_state *a, const struct moa_stage_params *p,
				   __u64 now, __u64 start, __u32 u, int can_mark)
{
	if (a->kind != p->aqm) {
		__builtin_memset(&a->codel, 0, sizeof(a->codel) > sizeof(a->pie) ?
						sizeof(a->codel) : sizeof(a->pie));
		a->kind = p->aqm;
	}
	if (p->aqm == MOA_AQM_CODEL)
		return moa_codel(&a->codel, p, now, start, can_mark);
	return moa_pie(&a->pie, p, now, start - now, u, can_mark);
}

/*
 * The inner IP header: its offset (*l3, 0 = none) and whether it is IPv6. Its offset is known
 * only per VLAN case, so callers use it at once: carried across the stage lock it would keep the
 * verifier's paths apart all the way (one per header layout).
 */
static __always_inline __u32 moa_inner_l3(void *data, void *data_end, __u32 outer_len, int *v6)
{
	__be16 proto;
	__u32 off;

	/* outer_len <= 98 (parse.h, MOA_PULL_LEN); the mask tells the verifier it is bounded. */
	off = moa_parse_eth(data, data_end, outer_len & 0x7f, &proto);
	if (!off)
		return 0;
	if (proto == bpf_htons(ETH_P_IP)) {
		*v6 = 0;
		return off;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		*v6 = 1;
		return off;
	}
	return 0;
}

/* 1 when the inner packet is ECN-capable: ECT(0), ECT(1) or CE. */
static __always_inline int moa_inner_ect(struct __sk_buff *skb, __u32 outer_len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	int v6 = 0;
	__u32 l3 = moa_inner_l3(data, data_end, outer_len, &v6);
	void *h;

	if (!l3)
		return 0;
	/* One pointer, checked and read: clang would otherwise add l3 twice, and the verifier
	 * knows the bound of the sum it checked only. */
	h = data + l3;
	asm volatile("" : "+r"(h));
	if (v6) {
		struct ipv6hdr *ip6 = h;

		if ((void *)(ip6 + 1) > data_end)
			return 0;
		return ((ip6->flow_lbl[0] >> 4) & 3) != 0;	/* traffic class bits 1-0 */
	}
	if (h + sizeof(struct iphdr) > data_end)
		return 0;
	return (((struct iphdr *)h)->tos & 3) != 0;
}

/*
 * Set CE in the inner IP header. IPv4: the header checksum is updated incrementally (RFC 1624:
 * HC' = ~(~HC + ~m + m') over the 16-bit word holding tos).
 */
static __always_inline void moa_set_ce(struct __sk_buff *skb, __u32 outer_len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	int v6 = 0;
	__u32 l3 = moa_inner_l3(data, data_end, outer_len, &v6);
	void *h;

	if (!l3)
		return;
	h = data + l3;			/* one pointer, as in moa_inner_ect */
	asm volatile("" : "+r"(h));
	if (v6) {
		struct ipv6hdr *ip6 = h;

		if ((void *)(ip6 + 1) > data_end)
			return;
		ip6->flow_lbl[0] |= 0x30;
	} else {
		struct iphdr *ip = h;
		__u16 *word = (__u16 *)ip;	/* version/ihl and tos */
		__u32 sum;
		__u16 old;

		if ((void *)(ip + 1) > data_end)
			return;
		old = *word;
		ip->tos |= 3;
		sum = (__u16)~bpf_ntohs(ip->check) + (__u16)~bpf_ntohs(old) + bpf_ntohs(*word);
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		ip->check = bpf_htons((__u16)~sum);
	}
}

#endif /* MOA_AQM_H */
