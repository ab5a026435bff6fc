"""Reads never wait for writes, and work is bounded (issue 11): status and micro discovery are
answered while a 10,000-link Materialize is applied, from the committed state (how fast is a
figure of `moa bench control`, status_during_apply_ms, not asserted here); past
the apply queue's bound a request is answered `busy` at once and a JetStream event comes back
later, with nothing lost or half-applied; a second `moa serve` of the same host id refuses to
start, naming the running one. Real nats-server, real kernel (the testbed's box, loss-only).
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

import schemas
from datapath import faults
from moa_bus import engine_paging
from moa_bus.engine import MoaClient
from moa_bus.lab.host_testbed import Testbed, sh
from moa_bus.service.applier import QUEUE_LIMIT
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.subjects import Subjects
from tests.fixtures.docs import materialize_doc
from tests.fixtures.moabox import (
    ServeProcess, js_stream_idle, serve_cmd, settled_snapshot, snapshot_diff,
)
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.fixtures.service import box_service, kernel_holds
from tests.fixtures.topology import topo  # noqa: F401
from tests.test_bus_sizes import docs_left

pytestmark = [pytest.mark.netns, pytest.mark.nats]

APPLYING = 10_000


def _host() -> str:
    return f"bounded{os.getpid()}"


async def _timed(nc, subject: str, body: bytes) -> tuple[float, dict]:
    t = time.perf_counter()
    msg = await nc.request(subject, body, timeout=5)
    return time.perf_counter() - t, json.loads(msg.data)


async def test_status_and_discovery_answer_during_a_10000_link_apply(
        nats_server: NatsServer, topo: Testbed, tmp_path: Path) -> None:
    """While `moa serve` applies 10,000 point-to-point links (20,000 VTEPs, sent through the
    object store: the document is larger than the server's 1 MB max_payload), status of the
    whole box and of one id, $SRV.PING and $SRV.INFO are answered, again and again, before its
    ack (none waits for the apply), and status shows the committed state: the box before the
    materialize, until its ack. The times are printed (-s); their p99 is benchmarked."""
    host = _host()
    s = Subjects(host)
    held = materialize_doc("held", 500, 100)
    big = materialize_doc("big", 100_000, APPLYING)
    proc = ServeProcess(serve_cmd(topo, nats_server.url, host), tmp_path / "serve.log").start()
    try:
        async with nats_client(nats_server.url) as nc:
            await proc.wait_ready(nc, host)
            await _reads_during_apply(nc, s, held, big)
    finally:
        assert proc.stop() == 0, proc.log()


async def _reads_during_apply(nc, s: Subjects, held: dict, big: dict) -> None:
    """Status, status of one id, $SRV.PING and $SRV.INFO one after the other, timed, until the
    materialize of `big` (the box holding `held`) is acked."""
    assert (await nc.request(s.op("materialize"), json.dumps(held).encode(),
                             timeout=60)).data.count(b'"ok":true') == 1
    data = json.dumps(big).encode()
    assert not engine_paging.fits(nc, data)  # the engine client sends it through the store
    box = MoaClient(nc, s.host)
    t0 = time.perf_counter()
    applying = asyncio.create_task(box.materialize(data, timeout=1800))
    times: dict[str, list[float]] = {"status": [], "status id": [], "ping": [], "info": []}
    while not applying.done():
        for kind, subject, body in (("status", s.op("status"), b"{}"),
                                    ("status id", s.op("status"), b'{"id": "held"}'),
                                    ("ping", "$SRV.PING.moa", b""),
                                    ("info", "$SRV.INFO.moa", b"")):
            took, reply = await _timed(nc, subject, body)
            times[kind].append(took)
            if kind.startswith("status") and not applying.done():
                # the committed state: "big" is not there until it is acked
                assert [m["id"] for m in reply["materializations"]] == ["held"], reply
                assert len(reply["materializations"][0]["links"]) == 100
                assert reply["next"] is None
        await asyncio.sleep(0.02)
    ack = await applying
    took_apply = time.perf_counter() - t0
    assert ack.ok and ack.generation == 2, ack
    assert await docs_left(nc, s) == []
    print(f"\n10,000 links applied in {took_apply:.1f} s; reads during it: " + ", ".join(
        f"{k} {len(v)} x, max {max(v) * 1000:.1f} ms" for k, v in times.items()))
    # each kind answered many times while the apply ran: none waited in the apply queue
    assert min(len(v) for v in times.values()) >= 20, {k: len(v) for k, v in times.items()}
    status = await box.status(timeout=30)
    assert {m.id: len(m.links) for m in status.materializations} == {
        "big": APPLYING, "held": 100}




async def test_busy_past_the_queue_bound_nothing_lost_or_half_applied(
        nats_server: NatsServer, topo: Testbed) -> None:
    """A materialize held in its plan (a failpoint's sleep) while QUEUE_LIMIT more wait: the
    requests past them are answered `busy` (429) at once and change nothing; a JetStream event
    that arrives then is handed back (nak) and applied once the queue has room. Every accepted
    request is applied whole, in the order sent; the box holds exactly those."""
    host = _host()
    s = Subjects(host)
    extra = 10
    slow_doc = materialize_doc("slow", 100)
    docs = [materialize_doc(f"q{i}", 1000 + 10 * i) for i in range(QUEUE_LIMIT + extra)]
    event_doc = materialize_doc("ev", 50_000)
    async with box_service(nats_server, topo, host, busy_retry=0.5) as svc, \
            nats_client(nats_server.url) as nc:
        assert svc.applier.limit == QUEUE_LIMIT == 256  # docs/contract.md, "Bounded work"
        acks: list[dict] = []

        async def on_ack(msg) -> None:
            acks.append(json.loads(msg.data))

        await nc.subscribe(s.acks, cb=on_ack)
        loop = asyncio.get_running_loop()
        faults.arm("plan.before/slow/0=sleep:4000")
        try:
            slow = asyncio.create_task(nc.request(s.op("materialize"),
                                                  json.dumps(slow_doc).encode(), timeout=120))
            deadline = loop.time() + 20
            while not svc.applier.busy and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert svc.applier.busy  # "slow" is in hand, asleep in its plan
            t_sent = time.perf_counter()
            futures = await _send_all(nc, s, docs)
            busy = [await asyncio.wait_for(f, 2) for f in futures[QUEUE_LIMIT:]]
            assert svc.applier.busy and not slow.done()  # answered while the queue was full
            for t, msg in busy:
                ack = json.loads(msg.data)
                assert (ack["ok"], ack["error"]["code"]) == (False, "busy"), ack
                assert msg.headers["Nats-Service-Error"] == "busy"
                assert msg.headers["Nats-Service-Error-Code"] == "429"
                assert t - t_sent < 1.0
            # a JetStream event while the queue is full: handed back, not applied (yet)
            await nc.jetstream().publish(s.event("materialize"), json.dumps(event_doc).encode())
            deadline = loop.time() + 5
            while svc.events_refused_busy == 0 and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert svc.events_refused_busy >= 1
        finally:
            faults.disarm()
        first = json.loads((await slow).data)
        assert first["ok"] and first["generation"] == 1, first
        accepted = [json.loads((await asyncio.wait_for(f, 120))[1].data)
                    for f in futures[:QUEUE_LIMIT]]
        assert [(a["id"], a["ok"], a["generation"]) for a in accepted] == [
            (f"q{i}", True, 2 + i) for i in range(QUEUE_LIMIT)]
        deadline = loop.time() + 60
        while not any(a["id"] == "ev" for a in acks) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert await js_stream_idle(nc, s.stream, s.durable)
        # one ack per change, none for a request refused busy; the event once, after the rest
        assert [(a["id"], a["ok"], a["generation"]) for a in acks] == [
            ("slow", True, 1), *[(f"q{i}", True, 2 + i) for i in range(QUEUE_LIMIT)],
            ("ev", True, 2 + QUEUE_LIMIT)]
        status = await MoaClient(nc, host).status(timeout=30)
        assert sorted(m.id for m in status.materializations) == sorted(
            ["slow", "ev", *(f"q{i}" for i in range(QUEUE_LIMIT))])
        await kernel_holds(nc, host, topo, slow_doc, *docs[:QUEUE_LIMIT], event_doc)


async def test_a_second_service_of_the_same_host_refuses_to_start(
        nats_server: NatsServer, topo: Testbed, tmp_path: Path) -> None:
    """`moa serve` finds a running service of its host id by micro discovery before it touches
    the box, exits 2 and names it; the running one goes on, alone, the kernel unchanged."""
    from moa_bus.service.micro import discover

    host = _host()
    s = Subjects(host)
    cmd = serve_cmd(topo, nats_server.url, host)
    first = ServeProcess(cmd, tmp_path / "first.log").start()
    second: ServeProcess | None = None
    try:
        async with nats_client(nats_server.url) as nc:
            await first.wait_ready(nc, host)
            doc = materialize_doc("d", 100, 2)
            ack = json.loads((await nc.request(s.op("materialize"), json.dumps(doc).encode(),
                                               timeout=60)).data)
            assert ack["ok"], ack
            (running,) = [p for p in await discover(nc, "moa")
                          if p["metadata"]["host"] == host]
            kernel = await asyncio.to_thread(settled_snapshot, topo.box, topo.pin_root)
            second = ServeProcess(cmd, tmp_path / "second.log").start()
            assert await asyncio.to_thread(second.wait_killed, 60) == 2, second.log()
            said = second.log()
            assert f"another moa service already serves host {host!r}" in said, said
            assert running["id"] in said, said
            assert snapshot_diff(kernel, await asyncio.to_thread(
                settled_snapshot, topo.box, topo.pin_root)) == []
            assert [p["id"] for p in await discover(nc, "moa")
                    if p["metadata"]["host"] == host] == [running["id"]]
            await kernel_holds(nc, host, topo, doc)
    finally:
        if second is not None:
            second.kill9()
        assert first.stop() == 0, first.log()


async def _send_all(nc, s: Subjects, docs: list[dict]) -> list[asyncio.Future]:
    """Publish every materialize at once (in this order) with a reply inbox each; the futures
    of their replies."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future] = []
    for d in docs:
        fut: asyncio.Future = loop.create_future()
        inbox = nc.new_inbox()

        async def on_reply(msg, fut=fut) -> None:
            if not fut.done():
                fut.set_result((time.perf_counter(), msg))

        await nc.subscribe(inbox, cb=on_reply, max_msgs=1)
        await nc.publish(s.op("materialize"), json.dumps(d).encode(), reply=inbox)
        futures.append(fut)
    await nc.flush()
    return futures


async def test_an_identical_resend_reads_the_kernel_and_repairs(
        nats_server: NatsServer, topo: Testbed) -> None:
    """An identical Materialize is acked at its generation without a plan when the kernel
    still holds it (each VNI's parameters in the classifier's map, each VTEP by name:
    Datapath.holds); a VTEP deleted by hand, or parameters written by hand, are found by that
    reading and repaired by the full plan, at the same generation."""
    from tests.fixtures.moabox import map_contents

    host = _host()
    s = Subjects(host)
    doc = materialize_doc("r", 100, 3)
    async with box_service(nats_server, topo, host) as svc, nats_client(nats_server.url) as nc:
        async def send() -> dict:
            return json.loads((await nc.request(s.op("materialize"), json.dumps(doc).encode(),
                                                timeout=30)).data)

        assert (await send())["generation"] == 1
        links = await asyncio.to_thread(map_contents, topo.pin_root, "moa_links")
        assert await svc.datapath.holds(svc.desired.get("r").materialize)
        again = await send()
        assert (again["ok"], again["generation"]) == (True, 1), again

        await asyncio.to_thread(sh, "ip", "-n", topo.box, "link", "del", "mv102")
        assert not await svc.datapath.holds(svc.desired.get("r").materialize)
        again = await send()
        assert (again["ok"], again["generation"]) == (True, 1), again
        await kernel_holds(nc, host, topo, doc)

        svc.datapath.classifier.set_link(103, schemas.Emulation(loss=0.5))
        assert not await svc.datapath.holds(svc.desired.get("r").materialize)
        again = await send()
        assert (again["ok"], again["generation"]) == (True, 1), again
        # the parameters as they were (in the same slots)
        assert await asyncio.to_thread(map_contents, topo.pin_root, "moa_links") == links
        await kernel_holds(nc, host, topo, doc)
