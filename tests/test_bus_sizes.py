"""Any size fits the bus (issue 11), on a nats-server whose max_payload is 32 KiB so that a few
hundred links are already more than one message: no reply or telemetry message of the service
is larger than that; the whole box comes through status pages (a LAN larger than a page is cut
by endpoint and put back together by the client); `moa materialize` sends a document larger
than a message through the object store (the engine client does it, moa_bus/engine_paging.py),
and a JetStream event can name one too; `moa show` reads every page; the dry run's
list of operations is cut, with its count. A body, or a document, beyond the documented bound
is refused `invalid` unread. Real nats-server, real kernel (the testbed's box, loss-only).
"""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import nats.js.errors
import pytest

from moa_bus import engine_paging
from moa_bus.engine import MoaClient
from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.subjects import OBJECT_HEADER, Subjects
from moa_bus.service.transport import MAX_BODY_BYTES
from tests.fixtures.docs import materialize_doc
from tests.fixtures.moabox import map_contents, moa_devices
from tests.fixtures.nats import nats_client, nats_server, start_nats  # noqa: F401
from tests.fixtures.service import box_service
from tests.fixtures.topology import topo  # noqa: F401
from tests.test_cli_bus import moa

pytestmark = [pytest.mark.netns, pytest.mark.nats]

SMALL = 32 * 1024  # the test server's max_payload
P2P, LAN_MEMBERS = 250, 300  # 800 VTEPs; the LAN's status alone is larger than SMALL


def _host() -> str:
    return f"sizes{os.getpid()}"


@pytest.fixture
def small_nats(tmp_path: Path):
    server = start_nats(tmp_path / "small-nats", max_payload=SMALL)
    try:
        yield server
    finally:
        server.stop()


def big_doc(mid: str, loss: float = 0.01) -> dict:
    doc = materialize_doc(mid, 1000, P2P, loss=loss, tags=["t"])
    doc["links"].append({"id": "lan", "tags": ["t"], "emulation": {"loss": loss}, "endpoints": [
        {"vni": 5000 + j, "remote": Testbed.hv_addr(1 + j % 3)} for j in range(LAN_MEMBERS)]})
    return doc


def _vnis(doc: dict) -> list[int]:
    return [ep["vni"] for link in doc["links"] for ep in link["endpoints"]]


async def docs_left(nc, s: Subjects) -> list[str]:
    """The documents the service's object store still holds."""
    store = await nc.jetstream().object_store(s.docs)
    try:
        return [e.name for e in await store.list() if not e.deleted]
    except nats.js.errors.NotFoundError:
        return []


async def _pages(nc, s: Subjects, body: dict) -> list[tuple[int, dict]]:
    """Every page of a status walk: (bytes with headers, page)."""
    out, cursor = [], None
    while True:
        msg = await nc.request(s.op("status"), json.dumps(
            {**body, **({"cursor": cursor} if cursor else {})}).encode(), timeout=30)
        headers = sum(len(k) + len(v) + 4 for k, v in (msg.headers or {}).items())
        page = json.loads(msg.data)
        assert page.get("ok") is not False, page
        out.append((len(msg.data) + headers, page))
        cursor = page["next"]
        if cursor is None:
            return out


def _held(status: dict) -> dict[str, list[int]]:
    """link id -> VNIs, of the one materialization of a (merged) status."""
    (m,) = status["materializations"]
    return {link["id"]: link["vnis"] for link in m["links"]}


async def test_whole_box_in_pages_and_documents_through_the_object_store(
        small_nats: NatsServer, topo: Testbed, tmp_path: Path) -> None:
    host = _host()
    s = Subjects(host)
    base = ("--nats", small_nats.url, "--host", host)
    doc = big_doc("big")
    f = tmp_path / "big.json"
    f.write_text(json.dumps(doc))
    assert f.stat().st_size > SMALL
    async with box_service(small_nats, topo, host, stats_interval=0.5), \
            nats_client(small_nats.url) as nc:
        assert nc.max_payload == SMALL  # the server's INFO
        telemetry: list[tuple[int, dict]] = []

        async def on_links(msg) -> None:
            telemetry.append((len(msg.data), json.loads(msg.data)))

        await nc.subscribe(s.links, cb=on_links)

        # the dry run of a document larger than a message: its operations cut, with the count
        rc, out, err = await moa("materialize", str(f), "--dry-run", *base, timeout=120)
        assert rc == 0, err
        assert "more" in out and "nothing applied (dry run)" in out, out[-500:]
        count = int(out.strip().splitlines()[-1].split()[0])
        assert count >= 2 * P2P + LAN_MEMBERS, count  # a VTEP each at least
        assert await asyncio.to_thread(moa_devices, topo.box) == {}
        assert await docs_left(nc, s) == []  # answered: the service deleted it

        # `moa materialize FILE`: through the object store, transparently
        rc, out, err = await moa("materialize", str(f), *base, timeout=300)
        assert rc == 0, err
        ack = json.loads(out)
        assert ack["ok"] and ack["generation"] == 1, ack
        assert await docs_left(nc, s) == []
        devices = await asyncio.to_thread(moa_devices, topo.box)
        assert len(devices) == 2 * P2P + LAN_MEMBERS + 1  # VTEPs and the LAN's bridge
        assert set(devices.values()) == {f"moa:big:{link['id']}" for link in doc["links"]}

        # status: pages, none larger than a message, the LAN cut by endpoint
        for body in ({}, {"id": "big"}):
            pages = await _pages(nc, s, body)
            assert len(pages) > 2, len(pages)
            assert max(size for size, _ in pages) <= SMALL, [size for size, _ in pages]
            cut = [p for _, p in pages for m in p["materializations"] for link in m["links"]
                   if link["id"] == "lan"]
            assert len(cut) > 1, "the LAN fits one page: make it larger"
            merged = engine_paging.merge_pages([p for _, p in pages])
            held = _held(merged)
            assert held == {link["id"]: [ep["vni"] for ep in link["endpoints"]]
                            for link in doc["links"]}
            (m,) = merged["materializations"]
            assert m["generation"] == 1 and m["error"] is None
            lan = next(link for link in m["links"] if link["id"] == "lan")
            assert lan["kind"] == "lan" and len(lan["counters"]) == 2 * LAN_MEMBERS
            assert {(c["vni"], c["stage"]) for c in lan["counters"]} == {
                (v, st) for v in held["lan"] for st in ("egress", "ingress")}
        # `moa status` walks the pages and prints the box as one reply
        for extra in ((), ("big",)):
            rc, out, err = await moa("status", *extra, *base)
            assert rc == 0, err
            assert _held(json.loads(out)) == held
        # `moa show` too: a row for every link of every page
        rc, out, err = await moa("show", *base, env={"COLUMNS": "200"})
        assert rc == 0, err
        rows = [line.replace("|", "│").split("│") for line in out.splitlines()]
        assert {link["id"] for link in doc["links"]} <= {
            cells[2].strip() for cells in rows if len(cells) > 5}

        # telemetry.links: numbered parts, each within a message, together every stage of
        # every VNI, all of one interval sharing its time_ns
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        whole = None
        while whole is None and loop.time() < deadline:
            await asyncio.sleep(0.1)
            by_time: dict[int, list[dict]] = {}
            for _, batch in telemetry:
                by_time.setdefault(batch["time_ns"], []).append(batch)
            for batches in by_time.values():
                if batches[0]["parts"] > 1 and sorted(b["part"] for b in batches) == list(
                        range(1, batches[0]["parts"] + 1)):
                    whole = batches
        assert whole is not None, [(b["part"], b["parts"]) for _, b in telemetry[-5:]]
        assert max(size for size, _ in telemetry) <= SMALL
        assert {(x["vni"], x["stage"]) for b in whole for x in b["links"]} == {
            (v, st) for v in _vnis(doc) for st in ("egress", "ingress")}

        # a JetStream event naming a document (the engine client puts a document larger than a
        # message in the object store by itself): applied in order, acked, the document deleted
        acks: list[dict] = []

        async def on_ack(msg) -> None:
            acks.append(json.loads(msg.data))

        await nc.subscribe(s.acks, cb=on_ack)
        before = await asyncio.to_thread(map_contents, topo.pin_root, "moa_links")
        lossier = json.dumps(big_doc("big", loss=0.2)).encode()
        assert not engine_paging.fits(nc, lossier)
        await MoaClient(nc, host).send_event("materialize", lossier)
        while not acks and loop.time() < deadline + 60:
            await asyncio.sleep(0.1)
        assert [(a["op"], a["ok"], a["generation"]) for a in acks] == [("materialize", True, 2)]
        after = await asyncio.to_thread(map_contents, topo.pin_root, "moa_links")
        assert len(after) == len(before) and all(after[k] != v for k, v in before.items())
        for _ in range(50):  # deleted once acked
            if await docs_left(nc, s) == []:
                break
            await asyncio.sleep(0.1)
        assert await docs_left(nc, s) == []

        # `moa set` by tag reads the whole box through its pages to find the link or tag
        rc, out, err = await moa("set", "t", "loss", "0.3", *base)
        assert rc == 0, err
        assert json.loads(out)["generation"] == 3
        rc, out, err = await moa("status", "big", *base)
        assert {link["emulation"]["loss"] for link in json.loads(out)["materializations"][0][
            "links"]} == {0.3}


async def test_bodies_beyond_the_bound_are_refused_invalid(nats_server: NatsServer,
                                                           topo: Testbed) -> None:
    """The documented bound (MAX_BODY_BYTES, 64 MiB: docs/contract.md, "Sizes") on a document
    in the object store: refused `invalid` naming both sizes, unread, deleted; a service with a
    smaller bound refuses a request body beyond it the same way. Nothing changes on the box."""
    host = _host()
    s = Subjects(host)
    assert MAX_BODY_BYTES == 64 * 1024 * 1024
    async with box_service(nats_server, topo, host), nats_client(nats_server.url) as nc:
        store = await nc.jetstream().object_store(s.docs)
        await store.put("huge", b" " * (MAX_BODY_BYTES + 1))
        msg = await nc.request(s.op("materialize"), b"", headers={OBJECT_HEADER: "huge"},
                               timeout=30)
        ack = json.loads(msg.data)
        assert (ack["ok"], ack["error"]["code"], ack["error"]["field"]) == (
            False, "invalid", OBJECT_HEADER), ack
        assert f"{MAX_BODY_BYTES + 1:,} B, more than {MAX_BODY_BYTES:,} B" in ack["error"][
            "message"]
        assert msg.headers["Nats-Service-Error-Code"] == "400"
        assert await docs_left(nc, s) == []
        # a name that is in no store
        msg = await nc.request(s.op("materialize"), b"", headers={OBJECT_HEADER: "nothing"},
                               timeout=30)
        ack = json.loads(msg.data)
        assert (ack["error"]["code"], ack["error"]["field"]) == ("not_found", OBJECT_HEADER)
        assert await asyncio.to_thread(moa_devices, topo.box) == {}

    bound = 20_000
    doc = materialize_doc("x", 100, 200)  # about 30 kB of JSON
    data = json.dumps(doc).encode()
    assert len(data) > bound
    async with box_service(nats_server, topo, host, max_body_bytes=bound), \
            nats_client(nats_server.url) as nc:
        for op in ("materialize", "update"):
            ack = json.loads((await nc.request(s.op(op), data, timeout=30)).data)
            assert (ack["ok"], ack["error"]["code"]) == (False, "invalid"), ack
            assert f"{len(data):,} B, more than {bound:,} B" in ack["error"]["message"], ack
        small = materialize_doc("x", 100, 2)
        ack = json.loads((await nc.request(s.op("materialize"), json.dumps(small).encode(),
                                           timeout=30)).data)
        assert ack["ok"] and ack["generation"] == 1, ack
        assert set((await asyncio.to_thread(moa_devices, topo.box)).values()) == {
            "moa:x:l0", "moa:x:l1"}
