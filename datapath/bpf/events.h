/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * events.h - drop events into the moa_events ring buffer.
 *
 * Bounded: a link stage reports at most event_budget drops per event_window_ns (decided under
 * its lock, edt.h); the rest only count as events_suppressed. A reservation that fails (ring
 * full: the reader is behind) counts as ringbuf_fail, so every drop is either reported or
 * counted as not reported.
 */
#ifndef MOA_EVENTS_H
#define MOA_EVENTS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"
#include "maps.h"

static __always_inline void moa_emit_drop(__u32 vni, __u8 stage, __u8 reason, __u64 now,
					  __u32 len, __u32 segs)
{
	struct moa_drop_event *ev;

	ev = bpf_ringbuf_reserve(&moa_events, sizeof(*ev), 0);
	if (!ev) {
		struct moa_global_counters *g = moa_global_counters();

		if (g)
			g->ringbuf_fail++;
		return;
	}
	ev->version = MOA_DROP_EVENT_VERSION;
	ev->reason = reason;
	ev->stage = stage;
	ev->pad0 = 0;
	ev->vni = vni;
	ev->time_ns = now;
	ev->len = len;
	ev->segs = segs;
	ev->reserved[0] = 0;
	ev->reserved[1] = 0;
	bpf_ringbuf_submit(ev, 0);
}

/* A drop over its link stage's budget: counted per link and globally (the global total is what
 * telemetry reports as `suppressed`; a link's own count goes with the link when it is deleted). */
static __always_inline void moa_count_suppressed(struct moa_link_counters *cnt)
{
	struct moa_global_counters *g = moa_global_counters();

	cnt->events_suppressed++;
	if (g)
		g->events_suppressed++;
}

#endif /* MOA_EVENTS_H */
