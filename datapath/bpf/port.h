/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * port.h - a LAN as two real hops: the sender's port, then the shared queue to the receiver.
 *
 * The LAN case of docs/semantics.md (x0 floods x2 over a LAN of capacity C, x1 sends 0.5 C to x2):
 * a real switch drops x0's excess at x0's own port and lets the port to x2 share C among
 * what actually arrives. The ingress stage (uplink ingress, keyed by the sender's VNI) decides
 * the sender's port: drop, or the delay until the frame has left that port. Applying that
 * delay only after the receiver's stage has judged the frame (one computation at the uplink's
 * egress) is not causal: the shared queue sees x0's frames when they arrive at the box, not
 * when they would reach the switch, and x0, always first at every freed slot, kept x1 near
 * 0.2 C in the VM tier instead of C/3.
 *
 * So the frame waits where it is after bridging: on the receiving member's VTEP, whose root
 * qdisc is sch_fq. This program, on that VTEP's tc egress (before the qdisc), takes the
 * handover delay out of skb->mark and makes it the frame's departure; fq releases the frame at
 * its port-exit time, the VTEP encapsulates it and the uplink's egress stage judges it then,
 * against whatever else has reached the shared queue by that time. The bridge clears
 * skb->tstamp (br_forward_finish), which is why the departure is written here and not on the
 * uplink's ingress; skb->mark survives decapsulation and bridging (handover.h).
 *
 * The delay was measured from the uplink's ingress; bridging takes microseconds, so the frame
 * leaves that much late, far below fq's own timer slack. Frames without a handover (no port
 * backlog) leave at once: the bridge has already cleared their tstamp.
 */
#ifndef MOA_PORT_H
#define MOA_PORT_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "handover.h"
#include "maps.h"
#include "tstamp.h"

/* moa_port_hold: the handover in skb->mark becomes the frame's departure (sch_fq holds it). */
static __always_inline int moa_port_hold_frame(struct __sk_buff *skb)
{
	struct moa_global_counters *g;
	__u64 delay = moa_handover_take(skb);

	if (!delay)
		return TC_ACT_OK;
	moa_set_departure(skb, bpf_ktime_get_ns() + delay);
	g = moa_global_counters();
	if (g)
		g->port_held++;
	return TC_ACT_OK;
}

#endif /* MOA_PORT_H */
