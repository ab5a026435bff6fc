"""The service on a real nats-server, with RecordingFakeDatapath for pure ordering, ack and
redelivery behaviour (the kernel path is covered by the full-stack test with the real Datapath)."""
from __future__ import annotations

import asyncio
import json
import os

import nats
import pytest

import schemas
from moa_bus.natsserver import NatsServer
from moa_bus.subjects import Subjects
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.test_bus_support import RecordingFakeDatapath, materialize_doc, running_service

pytestmark = pytest.mark.nats


def _host() -> str:
    return f"bustest{os.getpid()}"


async def _req(nc, subject: str, doc: object, timeout: float = 5) -> dict:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return json.loads((await nc.request(subject, data, timeout=timeout)).data)


class AckCollector:
    def __init__(self) -> None:
        self.acks: list[dict] = []
        self.changed = asyncio.Event()

    async def on_msg(self, msg) -> None:
        self.acks.append(json.loads(msg.data))
        self.changed.set()

    async def wait_for(self, n: int, timeout: float = 10) -> list[dict]:
        async def go() -> None:
            while len(self.acks) < n:
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(go(), timeout)
        return self.acks


async def test_srv_ping_info_discovers_moa(nats_server: NatsServer) -> None:
    host = _host()
    async with running_service(nats_server, RecordingFakeDatapath(), host):
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


async def test_request_reply_round_trips_and_acks(nats_server: NatsServer) -> None:
    host, dp = _host(), RecordingFakeDatapath()
    s = Subjects(host)
    async with running_service(nats_server, dp, host):
        async with nats_client(nats_server.url) as nc:
            acks = AckCollector()
            await nc.subscribe(s.acks, cb=acks.on_msg)
            a = await _req(nc, s.op("materialize"), materialize_doc("exp1", 100, 2, tags=["wan"]))
            assert a == {"id": "exp1", "op": "materialize", "ok": True, "generation": 1,
                         "elapsed_ms": a["elapsed_ms"], "error": None}
            # identical content: acks ok, nothing changes
            again = await _req(nc, s.op("materialize"), materialize_doc("exp1", 100, 2, tags=["wan"]))
            assert again["ok"] and again["generation"] == 1
            u = await _req(nc, s.op("update"), {"id": "exp1", "links": [
                {"tag": "wan", "emulation": {"latency": "50ms", "loss": 0.1}}]})
            assert u["ok"] and u["generation"] == 2
            st = await _req(nc, s.op("status"), {"id": "exp1"})
            reply = schemas.decode(schemas.StatusReply, json.dumps(st).encode())
            (mat,) = reply.materializations
            assert mat.id == "exp1" and mat.generation == 2
            assert [link.emulation.latency for link in mat.links] == [50_000_000, 50_000_000]
            d = await _req(nc, s.op("dematerialize"), {"id": "exp1"})
            assert d["ok"] and d["op"] == "dematerialize"
            st2 = await _req(nc, s.op("status"), {})
            assert st2["materializations"] == []
            got = await acks.wait_for(4)
            assert [(x["op"], x["ok"]) for x in got] == [
                ("materialize", True), ("materialize", True), ("update", True), ("dematerialize", True)]
            assert dp.changes == [("materialize", "exp1", 1), ("update", "exp1", 2),
                                  ("dematerialize", "exp1", 3)]


async def test_order_preserved_under_concurrency(nats_server: NatsServer) -> None:
    """Requests fired without waiting, across three subjects: applied in the order sent."""
    host, dp = _host(), RecordingFakeDatapath()
    s = Subjects(host)
    async with running_service(nats_server, dp, host):
        async with nats_client(nats_server.url) as nc:
            sent: list[tuple[str, str]] = []
            inbox = nc.new_inbox()
            replies: list[dict] = []
            done = asyncio.Event()
            n = 90

            async def on_reply(msg) -> None:
                replies.append(json.loads(msg.data))
                if len(replies) == n:
                    done.set()

            await nc.subscribe(inbox, cb=on_reply)
            for i in range(n // 3):
                mid = f"m{i}"
                for op, doc in (("materialize", materialize_doc(mid, 1000 + 10 * i)),
                                ("update", {"id": mid, "links": [
                                    {"link": "l0", "emulation": {"latency": f"{i + 2}ms"}}]}),
                                ("dematerialize", {"id": mid})):
                    await nc.publish(s.op(op), json.dumps(doc).encode(), reply=inbox)
                    sent.append((op, mid))
            await asyncio.wait_for(done.wait(), 30)
            assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]][:3]
            assert dp.applied_ops == sent


async def test_bad_input_gets_coded_ack_and_nothing_applied(nats_server: NatsServer) -> None:
    host, dp = _host(), RecordingFakeDatapath()
    s = Subjects(host)
    async with running_service(nats_server, dp, host):
        async with nats_client(nats_server.url) as nc:
            ok = await _req(nc, s.op("materialize"), materialize_doc("held", 500))
            assert ok["ok"]
            calls_before = list(dp.calls)
            bad_vni = materialize_doc("x", 0)
            cases = [
                ("materialize", b"{not json", "malformed", None),
                ("materialize", bad_vni, "invalid", "links[0].endpoints[0].vni"),
                ("materialize", {**materialize_doc("x", 10), "colour": 1}, "invalid", "colour"),
                ("materialize", materialize_doc("x", 501), "conflict", "links[0].endpoints[0].vni"),
                ("dematerialize", {"id": "nope"}, "not_found", "id"),
                ("update", {"id": "nope", "links": [{"link": "l0", "emulation": {"loss": 0.5}}]},
                 "not_found", "id"),
                ("update", {"id": "held", "links": [{"link": "zz", "emulation": {"loss": 0.5}}]},
                 "not_found", "links[0].link"),
                ("update", {"id": "held", "links": [{"link": "l0", "emulation": {"loss": 2}}]},
                 "invalid", "links[0].emulation.loss"),
                ("status", {"id": "nope"}, "not_found", "id"),
            ]
            for op, doc, code, field in cases:
                msg = await nc.request(s.op(op), doc if isinstance(doc, bytes) else
                                       json.dumps(doc).encode(), timeout=5)
                ack = json.loads(msg.data)
                assert ack["ok"] is False, (op, doc)
                assert (ack["error"]["code"], ack["error"]["field"]) == (code, field), ack
                assert ack["error"]["message"]
                assert msg.headers and msg.headers["Nats-Service-Error-Code"] == code
            assert dp.calls == calls_before  # no rejected message reached the datapath
            assert list(dp.held) == ["held"]


async def test_plan_error_becomes_apply_failed(nats_server: NatsServer) -> None:
    host, dp = _host(), RecordingFakeDatapath()
    s = Subjects(host)
    async with running_service(nats_server, dp, host):
        async with nats_client(nats_server.url) as nc:
            dp.fail_next = "attach clsact on vtep100"
            ack = await _req(nc, s.op("materialize"), materialize_doc("f", 100))
            assert ack["ok"] is False and ack["error"]["code"] == "apply_failed"
            assert "attach clsact on vtep100" in ack["error"]["message"]
            assert dp.held == {}
            # the holdings did not record it: the same VNIs are free for another id
            ack2 = await _req(nc, s.op("materialize"), materialize_doc("g", 100))
            assert ack2["ok"] is True


async def _js_publish(server: NatsServer, host: str, events: list[tuple[str, dict]]) -> None:
    async with nats_client(server.url) as nc:
        js = nc.jetstream()
        for op, doc in events:
            await js.publish(Subjects(host).event(op), json.dumps(doc).encode())


def _event_script(n: int) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    for i in range(n):
        events.append(("materialize", materialize_doc(f"j{i}", 2000 + 10 * i, tags=["t"])))
        events.append(("update", {"id": f"j{i}", "links": [{"tag": "t", "emulation": {"latency": "9ms"}}]}))
    events.append(("dematerialize", {"id": "j0"}))
    return events


async def test_jetstream_events_applied_in_order_once_after_restart(nats_server: NatsServer) -> None:
    host = _host()
    s = Subjects(host)
    async with running_service(nats_server, RecordingFakeDatapath(), host):
        pass  # creates the stream and the durable consumer, then stops
    events = _event_script(10)
    await _js_publish(nats_server, host, events)  # published while no service runs
    dp = RecordingFakeDatapath()
    async with nats_client(nats_server.url) as nc:
        acks = AckCollector()
        await nc.subscribe(s.acks, cb=acks.on_msg)
        async with running_service(nats_server, dp, host):
            got = await acks.wait_for(len(events), timeout=30)
            assert all(a["ok"] for a in got)
            assert [(a["op"], a["id"]) for a in got] == [(op, d["id"]) for op, d in events]
            assert dp.applied_ops == [(op, d["id"]) for op, d in events]
        # started again: nothing is applied a second time
        dp2 = RecordingFakeDatapath()
        async with running_service(nats_server, dp2, host):
            await asyncio.sleep(1.5)
            assert dp2.applied_ops == []
        info = await nc.jetstream().consumer_info(s.stream, s.durable)
        assert info.num_pending == 0 and info.num_ack_pending == 0


async def _crash(svc) -> None:
    """What kill -9 leaves: no ack, no drain, the connection simply gone."""
    tasks = [svc._pull_task, svc.applier._worker, *svc.telemetry._tasks, *svc._responders]
    for t in tasks:
        if t is not None:
            t.cancel()
    await asyncio.gather(*[t for t in tasks if t is not None], return_exceptions=True)
    await svc.nc.close()


async def _apply_then_crash(server: NatsServer, dp: RecordingFakeDatapath, host: str, op: str,
                            doc: dict) -> None:
    """A service on its own connection takes the event (op, doc) from JetStream, applies it
    to `dp`, and dies before it acks (the datapath hangs after the change)."""
    from moa_bus.connection import NatsOptions, connect
    from moa_bus.service import MoaService, ServiceConfig

    svc = MoaService(await connect(NatsOptions(url=server.url)), dp,
                     ServiceConfig(host=host, ack_wait=1.0))
    await svc.start()
    original = getattr(dp, op)

    async def apply_then_hang(*args):
        await original(*args)
        await asyncio.Event().wait()

    setattr(dp, op, apply_then_hang)
    dp.entered.clear()
    await _js_publish(server, host, [(op, doc)])
    await asyncio.wait_for(dp.entered.wait(), 10)
    await _crash(svc)
    setattr(dp, op, original)


async def test_redelivery_after_crash_does_not_apply_twice(nats_server: NatsServer) -> None:
    host = _host()
    s = Subjects(host)
    dp = RecordingFakeDatapath()  # its `held` plays the kernel: it survives the crash
    await _apply_then_crash(nats_server, dp, host, "materialize", materialize_doc("r1", 300))
    assert dp.changes == [("materialize", "r1", 1)]
    async with nats_client(nats_server.url) as nc:
        acks = AckCollector()
        await nc.subscribe(s.acks, cb=acks.on_msg)
        async with running_service(nats_server, dp, host, ack_wait=1.0):
            (ack,) = await acks.wait_for(1, timeout=20)
            assert ack["ok"] and ack["generation"] == 1
        assert dp.changes == [("materialize", "r1", 1)]  # once in effect
        info = await nc.jetstream().consumer_info(s.stream, s.durable)
        assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_redelivered_dematerialize_of_gone_id_acks_ok(nats_server: NatsServer) -> None:
    host = _host()
    s = Subjects(host)
    dp = RecordingFakeDatapath()
    async with running_service(nats_server, dp, host, ack_wait=1.0):
        async with nats_client(nats_server.url) as nc:
            assert (await _req(nc, s.op("materialize"), materialize_doc("d1", 700)))["ok"]
    await _apply_then_crash(nats_server, dp, host, "dematerialize", {"id": "d1"})
    async with nats_client(nats_server.url) as nc:
        acks = AckCollector()
        await nc.subscribe(s.acks, cb=acks.on_msg)
        async with running_service(nats_server, dp, host, ack_wait=1.0):
            (ack,) = await acks.wait_for(1, timeout=20)
            assert ack["ok"] and ack["op"] == "dematerialize"
        assert [c for c in dp.changes if c[0] == "dematerialize"] == [("dematerialize", "d1", 2)]


async def test_stop_finishes_operation_in_hand_and_leaves_datapath(nats_server: NatsServer) -> None:
    from moa_bus.connection import NatsOptions, connect
    from moa_bus.service import MoaService, ServiceConfig

    host, dp = _host(), RecordingFakeDatapath()
    s = Subjects(host)
    nc_svc = await connect(NatsOptions(url=nats_server.url))
    svc = MoaService(nc_svc, dp, ServiceConfig(host=host))
    await svc.start()
    try:
        async with nats_client(nats_server.url) as nc:
            dp.gate = asyncio.Event()
            pending = asyncio.create_task(nc.request(
                s.op("materialize"), json.dumps(materialize_doc("s1", 900)).encode(), timeout=10))
            await asyncio.wait_for(dp.entered.wait(), 10)
            stopping = asyncio.create_task(svc.stop())
            await asyncio.sleep(0.2)
            assert not stopping.done()  # waits for the operation in hand
            dp.gate.set()
            reply = json.loads((await pending).data)
            await asyncio.wait_for(stopping, 10)
            assert reply["ok"] is True
            assert "s1" in dp.held and not dp.closed  # state left in place
            with pytest.raises(nats.errors.NoRespondersError):
                await nc.request(s.op("status"), b"{}", timeout=2)
    finally:
        await nc_svc.close()


async def test_telemetry_drops_batched_and_link_counters(nats_server: NatsServer) -> None:
    host, dp = _host(), RecordingFakeDatapath()
    s = Subjects(host)
    async with running_service(nats_server, dp, host, stats_interval=0.2, drop_interval=0.1) as svc:
        svc.telemetry.max_batch = 100
        async with nats_client(nats_server.url) as nc:
            drops: list[dict] = []
            links: list[dict] = []

            async def on_drops(m) -> None:
                drops.append(json.loads(m.data))

            async def on_links(m) -> None:
                links.append(json.loads(m.data))

            await nc.subscribe(s.drops, cb=on_drops)
            await nc.subscribe(s.links, cb=on_links)
            await nc.flush()
            assert (await _req(nc, s.op("materialize"), materialize_doc("t1", 40)))["ok"]
            dp.losses = (7, 3)
            for i in range(250):
                dp.drop_cb(schemas.DropEvent(time_ns=i, vni=40, reason="loss" if i % 5 else "queue",
                                             stage="egress", len=100, segs=1))
            for _ in range(100):
                if sum(len(d["events"]) for d in drops) >= 250 and links and links[-1]["links"]:
                    break
                await asyncio.sleep(0.05)
            assert sum(len(d["events"]) for d in drops) == 250
            assert all(len(d["events"]) <= 100 for d in drops)
            assert sum(d["counts"].get("loss", 0) for d in drops) == 200
            assert sum(d["counts"].get("queue", 0) for d in drops) == 50
            assert sum(d["suppressed"] for d in drops) == 7 and sum(d["lost"] for d in drops) == 3
            assert links[-1]["host"] == host
            assert {(x["link"], x["vni"]) for x in links[-1]["links"]} == {("l0", 40), ("l0", 41)}
