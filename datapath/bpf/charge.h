/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * charge.h - what a packet costs on the emulated link (docs/semantics.md "What a link's
 * capacity is charged for").
 *
 * The experiment's frames, not the testbed's encapsulation: inner bytes = skb->len minus the
 * outer Ethernet/VLAN/IP/UDP/VXLAN headers. A GSO packet is gso_segs frames, each carrying the
 * inner headers again, so (segs - 1) * inner header length is added. Every frame is at least
 * 60 bytes (Ethernet minimum without FCS) and costs params.overhead more on the wire
 * (preamble, SFD, FCS, inter-frame gap: 24).
 */
#ifndef MOA_CHARGE_H
#define MOA_CHARGE_H

#include <linux/bpf.h>
#include "parse.h"

#define MOA_MIN_FRAME 60
/*
 * Upper bound of a charge, so that bytes * 8 * 1e9 fits in 64 bits (2^31 * 8 * 1e9 < 2^64).
 * Real packets stay far below (a 64 KiB GSO packet is 2^16).
 */
#define MOA_MAX_CHARGE (1ULL << 31)

struct moa_charge {
	__u32 segs;	/* frames */
	__u32 bytes;	/* inner frame bytes of all frames, padded, without L1 overhead */
	__u64 wire;	/* bytes + segs * overhead: what the timeline is charged */
};

static __always_inline void moa_charge(struct __sk_buff *skb, const struct moa_pkt *pkt,
				       __u16 overhead, struct moa_charge *c)
{
	__u32 segs = skb->gso_segs;
	__u64 bytes = skb->len - pkt->outer_len;

	if (segs > 1)
		bytes += (__u64)(segs - 1) * moa_inner_hdr_len(skb, pkt->outer_len);
	else
		segs = 1;
	if (bytes < (__u64)segs * MOA_MIN_FRAME)
		bytes = (__u64)segs * MOA_MIN_FRAME;
	if (bytes > MOA_MAX_CHARGE)
		bytes = MOA_MAX_CHARGE;
	c->segs = segs;
	c->bytes = bytes;
	c->wire = bytes + (__u64)segs * overhead;
}

/* Serialisation time of `wire` bytes at rate_bps (> 0), in ns, rounded down. */
static __always_inline __u64 moa_ser_ns(__u64 wire, __u64 rate_bps)
{
	if (wire > MOA_MAX_CHARGE)
		wire = MOA_MAX_CHARGE;
	return wire * 8 * 1000000000ULL / rate_bps;
}

#endif /* MOA_CHARGE_H */
