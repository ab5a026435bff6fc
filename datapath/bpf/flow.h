/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * flow.h - flow mode: a point-to-point link with no device in the box (docs/architecture.md,
 * "Flow mode").
 *
 * A frame of a flow-mode endpoint reaches the uplink's ingress already encapsulated, with the
 * sender's VNI, addressed to the box. Instead of decapsulating it in a VTEP, crossing a pair and
 * encapsulating it again, the ingress program rewrites its outer headers toward the other
 * endpoint and sends it out of the uplink (bpf_redirect to egress), where moa_egress shapes it
 * under the peer's VNI exactly like a frame a VTEP had sent. What is rewritten:
 *
 *   Ethernet   destination = the peer's next hop (moa_flow.peer_mac), source = the uplink's
 *   IPv4/IPv6  source = the box (it was the destination), destination = the peer's VTEP;
 *              IPv4's header checksum follows; TTL / hop limit, TOS, ID and flow label stay
 *   UDP        destination port = the peer VTEP's (moa_flow.peer_port); the source port stays
 *              (the sender's hash of the inner flow: keeping it keeps the flow's path through
 *              the underlay and its receive queue at the peer); the checksum follows, see below
 *   VXLAN      VNI = the peer's (moa_flow.peer_vni); flags and reserved bytes stay
 *
 * The inner frame is never read nor written: LLDP, LACP and STP cross as on a wire. Frames of
 * one family only: an entry's addresses and the frame's outer header are both IPv4 or both
 * IPv6, and the frame must be addressed to the box (moa_flow.src_ip); anything else passes to
 * the stack untouched and is counted (MOA_FLOW_MISMATCH).
 *
 * UDP checksum. A zero checksum stays zero: IPv4's "no checksum", and on IPv6 the zero
 * checksum a tunnel may use under RFC 6935 and RFC 6936 (the sending VTEP chose it, so its
 * link is configured for it; moa never introduces one). Any other value is updated, never
 * recomputed over the payload (moa_flow_udp_csum: the update depends on the skb's checksum
 * state), and a result of 0 is sent as 0xffff. The IPv4 header checksum is updated likewise.
 *
 * A redirected frame goes out of the uplink and is never seen by the ingress program again.
 * With flow_mode 0 (the default) the verifier removes all of this from moa_ingress.
 */
#ifndef MOA_FLOW_H
#define MOA_FLOW_H

#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "abi.h"
#include "maps.h"
#include "parse.h"

/* Load-time setting (.rodata, like config.h's): 1 when the box runs point-to-point links in
 * flow mode (datapath/classifier.py, ClassifierConfig.flow_mode). */
const volatile __u32 flow_mode = 0;

/* Sending endpoint's VNI -> where its frames go (struct moa_flow). Userspace sets max_entries
 * with moa_links' (every flow-mode VNI is also a link's). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOA_DEFAULT_LINKS);
	__type(key, __u32);
	__type(value, struct moa_flow);
} moa_flow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MOA_NR_FLOW_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} moa_flow_stats SEC(".maps");

/* Whether a local socket still owns the frame (see the release in moa_flow_forward). Every
 * socket has a type (SOCK_STREAM, SOCK_DGRAM, SOCK_RAW ...) but the one BPF_PROG_TEST_RUN
 * gives every skb it runs, which has none. */
static __always_inline int moa_flow_owned(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);	/* type is not in the common part of a socket */
	return sk && sk->type;
}

/* Sending endpoint's VNI -> who holds its entry: 16 bytes of the SHA-256 of the
 * materialization's key, 16 of the link's (datapath/plan/flows.py). Never read here: the
 * planner's record of ownership, as a VTEP's ifalias is in VTEP mode. Sized as moa_flow. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOA_DEFAULT_LINKS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 32);
} moa_flow_owner SEC(".maps");

static __always_inline void moa_flow_count(__u32 counter)
{
	__u64 *c = bpf_map_lookup_elem(&moa_flow_stats, &counter);

	if (c)
		*c += 1;
}

#define MOA_UDP_CHECK 6		/* offsetof(struct udphdr, check) */
#define MOA_UDP_LEN 4		/* offsetof(struct udphdr, len) */
#define MOA_VXLAN_VNI 12	/* the VNI's word (vni[3], rsvd1) from the UDP header */

/* A one's complement sum (raw words, as bpf_csum_diff adds them) folded to 16 bits. */
static __always_inline __u16 moa_csum_fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/*
 * The outer UDP checksum (not 0) after the addresses changed by d_addr and the payload (for
 * the checksum: the destination port and the VNI) by d_pay.
 * bpf_l4_csum_replace knows the skb's checksum state but not where a partial checksum starts,
 * so the state is found first, by its effect: a payload change (d_pay, or a probe of 1
 * undone at once when d_pay's sum is nil) alters a finished checksum and leaves a
 * partial one as it is.
 *   finished (a frame off a wire): the kernel's rules, addresses as pseudo header, d_pay as
 *     payload;
 *   partial, the field holding the pseudo header's sum (a GSO super-packet, or a sender that
 *     left the outer checksum to the device): only the addresses enter it, the rest is summed
 *     later over the new payload;
 *   partial elsewhere (a sender of this host finished the outer checksum over an inner one
 *     still to be filled: local checksum offload): the field is final, updated by hand.
 * The last two are told apart by the field's value: is it the old pseudo header's sum? A
 * finished checksum equal to it (one in 65,536 such frames) would be taken for the second.
 * Returns 0 or a helper's error.
 */
static __always_inline int moa_flow_udp_csum(struct __sk_buff *skb, __u32 off, __u16 check,
					     __u32 d_addr, __u32 d_pay, __u64 pseudo)
{
	__u16 d = moa_csum_fold(d_pay), now = 0;
	int probe = d == 0 || d == 0xffff;

	if (bpf_l4_csum_replace(skb, off, 0, probe ? 1 : d_pay, BPF_F_MARK_MANGLED_0) ||
	    bpf_skb_load_bytes(skb, off, &now, sizeof(now)))
		return -1;
	if (now != check) {
		if (probe && bpf_skb_store_bytes(skb, off, &check, sizeof(check), 0))
			return -1;
		return bpf_l4_csum_replace(skb, off, 0, d_addr,
					   BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0);
	}
	if (skb->gso_size || check == moa_csum_fold(pseudo))
		return bpf_l4_csum_replace(skb, off, 0, d_addr, BPF_F_PSEUDO_HDR);
	check = ~moa_csum_fold((__u64)(__u16)~check + d_addr + d_pay);
	if (!check)
		check = 0xffff;
	return bpf_skb_store_bytes(skb, off, &check, sizeof(check), 0);
}

/*
 * Rewrite one frame whose outer L3 header starts at l3; v6 is a constant, so each family gets
 * its own copy with constant sizes. Returns the verdict.
 */
static __always_inline int moa_flow_rewrite(struct __sk_buff *skb, const struct moa_flow *f,
					    __u32 l3, const int v6)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	const __u32 alen = v6 ? 32 : 8;		/* source and destination addresses */
	__u32 old[8] = {}, new[8] = {}, vni_old, vni_new, ifindex, i, box;
	__u32 ports_old, ports_new;	/* the UDP header's first word: source and destination */
	__u8 macs[12], vni_b[4];
	struct udphdr *udp;
	__u32 l4, addr_off;
	__s64 d_addr, d_pay;
	__u64 pseudo;
	__u16 ucheck;

	if (f->family != (v6 ? 6 : 4))
		goto mismatch;
	if (v6) {
		struct ipv6hdr *ip6 = data + l3;

		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_OK;
		__builtin_memcpy(old, &ip6->saddr, 32);
		l4 = l3 + sizeof(*ip6);
		addr_off = l3 + offsetof(struct ipv6hdr, saddr);
	} else {
		struct iphdr *ip = data + l3;

		if ((void *)(ip + 1) > data_end)
			return TC_ACT_OK;
		old[0] = ip->saddr;
		old[1] = ip->daddr;
		l4 = l3 + ip->ihl * 4;
		addr_off = l3 + offsetof(struct iphdr, saddr);
	}
	/* Addressed to the box: the entry's source address is the frame's destination. */
#pragma unroll
	for (i = 0; i < alen / 8; i++) {
		__builtin_memcpy(&box, &f->src_ip[i * 4], 4);
		if (old[alen / 8 + i] != box)
			goto mismatch;
	}
	__builtin_memcpy(new, f->src_ip, alen / 2);
	__builtin_memcpy((__u8 *)new + alen / 2, f->peer_ip, alen / 2);

	udp = data + l4;
	if ((void *)udp + MOA_VXLAN_VNI + 4 > data_end)
		return TC_ACT_OK;
	ucheck = udp->check;
	__builtin_memcpy(&ports_old, udp, 4);
	ports_new = ports_old;
	((__be16 *)&ports_new)[1] = bpf_htons(f->peer_port);
	/* The old pseudo header's sum: addresses, protocol, UDP length (IPv4's and IPv6's alike
	 * in 16-bit words). */
	pseudo = (__u64)bpf_htons(IPPROTO_UDP) + *(__u16 *)((void *)udp + MOA_UDP_LEN);
#pragma unroll
	for (i = 0; i < alen / 4; i++)
		pseudo += old[i];
	__builtin_memcpy(&vni_old, (void *)udp + MOA_VXLAN_VNI, 4);
	vni_b[0] = f->peer_vni >> 16;
	vni_b[1] = f->peer_vni >> 8;
	vni_b[2] = f->peer_vni;
	vni_b[3] = ((__u8 *)udp)[MOA_VXLAN_VNI + 3];	/* rsvd1, as it came */
	__builtin_memcpy(&vni_new, vni_b, 4);
	__builtin_memcpy(macs, f->peer_mac, 6);
	__builtin_memcpy(macs + 6, f->src_mac, 6);
	ifindex = f->ifindex;

	/* Packet pointers are void from here on (every helper below may move the data). */
	d_addr = bpf_csum_diff(old, alen, new, alen, 0);
	d_pay = bpf_csum_diff(&vni_old, 4, &vni_new, 4, 0);
	if (ports_new != ports_old && d_pay >= 0)
		d_pay = bpf_csum_diff(&ports_old, 4, &ports_new, 4, d_pay);
	if (d_addr < 0 || d_pay < 0)
		goto error;
	/* The IPv4 header's sum over both addresses and its checksum is unchanged by the pair of
	 * writes, so a CHECKSUM_COMPLETE skb->csum needs no update for them (flags 0). */
	if (!v6 && bpf_l3_csum_replace(skb, l3 + offsetof(struct iphdr, check), 0, d_addr, 0))
		goto error;
	if (bpf_skb_store_bytes(skb, addr_off, new, alen, 0))
		goto error;
	if (ucheck && moa_flow_udp_csum(skb, l4 + MOA_UDP_CHECK, ucheck, d_addr, d_pay, pseudo))
		goto error;
	if (bpf_skb_store_bytes(skb, l4 + MOA_VXLAN_VNI, &vni_new, 4, 0))
		goto error;
	if (ports_new != ports_old && bpf_skb_store_bytes(skb, l4, &ports_new, 4, 0))
		goto error;
	/* Without a UDP checksum nothing balances the VNI's bytes: a CHECKSUM_COMPLETE sum
	 * follows them (the helper fails, harmlessly, on any other state). */
	if (!ucheck)
		bpf_csum_update(skb, d_pay);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0))
		goto error;
	moa_flow_count(MOA_FLOW_REDIRECT);
	/*
	 * A frame that reaches the box through veths from another namespace is still owned by
	 * the socket that sent it (the kernel keeps skb->sk across namespaces, for TCP small
	 * queues). Redirected as it is, it would stay charged to that socket while sch_fq holds
	 * it for the link's delay, and the sender's TCP small queues would throttle it to a few
	 * packets per delay (seen in the VM: 2 Mbit/s of a 20 Mbit/s, 20 ms link). A clone has
	 * no owner: it is sent, the original released (TC_ACT_STOLEN: consumed, not a drop). A
	 * frame from a NIC has no socket and is redirected as it is. VTEP mode frees the sender's
	 * skb at the redirect pair (XDP). BPF_PROG_TEST_RUN gives every skb a socket of no family:
	 * not a sender's.
	 */
	if (moa_flow_owned(skb)) {
		if (bpf_clone_redirect(skb, ifindex, 0))
			goto error;
		moa_flow_count(MOA_FLOW_RELEASED);
		return TC_ACT_STOLEN;
	}
	return bpf_redirect(ifindex, 0);
mismatch:
	moa_flow_count(MOA_FLOW_MISMATCH);
	return TC_ACT_OK;
error:
	moa_flow_count(MOA_FLOW_ERROR);
	return TC_ACT_SHOT;
}

/*
 * The ingress hook, after the ingress stage passed the frame: a frame of a flow-mode endpoint
 * is rewritten and redirected; any other passes on (TC_ACT_OK).
 */
static __always_inline int moa_flow_forward(struct __sk_buff *skb)
{
	struct moa_flow *f;
	struct moa_pkt pkt;
	void *data, *data_end;
	__be16 proto;
	__u32 l3;

	if (moa_parse(skb, &pkt) != MOA_PARSE_VXLAN)
		return TC_ACT_OK;
	f = bpf_map_lookup_elem(&moa_flow, &pkt.vni);
	if (!f)
		return TC_ACT_OK;
	if (f->flags & MOA_FLOW_F_PENDING) {
		/* No MAC to send it to yet: a frame passed to the stack would meet no VTEP there
		 * (and draw an ICMP port unreachable), so it is dropped and counted. */
		moa_flow_count(MOA_FLOW_PENDING);
		return TC_ACT_SHOT;
	}
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	l3 = moa_parse_eth(data, data_end, 0, &proto);
	if (!l3)
		return TC_ACT_OK;
	if (proto == bpf_htons(ETH_P_IP))
		return moa_flow_rewrite(skb, f, l3, 0);
	if (proto == bpf_htons(ETH_P_IPV6))
		return moa_flow_rewrite(skb, f, l3, 1);
	return TC_ACT_OK;
}

#endif /* MOA_FLOW_H */
