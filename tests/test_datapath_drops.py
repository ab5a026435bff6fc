"""Drop telemetry with the real datapath: KernelDatapath.drop_events() delivers schemas.DropEvent
from the classifier's ring buffer (read inside the asyncio loop), with the link and the
materialization resolved from the VNI, and drop_event_losses() accounts for every drop that did
not become an event. Real VXLAN traffic between namespaces (tests/fixtures/topology.py).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

import schemas
from moa_bus.service.desired import DesiredState, Held
from datapath.api import KernelDatapath
from datapath.classifier import ClassifierConfig
from moa_bus.lab.host_testbed import Testbed
from tests.fixtures.moabox import box_config
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = pytest.mark.netns


def p2p(t: Testbed, loss: float) -> schemas.Materialize:
    return schemas.decode(schemas.Materialize, f'''{{"id": "m1", "links": [
        {{"id": "a-b", "emulation": {{"loss": {loss}}}, "endpoints": [
          {{"vni": 100, "remote": "{t.hv_addr(1)}"}},
          {{"vni": 101, "remote": "{t.hv_addr(2)}"}}]}}]}}''')


@pytest.fixture
async def box(topo: Testbed, request: pytest.FixtureRequest) -> AsyncIterator[KernelDatapath]:
    budget = getattr(request, "param", 64)
    dp = await KernelDatapath.start(box_config(
        topo, classifier=ClassifierConfig(max_links=64, event_budget=budget,
                                          event_window_ns=600 * 10**9)))
    try:
        yield dp
    finally:
        await dp.teardown()


def nobody(vni: int) -> tuple[None, None]:
    return None, None


def loss_drops(dp: KernelDatapath, vni: int) -> int:
    return dp.classifier.link_counters(vni)["egress"].drops["loss"]


async def settle(dp: KernelDatapath, events: list, vni: int, base: tuple[int, int],
                 base_drops: int, timeout: float = 10) -> tuple[int, int, int]:
    """Until every drop of `vni` since `base` is an event or counted as not one; returns
    (drops, suppressed, lost) since the base."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        suppressed, lost = dp.drop_event_losses()
        got = (loss_drops(dp, vni) - base_drops, suppressed - base[0], lost - base[1])
        if got[0] == len(events) + got[1] + got[2] or loop.time() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_drop_events_carry_vni_reason_link_and_materialization(topo, box):
    a = topo.add_endpoint(1, 100, "192.168.100.1/24")
    b = topo.add_endpoint(2, 101, "192.168.100.2/24")
    topo.quiet(a, b)
    m = p2p(topo, 1.0)
    await box.apply(m)
    base = box.drop_event_losses()
    base_drops = loss_drops(box, 101)
    events: list[schemas.DropEvent] = []
    box.drop_events(events.append, DesiredState(held={"m1": Held(m, 1)}).owner)

    t0 = time.time_ns()
    # ping runs in a thread: the loop must stay free to read the ring buffer meanwhile.
    tx, rx = await asyncio.to_thread(topo.ping, a, b, 4, 0.2, 1)
    assert (tx, rx) == (4, 0)
    drops, suppressed, lost = await settle(box, events, 101, base, base_drops)
    t1 = time.time_ns()

    assert drops == 4  # every echo request towards b dies on VNI 101's egress stage
    assert (suppressed, lost) == (0, 0)  # far below the budget of 64 per link stage
    assert len(events) == drops
    for ev in events:
        assert isinstance(ev, schemas.DropEvent)
        assert (ev.vni, ev.reason, ev.stage) == (101, "loss", "egress")
        assert (ev.link, ev.materialization) == ("a-b", "m1")
        assert ev.segs == 1 and 42 <= ev.len <= 1514
        assert t0 - 50_000_000 <= ev.time_ns <= t1 + 50_000_000  # wall clock, not monotonic
    # every event went out over the wire format the bus publishes
    assert schemas.decode(schemas.DropEvent, schemas.encode(events[0])) == events[0]


@pytest.mark.parametrize("box", [2], indirect=True)
async def test_over_budget_drops_are_counted_as_suppressed(topo, box):
    a = topo.add_endpoint(1, 100, "192.168.100.1/24")
    b = topo.add_endpoint(2, 101, "192.168.100.2/24")
    await box.apply(p2p(topo, 1.0))
    base = box.drop_event_losses()
    base_drops = loss_drops(box, 101)
    events: list[schemas.DropEvent] = []
    box.drop_events(events.append, nobody)
    seen_twice: list[schemas.DropEvent] = []
    box.drop_events(seen_twice.append, nobody)  # a second subscriber sees the same events

    topo.quiet(a, b)  # every echo request is a dropped frame, nothing else is
    assert await asyncio.to_thread(topo.ping, a, b, 6, 0.05, 1) == (6, 0)
    drops, suppressed, lost = await settle(box, events, 101, base, base_drops)

    assert drops == 6 and len(events) == 2 == len(seen_twice)
    assert events == seen_twice
    assert (suppressed, lost) == (4, 0)
    # the global total is the sum of the links' own counts (only this link drops here)
    assert sum(c.events_suppressed for c in box.classifier.link_counters(101).values()) == 4
    # and it outlives the link: deleting it does not make the total go back
    await box.apply(schemas.Materialize(id="m1", links=[]))
    assert box.drop_event_losses()[0] - base[0] == suppressed


async def test_events_of_unowned_vni_have_no_link(topo, box):
    """A VNI whose parameters were written without a materialization (by hand, tests) still
    reports its drops; link and materialization stay None."""
    from schemas import Emulation
    from tests.fixtures.packets import inner_udp, vxlan

    box.classifier.set_link(4000, egress=Emulation(loss=1.0))
    events: list[schemas.DropEvent] = []
    box.drop_events(events.append, DesiredState().owner)
    frame = vxlan(4000, inner_udp(100))
    r = box.classifier.egress_program.test_run(frame, ctx=box.classifier.abi.SkBuff(), repeat=3)
    assert r.retval == 2  # TC_ACT_SHOT
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(events) < 3 and loop.time() < deadline:
        await asyncio.sleep(0.02)
    assert [(e.vni, e.link, e.materialization) for e in events] == [(4000, None, None)] * 3
    box.classifier.delete_link(4000)
