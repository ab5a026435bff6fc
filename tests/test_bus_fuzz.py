"""A hypothesis fuzz of 10,000 invalid events through NATS to `moa serve` (a real process, the real
KernelDatapath in namespaces, loss-only host): every one is answered with an ok=false Ack carrying
a code (and the offending field where one applies), and the kernel state of the box (devices,
addresses, tc filters, the contents of moa_links and moa_pair_peers) is identical before and after.

Each generated event is a valid message with exactly one thing wrong, so the expected code and
field are known; requests go in concurrent batches of 50 to keep the run short. A sample of them
also goes through the durable JetStream path, whose outcomes arrive on moa.<host>.acks.
"""
from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.subjects import Subjects
from tests.fixtures.moabox import (
    ServeProcess, kernel_snapshot, serve_cmd, settled_snapshot, snapshot_diff,
)
from tests.fixtures.nats import nats_server  # noqa: F401
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.nats]

BATCH = 50
EXAMPLES = 200  # x BATCH = 10,000 invalid events
JETSTREAM_SAMPLE = 300

HELD_ID = "held"
HELD_VNIS = [100, 101, 102, 103, 104, 105, 106]
HELD = {"id": HELD_ID, "links": [
    {"id": "a-b", "tags": ["wan"], "emulation": {"loss": 0.1},
     "endpoints": [{"vni": 100, "remote": "10.201.0.11"}, {"vni": 101, "remote": "10.201.0.12"}]},
    {"id": "c-d", "tags": ["wan", "slow"],
     "endpoints": [{"vni": 102, "remote": "10.201.0.11"}, {"vni": 103, "remote": "10.201.0.12"}]},
    {"id": "lan", "emulation": {"loss": 0.01},
     "endpoints": [{"vni": 104, "remote": "10.201.0.11"}, {"vni": 105, "remote": "10.201.0.12"},
                   {"vni": 106, "remote": "10.201.0.11"}]}]}

FIELDS = {
    "top": {"id", "links"},
    "link": {"id", "endpoints", "emulation", "tags"},
    "endpoint": {"vni", "remote", "local", "port"},
    "emulation": {"latency", "jitter", "loss", "capacity", "queue", "burst", "reorder"},
}


@dataclass
class Case:
    op: str
    data: bytes
    codes: frozenset[str]
    field: str | None  # the Ack's error.field; None: not checked (malformed text has none)
    field_suffix: str | None = None  # when only the end of the path is fixed


# ---------------------------------------------------------------------------- strategies

ids = st.from_regex(r"[a-z][a-z0-9._:-]{0,15}", fullmatch=True)
bad_ids = st.one_of(st.just(""), st.text(min_size=1, max_size=8).filter(
    lambda s: not all(c.isascii() and (c.isalnum() or c in "._-:") for c in s)),
    st.from_regex(r"[a-z]{129,140}", fullmatch=True))
remotes = st.sampled_from(["10.201.0.11", "10.201.0.12", "10.201.0.13", "2001:db8::5"])
new_names = st.from_regex(r"[a-z_]{1,10}", fullmatch=True)


@st.composite
def materialize_base(draw) -> dict:
    """A valid Materialize of a new id, on VNIs nobody holds, that a loss-only box accepts."""
    first = draw(st.integers(1000, 16_000_000))
    n_links = draw(st.integers(1, 3))
    links, vni = [], first
    for i in range(n_links):
        eps = []
        for _ in range(draw(st.integers(2, 3))):
            eps.append({"vni": vni,
                        "remote": draw(st.sampled_from(["10.201.0.11", "10.201.0.12"]))})
            vni += 1
        link: dict = {"id": f"l{i}", "endpoints": eps}
        if draw(st.booleans()):
            link["emulation"] = {"loss": draw(st.floats(0, 1))}
        if draw(st.booleans()):
            link["tags"] = draw(st.lists(ids, max_size=2))
        links.append(link)
    return {"id": "fz-" + draw(ids), "links": links}


def _case(op: str, doc: object, codes: str | set[str], field: str | None,
          suffix: str | None = None) -> Case:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return Case(op, data, frozenset([codes] if isinstance(codes, str) else codes), field, suffix)


def _endpoints(doc: dict) -> list[tuple[int, int]]:
    return [(i, j) for i, link in enumerate(doc["links"]) for j in range(len(link["endpoints"]))]


@st.composite
def bad_materialize(draw) -> Case:
    doc = draw(materialize_base())
    eps = _endpoints(doc)
    kind = draw(st.sampled_from([
        "vni_range", "vni_type", "vni_dup", "vni_conflict", "unknown_field", "duration",
        "rate", "size", "loss", "shaping", "id", "link_id", "one_endpoint", "remote", "port",
        "dup_link", "missing", "jitter_gt_latency", "tag"]))
    i, j = draw(st.sampled_from(eps))
    link = doc["links"][i]
    ep_path = f"links[{i}].endpoints[{j}]"
    emu = link.setdefault("emulation", {})
    if kind == "vni_range":
        link["endpoints"][j]["vni"] = draw(st.one_of(st.integers(max_value=0),
                                                     st.integers(16_777_216, 2**63 - 1)))
        return _case("materialize", doc, "invalid", f"{ep_path}.vni")
    if kind == "vni_type":
        link["endpoints"][j]["vni"] = draw(st.one_of(
            st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
            st.none(), st.lists(st.integers(), max_size=2)))
        return _case("materialize", doc, "invalid", f"{ep_path}.vni")
    if kind == "vni_dup":
        k = eps.index((i, j))
        if k == 0:  # the second occurrence is the one named: duplicate onto a later endpoint
            i, j = eps[draw(st.integers(1, len(eps) - 1))] if len(eps) > 1 else (0, 1)
            ep_path = f"links[{i}].endpoints[{j}]"
            src = eps[0]
        else:
            src = eps[draw(st.integers(0, k - 1))]
        doc["links"][i]["endpoints"][j]["vni"] = doc["links"][src[0]]["endpoints"][src[1]]["vni"]
        return _case("materialize", doc, "invalid", f"{ep_path}.vni")
    if kind == "vni_conflict":
        link["endpoints"][j]["vni"] = draw(st.sampled_from(HELD_VNIS))
        return _case("materialize", doc, "conflict", f"{ep_path}.vni")
    if kind == "unknown_field":
        where = draw(st.sampled_from(["top", "link", "endpoint", "emulation"]))
        name = draw(new_names.filter(lambda n: n not in FIELDS[where]))
        target, path = {"top": (doc, ""), "link": (link, f"links[{i}]"),
                        "endpoint": (link["endpoints"][j], ep_path),
                        "emulation": (emu, f"links[{i}].emulation")}[where]
        target[name] = draw(st.one_of(st.integers(), st.text(max_size=4), st.none()))
        return _case("materialize", doc, "invalid", f"{path}.{name}" if path else name)
    if kind in ("duration", "rate", "size"):
        name = draw(st.sampled_from({"duration": ["latency", "jitter"], "rate": ["capacity"],
                                     "size": ["queue"]}[kind]))
        unit = {"duration": "ms", "rate": "mbps", "size": "KiB"}[kind]
        emu[name] = draw(st.one_of(
            st.integers(max_value=-1), st.integers(min_value=2**64),  # negative, absurd
            st.integers(-10**6, -1).map(lambda v: f"{v}{unit}"),
            st.just(f"1e30{unit}"), st.just("12 parsecs"), st.just(f"{10**15}{unit}"),
            st.booleans(), st.lists(st.integers(), max_size=1)))
        return _case("materialize", doc, "invalid", f"links[{i}].emulation.{name}")
    if kind == "loss":
        emu["loss"] = draw(st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0001),
                                     st.text(max_size=4), st.booleans()).filter(
            lambda v: not isinstance(v, float) or v == v and abs(v) != float("inf")))
        return _case("materialize", doc, "invalid", f"links[{i}].emulation.loss")
    if kind == "shaping":  # well-formed, but this box (no sch_fq) emulates loss only
        name = draw(st.sampled_from(["latency", "capacity"]))
        emu.pop("loss", None)
        emu[name] = draw(st.sampled_from({"latency": ["10ms", 1, "1s"],
                                          "capacity": ["100mbps", 1000, "1gbps"]}[name]))
        for other in doc["links"]:  # the first shaping parameter is the one named
            if other is not link:
                other.pop("emulation", None)
        first = next(k for k, x in enumerate(doc["links"]) if x is link)
        return _case("materialize", doc, "unsupported", f"links[{first}].emulation.{name}")
    if kind == "id":
        doc["id"] = draw(bad_ids)
        return _case("materialize", doc, "invalid", "id")
    if kind == "link_id":
        link["id"] = draw(bad_ids)
        return _case("materialize", doc, "invalid", f"links[{i}].id")
    if kind == "tag":
        link["tags"] = [draw(bad_ids)]
        return _case("materialize", doc, "invalid", f"links[{i}].tags[0]")
    if kind == "one_endpoint":
        link["endpoints"] = link["endpoints"][:draw(st.integers(0, 1))]
        return _case("materialize", doc, "invalid", f"links[{i}].endpoints")
    if kind == "remote":
        link["endpoints"][j]["remote"] = draw(st.one_of(
            st.sampled_from(["0.0.0.0", "224.0.0.1", "255.255.255.255", "::", "ff02::1", "10.0.0",
                             "x"]),
            st.integers()))
        return _case("materialize", doc, "invalid", f"{ep_path}.remote")
    if kind == "port":
        link["endpoints"][j]["port"] = draw(st.one_of(st.integers(max_value=0),
                                                      st.integers(min_value=65536)))
        return _case("materialize", doc, "invalid", f"{ep_path}.port")
    if kind == "dup_link":
        if len(doc["links"]) < 2:
            doc["links"].append({"id": "l1", "endpoints": [
                {"vni": 17_000_000, "remote": "10.201.0.11"},
                {"vni": 17_000_001, "remote": "10.201.0.12"}]})
            doc["links"][1]["endpoints"][0]["vni"] = 16_777_000
            doc["links"][1]["endpoints"][1]["vni"] = 16_777_001
        doc["links"][1]["id"] = doc["links"][0]["id"]
        return _case("materialize", doc, "invalid", "links[1].id")
    if kind == "missing":
        where = draw(st.sampled_from(["id", "links", "vni", "remote", "endpoints", "link_id"]))
        if where in ("id", "links"):
            del doc[where]
            return _case("materialize", doc, "invalid", where)
        if where in ("vni", "remote"):
            del link["endpoints"][j][where]
            return _case("materialize", doc, "invalid", f"{ep_path}.{where}")
        del link["endpoints" if where == "endpoints" else "id"]
        return _case("materialize", doc, "invalid",
                     f"links[{i}].{'endpoints' if where == 'endpoints' else 'id'}")
    # jitter greater than latency (checked before the loss-only refusal)
    emu["latency"], emu["jitter"] = "1ms", "2ms"
    return _case("materialize", doc, "invalid", f"links[{i}].emulation.jitter")


@st.composite
def bad_update(draw) -> Case:
    kind = draw(st.sampled_from(["unknown_id", "unknown_link", "unknown_tag", "both", "neither",
                                 "empty_patch", "no_links", "loss", "shaping", "bad_id"]))
    patch = {"loss": draw(st.floats(0, 1))}
    if kind == "unknown_id":
        return _case("update",
                     {"id": "nx-" + draw(ids), "links": [{"link": "a-b", "emulation": patch}]},
                     "not_found", "id")
    if kind == "bad_id":
        return _case("update",
                     {"id": draw(bad_ids), "links": [{"link": "a-b", "emulation": patch}]},
                     "invalid", "id")
    if kind == "unknown_link":
        name = draw(ids.filter(lambda n: n not in ("a-b", "c-d", "lan")))
        return _case("update", {"id": HELD_ID, "links": [{"link": name, "emulation": patch}]},
                     "not_found", "links[0].link")
    if kind == "unknown_tag":
        name = draw(ids.filter(lambda n: n not in ("wan", "slow")))
        return _case("update", {"id": HELD_ID, "links": [{"tag": name, "emulation": patch}]},
                     "not_found", "links[0].tag")
    if kind == "both":
        return _case("update", {"id": HELD_ID,
                                "links": [{"link": "a-b", "tag": "wan", "emulation": patch}]},
                     "invalid", "links[0]")
    if kind == "neither":
        return _case("update", {"id": HELD_ID, "links": [{"emulation": patch}]}, "invalid",
                     "links[0]")
    if kind == "empty_patch":
        return _case("update", {"id": HELD_ID, "links": [{"link": "a-b", "emulation": {}}]},
                     "invalid", "links[0].emulation")
    if kind == "no_links":
        return _case("update", {"id": HELD_ID, "links": []}, "invalid", "links")
    if kind == "loss":
        bad = draw(st.sampled_from([-0.5, 1.5, 2, "half", True]))
        return _case("update",
                     {"id": HELD_ID, "links": [{"link": "c-d", "emulation": {"loss": bad}}]},
                     "invalid", "links[0].emulation.loss")
    # latency on a loss-only box: refused by the datapath, which names the materialization's link
    return _case("update",
                 {"id": HELD_ID, "links": [{"tag": "slow", "emulation": {"latency": "5ms"}}]},
                 "unsupported", None, ".emulation.latency")


@st.composite
def bad_dematerialize(draw) -> Case:
    kind = draw(st.sampled_from(["unknown", "bad_id", "extra", "missing"]))
    if kind == "unknown":
        return _case("dematerialize", {"id": "nx-" + draw(ids)}, "not_found", "id")
    if kind == "bad_id":
        return _case("dematerialize", {"id": draw(bad_ids)}, "invalid", "id")
    if kind == "extra":
        name = draw(new_names.filter(lambda n: n != "id"))
        return _case("dematerialize", {"id": HELD_ID, name: 1}, "invalid", name)
    return _case("dematerialize", {}, "invalid", "id")


@st.composite
def bad_text(draw) -> Case:
    """Not a message at all: arbitrary bytes, cut JSON, JSON of the wrong shape."""
    op = draw(st.sampled_from(["materialize", "dematerialize", "update"]))
    kind = draw(st.sampled_from(["bytes", "cut", "shape"]))
    if kind == "bytes":
        data = draw(st.binary(max_size=64))
        return Case(op, data, frozenset({"malformed", "invalid"}), None)
    if kind == "cut":
        full = json.dumps(HELD).encode()
        return Case(op, full[:draw(st.integers(0, len(full) - 1))], frozenset({"malformed"}), None)
    value = draw(st.one_of(st.integers(), st.text(max_size=8), st.none(), st.booleans(),
                           st.lists(st.integers(), max_size=3)))
    return _case(op, value, "invalid", None)


events = st.one_of(bad_materialize(), bad_materialize(), bad_update(), bad_dematerialize(),
                   bad_text())


# ---------------------------------------------------------------------------- the test


def check(case: Case, ack: dict) -> None:
    where = (case.op, case.data[:300])
    assert ack.get("ok") is False, (where, ack)
    assert ack["op"] == case.op, (where, ack)
    err = ack["error"]
    assert err["code"] in case.codes, (where, ack)
    assert err["message"], (where, ack)
    if case.field is not None:
        assert err["field"] == case.field, (where, ack)
    if case.field_suffix is not None:
        assert (err["field"] or "").endswith(case.field_suffix), (where, ack)


def test_fuzz_10000_invalid_events_change_nothing(topo: Testbed, nats_server: NatsServer,
                                                  tmp_path: Path) -> None:
    host = f"fuzz{os.getpid()}"
    s = Subjects(host)
    pin = topo.pin_root
    loop = asyncio.new_event_loop()
    proc = ServeProcess(serve_cmd(topo, nats_server.url, host), tmp_path / "serve.log").start()
    nc = loop.run_until_complete(nats.connect(nats_server.url, connect_timeout=2,
                                              max_reconnect_attempts=1, pending_size=64 << 20))
    sent: list[Case] = []
    codes: Counter[str] = Counter()
    try:
        loop.run_until_complete(proc.wait_ready(nc, host))
        ack = json.loads(loop.run_until_complete(
            nc.request(s.op("materialize"), json.dumps(HELD).encode(), timeout=30)).data)
        assert ack["ok"] is True, ack
        status_before = loop.run_until_complete(nc.request(s.op("status"), b"{}", timeout=10)).data
        before = settled_snapshot(topo.box, pin)
        assert len(before["maps"]["moa_links"]) == len(HELD_VNIS)

        async def one(case: Case) -> None:
            msg = await nc.request(s.op(case.op), case.data, timeout=60)
            ack = json.loads(msg.data)
            check(case, ack)
            codes[ack["error"]["code"]] += 1

        async def batch(cases: list[Case]) -> None:
            await asyncio.gather(*(one(c) for c in cases))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(events, min_size=BATCH, max_size=BATCH))
        def fuzz(cases: list[Case]) -> None:
            loop.run_until_complete(batch(cases))
            sent.extend(cases)

        fuzz()
        assert len(sent) >= 10_000
        assert {"malformed", "invalid", "conflict", "not_found", "unsupported"} <= set(codes)

        # The durable path answers the same way, on moa.<host>.acks, in order.
        sample = sent[:JETSTREAM_SAMPLE]
        acks: list[dict] = []

        async def durable() -> None:
            async def on_ack(msg) -> None:
                acks.append(json.loads(msg.data))
            await nc.subscribe(s.acks, cb=on_ack)
            js = nc.jetstream()
            for case in sample:
                await js.publish(s.event(case.op), case.data)
            for _ in range(1200):
                if len(acks) >= len(sample):
                    break
                await asyncio.sleep(0.05)
        loop.run_until_complete(durable())
        assert len(acks) == len(sample), proc.log()
        for case, ack in zip(sample, acks):
            check(case, ack)

        after = kernel_snapshot(topo.box, pin)
        assert snapshot_diff(before, after) == []
        status_after = loop.run_until_complete(nc.request(s.op("status"), b"{}", timeout=10)).data
        assert json.loads(status_after)["materializations"][0]["generation"] == \
            json.loads(status_before)["materializations"][0]["generation"]
        assert proc.stop() == 0, proc.log()
    finally:
        loop.run_until_complete(nc.close())
        loop.close()
        proc.kill9()
