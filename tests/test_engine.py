"""The engine client (moa_bus/engine.py) against a live service over the real box (the
testbed's box namespace, the real KernelDatapath, loss-only on this host) and a real
nats-server: its typed calls and feeds, what it raises, and the example realization engine
(examples/engine.py) run end to end as a user runs it."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

import schemas
from moa_bus.engine import MoaClient, Refused, Unavailable
from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.embedded_nats import NatsServer, free_port
from moa_bus.service.connection import BusConnectError
from tests.fixtures.docs import materialize, materialize_doc
from tests.fixtures.moabox import moa_devices, vni_keys
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.fixtures.processes import run
from tests.fixtures.service import box_service, kernel_holds
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = pytest.mark.nats

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "engine.py"


@pytest.mark.netns
async def test_typed_calls_and_feeds_against_a_live_service(topo: Testbed,
                                                            nats_server: NatsServer) -> None:
    host = f"engine{os.getpid()}"
    doc = materialize_doc("e1", 2100, n_links=2, tags=["wan"])
    async with box_service(nats_server, topo, host, stats_interval=0.3), \
            await MoaClient.connect(nats_server.url, host, timeout=30) as box:
        m = materialize(doc)  # a Struct, sent as one
        plan = await box.plan(m)
        assert plan and await asyncio.to_thread(moa_devices, topo.box) == {}  # nothing applied

        async with box.acks() as acks:
            ack = await box.materialize(m)
            assert isinstance(ack, schemas.Ack) and ack.ok and ack.generation == 1, ack
            published = await acks.next(timeout=10)  # the same ack, on the feed
        assert (published.id, published.op, published.generation) == ("e1", "materialize", 1)
        async with nats_client(nats_server.url) as nc:
            await kernel_holds(nc, host, topo, doc)

        # A refusal is an Ack, not an exception; nothing changed.
        refused = await box.materialize(materialize_doc("e2", 2101))  # VNI 2101 is e1's
        assert not refused.ok and refused.error is not None
        assert refused.error.code == "conflict" and refused.error.field
        refused = await box.update({"id": "e1", "links": [
            {"link": "l0", "emulation": {"latency": "10ms"}}]})  # a loss-only box
        assert refused.error is not None and refused.error.code == "unsupported"

        ack = await box.update(schemas.Update(id="e1", links=[schemas.LinkUpdate(
            tag="wan", emulation=schemas.EmulationPatch(loss=0.2))]))
        assert ack.ok and ack.generation == 2
        st = await box.status("e1")
        assert isinstance(st, schemas.StatusReply) and st.host == host
        (held,) = st.materializations
        assert held.generation == 2 and [link.emulation.loss for link in held.links] == [0.2, 0.2]
        assert {c.vni for link in held.links for c in link.counters} == {2100, 2101, 2102, 2103}
        with pytest.raises(Refused) as refused_status:
            await box.status("nope")
        assert refused_status.value.ack.error.code == "not_found"
        with pytest.raises(Refused, match="conflict"):
            await box.plan(materialize_doc("e2", 2101))

        async with box.link_stats() as stats:
            batch = await stats.next(timeout=10)
        assert isinstance(batch, schemas.LinkStatsBatch) and batch.host == host
        assert {s.vni for s in batch.links} == {2100, 2101, 2102, 2103}

        # The durable path: the ack comes on the feed.
        async with box.acks() as acks:
            seq = await box.send_event("dematerialize", schemas.Dematerialize(id="e1"))
            jack = await acks.next(timeout=30)
        assert seq >= 1 and (jack.id, jack.op, jack.ok, jack.generation) == (
            "e1", "dematerialize", True, 3)
        assert vni_keys(topo.pin_root) == set()
        assert (await box.dematerialize("e1")).error.code == "not_found"

        # Nothing serves another host: Unavailable, with the reason.
        other = MoaClient(box.nc, "nobody-here", timeout=2)
        with pytest.raises(Unavailable, match="no service answers on moa.nobody-here.status"):
            await other.status()
        async with other.drops() as drops:
            with pytest.raises(Unavailable, match="within 0.2 s") as timed_out:
                await drops.next(timeout=0.2)
        assert isinstance(timed_out.value, TimeoutError)


async def test_connect_failure_is_bounded_and_says_where() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    from moa_bus.service.connection import NatsOptions

    with pytest.raises(BusConnectError, match=f"cannot connect to NATS at {url} within 1 s"):
        await MoaClient.connect(url, "x", options=NatsOptions(connect_timeout=1))


@pytest.mark.netns
async def test_the_example_engine_runs_end_to_end(topo: Testbed, nats_server: NatsServer) -> None:
    """examples/engine.py as a user runs it, against a live service: every step's line, exit 0,
    and the box holds nothing of it afterwards; with --keep it holds the experiment."""
    host = f"example{os.getpid()}"
    nodes = [a for i in (1, 2, 3) for a in ("--node", topo.hv_addr(i))]
    argv = [sys.executable, str(EXAMPLE), "--nats", nats_server.url, "--host", host,
            "--vni", "2200", *nodes]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    async with box_service(nats_server, topo, host, stats_interval=0.5):
        rc, out, err = await run(*argv, timeout=120, env=env)
        text = out.decode()
        assert rc == 0, text + err.decode()
        lines = text.splitlines()
        assert [line.split(":", 1)[0] for line in lines] == [
            "plan", "materialize", "status", "update", "telemetry", "dematerialize"], text
        assert "3 link(s) of example-engine" in lines[0]  # wan0, wan1, the LAN
        assert "acked ok, generation 1" in lines[1]
        assert "3 link(s), VNIs 2200-2206, generation 1, converged" in lines[2]
        assert "'lan': 0.0, 'wan0': 0.05, 'wan1': 0.05" in lines[3]
        assert lines[5] == "dematerialize: ok, generation 3"
        assert vni_keys(topo.pin_root) == set()
        assert await asyncio.to_thread(moa_devices, topo.box) == {}

        rc, out, err = await run(*argv, "--keep", timeout=120, env=env)
        assert rc == 0, out.decode() + err.decode()
        assert vni_keys(topo.pin_root) == set(range(2200, 2207))
        devices = await asyncio.to_thread(moa_devices, topo.box)
        assert {alias for alias in devices.values()} >= {
            "moa:example-engine:wan0", "moa:example-engine:wan1", "moa:example-engine:lan"}
        # A second engine run on the same VNIs is refused by the box, and says so.
        rc, out, err = await run(*argv, "--id", "other", timeout=120, env=env)
        assert rc == 1
        assert "Refused: conflict" in err.decode(), out.decode() + err.decode()
