/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * abi.h - everything that crosses the kernel/user boundary.
 *
 * Python never keeps a second copy of these definitions: datapath/libbpf/abi.py builds its
 * ctypes types from the BTF of the compiled object, so a field renamed or moved here is seen
 * there at load time (and tests/test_abi.py names the fields Python relies on).
 *
 * Fixed-width types only, explicit padding, no implicit holes.
 */
#ifndef MOA_ABI_H
#define MOA_ABI_H

#include <linux/types.h>
#include <linux/bpf.h>	/* struct bpf_spin_lock */

/* Which of the two classifier stages a parameter set, a state or a counter belongs to. */
enum moa_stage {
	MOA_STAGE_EGRESS = 0,	/* uplink egress: keyed by the receiving endpoint's VNI */
	MOA_STAGE_INGRESS = 1,	/* uplink ingress: by the sending endpoint's VNI (LAN ports) */
	MOA_NR_STAGES = 2,
};

/* Why a packet was dropped. Also the index of the per-reason drop counters. */
enum moa_drop_reason {
	MOA_DROP_LOSS = 0,	/* random loss (Bernoulli or Gilbert-Elliott) */
	MOA_DROP_QUEUE = 1,	/* tail drop: the link's backlog would exceed its queue */
	MOA_DROP_HORIZON = 2,	/* departure further ahead than the horizon (fq would drop it) */
	MOA_DROP_LINK_DOWN = 3,	/* the link is down (MOA_F_DOWN): every frame, first of all */
	MOA_DROP_AQM = 4,	/* the stage's AQM (CoDel) dropped it on its sojourn (aqm.h) */
	MOA_NR_DROP_REASONS = 5,
};

/* Loss models (stage_params.loss_model). */
enum moa_loss_model {
	MOA_LOSS_NONE = 0,
	MOA_LOSS_BERNOULLI = 1,	/* drop with probability loss_threshold / 2^32 */
	MOA_LOSS_GILBERT_ELLIOTT = 2,
};

/* stage_params.flags */
enum moa_stage_flags {
	MOA_F_REORDER = 1 << 0,	/* jitter may reorder this link's packets (netem-like) */
	MOA_F_DOWN = 1 << 1,	/* the link is down: drop every frame (MOA_DROP_LINK_DOWN) */
	MOA_F_ECN = 1 << 2,	/* the AQM marks ECN-capable packets CE instead of dropping them */
	MOA_F_CORRUPT = 1 << 3,	/* corrupt_threshold set: flip a bit of some packets (corrupt.h) */
	MOA_F_EARLY = 1 << 4,	/* netem's reorder: some packets skip the delay (early.h) */
	MOA_F_DUPLICATE = 1 << 5,	/* netem's duplicate: some sent twice (duplicate.h) */
	MOA_F_SLOT = 1 << 6,	/* departures are released in slots (slot.h): the locked path */
	MOA_F_TRACE = 1 << 7,	/* capacity follows the trace moa_trace[trace_key] (trace.h); never
				 * with MOA_F_EARLY, MOA_F_DUPLICATE or MOA_F_SLOT (refused) */
};

/* The queue's management (stage_params.aqm; docs/semantics.md, "Queue management"). Tail drop
 * (the queue limit) applies under every one of them. */
enum moa_aqm {
	MOA_AQM_TAILDROP = 0,	/* the queue limit alone */
	MOA_AQM_CODEL = 1,	/* CoDel (RFC 8289) on the sojourn each packet will have */
	MOA_AQM_PIE = 2,	/* PIE (RFC 8033): a drop probability from the queue delay */
};

/*
 * The distribution of a stage's jitter (stage_params.dist; docs/semantics.md, "Delay
 * distributions"). A table is MOA_DIST_SIZE quantiles of a distribution of mean ~0, in units of
 * 1/MOA_DIST_SCALE of the jitter (netem's scale and size): the delay is latency + jitter *
 * v[q] / MOA_DIST_SCALE for a uniform quantile index q, clamped at 0. moa_dist holds the tables,
 * written by userspace at load; the normal table also gives the innovations of a correlated
 * draw (delay.h). A custom table (a link's own, netem's .dist files) is in moa_dist_custom,
 * keyed by stage_params.dist_key, in the same form (sorted quantiles).
 */
enum moa_dist {
	MOA_DIST_UNIFORM = 0,		/* no table: uniform, latency +- jitter */
	MOA_DIST_NORMAL = 1,
	MOA_DIST_PARETO = 2,
	MOA_DIST_PARETONORMAL = 3,
	MOA_DIST_CUSTOM = 4,		/* the link's own table: moa_dist_custom[dist_key] */
	MOA_NR_DISTS = 5,
};

/*
 * Trace-driven capacity (trace.h; docs/semantics.md, "Trace-driven capacity"): Mahimahi's
 * delivery opportunities, each MOA_TRACE_OPP bytes of the link's IP packets, at t_ms[i] ms
 * from the start of the trace's period; the trace repeats every t_ms[len - 1] ms. Userspace
 * keeps t_ms non-decreasing, 1 <= len <= MOA_TRACE_MAX and t_ms[len - 1] > 0.
 */
#define MOA_TRACE_MAX (1 << 18)		/* opportunities per trace (2^18: a 19-step search) */
#define MOA_TRACE_KEYS_MAX 16		/* distinct traces held at once (moa_trace) */
#define MOA_TRACE_OPP 1500		/* bytes per opportunity */

/* Value of moa_trace, keyed by stage_params.trace_key (a hash of its content). 1 MiB. */
struct moa_trace {
	__u32 len;		/* opportunities used in t_ms */
	__u32 period_ms;	/* t_ms[len - 1]: the trace repeats after it */
	__u32 t_ms[MOA_TRACE_MAX];
};

/* Custom tables held at once (moa_dist_custom), distinct contents over every link of a box. */
#define MOA_DIST_CUSTOM_MAX 256

#define MOA_DIST_SCALE 8192	/* a table value of MOA_DIST_SCALE is one jitter */
#define MOA_DIST_SIZE 4096	/* quantiles per table: entry k is the quantile k / 4096 */
#define MOA_CDF_SIZE 16384	/* moa_dist_cdf: z from -4 to 4 in steps of 1/2048 */

struct moa_dist_table {
	__s16 v[MOA_DIST_SIZE];
};

/* The standard normal CDF as a quantile index: u[j] = floor(Phi(z) * MOA_DIST_SIZE) for
 * z = (j - MOA_CDF_SIZE / 2) / 2048, clamped to 0 .. MOA_DIST_SIZE - 1. */
struct moa_dist_cdf {
	__u16 u[MOA_CDF_SIZE];
};

/*
 * Probabilities are fixed point over 2^32: a packet is dropped when a uniform 32-bit random
 * number is below the threshold, so 0 never drops and 2^32 (which needs 33 bits, hence __u64)
 * always drops. Resolution 2.3e-10, not integer percent.
 */
struct moa_gilbert_elliott {
	__u64 p_good_to_bad;	/* per packet, in the good state */
	__u64 p_bad_to_good;	/* per packet, in the bad state */
	__u64 loss_good;	/* loss probability while good (1 - k) */
	__u64 loss_bad;		/* loss probability while bad (1 - h) */
};

/*
 * A correlated yes/no per packet (netem's reorder and duplicate; chain.h): a two-state chain
 * whose state is the previous decision. P(yes) = after_yes or after_no over 2^32 as the last
 * decision was yes or no; userspace sets them from P and the correlation rho as P + rho (1 - P)
 * and P (1 - rho), so the share of yes is P and the lag-1 autocorrelation rho.
 */
struct moa_chain {
	__u64 after_yes;
	__u64 after_no;
};

/*
 * One stage of one link endpoint. Times in ns, rate in bit/s. Userspace precomputes what the
 * datapath would otherwise divide for on every packet.
 */
struct moa_stage_params {
	__u64 rate_bps;		/* capacity in bit/s; 0 = unlimited (no timeline, no queue) */
	__u64 queue_ns;		/* queue limit as time at rate_bps (bytes * 8e9 / rate); 0 = none */
	__u64 latency_ns;	/* added after the capacity stage */
	__u64 jitter_ns;	/* uniform in [latency - jitter, latency + jitter], clamped at 0 */
	__u64 loss_threshold;	/* Bernoulli: P(drop) * 2^32 */
	struct moa_gilbert_elliott ge;
	__s16 overhead;		/* bytes charged per frame besides the frame: 24 by default (L1:
				 * preamble, SFD, FCS, IFG), -60 .. 4096 (charge.h) */
	__u8 loss_model;	/* enum moa_loss_model */
	__u8 flags;		/* enum moa_stage_flags */
	__u8 dist;		/* enum moa_dist: the jitter's distribution */
	__u8 aqm;		/* enum moa_aqm (needs rate_bps) */
	__u16 cell_size;	/* 0 = none; else a frame costs ceil((len + overhead) / cell_size)
				 * cells of cell_size + cell_overhead bytes (charge.h) */
	__s32 delay_rho;	/* correlated jitter: the previous latent draw's weight / 2^16 */
	__s32 delay_innov;	/* the new draw's, sqrt(1 - rho^2), / 2^16; 0 = none */
	__u32 aqm_target_ns;	/* CoDel: TARGET; PIE: QDELAY_REF */
	__u32 aqm_interval_ns;	/* CoDel: INTERVAL (<= 3 s: interval^2 < 2^63); PIE: T_UPDATE */
	__s16 cell_overhead;	/* bytes per cell besides its cell_size (ATM: 5); cell_size +
				 * cell_overhead >= 1 */
	__u8 slot_dist;		/* with MOA_F_SLOT: enum moa_dist of the gap between slots
				 * (UNIFORM: slot_gap_ns + a uniform share of slot_span_ns; a
				 * table: slot_gap_ns + slot_span_ns * v[q] / MOA_DIST_SCALE,
				 * clamped at 0) */
	__u8 pad1;
	__u32 dist_key;		/* dist == MOA_DIST_CUSTOM: the table's key in moa_dist_custom (a
				 * hash of its content, written by userspace before the link) */
	__u64 corrupt_threshold;	/* MOA_F_CORRUPT: P(a bit flipped) * 2^32 (corrupt.h) */
	struct moa_chain early;	/* with MOA_F_EARLY: which candidates skip the delay (early.h) */
	struct moa_chain dup;	/* with MOA_F_DUPLICATE: which packets are sent twice */
	__u32 early_gap;	/* with MOA_F_EARLY: a packet is a candidate after early_gap - 1
				 * delayed ones (netem's gap; 1 = every packet) */
	__u32 pad2;
	__u64 slot_gap_ns;	/* with MOA_F_SLOT (slot.h): the smallest gap between two slot
				 * openings (uniform) or the gaps' mean (a table) */
	__u64 slot_span_ns;	/* uniform: max - min of the gap; a table: its jitter */
	__u32 slot_packets;	/* frames a slot releases at most (0xffffffff: no limit) */
	__u32 slot_bytes;	/* frame bytes a slot releases at most (0xffffffff: no limit) */
	__u32 trace_key;	/* with MOA_F_TRACE: the trace's key in moa_trace (written before
				 * the link; rate_bps then holds the trace's mean rate) */
	__u32 trace_queue;	/* with MOA_F_TRACE: the queue limit in bytes; 0 = none */
	/* 184 bytes: the per-frame words in the first 80 (the hit path's), cells at 78 and 96,
	 * reorder and duplicate from 112, slots from 152, the trace from 176 (all read by the
	 * locked path only) */
};

/* Value of moa_links, keyed by VNI (__u32, low 24 bits). Written by userspace only. */
struct moa_link {
	__u32 slot;		/* this link's state and counters: slot * MOA_NR_STAGES + stage */
	__u32 pad0;
	struct moa_stage_params stage[MOA_NR_STAGES];
};

/*
 * CoDel's variables for one stage (RFC 8289's names; aqm.h). Times are the timeline's: a packet's
 * dequeue time is when its serialisation starts. `pending` carries the RFC's dequeue loop across
 * packets: the packet after a drop is the one the RFC dequeues next at the same time when it was
 * already queued then (arrived by `last_deq`); `next_drop` is the drop time the loop schedules
 * if that packet is still above target.
 */
struct moa_codel_state {
	__u64 first_above_time;	/* 0 = the sojourn is below target (or was not yet above) */
	__u64 drop_next;	/* when the next drop is due, while dropping */
	__u64 last_deq;		/* dequeue time of the last dropped packet (pending) */
	__u64 next_drop;	/* control_law(drop_next, count) after a drop in the loop */
	__u32 count;		/* drops (and marks) since entering the dropping state */
	__u32 lastcount;	/* count when the dropping state was last entered */
	__u8 dropping;		/* 1 in the dropping state */
	__u8 pending;		/* enum moa_codel_pending */
	__u8 pad0[6];
};

/* PIE's variables for one stage (RFC 8033's names; aqm.h): probabilities over 2^32. */
struct moa_pie_state {
	__u64 drop_prob;
	__u64 accu_prob;	/* derandomisation (below 8.5 * 2^32) */
	__u64 last_update;	/* when drop_prob was last updated (lazily, at an arrival) */
	__u32 qdelay_old;	/* the queue delay at that update (ns, at most 4 s) */
	__u32 burst_allowance;	/* ns left of MAX_BURST */
	__u8 started;		/* 1 once its first packet set last_update and the burst */
	__u8 pad0[7];
};

/*
 * A stage's AQM state, under the stage lock. `kind` is the enum moa_aqm the state belongs to:
 * a packet that finds another kind in the parameters (the link was switched at run time)
 * zeroes the state first, so each algorithm starts afresh.
 */
struct moa_aqm_state {
	__u8 kind;
	__u8 pad0[7];
	union {
		struct moa_codel_state codel;
		struct moa_pie_state pie;
	};
};

/*
 * The mutable part of a stage, shared by every CPU that sends on the link. Lives in an array
 * (moa_state) apart from the parameters so that userspace can replace parameters at run time
 * without touching - and racing with - the timeline. Reading t_last, judging the queue and
 * advancing t_last must be one step, or two CPUs can both see an empty queue and send at the
 * same departure time: edt.h makes it one by cmpxchg on t_last and t_depart (the fast path)
 * and takes the spin lock only for Gilbert-Elliott's ge_bad, the drop-event budget and its
 * fallback, which owns both words while it works.
 */
struct moa_stage_state {
	struct bpf_spin_lock lock;
	__u32 ge_bad;		/* Gilbert-Elliott: 1 while in the bad state */
	__u64 t_last;		/* the last accepted packet's end of serialisation (monotonic ns) */
	__u64 t_depart;		/* latest departure handed to fq (keeps jitter from reordering) */
	__u64 ev_window;	/* start of the current drop-event budget window */
	__u32 ev_used;		/* drop events emitted in that window */
	__u32 pad0;
	__s64 delay_z;		/* correlated jitter: the last latent draw / MOA_DIST_SCALE */
	__u64 corrupted;	/* frames this stage corrupted (corrupt.h): shared, added to
				 * atomically by the few packets it corrupts, read by userspace */
	struct moa_aqm_state aqm;	/* under `lock` (aqm.h); bytes 56-111 */
	__u32 early_count;	/* early.h, under `lock`: delayed packets since the last early */
	__u8 early_prev;	/* chain.h, under `lock`: the last reorder decision (1 = early) */
	__u8 dup_prev;		/* chain.h, under `lock`: the last duplicate decision */
	__u8 pad1[2];
	__u64 duplicated;	/* frames of the copies this stage sent (duplicate.h): shared, added
				 * to atomically by duplicated packets only, read by userspace */
	__u64 slot_next;	/* under `lock` (slot.h): when this slot opens (monotonic ns) */
	__u32 slot_pkts;	/* frames released in that slot so far */
	__u32 slot_used;	/* and their bytes */
	/* The trace's position (trace.h), under `lock`: the next byte the link can deliver is
	 * in opportunity trace_idx of the period that starts at trace_origin, which has
	 * trace_left bytes left (0 = none, the next opportunity's MOA_TRACE_OPP follow).
	 * trace_key is the trace it belongs to: another one in the parameters restarts it. */
	__u64 trace_origin;	/* monotonic ns */
	__u32 trace_key;
	__u32 trace_idx;
	__u32 trace_left;
	__u32 pad2;
	/* 168 bytes: the hit path's words (t_last, t_depart) in the first 24; the AQM's,
	 * reorder's, duplicate's, the slot's and the trace's after them */
};

/*
 * The sojourn histogram (moa_link_counters.sojourn; docs/semantics.md, "Queue telemetry"): a
 * passed packet's wait on the timeline before its serialisation starts (start - now, the
 * sojourn the AQM judges; 0 on a stage without a rate) is counted in bucket
 * min(bit_length(sojourn >> MOA_SOJOURN_SHIFT), MOA_SOJOURN_BUCKETS - 1): bucket 0 is
 * [0, 2^10) ns, bucket k (1..20) is [2^(9+k), 2^(10+k)) ns, bucket 21 is [2^30 ns, inf) -
 * below 1.024 us up to over 1.07 s, one octave per bucket.
 */
#define MOA_SOJOURN_SHIFT 10
#define MOA_SOJOURN_BUCKETS 22

/* Per-CPU counters of one stage of one link (moa_counters, index slot * 2 + stage). */
struct moa_link_counters {
	__u64 packets;		/* passed (frames, counting every GSO segment) */
	__u64 bytes;		/* passed, inner frame bytes as charged, without L1 overhead */
	__u64 drops[MOA_NR_DROP_REASONS];
	__u64 events_suppressed;	/* drops not reported as events: over budget */
	__u64 handover;		/* egress: packets that came with an ingress-stage handover */
	__u64 marks;		/* ECN: packets the AQM marked CE instead of dropping (frames) */
	__u64 sojourn[MOA_SOJOURN_BUCKETS];	/* passed frames by sojourn (bytes 80-255) */
	/* 256 bytes, four cache lines (80 before the histogram). sojourn[0] is never written: the
	 * datapath leaves bucket 0 implicit and the reader takes it as packets minus the other
	 * buckets, so a passed packet that did not wait writes packets and bytes (line 0) only, as
	 * before; one that waited 1.024 us or more also writes its bucket (1-5 in line 1 with
	 * marks, 6-13 line 2, 14-21 line 3). An AQM drop or mark writes words 6 or 9. */
};

/* Per-CPU global counters (moa_global, one entry). */
struct moa_global_counters {
	__u64 non_vxlan;	/* frames that were not VXLAN to our port: passed untouched */
	__u64 unknown_vni;	/* VXLAN frames whose VNI no link owns: passed untouched */
	__u64 ringbuf_fail;	/* drop events lost: ring buffer reservation failed */
	__u64 handover;		/* egress frames that carried an ingress-stage handover mark */
	__u64 events_suppressed;	/* sum of every link's events_suppressed; unlike theirs it
					 * outlives deleted links, so it only ever grows */
	__u64 port_held;	/* frames a LAN member's VTEP held until their port-exit time */
	__u64 reserved[2];
};

/*
 * The box's own record (moa_box, one entry), written by userspace only: the highest generation
 * the service has handed out. It lives in the kernel beside the links it describes, so a
 * service whose state directory was lost still never hands out a generation that goes back
 * (docs/architecture.md, "Desired state").
 */
struct moa_box {
	__u64 generation;
	__u64 reserved[3];
};

/*
 * The UDP ports that carry VXLAN besides vxlan_port (config.h), one bit per port (bit p % 64 of
 * word p / 64): moa_vxlan_ports, one entry, written by userspace only. It holds the ports of
 * moa's VTEPs (an endpoint's `port`), set before a VTEP on it exists (datapath/plan/ports.py).
 */
struct moa_port_set {
	__u64 bits[1024];
};

/*
 * A device's root qdisc tree as it was before moa put sch_fq there (moa_saved_qdiscs, key: the
 * device's name, NUL-padded): its qdiscs, classes and filters as rtnetlink messages, put back
 * when moa releases the device (datapath/netlink/qdisc_tree.py). Userspace only. It lives in
 * the kernel beside what replaced it: a restarted service still knows what to put back.
 */
struct moa_saved_qdiscs {
	__u32 len;		/* bytes of data used */
	__u32 reserved;
	__u8 data[65528];
};

/* 2: reserved[] added (version 1 had none). */
#define MOA_DROP_EVENT_VERSION 2

/*
 * A drop, as written to the moa_events ring buffer. Versioned: a reader refuses a version it
 * does not know (datapath/classifier.py). New fields take reserved words (written 0 until then)
 * and bump the version, so the record keeps its size.
 */
struct moa_drop_event {
	__u8 version;		/* MOA_DROP_EVENT_VERSION */
	__u8 reason;		/* enum moa_drop_reason */
	__u8 stage;		/* enum moa_stage */
	__u8 pad0;
	__u32 vni;
	__u64 time_ns;		/* bpf_ktime_get_ns() at the drop */
	__u32 len;		/* inner bytes of the dropped packet (all GSO segments) */
	__u32 segs;		/* frames in it (GSO segments) */
	__u64 reserved[2];
};

/*
 * The point-to-point redirect pair (pair_redirect.bpf.c, datapath/pair.py).
 */

/* Value of moa_pair_peers (key: the ingress VTEP's ifindex): where its frames go. */
struct moa_pair_peer {
	__u32 peer_ifindex;	/* the other VTEP of the link, same network namespace */
	__u32 peer_mtu;		/* its MTU: larger frames cannot be redirected by generic XDP */
};

/* Index of the per-CPU __u64 counters of moa_pair_stats. */
enum moa_pair_counter {
	MOA_PAIR_XDP_REDIRECT = 0,	/* XDP redirected through the DEVMAP */
	MOA_PAIR_XDP_TOO_BIG = 1,	/* XDP passed to tc: larger than the peer's MTU (GRO/GSO) */
	MOA_PAIR_TC_REDIRECT = 2,	/* tc ingress bpf_redirect to the peer */
	MOA_PAIR_MISS = 3,		/* no peer for this ifindex: passed to the stack */
	MOA_PAIR_NR_COUNTERS = 4,
};

/*
 * Flow mode (flow.h; docs/architecture.md, "Flow mode"): a point-to-point endpoint with no
 * VTEP in the box. The uplink's ingress rewrites the outer headers of its frames toward the
 * other endpoint and sends them out of the uplink again, where the egress stage shapes them
 * under the peer's VNI. Written by userspace only (datapath/flow.py).
 */

/* Value of moa_flow, keyed by the sending endpoint's VNI (the frame's VNI as it arrives). */
struct moa_flow {
	__u32 peer_vni;		/* the other endpoint's VNI: the frame leaves with it */
	__u32 ifindex;		/* the device the frame leaves by, egress: the uplink */
	__u8 peer_mac[6];	/* outer destination MAC: the peer's hypervisor or the next hop */
	__u8 src_mac[6];	/* outer source MAC: the uplink's */
	__u8 family;		/* 4 or 6: the outer IP version of both addresses, and of the
				 * frames the entry applies to */
	__u8 flags;		/* MOA_FLOW_F_* */
	__u16 peer_port;	/* the peer VTEP's UDP port, host order: the new destination */
	__u8 src_ip[16];	/* the box's address, the frame's outer destination on arrival and
				 * its source on departure (IPv4: the first 4 bytes, the rest 0) */
	__u8 peer_ip[16];	/* the peer endpoint's VTEP: the new outer destination */
	/* 56 bytes */
};

/* moa_flow.flags */
enum moa_flow_flag {
	/* The next hop toward peer_ip has not answered ARP / neighbour discovery yet: peer_mac is
	 * unknown, the endpoint's frames are dropped (MOA_FLOW_PENDING) until the service writes
	 * the entry again with the MAC (datapath/next_hops.py). */
	MOA_FLOW_F_PENDING = 1,
};

/* Index of the per-CPU __u64 counters of moa_flow_stats. */
enum moa_flow_counter {
	MOA_FLOW_REDIRECT = 0,	/* rewritten and sent out of moa_flow.ifindex */
	MOA_FLOW_MISMATCH = 1,	/* an entry, but the frame's outer family or destination is not
				 * the entry's (not addressed to the box): passed untouched */
	MOA_FLOW_ERROR = 2,	/* a rewrite helper failed: dropped, never sent half rewritten */
	MOA_FLOW_RELEASED = 3,	/* of the redirected, those a local socket still owned: sent as a
				 * clone, the original released (flow.h) */
	MOA_FLOW_PENDING = 4,	/* an entry whose next hop is not resolved yet
				 * (MOA_FLOW_F_PENDING): dropped, as a VTEP drops frames its
				 * neighbour entry cannot send */
	MOA_NR_FLOW_COUNTERS = 5,
};

#endif /* MOA_ABI_H */
