"""The box is the truth across kill -9 (issue 10): `moa serve` as a real process, killed by a
failpoint (datapath/faults.py: SIGKILL of itself, as `kill -9` would) at many points of a
200-link materialize and of updates that came through JetStream; restarted without failpoints.
Afterwards the status equals what a service never killed would report for the event (content
and generation), the kernel holds exactly that (the datapath's own plan is empty, and the
devices, map entries and pair entries are counted independently), and the event was acked ok
exactly once, after the restart. Real nats-server, real KernelDatapath in namespaces (loss-only:
no sch_fq on this host).
"""
from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.subjects import DRY_RUN_HEADER, Subjects
from tests.fixtures.moabox import (
    ServeProcess, js_stream_idle, map_contents, moa_devices, p2p_materialize, serve_cmd, vni_keys,
)
from tests.fixtures.nats import nats_server  # noqa: F401
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.nats]

LINKS = 200
FIRST_VNI = 5000
ACK_WAIT = 2.0  # s: the killed process's unacked event comes back this soon
VNIS = {FIRST_VNI + k for k in range(2 * LINKS)}

# Where the kill lands in a fresh 200-link materialize. Its plan: operations 0-399 write the
# parameters (one by one), 400-799 create the VTEPs (one bulk group: 7 pipelined netlink
# windows of 128 requests create and mark them, 4 more bring them up), 800-999 join the pairs
# (bulk). A bulk group's before-points all run before the group, its after-points after it;
# rtnl.window/k is after the k-th window of the first batch that has one: inside the group.
MATERIALIZE_POINTS = [
    "plan.before/big/0", "plan.after/big/0", "plan.before/big/1", "plan.after/big/199",
    "plan.before/big/200", "plan.after/big/398", "plan.after/big/399", "plan.before/big/400",
    "rtnl.window/0", "rtnl.window/2", "rtnl.window/4", "rtnl.window/6", "plan.after/big/600",
    "plan.before/big/800", "plan.after/big/800", "plan.after/big/999",
    "state.before-write/big", "state.after-write/big", "ack.before/big",
]
# An update of every link by tag and of one link by id: parameters only, one batch write.
UPDATE_POINTS = [
    ("tag", "params.before-write/big"), ("tag", "params.after-write/big"),
    ("tag", "state.before-write/big"), ("tag", "state.after-write/big"), ("tag", "ack.before/big"),
    ("link", "params.after-write/big"), ("link", "state.after-write/big"),
]


@dataclass
class Bus:
    nc: nats.aio.client.Client
    s: Subjects
    acks: list[dict]

    async def request(self, op: str, doc: object, headers: dict | None = None) -> dict:
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        msg = await self.nc.request(self.s.op(op), data, timeout=60, headers=headers)
        return json.loads(msg.data)

    async def status(self) -> dict[str, dict]:
        return {m["id"]: m for m in (await self.request("status", {}))["materializations"]}

    async def plan(self, doc: dict) -> list[str]:
        return (await self.request("materialize", doc, {DRY_RUN_HEADER: "1"}))["operations"]

    async def wait_acks(self, n: int, timeout: float = 90) -> list[dict]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.acks) < n and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.acks


def _doc(topo: Testbed, loss: float) -> dict:
    return p2p_materialize("big", LINKS, FIRST_VNI, topo, loss=loss, tags=["wan"])


def _content(status_entry: dict) -> list[tuple]:
    """A materialization's content as status reports it (links, VNIs, loss)."""
    return sorted((link["id"], tuple(link["vnis"]), link["emulation"]["loss"])
                  for link in status_entry["links"])


def _expected(doc: dict) -> list[tuple]:
    return sorted((link["id"], tuple(ep["vni"] for ep in link["endpoints"]),
                   link["emulation"]["loss"]) for link in doc["links"])


async def _kernel_holds(bus: Bus, topo: Testbed, doc: dict) -> None:
    """The kernel holds `doc` exactly: moa's own plan against it is empty, and counted apart
    from moa: 400 VTEPs marked as their link's, 400 map entries, 400 pair entries."""
    assert await bus.plan(doc) == []
    devices = await asyncio.to_thread(moa_devices, topo.box)
    assert devices == {f"mv{FIRST_VNI + 2 * i + k}": f"moa:big:l{i}"
                       for i in range(LINKS) for k in (0, 1)}
    assert vni_keys(topo.pin_root) == VNIS
    assert len(map_contents(topo.pin_root, "moa_pair_peers")) == 2 * LINKS


async def _kill_and_restart(topo: Testbed, server: NatsServer, bus: Bus, tmp: Path,
                            point: str, op: str, doc: dict, after) -> dict:
    """Publish (op, doc) as a JetStream event to a service armed to die at `point`; restart
    it unarmed, wait for the one ack the event gets, run `after(ack)` with it still up."""
    host = bus.s.host
    cmd = serve_cmd(topo, server.url, host, "--ack-wait", str(ACK_WAIT))
    name = point.replace("/", "_")
    armed = ServeProcess(cmd, tmp / f"armed-{name}.log", failpoints=f"{point}=kill").start()
    restarted: ServeProcess | None = None
    try:
        await armed.wait_ready(bus.nc, host)
        bus.acks.clear()
        await bus.nc.jetstream().publish(bus.s.event(op), json.dumps(doc).encode())
        status = await asyncio.to_thread(armed.wait_killed)
        assert status == -9, f"{point}: the failpoint did not kill it ({status}):\n{armed.log()}"
        assert bus.acks == [], f"{point}: acked before dying"
        restarted = ServeProcess(cmd, tmp / f"restarted-{name}.log").start()
        await restarted.wait_ready(bus.nc, host)
        acks = await bus.wait_acks(1)
        assert len(acks) == 1, f"{point}: no ack after the restart:\n{restarted.log()}"
        # long enough for a second delivery (ack_wait) to show if the ack had not stuck
        await asyncio.sleep(2 * ACK_WAIT)
        assert len(bus.acks) == 1, (point, bus.acks)
        assert await js_stream_idle(bus.nc, bus.s.stream, bus.s.durable), point
        (ack,) = bus.acks
        assert (ack["op"], ack["ok"]) == (op, True), (point, ack, restarted.log())
        await after(ack)
        return ack
    finally:
        armed.kill9()
        if restarted is not None:
            assert await asyncio.to_thread(restarted.stop) == 0, restarted.log()


async def test_kill9_anywhere_in_a_materialize_then_restart(topo: Testbed, nats_server: NatsServer,
                                                          tmp_path: Path) -> None:
    host = f"kill{os.getpid()}"
    async with _bus(nats_server, host) as bus:
        doc = _doc(topo, loss=0.01)
        base = await _generation(bus, topo, tmp_path, nats_server)
        for point in MATERIALIZE_POINTS:
            async def after(ack: dict) -> None:
                nonlocal base
                # what a service never killed would report: the content, the next generation
                assert ack["generation"] == base + 1, (point, ack, base)
                held = await bus.status()
                assert set(held) == {"big"}, point
                assert held["big"]["generation"] == base + 1, point
                assert held["big"]["error"] is None, point
                assert _content(held["big"]) == _expected(doc), point
                await _kernel_holds(bus, topo, doc)
                gone = await bus.request("dematerialize", {"id": "big"})  # the next starts empty
                assert gone["ok"] and gone["generation"] == base + 2, gone
                assert await asyncio.to_thread(moa_devices, topo.box) == {}
                assert vni_keys(topo.pin_root) == set()
                base = gone["generation"]
            await _kill_and_restart(topo, nats_server, bus, tmp_path, point, "materialize", doc,
                                    after)


async def test_kill9_anywhere_in_an_update_then_restart(topo: Testbed, nats_server: NatsServer,
                                                       tmp_path: Path) -> None:
    host = f"killu{os.getpid()}"
    async with _bus(nats_server, host) as bus:
        current = _doc(topo, loss=0.0)

        async def materialized() -> int:
            ack = await bus.request("materialize", current)
            assert ack["ok"], ack
            return ack["generation"]
        base = await _serving(bus, topo, tmp_path, nats_server, materialized)
        for k, (by, point) in enumerate(UPDATE_POINTS):
            loss = round(0.01 * (k + 1), 2)
            after_doc = json.loads(json.dumps(current))
            if by == "tag":
                update = {"id": "big", "links": [{"tag": "wan", "emulation": {"loss": loss}}]}
                for link in after_doc["links"]:
                    link["emulation"]["loss"] = loss
            else:
                update = {"id": "big", "links": [{"link": "l7", "emulation": {"loss": loss}}]}
                after_doc["links"][7]["emulation"]["loss"] = loss

            async def after(ack: dict) -> None:
                assert ack["generation"] == base + 1, (point, ack, base)
                held = await bus.status()
                assert held["big"]["generation"] == base + 1, point
                assert _content(held["big"]) == _expected(after_doc), point
                await _kernel_holds(bus, topo, after_doc)
            await _kill_and_restart(topo, nats_server, bus, tmp_path, point, "update", update,
                                    after)
            base += 1
            current = after_doc


class _bus:
    """A test client with the box's acks collected."""

    def __init__(self, server: NatsServer, host: str) -> None:
        self.server, self.host = server, host

    async def __aenter__(self) -> Bus:
        self.nc = await nats.connect(self.server.url, connect_timeout=2, max_reconnect_attempts=1)
        bus = Bus(self.nc, Subjects(self.host), [])

        async def on_ack(msg) -> None:
            bus.acks.append(json.loads(msg.data))
        await self.nc.subscribe(bus.s.acks, cb=on_ack)
        await self.nc.flush()
        return bus

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()


async def _serving(bus: Bus, topo: Testbed, tmp: Path, server: NatsServer, job) -> object:
    """Run `job()` with an unarmed `moa serve` up, then stop it (SIGTERM, exit 0)."""
    proc = ServeProcess(serve_cmd(topo, server.url, bus.s.host, "--ack-wait", str(ACK_WAIT)),
                        tmp / "serving.log").start()
    try:
        await proc.wait_ready(bus.nc, bus.s.host)
        return await job()
    finally:
        code = await asyncio.to_thread(proc.stop)
        assert code == 0, proc.log()


async def _generation(bus: Bus, topo: Testbed, tmp: Path, server: NatsServer) -> int:
    """The box's highest generation handed out so far, as a fresh service reports it: that of
    a materialization it holds, or, with none held, that of a throwaway change."""
    async def read() -> int:
        held = await bus.status()
        if held:
            return max(m["generation"] for m in held.values())
        probe = await bus.request("materialize", {"id": "probe", "links": []})
        gone = await bus.request("dematerialize", {"id": "probe"})
        assert probe["ok"] and gone["ok"] and gone["generation"] == probe["generation"] + 1
        return gone["generation"]
    return await _serving(bus, topo, tmp, server, read)
