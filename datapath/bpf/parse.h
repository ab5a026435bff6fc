/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h - find the VNI of a VXLAN frame, and the inner header length of a GSO packet.
 *
 * Accepted: Ethernet, up to two 802.1Q/802.1ad tags, IPv4 (any ihl >= 5, not a fragment) or
 * IPv6 whose next header is UDP, UDP to vxlan_port or to a port of moa_vxlan_ports (the ports
 * of moa's VTEPs, an endpoint's `port`), a VXLAN header with the I flag. Anything
 * else - including IPv6 with extension headers, which the Linux VXLAN driver never emits, and
 * IPv4 fragments, whose UDP header is absent or whose length we could not charge - is "not
 * VXLAN" and passes untouched.
 *
 * Every header is bounds-checked against data_end before it is read, so a frame truncated at
 * any boundary is "not VXLAN", never an error.
 */
#ifndef MOA_PARSE_H
#define MOA_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "config.h"
#include "maps.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

#define MOA_VXLAN_FLAG_I 0x08
#define MOA_MAX_VLAN_TAGS 2
/*
 * Bytes pulled into the linear area when the headers are not all there (slow path; frames
 * built by the kernel's VXLAN driver and test frames are linear): the largest outer stack
 * (14 + 2*4 + 60 + 8 + 8 = 98) plus the largest inner one we parse (22 + 60 + 60 = 142).
 */
#define MOA_PULL_LEN 240

struct vlan_hdr_moa {
	__be16 tci;
	__be16 encap_proto;
};

struct vxlan_hdr_moa {
	__u8 flags;
	__u8 rsvd0[3];
	__u8 vni[3];
	__u8 rsvd1;
};

enum moa_parse_result {
	MOA_PARSE_VXLAN = 0,	/* pkt filled in */
	MOA_PARSE_OTHER = 1,	/* not ours: pass untouched */
	MOA_PARSE_SHORT = 2,	/* the linear data ended inside a header */
};

struct moa_pkt {
	__u32 vni;
	__u32 outer_len;	/* bytes before the inner Ethernet header */
};

/* A UDP destination port (host order) that carries VXLAN: vxlan_port, without a lookup, or a
 * port whose bit is set in moa_vxlan_ports. */
static __always_inline int moa_vxlan_port(__u16 port)
{
	struct moa_port_set *set;
	__u32 zero = 0;

	__u32 word = port >> 6;

	if (port == (__u16)vxlan_port)
		return 1;
	set = bpf_map_lookup_elem(&moa_vxlan_ports, &zero);
	if (!set)
		return 0;
	/* Bound the index where it is used: 6.1's verifier loses a u16's range when the value is
	 * spilled to the stack around the lookup, and clang would drop a check it can prove
	 * redundant unless the value is hidden from it. */
	asm volatile("" : "+r"(word));
	if (word >= 1024)
		return 0;
	return (set->bits[word] >> (port & 63)) & 1;
}

/* Ethernet + up to two VLAN tags. Returns the L3 offset or 0 if truncated; *proto = ethertype. */
static __always_inline __u32 moa_parse_eth(void *data, void *data_end, __u32 off, __be16 *proto)
{
	struct ethhdr *eth = data + off;

	if ((void *)(eth + 1) > data_end)
		return 0;
	*proto = eth->h_proto;
	off += sizeof(*eth);
#pragma unroll
	for (int i = 0; i < MOA_MAX_VLAN_TAGS; i++) {
		struct vlan_hdr_moa *vh = data + off;

		if (*proto != bpf_htons(ETH_P_8021Q) && *proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return 0;
		*proto = vh->encap_proto;
		off += sizeof(*vh);
	}
	return off;
}

static __always_inline int moa_parse_outer(void *data, void *data_end, struct moa_pkt *pkt)
{
	struct vxlan_hdr_moa *vx;
	struct udphdr *udp;
	__be16 proto;
	__u32 off;

	off = moa_parse_eth(data, data_end, 0, &proto);
	if (!off)
		return MOA_PARSE_SHORT;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;

		if ((void *)(ip + 1) > data_end)
			return MOA_PARSE_SHORT;
		if (ip->ihl < 5 || ip->protocol != IPPROTO_UDP)
			return MOA_PARSE_OTHER;
		/* MF set or a non-zero offset: not a whole datagram. */
		if (ip->frag_off & bpf_htons(0x3fff))
			return MOA_PARSE_OTHER;
		off += ip->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end)
			return MOA_PARSE_SHORT;
		if (ip6->nexthdr != IPPROTO_UDP)
			return MOA_PARSE_OTHER;
		off += sizeof(*ip6);
	} else {
		return MOA_PARSE_OTHER;
	}

	udp = data + off;
	if ((void *)(udp + 1) > data_end)
		return MOA_PARSE_SHORT;
	if (!moa_vxlan_port(bpf_ntohs(udp->dest)))
		return MOA_PARSE_OTHER;
	off += sizeof(*udp);

	vx = data + off;
	if ((void *)(vx + 1) > data_end)
		return MOA_PARSE_SHORT;
	if (!(vx->flags & MOA_VXLAN_FLAG_I))
		return MOA_PARSE_OTHER;
	pkt->vni = ((__u32)vx->vni[0] << 16) | ((__u32)vx->vni[1] << 8) | vx->vni[2];
	pkt->outer_len = off + sizeof(*vx);
	return MOA_PARSE_VXLAN;
}

/*
 * Parse the outer headers; if the linear data ends inside them but the packet is longer, pull
 * once and parse again. A short frame is "other".
 */
static __always_inline int moa_parse(struct __sk_buff *skb, struct moa_pkt *pkt)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	int r = moa_parse_outer(data, data_end, pkt);

	if (r == MOA_PARSE_SHORT && skb->len > (__u32)(data_end - data)) {
		__u32 want = skb->len < MOA_PULL_LEN ? skb->len : MOA_PULL_LEN;

		if (bpf_skb_pull_data(skb, want))
			return MOA_PARSE_OTHER;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		r = moa_parse_outer(data, data_end, pkt);
	}
	return r == MOA_PARSE_VXLAN ? MOA_PARSE_VXLAN : MOA_PARSE_OTHER;
}

/*
 * Length of the inner headers that every segment of a GSO packet repeats: Ethernet (+ tags),
 * IPv4/IPv6, TCP/UDP. Only called for GSO packets. Returns 0 when they cannot be parsed
 * (truncated linear data, another protocol): the caller then charges no repeated headers, a
 * lower bound (the segments' L1 overhead and padding are still charged).
 */
static __always_inline __u32 moa_inner_hdr_len(struct __sk_buff *skb, __u32 outer_len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u8 l4proto;
	__be16 proto;
	__u32 off;

	/* outer_len <= 98 (see MOA_PULL_LEN); the mask tells the verifier it is bounded. */
	off = moa_parse_eth(data, data_end, outer_len & 0x7f, &proto);
	if (!off)
		return 0;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;

		if ((void *)(ip + 1) > data_end || ip->ihl < 5)
			return 0;
		l4proto = ip->protocol;
		off += ip->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end)
			return 0;
		l4proto = ip6->nexthdr;
		off += sizeof(*ip6);
	} else {
		return 0;
	}

	if (l4proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + off;

		if ((void *)(tcp + 1) > data_end || tcp->doff < 5)
			return 0;
		off += tcp->doff * 4;
	} else if (l4proto == IPPROTO_UDP) {
		off += sizeof(struct udphdr);
	} else {
		return 0;
	}
	return off - (outer_len & 0x7f);
}

#endif /* MOA_PARSE_H */
