"""The service on a real nats-server over the real box: the testbed's box namespace, the real
KernelDatapath (loss-only: this host has no sch_fq), the desired state in the box's state
directory. In-process (tests/fixtures/service.py: opened as `moa serve` opens it) or `moa serve`
as a process where a test needs it to die (failpoints, datapath/faults.py).

Order is proven by generations: they are box-wide and every change takes the next one, so the
generations of the acks give the order in which the box applied the changes; the kernel's end
state gives the rest (the datapath's own plan against it is empty, and devices, map entries and
pair entries are counted apart from moa).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import nats.errors
import pytest

from datapath import faults
from moa_bus.lab.host_testbed import UPLINK, Testbed, nsenter, sh
from moa_bus.service.box import desired_dir, open_kernel_box
from moa_bus.service.connection import NatsOptions, connect
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.subjects import Subjects
from moa_bus.service.transport import MoaService, ServiceConfig
from tests.fixtures.docs import materialize_doc, with_loss
from tests.fixtures.moabox import (
    ServeProcess, js_stream_idle, moa_devices, serve_cmd, settled_snapshot, snapshot_diff,
    vni_keys,
)
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.fixtures.service import (
    Collected, box_service, box_settings, collect, kernel_holds, plan_of, request_json as _req,
)
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.nats]

ACK_WAIT = 2.0  # s: a killed `moa serve`'s unacked event comes back this soon
# docs/contract.md, "Ack": Nats-Service-Error-Code of each of moa's error words
ERROR_NUMBERS = {"malformed": "400", "invalid": "400", "not_found": "404", "conflict": "409",
                 "unsupported": "422"}


def _host() -> str:
    return f"bustest{os.getpid()}"


async def _acks(nc, s: Subjects) -> Collected:
    return await collect(nc, s.acks)


# -- what the box holds ---------------------------------------------------------------------------

async def _snapshot(topo: Testbed) -> dict:
    return await asyncio.to_thread(settled_snapshot, topo.box, topo.pin_root)


def _state_files(topo: Testbed, host: str) -> dict[str, bytes]:
    """The box's durable desired state, file by file (moa_bus.service.desired.StateStore)."""
    d = desired_dir(box_settings(topo, host))
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


async def _status(nc, s: Subjects) -> dict[str, dict]:
    return {m["id"]: m for m in (await _req(nc, s.op("status"), {}))["materializations"]}


# -- discovery, round trips, order ----------------------------------------------------------------

async def test_srv_ping_info_discovers_moa(nats_server: NatsServer, topo: Testbed) -> None:
    host = _host()
    async with box_service(nats_server, topo, host):
        async with nats_client(nats_server.url) as nc:
            ping = await _req(nc, "$SRV.PING.moa", b"")
            assert ping["name"] == "moa" and ping["metadata"]["host"] == host
            info = await _req(nc, "$SRV.INFO.moa", b"")
            subjects = {e["subject"] for e in info["endpoints"]}
            assert subjects == {f"moa.{host}.{op}" for op in
                                ("materialize", "dematerialize", "update", "status")}
            await _req(nc, f"moa.{host}.status", {})
            stats = await _req(nc, "$SRV.STATS.moa", b"")
            assert stats["name"] == "moa"
            counted = {e["name"]: e["num_requests"] for e in stats["endpoints"]}
            assert counted["status"] == 1 and counted["materialize"] == 0


async def test_request_reply_round_trips_and_acks(nats_server: NatsServer, topo: Testbed) -> None:
    host = _host()
    s = Subjects(host)
    async with box_service(nats_server, topo, host), nats_client(nats_server.url) as nc:
        acks = await _acks(nc, s)
        doc = materialize_doc("exp1", 100, 2, tags=["wan"])
        a = await _req(nc, s.op("materialize"), doc)
        assert a == {"id": "exp1", "op": "materialize", "ok": True, "generation": 1,
                     "elapsed_ms": a["elapsed_ms"], "error": None}
        await kernel_holds(nc, host, topo, doc)
        made = await _snapshot(topo)

        # identical content: acks ok at the same generation, the kernel does not change
        again = await _req(nc, s.op("materialize"), doc)
        assert again["ok"] and again["generation"] == 1, again
        assert snapshot_diff(made, await _snapshot(topo)) == []

        # an update by tag: the next generation; parameters only (the same devices)
        u = await _req(nc, s.op("update"), {"id": "exp1", "links": [
            {"tag": "wan", "emulation": {"loss": 0.1}}]})
        assert u["ok"] and u["generation"] == 2, u
        await kernel_holds(nc, host, topo, with_loss(doc, 0.1))
        lossy = await _snapshot(topo)
        assert snapshot_diff(made["links"], lossy["links"]) == []
        assert lossy["maps"]["moa_links"] != made["maps"]["moa_links"]

        st = await _status(nc, s)
        assert list(st) == ["exp1"] and st["exp1"]["generation"] == 2
        assert [link["emulation"]["loss"] for link in st["exp1"]["links"]] == [0.1, 0.1]

        d = await _req(nc, s.op("dematerialize"), {"id": "exp1"})
        assert d["ok"] and d["op"] == "dematerialize" and d["generation"] == 3, d
        assert await _status(nc, s) == {}
        await kernel_holds(nc, host, topo)  # nothing of moa's left

        got = await acks.wait_for(4)
        assert [(x["op"], x["ok"], x["generation"]) for x in got] == [
            ("materialize", True, 1), ("materialize", True, 1), ("update", True, 2),
            ("dematerialize", True, 3)]


async def test_order_preserved_under_concurrency(nats_server: NatsServer, topo: Testbed) -> None:
    """90 requests fired without waiting, across three subjects: applied in the order sent.
    Every request is a change, so the replies' generations (box-wide, one per change) give the
    order the box applied them in. Ids m0..m26 take turns on the same two VNIs, so a
    materialize overtaking the previous id's dematerialize would be refused as a conflict; the
    last three ids stay, with their second update's loss in the kernel."""
    host = _host()
    s = Subjects(host)
    n_ids, kept = 30, 3
    async with box_service(nats_server, topo, host), nats_client(nats_server.url) as nc:
        sent: list[tuple[str, str]] = []
        final: list[dict] = []
        inbox = nc.new_inbox()
        replies: list[dict] = []
        done = asyncio.Event()
        n = 3 * n_ids

        async def on_reply(msg) -> None:
            replies.append(json.loads(msg.data))
            if len(replies) == n:
                done.set()

        await nc.subscribe(inbox, cb=on_reply)
        for i in range(n_ids):
            mid = f"m{i}"
            stays = i >= n_ids - kept
            doc = materialize_doc(mid, 2000 + 2 * i if stays else 1000)
            script = [("materialize", doc),
                      ("update", {"id": mid, "links": [{"link": "l0", "emulation": {
                          "loss": 0.2 + i / 100}}]})]
            if stays:
                script.append(("update", {"id": mid, "links": [{"link": "l0", "emulation": {
                    "loss": 0.5 + i / 100}}]}))
                final.append(with_loss(doc, 0.5 + i / 100))
            else:
                script.append(("dematerialize", {"id": mid}))
            for op, body in script:
                await nc.publish(s.op(op), json.dumps(body).encode(), reply=inbox)
                sent.append((op, mid))
        await asyncio.wait_for(done.wait(), 120)
        assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]][:3]
        by_generation = sorted(replies, key=lambda r: r["generation"])
        assert [r["generation"] for r in by_generation] == list(range(1, n + 1))
        assert [(r["op"], r["id"]) for r in by_generation] == sent

        st = await _status(nc, s)
        assert {mid: m["generation"] for mid, m in st.items()} == {
            f"m{i}": 3 * i + 3 for i in range(n_ids - kept, n_ids)}
        await kernel_holds(nc, host, topo, *final)


# -- refusals and failures change nothing ---------------------------------------------------------

async def test_bad_input_gets_coded_ack_and_kernel_unchanged(nats_server: NatsServer,
                                                            topo: Testbed) -> None:
    host = _host()
    s = Subjects(host)
    async with box_service(nats_server, topo, host), nats_client(nats_server.url) as nc:
        held = materialize_doc("held", 500, 2)
        ok = await _req(nc, s.op("materialize"), held)
        assert ok["ok"] and ok["generation"] == 1, ok
        kernel = await _snapshot(topo)
        state = _state_files(topo, host)
        assert state  # the held materialization is on disk
        latency = materialize_doc("x", 600)
        latency["links"][0]["emulation"] = {"latency": "10ms"}
        cases = [
            ("materialize", b"{not json", "malformed", None),
            ("materialize", materialize_doc("x", 0), "invalid", "links[0].endpoints[0].vni"),
            ("materialize", {**materialize_doc("x", 10), "colour": 1}, "invalid", "colour"),
            ("materialize", materialize_doc("x", 501), "conflict", "links[0].endpoints[0].vni"),
            ("materialize", latency, "unsupported", "links[0].emulation.latency"),
            ("dematerialize", {"id": "nope"}, "not_found", "id"),
            ("update", {"id": "nope", "links": [{"link": "l0", "emulation": {"loss": 0.5}}]},
             "not_found", "id"),
            ("update", {"id": "held", "links": [{"link": "zz", "emulation": {"loss": 0.5}}]},
             "not_found", "links[0].link"),
            ("update", {"id": "held", "links": [{"tag": "zz", "emulation": {"loss": 0.5}}]},
             "not_found", "links[0].tag"),
            ("update", {"id": "held", "links": [{"link": "l0", "emulation": {"loss": 2}}]},
             "invalid", "links[0].emulation.loss"),
            ("update", {"id": "held", "links": [{"link": "l0", "emulation": {"jitter": "1ms"}}]},
             "invalid", "links[0].emulation.jitter"),  # above the link's latency (0)
            ("update",
             {"id": "held", "links": [{"link": "l0", "emulation": {"capacity": "1mbps"}}]},
             "unsupported", "links[0].emulation.capacity"),  # a loss-only box
            ("status", {"id": "nope"}, "not_found", "id"),
        ]
        for op, doc, code, field in cases:
            msg = await nc.request(s.op(op), doc if isinstance(doc, bytes) else
                                   json.dumps(doc).encode(), timeout=30)
            ack = json.loads(msg.data)
            assert ack["ok"] is False, (op, doc)
            assert (ack["error"]["code"], ack["error"]["field"]) == (code, field), ack
            assert ack["error"]["message"]
            # the micro protocol's error headers: moa's word, and its number (docs/contract.md)
            assert msg.headers and msg.headers["Nats-Service-Error"] == code
            assert msg.headers["Nats-Service-Error-Code"] == ERROR_NUMBERS[code]
        # the kernel and the durable desired state are exactly as before
        assert snapshot_diff(kernel, await _snapshot(topo)) == []
        assert _state_files(topo, host) == state
        st = await _status(nc, s)
        assert list(st) == ["held"] and st["held"]["generation"] == 1
        await kernel_holds(nc, host, topo, held)
        # no rejected message took a generation: the next change takes 2
        y = await _req(nc, s.op("materialize"), materialize_doc("y", 700))
        assert y["ok"] and y["generation"] == 2, y


async def test_update_refused_on_a_loss_only_box_names_the_updates_field(
        nats_server: NatsServer, topo: Testbed) -> None:
    host = _host()
    s = Subjects(host)
    async with box_service(nats_server, topo, host), nats_client(nats_server.url) as nc:
        held = materialize_doc("held", 500, 3, tags=["wan"])
        assert (await _req(nc, s.op("materialize"), held))["ok"]
        kernel = await _snapshot(topo)
        ack = await _req(nc, s.op("update"), {"id": "held", "links": [
            {"link": "l0", "emulation": {"loss": 0.5}},
            {"link": "l2", "emulation": {"capacity": "1mbps"}}]})
        assert ack["ok"] is False and ack["error"]["code"] == "unsupported", ack
        assert snapshot_diff(kernel, await _snapshot(topo)) == []
        # the Update's second entry asked for the capacity (l2 is links[2] of the box's content)
        assert ack["error"]["field"] == "links[1].emulation.capacity", ack
        by_tag = await _req(nc, s.op("update"), {"id": "held", "links": [
            {"link": "l1", "emulation": {"loss": 0.5}},
            {"tag": "wan", "emulation": {"latency": "1ms"}}]})
        assert by_tag["error"]["field"] == "links[1].emulation.latency", by_tag


@pytest.mark.parametrize("where", ["plan.before", "plan.after"])
async def test_plan_error_becomes_apply_failed(nats_server: NatsServer, topo: Testbed,
                                               where: str) -> None:
    """A netlink error at every operation of a plan (before it runs, or after it applied): the
    ack is apply_failed naming the operation, the kernel and the desired state are as before,
    and the VNIs the failed plan wanted are free for another id."""
    host = _host()
    s = Subjects(host)
    async with box_service(nats_server, topo, host), nats_client(nats_server.url) as nc:
        other = materialize_doc("other", 300)  # not alone on the box: "unchanged" means more
        assert (await _req(nc, s.op("materialize"), other))["ok"]
        doc = materialize_doc("f", 100, 2)
        operations = await plan_of(nc, host, doc)
        assert len(operations) >= 6, operations  # parameters, VTEPs, pairs of two links
        kernel = await _snapshot(topo)
        state = _state_files(topo, host)
        for i, op in enumerate(operations):
            faults.arm(f"{where}/f/{i}=error:netlink")
            try:
                ack = await _req(nc, s.op("materialize"), doc)
            finally:
                faults.disarm()
            assert ack["ok"] is False and ack["error"]["code"] == "apply_failed", (i, ack)
            message = ack["error"]["message"]
            assert f"operation {i + 1} ({op}) failed" in message, (i, message)
            assert f"failpoint {where}/f/{i}" in message, (i, message)
            diff = snapshot_diff(kernel, await _snapshot(topo))
            assert diff == [], (i, op, diff[:10])
            assert _state_files(topo, host) == state, i
            assert list(await _status(nc, s)) == ["other"], i
        # nothing holds the VNIs of the failed plan: another id takes them, at the next
        # generation (the failures took none)
        g = materialize_doc("g", 100, 2)
        ack = await _req(nc, s.op("materialize"), g)
        assert ack["ok"] and ack["generation"] == 2, ack
        await kernel_holds(nc, host, topo, other, g)


# -- JetStream: order, once, redelivery -----------------------------------------------------------

async def _js_publish(server: NatsServer, host: str, events: list[tuple[str, dict]]) -> None:
    async with nats_client(server.url) as nc:
        js = nc.jetstream()
        for op, doc in events:
            await js.publish(Subjects(host).event(op), json.dumps(doc).encode())


def _event_script(n: int) -> tuple[list[tuple[str, dict]], list[dict]]:
    """Events (a materialize and a tag update of each of n ids, then j0 removed) and the
    materializations the box then holds."""
    events: list[tuple[str, dict]] = []
    final: list[dict] = []
    for i in range(n):
        doc = materialize_doc(f"j{i}", 2000 + 10 * i, tags=["t"])
        events.append(("materialize", doc))
        events.append(("update", {"id": f"j{i}", "links": [
            {"tag": "t", "emulation": {"loss": 0.3}}]}))
        if i:
            final.append(with_loss(doc, 0.3))
    events.append(("dematerialize", {"id": "j0"}))
    return events, final


async def test_jetstream_events_applied_in_order_once_after_restart(
        nats_server: NatsServer, topo: Testbed) -> None:
    host = _host()
    s = Subjects(host)
    async with box_service(nats_server, topo, host):
        pass  # creates the stream and the durable consumer, then stops
    events, final = _event_script(10)
    await _js_publish(nats_server, host, events)  # published while no service runs
    async with nats_client(nats_server.url) as nc:
        acks = await _acks(nc, s)
        async with box_service(nats_server, topo, host):
            got = await acks.wait_for(len(events), timeout=60)
            assert all(a["ok"] for a in got), [a for a in got if not a["ok"]]
            assert [(a["op"], a["id"]) for a in got] == [(op, d["id"]) for op, d in events]
            # every event a change, applied in the order published
            assert [a["generation"] for a in got] == list(range(1, len(events) + 1))
            await kernel_holds(nc, host, topo, *final)
            held = await _status(nc, s)
            assert set(held) == {d["id"] for d in final}
        kernel = await _snapshot(topo)
        acks.got.clear()

        # started again (the desired state loaded from disk): nothing is applied a second time
        async with box_service(nats_server, topo, host):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not await js_stream_idle(nc, s.stream, s.durable) and loop.time() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # a redelivered event would be applied and acked by now
            assert acks.got == []
            assert {m["id"]: m["generation"] for m in (await _status(nc, s)).values()} == {
                m["id"]: m["generation"] for m in held.values()}
            # A start loads the uplink's classifier again and attaches it anew (the same
            # program, by its tag): only the program ids on the uplink may differ.
            diff = [d for d in snapshot_diff(kernel, await _snapshot(topo))
                    if not re.fullmatch(rf"\.filters\.{UPLINK}\.(egress|ingress)\[\d+\]"
                                        r"\.options\.prog\.id: \d+ != \d+", d)]
            assert diff == [], diff
            # no generation was handed out meanwhile: the next change takes the next one
            gone = await _req(nc, s.op("dematerialize"), {"id": "j1"})
            assert gone["ok"] and gone["generation"] == len(events) + 1, gone
        assert await js_stream_idle(nc, s.stream, s.durable)


@pytest.mark.parametrize("point", ["state.after-write/r1", "ack.before/r1"])
async def test_redelivery_after_crash_does_not_apply_twice(
        nats_server: NatsServer, topo: Testbed, tmp_path: Path, point: str) -> None:
    """`moa serve` dies (SIGKILL, a failpoint) after it applied a JetStream materialize and made
    it durable, before its ack; restarted, the redelivered event is acked ok once, at the
    generation of the change, and the kernel holds the materialization once."""
    host = _host()
    s = Subjects(host)
    cmd = serve_cmd(topo, nats_server.url, host, "--ack-wait", str(ACK_WAIT))
    doc = materialize_doc("r1", 300, 2)
    async with nats_client(nats_server.url) as nc:
        acks = await _acks(nc, s)
        armed = ServeProcess(cmd, tmp_path / "armed.log", failpoints=f"{point}=kill").start()
        restarted: ServeProcess | None = None
        try:
            await armed.wait_ready(nc, host)
            await nc.jetstream().publish(s.event("materialize"), json.dumps(doc).encode())
            assert await asyncio.to_thread(armed.wait_killed) == -9, armed.log()
            assert acks.got == []  # died before the ack
            # it died after the change: the kernel holds r1 already
            assert set((await asyncio.to_thread(moa_devices, topo.box)).values()) == {
                "moa:r1:l0", "moa:r1:l1"}

            restarted = ServeProcess(cmd, tmp_path / "restarted.log").start()
            await restarted.wait_ready(nc, host)
            (ack,) = await acks.wait_for(1, timeout=60)
            # long enough for a second delivery (ack_wait) to show if the ack had not stuck
            await asyncio.sleep(2 * ACK_WAIT)
            assert len(acks.got) == 1, acks.got
            assert (ack["id"], ack["op"], ack["ok"], ack["generation"]) == (
                "r1", "materialize", True, 1), (ack, restarted.log())
            assert await js_stream_idle(nc, s.stream, s.durable)
            st = await _status(nc, s)
            assert list(st) == ["r1"] and st["r1"]["generation"] == 1
            assert st["r1"]["error"] is None
            await kernel_holds(nc, host, topo, doc)
            # applied once: no generation was spent on a second apply
            gone = await _req(nc, s.op("dematerialize"), {"id": "r1"})
            assert gone["ok"] and gone["generation"] == 2, gone
            await kernel_holds(nc, host, topo)
        finally:
            armed.kill9()
            if restarted is not None:
                assert await asyncio.to_thread(restarted.stop) == 0, restarted.log()


@pytest.mark.parametrize("point", ["state.after-write/d1", "ack.before/d1"])
async def test_redelivered_dematerialize_of_gone_id_acks_ok(
        nats_server: NatsServer, topo: Testbed, tmp_path: Path, point: str) -> None:
    """`moa serve` dies after it removed d1 (a JetStream dematerialize) and before its ack;
    restarted, the redelivery of the dematerialize of an id that is gone acks ok, once, and
    changes nothing."""
    host = _host()
    s = Subjects(host)
    cmd = serve_cmd(topo, nats_server.url, host, "--ack-wait", str(ACK_WAIT))
    doc = materialize_doc("d1", 700)
    async with nats_client(nats_server.url) as nc:
        acks = await _acks(nc, s)
        first = ServeProcess(cmd, tmp_path / "first.log").start()
        armed = ServeProcess(cmd, tmp_path / "armed.log", failpoints=f"{point}=kill")
        restarted: ServeProcess | None = None
        try:
            await first.wait_ready(nc, host)
            made = await _req(nc, s.op("materialize"), doc)
            assert made["ok"] and made["generation"] == 1, made
            assert await asyncio.to_thread(first.stop) == 0, first.log()

            armed.start()
            await armed.wait_ready(nc, host)
            await kernel_holds(nc, host, topo, doc)  # the restart kept it
            acks.got.clear()
            await nc.jetstream().publish(s.event("dematerialize"), b'{"id": "d1"}')
            assert await asyncio.to_thread(armed.wait_killed) == -9, armed.log()
            assert acks.got == []
            assert await asyncio.to_thread(moa_devices, topo.box) == {}  # removed, then died

            restarted = ServeProcess(cmd, tmp_path / "restarted.log").start()
            await restarted.wait_ready(nc, host)
            (ack,) = await acks.wait_for(1, timeout=60)
            await asyncio.sleep(2 * ACK_WAIT)
            assert len(acks.got) == 1, acks.got
            assert (ack["id"], ack["op"], ack["ok"]) == ("d1", "dematerialize", True), (
                ack, restarted.log())
            # the generation a never-killed service would have acked: the removal's
            assert ack["generation"] == 2, ack
            assert await js_stream_idle(nc, s.stream, s.durable)
            assert await _status(nc, s) == {}
            await kernel_holds(nc, host, topo)
            # the removal took generation 2 and the redelivery none: the next change takes 3
            again = await _req(nc, s.op("materialize"), doc)
            assert again["ok"] and again["generation"] == 3, again
            await kernel_holds(nc, host, topo, doc)
        finally:
            first.kill9()
            armed.kill9()
            if restarted is not None:
                assert await asyncio.to_thread(restarted.stop) == 0, restarted.log()


# -- stopping -------------------------------------------------------------------------------------

async def test_stop_finishes_operation_in_hand_and_leaves_datapath(nats_server: NatsServer,
                                                                   topo: Testbed) -> None:
    """SIGTERM's path (MoaService.stop) while a materialize is in hand (held in its plan by a
    failpoint's sleep): stop returns only once it is applied, durable and answered; the kernel
    keeps it; nobody answers afterwards."""
    host = _host()
    s = Subjects(host)
    doc = materialize_doc("s1", 900, 2)
    box = await open_kernel_box(box_settings(topo, host))
    nc_svc = None
    try:
        nc_svc = await connect(NatsOptions(url=nats_server.url, connect_timeout=5))
        svc = MoaService(nc_svc, box.datapath, box.desired, ServiceConfig(host=host),
                         box.unconverged)
        await svc.start()
        async with nats_client(nats_server.url) as nc:
            faults.arm("plan.before/s1/0=sleep:3000")
            try:
                pending = asyncio.create_task(nc.request(
                    s.op("materialize"), json.dumps(doc).encode(), timeout=30))
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while not svc.applier.busy and loop.time() < deadline:
                    await asyncio.sleep(0.01)
                assert svc.applier.busy  # the materialize is in hand (asleep in its plan)
                assert box.desired.get("s1") is None
                await asyncio.wait_for(svc.stop(), 30)
                # stop returned: the operation in hand was finished first
                assert box.desired.get("s1") is not None
                assert set((await asyncio.to_thread(moa_devices, topo.box)).values()) == {
                    "moa:s1:l0", "moa:s1:l1"}
            finally:
                faults.disarm()
            reply = json.loads((await asyncio.wait_for(pending, 30)).data)
            assert reply["ok"] is True and reply["generation"] == 1, reply
            with pytest.raises(nats.errors.NoRespondersError):
                await nc.request(s.op("status"), b"{}", timeout=2)
    finally:
        if nc_svc is not None:
            await nc_svc.close()
        await box.datapath.close()
    # the datapath stays in place: a box opened again finds s1 in the kernel and on disk,
    # with nothing to repair
    again = await open_kernel_box(box_settings(topo, host))
    try:
        held = again.desired.get("s1")
        assert held is not None and held.generation == 1 and again.unconverged == {}
        assert vni_keys(topo.pin_root) == {900, 901, 902, 903}
        assert await again.datapath.plan(held.materialize) == []
    finally:
        await again.datapath.close()


# -- telemetry ------------------------------------------------------------------------------------

def _ping_burst(topo: Testbed, src, dst, count: int) -> None:
    """`count` echo requests sent at once (ping's preload), none answered here."""
    sh(*nsenter(topo.node(src.node)), "ping", "-n", "-q", "-c", str(count), "-l", str(count),
       "-W", "1", "-I", src.dev, dst.ip, check=False, timeout=60)


async def test_telemetry_drops_batched_and_link_counters(nats_server: NatsServer,
                                                         topo: Testbed) -> None:
    """Real drops: a link with loss 1 between two testbed nodes, pings that die on its egress
    stage. Every drop becomes an event (published in batches of at most max_batch, with counts)
    or is counted as suppressed (over the kernel's budget of 64 events per link stage per
    100 ms); telemetry.links carries the same counts as the kernel's counters."""
    host = _host()
    s = Subjects(host)
    max_batch, paced, burst = 4, 30, 300
    a = await asyncio.to_thread(topo.add_endpoint, 1, 40, "192.168.40.1/24")
    b = await asyncio.to_thread(topo.add_endpoint, 2, 41, "192.168.40.2/24")
    await asyncio.to_thread(topo.quiet, a, b)  # nothing on the wire but the pings
    async with box_service(nats_server, topo, host, stats_interval=0.2,
                           drop_interval=0.25) as svc, nats_client(nats_server.url) as nc:
        svc.telemetry.max_batch = max_batch
        drops: list[dict] = []
        links: list[dict] = []

        async def on_drops(m) -> None:
            drops.append(json.loads(m.data))

        async def on_links(m) -> None:
            links.append(json.loads(m.data))

        await nc.subscribe(s.drops, cb=on_drops)
        await nc.subscribe(s.links, cb=on_links)
        await nc.flush()
        doc = materialize_doc("t1", 40, loss=1.0)
        assert (await _req(nc, s.op("materialize"), doc))["ok"]
        suppressed0, lost0 = svc.datapath.drop_event_losses()

        def kernel_loss() -> int:
            return svc.datapath.classifier.link_counters(41)["egress"].drops.get("loss", 0)

        async def until(cond, what: str, timeout: float = 30) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not cond():
                assert loop.time() < deadline, (what, drops[-3:], links[-1:])
                await asyncio.sleep(0.05)

        def events() -> list[dict]:
            return [e for d in drops for e in d["events"]]

        # paced: 30 drops, 50 ms apart (far below the budget): every one an event
        assert await asyncio.to_thread(topo.ping, a, b, paced, 0.05, 1) == (paced, 0)
        assert kernel_loss() == paced
        await until(lambda: len(events()) == paced, "paced drop events")
        assert all(len(d["events"]) <= max_batch for d in drops)
        assert sum(d["counts"].get("loss", 0) for d in drops) == paced
        assert sum(d["suppressed"] + d["lost"] for d in drops) == 0
        for e in events():
            assert (e["vni"], e["reason"], e["stage"], e["link"], e["materialization"]) == (
                41, "loss", "egress", "l0", "t1"), e

        # a burst (sent within a few ms, so in one or two windows of 100 ms): 64 events a
        # window, the rest counted as suppressed, none unaccounted for
        n_batches = len(drops)
        await asyncio.to_thread(_ping_burst, topo, a, b, burst)
        burst_drops = kernel_loss() - paced
        assert burst_drops > 2 * 64, burst_drops  # what reached the link, whatever the sender

        def accounted() -> int:
            return sum(len(d["events"]) + d["suppressed"] + d["lost"] for d in drops[n_batches:])
        await until(lambda: accounted() == burst_drops, "burst accounted for")
        later = drops[n_batches:]
        suppressed = sum(d["suppressed"] for d in later)
        got = sum(len(d["events"]) for d in later)
        assert 64 <= got <= 2 * 64 and suppressed == burst_drops - got, (got, suppressed)
        assert sum(d["lost"] for d in later) == 0  # the ring buffer had room
        assert all(len(d["events"]) <= max_batch for d in later)
        # 64 events or more in at most two flushes: flushes split into batches of max_batch
        assert sum(1 for d in later if len(d["events"]) == max_batch) >= 64 // max_batch // 2
        assert sum(d["counts"].get("loss", 0) for d in later) == got
        assert all((e["vni"], e["reason"], e["link"]) == (41, "loss", "l0")
                   for d in later for e in d["events"])
        totals = svc.datapath.drop_event_losses()
        assert (totals[0] - suppressed0, totals[1] - lost0) == (suppressed, 0)
        # the link's own count of its suppressed events says the same
        assert sum(c.events_suppressed for c in
                   svc.datapath.classifier.link_counters(41).values()) == suppressed
        assert all(d["host"] == host for d in drops)

        # telemetry.links: every stage of both VNIs, with the kernel's drop count
        def link_stats() -> dict | None:
            for batch in reversed(links):
                stats = {(x["link"], x["vni"], x["stage"]): x for x in batch["links"]}
                if stats.get(("l0", 41, "egress"), {}).get("drops", {}).get("loss") == \
                        paced + burst_drops:
                    return batch
            return None
        await until(lambda: link_stats() is not None, "link counters")
        batch = link_stats()
        assert batch["host"] == host
        assert {(x["materialization"], x["link"], x["vni"]) for x in batch["links"]} == {
            ("t1", "l0", 40), ("t1", "l0", 41)}
        counters = await svc.datapath.counters([40, 41])
        assert {(x["vni"], x["stage"]) for x in batch["links"]} == {
            (vni, stage) for vni, stages in counters.items() for stage in stages}
