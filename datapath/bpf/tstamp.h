/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * tstamp.h - handing a departure time to sch_fq.
 */
#ifndef MOA_TSTAMP_H
#define MOA_TSTAMP_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/*
 * The departure as a monotonic delivery time. bpf_skb_set_tstamp() refuses skbs whose
 * protocol is neither IPv4 nor IPv6 (net/core/filter.c: -EOPNOTSUPP), which is the case of a
 * frame with in-band VLAN tags (skb->protocol 802.1Q/802.1ad). Then the tstamp is written
 * directly: on egress the verifier's rewrite of a __sk_buff->tstamp store keeps the skb's
 * tstamp type, and the value itself is from bpf_ktime_get_ns(), never added to an old tstamp
 * of unknown clock.
 */
static __always_inline void moa_set_departure(struct __sk_buff *skb, __u64 departure)
{
	if (bpf_skb_set_tstamp(skb, departure, BPF_SKB_TSTAMP_DELIVERY_MONO))
		skb->tstamp = departure;
}

#endif /* MOA_TSTAMP_H */
