/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * corrupt.h - corruption: one bit flipped in the inner frame's payload of a fraction of packets
 * (netem's `corrupt`; docs/semantics.md, "Corruption").
 *
 * A passed packet of a stage with MOA_F_CORRUPT is chosen with probability corrupt_threshold /
 * 2^32 (one uniform 32-bit draw, as loss.h). A chosen packet gets exactly one bit flipped, at a
 * uniformly random bit of its inner payload: after the inner L4 header (TCP's data offset, UDP's
 * and ICMP's 8 bytes; the bytes after the IP header for another protocol, an IPv4 fragment that
 * is not the first, or an IPv6 header followed by extension headers), up to the IP packet's end
 * (Ethernet padding is not payload); for a frame that is not IP, after its Ethernet header and
 * tags. Checksums are left as they are, so the receiver's L4 checksum catches the flip where
 * the protocol has one. A chosen packet without payload (a pure TCP ACK) is left whole: among
 * the packets that carry a payload the fraction is the configured one.
 *
 * A GSO packet is never corrupted: the kernel recomputes each segment's L4 checksum when it
 * segments the packet after the qdisc, so a flipped bit would reach the receiver with a valid
 * checksum (silent corruption, which netem avoids by segmenting first - a tc program cannot).
 *
 * Nor can it see an inner checksum still to be completed (CHECKSUM_PARTIAL: a node on the box's
 * own host sending with offload; never a frame from a wire): that one is computed over the
 * flipped payload later. docs/semantics.md, "Corruption".
 *
 * Everything here reads with bpf_skb_load_bytes, so inner headers outside the linear area are
 * found too; only a chosen packet pays for it.
 */
#ifndef MOA_CORRUPT_H
#define MOA_CORRUPT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "abi.h"
#include "parse.h"

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

/* [*start, *end): the inner payload of the frame after outer_len. 0 when there is none. */
static __always_inline int moa_inner_payload(struct __sk_buff *skb, __u32 outer_len,
					     __u32 *start, __u32 *end)
{
	__u32 off = outer_len + sizeof(struct ethhdr), l4len = 0;
	struct ethhdr eth;
	__be16 proto;
	__u8 l4;

	*end = skb->len;
	if (bpf_skb_load_bytes(skb, outer_len, &eth, sizeof(eth)))
		return 0;
	proto = eth.h_proto;
#pragma unroll
	for (int i = 0; i < MOA_MAX_VLAN_TAGS; i++) {
		struct vlan_hdr_moa vh;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if (bpf_skb_load_bytes(skb, off, &vh, sizeof(vh)))
			return 0;
		proto = vh.encap_proto;
		off += sizeof(vh);
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		__u32 tot;

		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) || ip.ihl < 5)
			return 0;
		tot = bpf_ntohs(ip.tot_len);
		if (off + tot < *end)
			*end = off + tot;
		l4 = ip.protocol;
		if (ip.frag_off & bpf_htons(0x1fff))	/* a later fragment: no L4 header */
			l4 = IPPROTO_RAW;
		off += ip.ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return 0;
		if (off + sizeof(ip6) + bpf_ntohs(ip6.payload_len) < *end)
			*end = off + sizeof(ip6) + bpf_ntohs(ip6.payload_len);
		l4 = ip6.nexthdr;
		off += sizeof(ip6);
	} else {
		*start = off;
		return *end > off;
	}
	if (l4 == IPPROTO_TCP) {
		struct tcphdr tcp;

		if (bpf_skb_load_bytes(skb, off, &tcp, sizeof(tcp)) || tcp.doff < 5)
			return 0;
		l4len = tcp.doff * 4;
	} else if (l4 == IPPROTO_UDP || l4 == IPPROTO_ICMP || l4 == IPPROTO_ICMPV6) {
		l4len = 8;
	}
	*start = off + l4len;
	return *end > *start;
}

/* Flip one bit of the inner payload, chosen by r (uniform 32 bits). 1 when a bit was flipped. */
static __always_inline int moa_corrupt(struct __sk_buff *skb, __u32 outer_len, __u32 r)
{
	__u32 start = 0, end = 0, bit;
	__u8 b;

	if (skb->gso_segs > 1)
		return 0;
	if (!moa_inner_payload(skb, outer_len, &start, &end))
		return 0;
	bit = ((__u64)r * ((__u64)(end - start) * 8)) >> 32;	/* uniform in [0, 8 * len) */
	start += bit >> 3;
	if (bpf_skb_load_bytes(skb, start, &b, 1))
		return 0;
	b ^= 1 << (bit & 7);
	return !bpf_skb_store_bytes(skb, start, &b, 1, 0);
}

#endif /* MOA_CORRUPT_H */
