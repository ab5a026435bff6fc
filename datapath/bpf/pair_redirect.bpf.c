// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * pair_redirect.bpf.c - the point-to-point "wire" between two VTEPs of the box.
 *
 * Two programs, attached to both VTEPs of a pair:
 *  - moa_pair_xdp (generic/SKB mode: VXLAN has no native XDP) redirects, through a DEVMAP,
 *    the frames that fit the peer's MTU;
 *  - moa_pair_tc (tc ingress, direct action) redirects with bpf_redirect(peer, 0) whatever XDP
 *    passed: GRO/GSO super-packets, which generic XDP refuses to redirect (xdp_redirect_err
 *    EMSGSIZE, docs/kernel-facts.md: TCP through an XDP-only pair collapsed to 0 Mbit/s).
 * Either program works alone: tc alone carries everything (the XDP program is optional, see
 * datapath/pair.py for which mode moa attaches and why).
 *
 * Both redirects send the frame out of the peer VTEP, which encapsulates it; the outer packet
 * then leaves through the IP stack and the uplink's egress classifier and qdisc (tests prove it).
 * No MAC filtering: LLDP, LACP and STP frames cross like on a wire.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "pair.h"

SEC("xdp")
int moa_pair_xdp(struct xdp_md *ctx)
{
	__u32 key = ctx->ingress_ifindex;
	struct moa_pair_peer *peer = bpf_map_lookup_elem(&moa_pair_peers, &key);
	__u64 len = ctx->data_end - ctx->data;

	if (!peer) {
		pair_count(MOA_PAIR_MISS);
		return XDP_PASS;
	}
	/* Generic XDP redirect drops what exceeds the target's MTU: leave it to tc. */
	if (len > (__u64)peer->peer_mtu + ETH_HLEN) {
		pair_count(MOA_PAIR_XDP_TOO_BIG);
		return XDP_PASS;
	}
	pair_count(MOA_PAIR_XDP_REDIRECT);
	/* On a missing DEVMAP entry the frame goes on to tc rather than being dropped. */
	return bpf_redirect_map(&pair_devmap, key, XDP_PASS);
}

SEC("tc")
int moa_pair_tc(struct __sk_buff *skb)
{
	__u32 key = skb->ifindex;
	struct moa_pair_peer *peer = bpf_map_lookup_elem(&moa_pair_peers, &key);

	if (!peer) {
		pair_count(MOA_PAIR_MISS);
		return TC_ACT_OK;
	}
	pair_count(MOA_PAIR_TC_REDIRECT);
	/* Flags 0: out of the peer's egress (encapsulation), in this namespace: no scrub, the
	 * skb's mark and priority survive. */
	return bpf_redirect(peer->peer_ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Keeps enum moa_pair_counter in the object's BTF (datapath/pair.py reads the counter names
 * from it); read-only and never referenced. */
const volatile enum moa_pair_counter moa_abi_pair_counter;
