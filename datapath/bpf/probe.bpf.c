// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* probe.bpf.c - the smallest programs of each kind moa attaches, for `moa doctor` to prove that
 * this kernel accepts a direct-action tc filter and a generic-mode XDP program. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int probe_tc(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("xdp")
int probe_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
