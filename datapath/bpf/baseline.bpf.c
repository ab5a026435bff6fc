// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The datapath benchmark's baseline: a tc program that does nothing
 * (moa_bus/lab/datapath_bench.py). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tc")
int moa_baseline(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
