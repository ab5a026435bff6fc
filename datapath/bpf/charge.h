/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * charge.h - what a packet costs on the emulated link (docs/semantics.md "What a link's
 * capacity is charged for").
 *
 * The experiment's frames, not the testbed's encapsulation: inner bytes = skb->len minus the
 * outer Ethernet/VLAN/IP/UDP/VXLAN headers. A GSO packet is gso_segs frames, each carrying the
 * inner headers again, so (segs - 1) * inner header length is added. Every frame is at least
 * 60 bytes (Ethernet minimum without FCS) and costs params.overhead more on the wire
 * (preamble, SFD, FCS, inter-frame gap: 24 by default; -60 .. 4096, so never below 0).
 *
 * Cells (params.cell_size, netem's cellsize and celloverhead; docs/semantics.md "Cells"): a
 * frame of len bytes then costs ceil((len + overhead) / cell_size) * (cell_size +
 * cell_overhead). Cells are per frame, so a GSO packet is charged frame by frame: every segment
 * but the last carries gso_size bytes of payload after the repeated inner headers, the last the
 * rest (when gso_size does not fit the packet - a malformed or unparsable one - the frames are
 * taken as equal, the remainder on the last).
 */
#ifndef MOA_CHARGE_H
#define MOA_CHARGE_H

#include <linux/bpf.h>
#include "abi.h"
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
	__u64 wire;	/* bytes + segs * overhead, or the cells: what the timeline is charged */
};

/* The wire cost of one frame of len bytes (already padded to MOA_MIN_FRAME). */
static __always_inline __u64 moa_frame_wire(const struct moa_stage_params *p, __u64 len)
{
	__s64 w = (__s64)len + p->overhead;
	__u32 cell = p->cell_size;

	if (w < 0)	/* not with the bounds userspace keeps (overhead >= -60) */
		w = 0;
	if (!cell)
		return w;
	/* cell + cell_overhead >= 1 (userspace's bound); clamped here all the same */
	w = ((__u64)w + cell - 1) / cell * (__u64)((__s32)cell + p->cell_overhead > 0 ?
						     (__s32)cell + p->cell_overhead : 0);
	return w;
}

static __always_inline __u64 moa_padded(__u64 len)
{
	return len < MOA_MIN_FRAME ? MOA_MIN_FRAME : len;
}

/* Cells: the frames of a GSO packet of `bytes` (frames' bytes, unpadded) one by one. */
static __always_inline __u64 moa_gso_cells_wire(struct __sk_buff *skb,
						const struct moa_stage_params *p,
						__u32 segs, __u64 bytes, __u32 hdr)
{
	__u64 full = (__u64)hdr + skb->gso_size, last;

	if (!skb->gso_size || full * (segs - 1) >= bytes)
		full = bytes / segs;
	last = bytes - full * (segs - 1);
	return (segs - 1) * moa_frame_wire(p, moa_padded(full)) +
	       moa_frame_wire(p, moa_padded(last));
}

static __always_inline void moa_charge(struct __sk_buff *skb, const struct moa_pkt *pkt,
				       const struct moa_stage_params *p, struct moa_charge *c)
{
	__u32 segs = skb->gso_segs, hdr = 0;
	__u64 bytes = skb->len - pkt->outer_len;

	if (segs > 1) {
		hdr = moa_inner_hdr_len(skb, pkt->outer_len);
		bytes += (__u64)(segs - 1) * hdr;
	} else {
		segs = 1;
	}
	if (bytes > MOA_MAX_CHARGE)
		bytes = MOA_MAX_CHARGE;
	if (p->cell_size)
		c->wire = segs == 1 ? moa_frame_wire(p, moa_padded(bytes))
				    : moa_gso_cells_wire(skb, p, segs, bytes, hdr);
	if (bytes < (__u64)segs * MOA_MIN_FRAME)
		bytes = (__u64)segs * MOA_MIN_FRAME;
	c->segs = segs;
	c->bytes = bytes;
	if (!p->cell_size)
		c->wire = (__u64)((__s64)bytes + (__s64)segs * p->overhead);
}

/* Serialisation time of `wire` bytes at rate_bps (> 0), in ns, rounded down. */
static __always_inline __u64 moa_ser_ns(__u64 wire, __u64 rate_bps)
{
	if (wire > MOA_MAX_CHARGE)
		wire = MOA_MAX_CHARGE;
	return wire * 8 * 1000000000ULL / rate_bps;
}

#endif /* MOA_CHARGE_H */
