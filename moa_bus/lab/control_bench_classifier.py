"""`moa bench control`'s two steps on a classifier of its own in this process (no service, no
netlink):

- map_update_10k_s: 10,000 point-to-point links' parameters rewritten in its map, both
  directions, each of the 20,000 VNIs with an emulation of its own (so nothing is encoded once
  and written 20,000 times), the way Datapath.update writes them (Classifier.update_links);
- drop events from its ring buffer published to NATS by the service's Telemetry
  (drop_events_per_s). drop_events_lost is what has not arrived DROP_EVENTS_WINDOW_S after the
  last packet ran: every drop the counters saw, less those suppressed by the event budget (set
  to unlimited here, so 0), less those that arrived; ring buffer reservations that failed are
  lost events too, and are also given alone (drop_events_ringbuf_fail).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import schemas
from moa_bus.service.desired import DesiredState
from moa_bus.service.subjects import Subjects
from moa_bus.service.telemetry import Telemetry

MAP_UPDATE_LINKS = 10_000
DROP_VNI = 93_000
DROP_EVENTS_WINDOW_S = 2.0


def _emulation(vni: int, generation: int) -> schemas.Emulation:
    """An emulation of its own for each VNI and generation (latency in us steps, loss in 1e-6)."""
    return schemas.Emulation(latency=1_000_000 + 1_000 * vni + generation,
                             loss=(vni % 1000 + generation) / 1_000_000, capacity=100_000_000)


def map_updates(out: dict[str, Any]) -> None:
    """10,000 point-to-point links (20,000 VNIs, distinct emulations) rewritten in a classifier's
    map the way Datapath.update writes them: each VNI's parameters encoded, then one batch
    (Classifier.update_links); no netlink, no NATS."""
    from datapath.classifier import Classifier, ClassifierConfig

    vnis = range(1, 2 * MAP_UPDATE_LINKS + 1)
    with Classifier.load(ClassifierConfig(max_links=32_768)) as clf:
        for vni in vnis:
            clf.set_link(vni, egress=_emulation(vni, 0))
        new = {vni: _emulation(vni, 1) for vni in vnis}  # decoded messages, as the bus has them
        t0 = time.perf_counter()
        stages = {vni: clf.encode_stages(new[vni], None) for vni in vnis}
        clf.update_links(stages)
        out["map_update_10k_s"] = round(time.perf_counter() - t0, 4)
        out["map_update_vnis"] = len(stages)
        raw = clf.raw_links(vnis)
        if any(clf.stages_of(raw[vni]) != stages[vni] for vni in vnis):
            raise RuntimeError("not every VNI has its new parameters")
        if len({bytes(clf.stages_of(raw[vni])) for vni in vnis}) != len(stages):
            raise RuntimeError("two VNIs were written the same parameters")


async def drop_events(out: dict[str, Any], url: str, subjects: Subjects, total: int,
                      ringbuf_bytes: int = 4 << 20) -> None:
    """`total` packets through a loss-1 link with BPF_PROG_TEST_RUN; their drop events read in
    asyncio, published by Telemetry in batches and counted by a subscriber."""
    import nats

    from datapath.classifier import Classifier, ClassifierConfig

    clf = Classifier.load(ClassifierConfig(max_links=16, event_budget=(1 << 32) - 1,
                                           ringbuf_bytes=ringbuf_bytes))
    pub = await nats.connect(url, pending_size=256 << 20)
    sub_nc = await nats.connect(url, pending_size=256 << 20)
    source = BareClassifierDrops(clf)
    telemetry = Telemetry(pub, source, DesiredState(), subjects,  # type: ignore[arg-type]
                          stats_interval=3600, drop_interval=0.02)
    arrived = 0
    batches = 0
    done = asyncio.Event()
    expected: list[int] = []

    async def on_batch(msg) -> None:
        nonlocal arrived, batches
        batch = schemas.decode(schemas.DropBatch, msg.data)
        arrived += len(batch.events)
        batches += 1
        if expected and arrived >= expected[0]:
            done.set()
    try:
        await sub_nc.subscribe(subjects.drops, cb=on_batch, pending_msgs_limit=-1,
                               pending_bytes_limit=-1)
        await sub_nc.flush()
        clf.set_link(DROP_VNI, egress=schemas.Emulation(loss=1.0))
        frame, ctx = _vxlan_frame(DROP_VNI), clf.abi.SkBuff()
        telemetry.start()
        chunk = 4096  # well under the ring buffer (4 MiB / 48 B per record)
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            n = min(chunk, total - sent)
            await asyncio.to_thread(clf.egress_program.test_run, frame, ctx, n)
            sent += n
            await asyncio.sleep(0)  # let the reader and the publisher run
        c = clf.link_counters(DROP_VNI)["egress"]
        failed = clf.global_counters().get("ringbuf_fail", 0)
        expected.append(c.drops["loss"] - c.events_suppressed)
        if arrived < expected[0]:
            try:  # a fixed window: what has not arrived by its end is lost
                await asyncio.wait_for(done.wait(), DROP_EVENTS_WINDOW_S)
            except asyncio.TimeoutError:
                pass
        elapsed = time.perf_counter() - t0
        out["drop_events"] = arrived
        out["drop_events_per_s"] = round(arrived / elapsed)
        out["drop_batches"] = batches
        out["drop_events_suppressed"] = c.events_suppressed
        out["drop_events_ringbuf_fail"] = failed
        out["drop_events_window_s"] = DROP_EVENTS_WINDOW_S
        out["drop_events_lost"] = expected[0] - arrived
        if c.drops["loss"] != total:
            out["notes"].append(f"drop events: {total} packets run, {c.drops['loss']} "
                                     "counted as loss drops")
    finally:
        await telemetry.stop()
        source.close()
        await pub.close()
        await sub_nc.close()
        clf.close()


class BareClassifierDrops:
    """What the bus's Telemetry reads from a datapath for drop events, over a bare classifier:
    the same DropEventReader that KernelDatapath uses, with no links to name."""

    def __init__(self, clf: Any) -> None:
        from datapath.drops import DropEventReader

        self.reader = DropEventReader(clf)
        self.drop_event_losses = self.reader.losses

    def drop_events(self, callback: Any, owner: Any) -> None:
        self.reader.owner = owner
        self.reader.subscribe(callback)

    async def counters(self, vnis: Any) -> dict:
        return {}

    def close(self) -> None:
        self.reader.close()


def _vxlan_frame(vni: int) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Raw

    inner = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
             IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=40000, dport=5201) / Raw(b"x" * 100))
    return bytes(Ether(src="02:aa:00:00:00:01", dst="02:aa:00:00:00:02") /
                 IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=50000, dport=4789) /
                 VXLAN(flags=0x08, vni=vni) / inner)
