// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * moa's emulation classifier: tc clsact programs (direct action) for the uplink.
 *
 *   moa_egress   keyed by the receiving endpoint's VNI: the link toward it (capacity, queue,
 *                loss, latency, jitter), plus the ingress stage's handover delay.
 *   moa_ingress  keyed by the sending endpoint's VNI: the sender's own port on a LAN (capacity,
 *                queue, loss); its delay goes to the egress stage in skb->mark (handover.h).
 *                In flow mode, then, a point-to-point endpoint's frame is rewritten toward
 *                the other endpoint and sent back out of the uplink (flow.h).
 *   moa_port_hold  on the egress of a LAN member's VTEP (root qdisc sch_fq): turns that
 *                handover into the frame's departure, so the frame reaches the uplink's egress
 *                stage when it leaves the sender's emulated port (port.h).
 *
 * The logic lives in the headers, one per concern; docs/architecture.md gives the order. Each
 * program's body comes from one header: classify.h (the two stages), port.h (the hold).
 */
#include "abi.h"
#include "classify.h"
#include "port.h"
#include "flow.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * The ABI's enums and the drop event appear in no map definition; these typed globals keep
 * them in the object's BTF, from which datapath/libbpf/abi.py builds its mirror. Read-only and
 * never referenced, they cost nothing at run time.
 */
const volatile enum moa_stage moa_abi_stage;
const volatile enum moa_drop_reason moa_abi_drop_reason;
const volatile enum moa_loss_model moa_abi_loss_model;
const volatile enum moa_stage_flags moa_abi_stage_flags;
const volatile enum moa_dist moa_abi_dist;
const volatile enum moa_aqm moa_abi_aqm;
const volatile struct moa_drop_event moa_abi_drop_event;
const volatile enum moa_flow_counter moa_abi_flow_counter;
const volatile enum moa_flow_flag moa_abi_flow_flag;

/* abi.h's macros, as enumerators Python can read from BTF. */
enum moa_abi_consts {
	MOA_ABI_DROP_EVENT_VERSION = MOA_DROP_EVENT_VERSION,
	MOA_ABI_DIST_SCALE = MOA_DIST_SCALE,
	MOA_ABI_DIST_SIZE = MOA_DIST_SIZE,
	MOA_ABI_CDF_SIZE = MOA_CDF_SIZE,
	MOA_ABI_DIST_CUSTOM_MAX = MOA_DIST_CUSTOM_MAX,
	MOA_ABI_SOJOURN_SHIFT = MOA_SOJOURN_SHIFT,
	MOA_ABI_SOJOURN_BUCKETS = MOA_SOJOURN_BUCKETS,
	MOA_ABI_TRACE_MAX = MOA_TRACE_MAX,
	MOA_ABI_TRACE_KEYS_MAX = MOA_TRACE_KEYS_MAX,
	MOA_ABI_TRACE_OPP = MOA_TRACE_OPP,
};
const volatile enum moa_abi_consts moa_abi_consts;

SEC("tc")
int moa_egress(struct __sk_buff *skb)
{
	return moa_classify(skb, MOA_STAGE_EGRESS);
}

SEC("tc")
int moa_ingress(struct __sk_buff *skb)
{
	int verdict;

	/* Without flow mode, the program it always was (the verifier drops the rest). */
	if (!flow_mode)
		return moa_classify(skb, MOA_STAGE_INGRESS);
	/* The sender's port first (a LAN member's, or a point-to-point endpoint's own stage when
	 * it has one): a frame it drops is not forwarded. Its handover mark rides along. */
	verdict = moa_classify(skb, MOA_STAGE_INGRESS);
	return verdict == TC_ACT_OK ? moa_flow_forward(skb) : verdict;
}

SEC("tc")
int moa_port_hold(struct __sk_buff *skb)
{
	return moa_port_hold_frame(skb);
}
