// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * selftest.bpf.c - a tiny object for the loader's own tests (tests/test_libbpf.py, test_abi.py).
 *
 * It uses every type of abi.h in a map or a global, because BTF only holds the types an object
 * uses: that lets datapath/libbpf/abi.py build its mirror from this object as well as from
 * the classifier. Map names start with "moa_" so that pin_root pins them.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"
#include "sojourn.h"

/* Load-time settings (.rodata): the tests set them before load and read them back via test_run. */
const volatile __u32 st_echo = 7;
const volatile __u64 st_wide = 0;
const volatile __u8 st_small = 0;
/* Dummies so that the enums of abi.h appear in BTF. */
const volatile enum moa_stage st_stage = MOA_STAGE_EGRESS;
const volatile enum moa_drop_reason st_reason = MOA_DROP_LOSS;
const volatile enum moa_loss_model st_loss = MOA_LOSS_NONE;
const volatile enum moa_stage_flags st_flags = MOA_F_REORDER;
const volatile enum moa_dist st_dist = MOA_DIST_UNIFORM;
const volatile enum moa_aqm st_aqm = MOA_AQM_TAILDROP;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, struct moa_link);
} moa_st_links SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct moa_stage_state);
} moa_st_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct moa_link_counters);
} moa_st_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, struct moa_global_counters);
} moa_st_global SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} moa_st_events SEC(".maps");

/* abi.h's macros as enumerators (BTF has no macros), like the classifier does. */
enum moa_abi_consts {
	MOA_ABI_DROP_EVENT_VERSION = MOA_DROP_EVENT_VERSION,
	MOA_ABI_DIST_SCALE = MOA_DIST_SCALE,
	MOA_ABI_DIST_SIZE = MOA_DIST_SIZE,
	MOA_ABI_CDF_SIZE = MOA_CDF_SIZE,
	MOA_ABI_SOJOURN_SHIFT = MOA_SOJOURN_SHIFT,
	MOA_ABI_SOJOURN_BUCKETS = MOA_SOJOURN_BUCKETS,
};
const volatile enum moa_abi_consts st_consts;

/* A drop event template, so struct moa_drop_event is in BTF (ring buffers carry no value type). */
struct moa_drop_event st_event_template;

/* The distribution tables, so their structs are in BTF as they are in the classifier's. */
struct moa_dist_table st_dist_template;
struct moa_dist_cdf st_cdf_template;

/* The box record, so struct moa_box is in BTF as it is in the classifier's. */
struct moa_box st_box_template;

/* Flow mode's entry and counters (flow.h), in BTF as in the classifier's. */
struct moa_flow st_flow_template;
const volatile enum moa_flow_counter st_flow_counter = MOA_FLOW_REDIRECT;

/* Returns the .rodata value the loader set: proves rodata offsets and sizes. */
SEC("tc")
int st_echo_prog(struct __sk_buff *skb)
{
	return st_echo + (__u32)st_wide + st_small;
}

/* Writes the context: mark, tstamp and cb[0], to be read back from ctx_out. */
SEC("tc")
int st_ctx_prog(struct __sk_buff *skb)
{
	skb->mark = skb->mark + st_echo;
	skb->tstamp = skb->tstamp + 1000;
	skb->cb[0] = skb->len;
	return TC_ACT_OK;
}

/* Emits one drop event (vni = mark) and counts it in counters[0] on this CPU. */
SEC("tc")
int st_event_prog(struct __sk_buff *skb)
{
	struct moa_drop_event *ev;
	struct moa_link_counters *c;
	__u32 zero = 0;

	c = bpf_map_lookup_elem(&moa_st_counters, &zero);
	if (c)
		c->packets++;
	ev = bpf_ringbuf_reserve(&moa_st_events, sizeof(*ev), 0);
	if (!ev)
		return TC_ACT_SHOT;
	ev->version = MOA_DROP_EVENT_VERSION;
	ev->reason = MOA_DROP_QUEUE;
	ev->stage = MOA_STAGE_INGRESS;
	ev->pad0 = 0;
	ev->vni = skb->mark;
	ev->time_ns = bpf_ktime_get_ns();
	ev->len = skb->len;
	ev->segs = 1;
	ev->reserved[0] = 0;
	ev->reserved[1] = 0;
	bpf_ringbuf_submit(ev, 0);
	return TC_ACT_OK;
}

/* Returns the value of moa_st_links[mark].slot, or -1: proves userspace map writes are seen. */
SEC("tc")
int st_lookup_prog(struct __sk_buff *skb)
{
	__u32 key = skb->mark;
	struct moa_link *l = bpf_map_lookup_elem(&moa_st_links, &key);

	return l ? (int)l->slot : -1;
}

/* Returns the sojourn bucket (sojourn.h) of the little-endian __u64 in the frame's first 8
 * bytes: the classifier's bucket function, its edges tested exactly (test_classifier_sojourn). */
SEC("tc")
int st_sojourn_prog(struct __sk_buff *skb)
{
	__u64 ns = 0;

	if (bpf_skb_load_bytes(skb, 0, &ns, sizeof(ns)))
		return -1;
	return moa_sojourn_bucket(ns);
}

/*
 * What a frame's departure looks like where it arrives: on a tc ingress hook, each frame's
 * __sk_buff->tstamp and tstamp_type (reading tstamp_type gives the raw tstamp), in arrival
 * order in st_tstamps (at most 64; st_tstamps_seen counts every frame). The duplication
 * test attaches it to the peer of a veth pair whose other end has the classifier
 * (docs/kernel-facts.md, "Duplication").
 */
struct st_tstamp_seen {
	__u64 tstamp;
	__u32 type;
	__u32 len;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct st_tstamp_seen);
} st_tstamps SEC(".maps");

__u32 st_tstamps_seen;

SEC("tc")
int st_tstamp_prog(struct __sk_buff *skb)
{
	__u32 i = __sync_fetch_and_add(&st_tstamps_seen, 1);
	struct st_tstamp_seen *r = bpf_map_lookup_elem(&st_tstamps, &i);

	if (r) {
		r->tstamp = skb->tstamp;
		r->type = skb->tstamp_type;
		r->len = skb->len;
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
