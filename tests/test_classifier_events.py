"""Drop events: the ring buffer read back through the asyncio integration, the per-link-stage
budget (events_suppressed), and reservation failures (ringbuf_fail)."""
from __future__ import annotations

import asyncio
import ctypes
import time

import pytest

from datapath.classifier import Classifier, ClassifierConfig, DropEventError
from schemas import Emulation
from tests.fixtures.packets import inner_udp, outer_len, vxlan

VNI = 500
FRAME = vxlan(VNI, inner_udp(200))
INNER = len(FRAME) - outer_len(FRAME)


def mono() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


async def collect(c: Classifier, run, want: int, settle: float = 0.1) -> list:
    """Attach a reader to the running loop, run `run()`, wait for `want` events, then a bit
    longer to see that no more come."""
    got: list = []
    enough = asyncio.Event()

    def on_event(ev) -> None:
        got.append(ev)
        if len(got) >= want:
            enough.set()

    rb = c.drop_event_reader(on_event)
    rb.attach(asyncio.get_running_loop())
    try:
        run()
        await asyncio.wait_for(enough.wait(), 10)
        await asyncio.sleep(settle)
    finally:
        rb.detach()
        rb.close()
    return got


async def test_drop_events_through_asyncio_within_budget() -> None:
    cfg = ClassifierConfig(max_links=8, event_budget=5, event_window_ns=60 * 10**9)
    with Classifier.load(cfg) as c:
        c.set_link(VNI, egress=Emulation(loss=1.0))
        t0 = mono()
        events = await collect(c, lambda: c.egress_program.test_run(
            FRAME, ctx=c.abi.SkBuff(), repeat=100), want=5)
        t1 = mono()
        assert len(events) == 5
        for ev in events:
            assert ev.version == c.event_version == 2
            assert list(ev.reserved) == [0, 0]
            assert (ev.vni, ev.reason, ev.stage) == (VNI, c.abi.DropReason.LOSS, c.abi.Stage.EGRESS)
            assert (ev.len, ev.segs) == (INNER, 1)
            assert t0 <= ev.time_ns <= t1
        counts = c.link_counters(VNI)["egress"]
        assert counts.drops["loss"] == 100
        assert counts.events_suppressed == 95
        assert c.global_counters()["ringbuf_fail"] == 0


async def test_budget_is_per_window_and_per_link_stage() -> None:
    cfg = ClassifierConfig(max_links=8, event_budget=3, event_window_ns=2_000_000)
    with Classifier.load(cfg) as c:
        c.set_link(VNI, egress=Emulation(loss=1.0), ingress=Emulation(loss=1.0))

        def bursts() -> None:
            ctx = c.abi.SkBuff()
            c.egress_program.test_run(FRAME, ctx=ctx, repeat=10)
            c.ingress_program.test_run(FRAME, ctx=ctx, repeat=10)
            time.sleep(0.01)                      # > one window
            c.egress_program.test_run(FRAME, ctx=ctx, repeat=10)

        events = await collect(c, bursts, want=9)
        assert len(events) == 9
        stages = [int(ev.stage) for ev in events]
        assert stages.count(int(c.abi.Stage.EGRESS)) == 6
        assert stages.count(int(c.abi.Stage.INGRESS)) == 3
        counts = c.link_counters(VNI)
        assert counts["egress"].events_suppressed == 14
        assert counts["ingress"].events_suppressed == 7


async def test_queue_and_horizon_drops_are_reported_with_their_reason() -> None:
    with Classifier.load(ClassifierConfig(max_links=8)) as c:
        c.set_link(VNI, egress=Emulation(capacity=8_000_000, queue=2 * (INNER + 24)))
        c.set_link(VNI + 1, egress=Emulation(latency=20 * 10**9))
        frame2 = vxlan(VNI + 1, inner_udp(200))

        def run() -> None:
            c.egress_program.test_run(FRAME, ctx=c.abi.SkBuff(), repeat=5)
            c.egress_program.test_run(frame2, ctx=c.abi.SkBuff(), repeat=2)

        events = await collect(c, run, want=5)
        reasons = sorted((ev.vni, c.abi.DropReason(ev.reason).name) for ev in events)
        assert reasons == [(VNI, "QUEUE")] * 3 + [(VNI + 1, "HORIZON")] * 2


def test_full_ring_buffer_counts_every_lost_event() -> None:
    cfg = ClassifierConfig(max_links=8, ringbuf_bytes=4096, event_budget=1_000_000)
    with Classifier.load(cfg) as c:
        c.set_link(VNI, egress=Emulation(loss=1.0))
        c.egress_program.test_run(FRAME, ctx=c.abi.SkBuff(), repeat=1000)
        got: list = []
        rb = c.drop_event_reader(got.append)
        try:
            rb.consume()
        finally:
            rb.close()
        fails = c.global_counters()["ringbuf_fail"]
        assert 0 < len(got) < 1000
        assert len(got) + fails == 1000
        assert c.link_counters(VNI)["egress"].events_suppressed == 0


def test_a_record_of_another_version_or_size_is_refused() -> None:
    """The reader refuses what it cannot read rather than misread it (abi.h: any change to
    struct moa_drop_event bumps MOA_DROP_EVENT_VERSION)."""
    with Classifier.load(ClassifierConfig(max_links=8)) as c:
        ev = c.abi.DropEvent(version=c.event_version, vni=VNI, len=100, segs=1)
        assert c.parse_drop_event(bytes(ev)).vni == VNI
        old = c.abi.DropEvent(version=c.event_version - 1, vni=VNI)
        with pytest.raises(DropEventError, match="version 1"):
            c.parse_drop_event(bytes(old))
        with pytest.raises(DropEventError, match="expected 40"):
            c.parse_drop_event(bytes(ev)[:24])  # a version 1 record: no reserved words
        assert ctypes.sizeof(c.abi.DropEvent) == 40
