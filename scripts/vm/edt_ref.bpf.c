// SPDX-License-Identifier: Apache-2.0
/* The VM tier's reference EDT program: what the harness measures before moa's own classifier
 * exists, and what moa's classifier is compared with afterwards. Attached direct-action on the
 * box uplink's tc egress, under sch_fq on the uplink's (slave) devices. For VXLAN packets of one
 * VNI it applies a capacity timeline (Cilium bpf/lib/edt.h, the kernel's test_tc_edt.c) and then
 * a constant delay; every other packet goes on to the next filter (TC_ACT_UNSPEC), so it shares
 * the hook with moa's classifier (which sits at a later prio).
 *
 * Parameters are compile-time (moa_bus.lab.vm.shaping.build_edt_ref builds one object per configuration):
 *   VNI       the shaped VXLAN network identifier
 *   DELAY_NS  added one-way delay
 *   RATE_BPS  capacity in bit/s, 0 = unlimited; charged per inner frame + 24 bytes L1 overhead
 *   QUEUE_NS  backlog (in time at RATE_BPS) above which a packet is tail-dropped
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef VNI
#define VNI 101
#endif
#ifndef DELAY_NS
#define DELAY_NS 0ULL
#endif
#ifndef RATE_BPS
#define RATE_BPS 0ULL
#endif
#ifndef QUEUE_NS
#define QUEUE_NS 100000000ULL
#endif

#define VXLAN_PORT 4789
/* Outer Ethernet + IPv4 (no options) + UDP + VXLAN: what a segment carries beyond its inner frame. */
#define OUTER_LEN (14 + 20 + 8 + 8)
/* Preamble + SFD + FCS + inter-frame gap, per inner frame (docs/semantics.md). */
#define L1_OVERHEAD 24

struct timeline {
	struct bpf_spin_lock lock;
	__u64 t_last;		/* departure of the previous packet at RATE_BPS (ns, MONO) */
	__u64 passed;
	__u64 dropped;
};

/* One timeline shared by all CPUs: two CPUs sending on one link must not both take a slot. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct timeline);
} edt_ref_timeline SEC(".maps");

struct vxlanhdr {
	__u8 flags;
	__u8 reserved1[3];
	__u8 vni[3];
	__u8 reserved2;
};

static __always_inline int is_shaped_vni(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	struct vxlanhdr *vx = (void *)(udp + 1);

	if ((void *)(vx + 1) > end)
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return 0;
	if (udp->dest != bpf_htons(VXLAN_PORT))
		return 0;
	return ((__u32)vx->vni[0] << 16 | (__u32)vx->vni[1] << 8 | vx->vni[2]) == VNI;
}

/* Bytes the link is charged for: every inner frame plus L1_OVERHEAD. Not skb->wire_len: on a
 * VXLAN-encapsulated GSO packet the kernel's qdisc_pkt_len_init() takes the outer UDP header for
 * the TCP header (6.1, net/core/dev.c) and undercounts every segment's replicated headers by the
 * inner headers (seen: 5% more goodput than the link's rate). So: total inner payload, plus
 * each segment's inner headers and overhead. */
static __always_inline __u64 charged_bytes(struct __sk_buff *skb)
{
	__u64 segs = skb->gso_segs ? skb->gso_segs : 1;
	__u32 hdrs = ETH_HLEN + sizeof(struct iphdr) + sizeof(struct tcphdr) + 12; /* fallback */
	struct iphdr iph;
	struct tcphdr th;

	if (bpf_skb_load_bytes(skb, OUTER_LEN + ETH_HLEN, &iph, sizeof(iph)) == 0 &&
	    iph.version == 4) {
		__u32 l3 = ETH_HLEN + iph.ihl * 4;

		if (iph.protocol == IPPROTO_TCP &&
		    bpf_skb_load_bytes(skb, OUTER_LEN + l3, &th, sizeof(th)) == 0)
			hdrs = l3 + th.doff * 4;
		else
			hdrs = l3 + (iph.protocol == IPPROTO_UDP ? sizeof(struct udphdr) : 0);
	}
	if (skb->len < OUTER_LEN + hdrs)
		return skb->len + L1_OVERHEAD;
	return skb->len - OUTER_LEN - hdrs + segs * (hdrs + L1_OVERHEAD);
}

SEC("tc")
int edt_ref(struct __sk_buff *skb)
{
	__u64 now = bpf_ktime_get_ns(), depart = now;
	struct timeline *tl;
	__u32 zero = 0;

	/* Not ours: TC_ACT_UNSPEC lets the next filter (moa's classifier, at a later prio on the
	 * same hook) see the packet; TC_ACT_OK would end the filter chain here. */
	if (!is_shaped_vni(skb))
		return TC_ACT_UNSPEC;
	tl = bpf_map_lookup_elem(&edt_ref_timeline, &zero);
	if (!tl)
		return TC_ACT_UNSPEC;

	if (RATE_BPS) {
		__u64 ser = charged_bytes(skb) * 8 * 1000000000ULL / RATE_BPS;
		int drop = 0;

		bpf_spin_lock(&tl->lock);
		depart = (tl->t_last > now ? tl->t_last : now) + ser;
		if (depart - now > QUEUE_NS) {
			drop = 1;
			tl->dropped++;
		} else {
			tl->t_last = depart;
			tl->passed++;
		}
		bpf_spin_unlock(&tl->lock);
		if (drop)
			return TC_ACT_SHOT;
	}
	/* MONO: skb->tstamp may hold a CLOCK_REALTIME receive time (docs/kernel-facts.md). */
	bpf_skb_set_tstamp(skb, depart + DELAY_NS, BPF_SKB_TSTAMP_DELIVERY_MONO);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
