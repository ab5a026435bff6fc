"""A three-node NATS cluster on loopback (JetStream, the service's stream with 3 replicas): kill the
node the service is connected to while a stream of 100 events flows through the other two;
nothing is lost: the real KernelDatapath (loss-only, namespaces) applies all of them, in the order
published, once. The service is given the list of the three servers' URLs."""
from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest

from moa_bus.lab.host_testbed import BOX_ADDR, UPLINK, Testbed
from moa_bus.service.box import OpenedBox, open_kernel_box
from moa_bus.service.embedded_nats import NatsServer, free_port
from moa_bus.service.serve_loop import serve
from moa_bus.service.settings import ServeSettings
from moa_bus.service.subjects import Subjects
from tests.fixtures.moabox import js_stream_idle, moa_devices, p2p_materialize, vni_keys
from tests.fixtures.service import plan_of, until_serving
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.nats]

EVENTS = 100
KILL_AFTER = 30  # published events before the node goes down


class Cluster:
    """Three nats-servers routed to each other, JetStream on each, monitoring for /connz."""

    def __init__(self, base: Path, name: str) -> None:
        self.servers: list[NatsServer] = []
        self.monitor: list[int] = []
        cluster_ports = [free_port() for _ in range(3)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
        for i in range(3):
            mport = free_port()
            self.monitor.append(mport)
            self.servers.append(NatsServer(port=free_port(), state_dir=base / f"n{i}", extra_args=[
                "-n", f"{name}-n{i}", "--cluster_name", name,
                "--cluster", f"nats://127.0.0.1:{cluster_ports[i]}", "--routes", routes,
                "-m", str(mport)]))

    def start(self) -> "Cluster":
        try:
            for s in self.servers:
                s.start(timeout=20)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def urls(self, skip: int | None = None) -> str:
        return ",".join(s.url for i, s in enumerate(self.servers) if i != skip)

    def hosting(self, client_name: str) -> int | None:
        """Index of the server that has a client connection named `client_name`."""
        for i, mport in enumerate(self.monitor):
            if not self.servers[i].running:
                continue
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/connz?limit=1024",
                                        timeout=2) as r:
                conns = json.load(r).get("connections") or []
            if any(c.get("name") == client_name for c in conns):
                return i
        return None


async def _jetstream_ready(nc, timeout: float = 30) -> None:
    """The cluster elected its meta leader: JetStream answers account info."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await nc.jetstream().account_info()
            return
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.25)


async def _publish(js, subject: str, data: bytes, msg_id: str, timeout: float = 60) -> None:
    """Publish until the stream stores it (a leader election can refuse for a while); the
    Nats-Msg-Id makes a retry of a publish that did get stored a duplicate the stream drops."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await js.publish(subject, data, timeout=2, headers={"Nats-Msg-Id": msg_id})
            return
        except (nats.errors.Error, asyncio.TimeoutError):  # no responders, no stream response,
            # timeout, reconnecting, 503 from a stream without a leader: all transient here
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


class Recording:
    """The real KernelDatapath, with every change it was asked to apply written down as
    (materialization, parameters only, loss of its first link): the proof of order and
    once-ness that does not depend on at-most-once acks. Everything else goes straight through."""

    def __init__(self, dp) -> None:
        self._dp = dp
        self.applied: list[tuple[str, bool, float | None]] = []

    def __getattr__(self, name: str):
        return getattr(self._dp, name)

    async def apply(self, m, *, params_only: bool = False, change=None):
        r = await self._dp.apply(m, params_only=params_only, change=change)
        self.applied.append((m.id, params_only, m.links[0].emulation.loss if m.links else None))
        return r


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, f"moac{os.getpid()}{os.urandom(2).hex()}").start()
    try:
        yield c
    finally:
        c.stop()


def _events(topo: Testbed) -> list[tuple[str, dict, tuple[str, bool, float]]]:
    """100 events: updates of link l0's loss (each a new value), every tenth a materialization of
    a new id; with what the datapath must be asked, in this order."""
    out = []
    for i in range(EVENTS):
        if i % 10 == 9:
            mid = f"c{i}"
            out.append(("materialize", p2p_materialize(mid, 1, 7000 + 2 * i, topo),
                        (mid, False, 0.0)))
        else:
            loss = (i + 1) / 1000
            out.append(("update",
                        {"id": "base", "links": [{"link": "l0", "emulation": {"loss": loss}}]},
                        ("base", True, loss)))
    return out


async def test_cluster_node_killed_during_event_stream_loses_nothing(
        topo: Testbed, cluster: Cluster) -> None:
    host = f"clu{os.getpid()}"
    s = Subjects(host)
    holder: list[Recording] = []

    async def factory(settings):
        box = await open_kernel_box(settings)
        holder.append(Recording(box.datapath))
        return OpenedBox(holder[0], box.desired, box.unconverged)

    watcher = await nats.connect(servers=cluster.urls().split(","), connect_timeout=2,
                                 max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await _jetstream_ready(watcher)
    settings = ServeSettings(
        nats=cluster.urls(), host=host, uplink=UPLINK, local=BOX_ADDR, netns=topo.box,
        pin_root=topo.pin_root, state_dir=topo.state_dir, allow_loss_only=True,
        stream_replicas=3, ack_wait=3.0)
    stop = asyncio.Event()
    said: list[str] = []
    server = asyncio.create_task(serve(settings, factory, stop, said.append))
    pub = None
    try:
        await until_serving(said, server, timeout=30)
        info = await watcher.jetstream().stream_info(s.stream)
        assert info.config.num_replicas == 3

        base = json.dumps(p2p_materialize("base", 1, 6000, topo)).encode()
        ack = json.loads((await watcher.request(s.op("materialize"), base, timeout=30)).data)
        assert ack["ok"] is True, ack
        g0 = ack["generation"]  # generations are box-wide: event i makes generation g0 + 1 + i
        (dp,) = holder
        assert dp.applied == [("base", False, 0.0)]
        dp.applied.clear()

        victim = await asyncio.to_thread(cluster.hosting, f"moa-serve-{host}")
        assert victim is not None
        # Publisher and ack watcher on the two nodes that stay up.
        await watcher.close()
        survivors = cluster.urls(skip=victim).split(",")
        pub = await nats.connect(servers=survivors, connect_timeout=2, max_reconnect_attempts=-1,
                                 reconnect_time_wait=0.2)
        acks: list[dict] = []

        async def on_ack(msg) -> None:
            acks.append(json.loads(msg.data))
        await pub.subscribe(s.acks, cb=on_ack)
        await pub.flush()

        events = _events(topo)
        js = pub.jetstream()
        for i, (op, doc, _) in enumerate(events):
            if i == KILL_AFTER:
                cluster.servers[victim].kill()
            await _publish(js, s.event(op), json.dumps(doc).encode(), f"{host}-{i}")

        expected = [want for _, _, want in events]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while len(dp.applied) < EVENTS and loop.time() < deadline:
            await asyncio.sleep(0.2)
        # A late redelivery would show up within ack_wait: wait it out, then compare.
        await asyncio.sleep(4)
        assert dp.applied == expected
        assert await js_stream_idle(pub, s.stream, s.durable)
        assert (await pub.jetstream().stream_info(s.stream)).state.messages == EVENTS

        # Acks are plain publishes (at most once): those that arrived are all ok, in order, and
        # none twice; one published at the instant its server died may be missing. Each names
        # the event it acks by its generation: every event was a change, event i the
        # (i + 1)-th after base's materialize.
        assert all(a["ok"] for a in acks), [a for a in acks if not a["ok"]]
        gens = [a["generation"] for a in acks]
        assert gens == sorted(set(gens)), gens  # in order, none twice
        assert all(g0 < g <= g0 + EVENTS for g in gens), (g0, gens)
        assert [(a["op"], a["id"]) for a in acks] == [
            (events[g - g0 - 1][0], events[g - g0 - 1][1]["id"]) for g in gens]
        assert len(acks) >= EVENTS - 2, (len(acks), said)

        # The box holds the end state: base with the last loss at the generation of the last
        # update (event 98), each new id at the generation of its event.
        st = json.loads((await pub.request(s.op("status"), b"{}", timeout=30)).data)
        held = {m["id"]: m for m in st["materializations"]}
        assert set(held) == {"base"} | {f"c{i}" for i in range(9, EVENTS, 10)}
        assert held["base"]["links"][0]["emulation"]["loss"] == pytest.approx(99 / 1000)
        assert held["base"]["generation"] == g0 + 1 + 98
        assert {mid: m["generation"] for mid, m in held.items() if mid != "base"} == {
            f"c{i}": g0 + 1 + i for i in range(9, EVENTS, 10)}
        # ... and the kernel holds exactly that: the box's own plan against each is empty
        final = [p2p_materialize("base", 1, 6000, topo, loss=99 / 1000)] + [
            doc for op, doc, _ in events if op == "materialize"]
        for doc in final:
            assert await plan_of(pub, host, doc) == [], doc["id"]
        # the box's default mode: point-to-point links are flow entries, no device
        assert await asyncio.to_thread(moa_devices, topo.box) == {}
        vnis = {6000, 6001} | {7000 + 2 * i + k for i in range(9, EVENTS, 10) for k in (0, 1)}
        assert vni_keys(topo.pin_root) == vnis == vni_keys(topo.pin_root, "moa_flow")
    finally:
        stop.set()
        if pub is not None:
            await pub.close()
        if not watcher.is_closed:
            await watcher.close()
        assert await asyncio.wait_for(server, 60) == 0
