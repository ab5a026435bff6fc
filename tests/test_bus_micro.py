"""The NATS micro protocol as moa speaks it (moa_bus/service/micro.py, transport.py), checked by two
clients that share no code with the service:

- one written here from the protocol's documents (ADR-32 "Service API" and the JSON schemas of
  its responses, io.nats.micro.v1.{ping,info,stats}_response), which checks every field of every
  reply: its presence, its type, its form (names, semantic versions, RFC 3339 times), and what
  the statistics must add up to;
- nats-micro's client (PyPI `nats-micro`, a test dependency), an independent implementation of
  the protocol's client side: discovery, statistics, and error replies read as numeric codes.

The service runs over the real box (tests/fixtures/service.py), as in the other bus tests.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone

import nats.errors
import pytest
from nats_contrib.micro.client import Client as MicroClient
from nats_contrib.micro.client import ServiceError

from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.subjects import Subjects
from tests.fixtures.docs import materialize_doc
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.fixtures.service import box_service
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.nats]

# -- the protocol, from its documents (not from moa's code) ----------------------------------------

NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # a service's and an endpoint's name
SEMVER = re.compile(  # semver.org's suggested expression, which the protocol names
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
INT64_MAX = 2 ** 63 - 1
IDENTITY = {"type", "name", "id", "version", "metadata"}
ENDPOINT_STATS = {"name", "subject", "num_requests", "num_errors", "last_error",
                  "processing_time", "average_processing_time"}  # required
ENDPOINT_STATS_OPTIONAL = {"queue_group", "data"}
# docs/contract.md, "Ack": the number of each of moa's error words
CODES = {"malformed": 400, "invalid": 400, "not_found": 404, "conflict": 409, "unsupported": 422}
VERBS = ("PING", "INFO", "STATS")


def _metadata(value: object, where: str) -> None:
    assert value is None or (isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items())), (where, value)


def _int(value: object, where: str) -> int:
    assert isinstance(value, int) and not isinstance(value, bool), (where, value)
    assert 0 <= value <= INT64_MAX, (where, value)
    return value


def check_identity(r: dict, kind: str) -> None:
    assert r["type"] == f"io.nats.micro.v1.{kind}_response", r
    assert isinstance(r["name"], str) and NAME.match(r["name"]), r
    assert isinstance(r["id"], str) and r["id"], r
    assert isinstance(r["version"], str) and SEMVER.match(r["version"]), r
    _metadata(r["metadata"], "metadata")


def check_ping(r: dict) -> None:
    assert set(r) == IDENTITY, r
    check_identity(r, "ping")


def check_info(r: dict) -> None:
    assert set(r) == IDENTITY | {"description", "endpoints"}, r
    check_identity(r, "info")
    assert isinstance(r["description"], str), r
    assert isinstance(r["endpoints"], list), r
    for ep in r["endpoints"]:
        assert set(ep) == {"name", "subject", "queue_group", "metadata"}, ep
        assert isinstance(ep["name"], str) and NAME.match(ep["name"]), ep
        assert isinstance(ep["subject"], str) and ep["subject"] and " " not in ep["subject"], ep
        assert isinstance(ep["queue_group"], str), ep
        _metadata(ep["metadata"], f"endpoint {ep['name']} metadata")


def check_stats(r: dict) -> dict[str, dict]:
    """The endpoints' statistics by name, every field checked."""
    assert set(r) == IDENTITY | {"started", "endpoints"}, r
    check_identity(r, "stats")
    m = isinstance(r["started"], str) and RFC3339.match(r["started"])
    assert m, r
    started = datetime.fromisoformat(  # microseconds at most, for Python's parser
        r["started"][:19] + (m[1] or "")[:7] + ("+00:00" if m[2] == "Z" else m[2]))
    now = datetime.now(timezone.utc)
    assert now - timedelta(minutes=10) < started <= now, (started, now)
    out = {}
    for ep in r["endpoints"]:
        assert ENDPOINT_STATS <= set(ep) <= ENDPOINT_STATS | ENDPOINT_STATS_OPTIONAL, ep
        assert isinstance(ep["name"], str) and NAME.match(ep["name"]), ep
        assert isinstance(ep["subject"], str) and ep["subject"], ep
        n = _int(ep["num_requests"], "num_requests")
        errors = _int(ep["num_errors"], "num_errors")
        total = _int(ep["processing_time"], "processing_time")
        average = _int(ep["average_processing_time"], "average_processing_time")
        assert errors <= n, ep
        assert isinstance(ep["last_error"], str), ep
        assert (ep["last_error"] == "") == (errors == 0), ep
        # the protocol: the total divided by num_requests, truncated; 0 without requests
        assert average == (total // n if n else 0), ep
        assert (total > 0) == (n > 0), ep
        out[ep["name"]] = ep
    return out


async def replies(nc, subject: str, wait: float = 0.5) -> list[dict]:
    """Every reply to one request within `wait` s (each service instance answers)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    got = []
    try:
        while True:
            msg = await sub.next_msg(timeout=wait)
            assert not msg.headers, (subject, msg.headers)
            got.append(json.loads(msg.data))
    except nats.errors.TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return got


def _host() -> str:
    return f"micro{os.getpid()}"


# -- the tests ----------------------------------------------------------------------------------

async def test_discovery_on_every_subject_every_field(nats_server: NatsServer,
                                                      topo: Testbed) -> None:
    host = _host()
    s = Subjects(host)
    async with box_service(nats_server, topo, host), nats_client(nats_server.url) as nc:
        (ping,) = await replies(nc, "$SRV.PING")
        check_ping(ping)
        assert ping["name"] == "moa" and ping["metadata"] == {"host": host}
        sid = ping["id"]
        for verb in VERBS:
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.moa", f"$SRV.{verb}.moa.{sid}"):
                (r,) = await replies(nc, subject)
                {"PING": check_ping, "INFO": check_info, "STATS": check_stats}[verb](r)
                assert (r["name"], r["id"], r["version"], r["metadata"]) == (
                    "moa", sid, ping["version"], {"host": host}), (subject, r)
            # another service's name, another instance's id: moa is not asked
            for other in (f"$SRV.{verb}.notmoa", f"$SRV.{verb}.moa.{sid}x"):
                with pytest.raises(nats.errors.NoRespondersError):
                    await nc.request(other, b"", timeout=2)
        (info,) = await replies(nc, "$SRV.INFO.moa")
        assert {(e["name"], e["subject"]) for e in info["endpoints"]} == {
            (op, s.op(op)) for op in ("materialize", "dematerialize", "update", "status")}
        assert {e["queue_group"] for e in info["endpoints"]} == {"q"}
        (stats,) = await replies(nc, "$SRV.STATS.moa")
        assert all(ep["num_requests"] == 0 for ep in check_stats(stats).values())


async def test_statistics_and_numeric_error_codes(nats_server: NatsServer, topo: Testbed) -> None:
    host = _host()
    s = Subjects(host)
    async with box_service(nats_server, topo, host), nats_client(nats_server.url) as nc:
        async def request(op: str, doc: object) -> tuple[dict, dict | None]:
            data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            msg = await nc.request(s.op(op), data, timeout=30)
            return json.loads(msg.data), msg.headers

        ok, headers = await request("materialize", materialize_doc("held", 500, 2))
        assert ok["ok"] and not headers, (ok, headers)
        for _ in range(2):
            st, headers = await request("status", {})
            assert st["materializations"] and not headers
        refusals = [("materialize", materialize_doc("x", 501), "conflict"),
                    ("materialize", b"{not json", "malformed"),
                    ("materialize", materialize_doc("x", 0), "invalid"),
                    ("dematerialize", {"id": "nope"}, "not_found"),
                    ("status", {"id": "nope"}, "not_found")]
        for op, doc, word in refusals:
            ack, headers = await request(op, doc)
            assert ack["ok"] is False and ack["error"]["code"] == word, ack
            # the protocol: an error reply has both headers, the code safe to parse as a number
            assert headers is not None, (op, word)
            assert int(headers["Nats-Service-Error-Code"]) == CODES[word], headers
            assert headers["Nats-Service-Error"] == word, headers

        (stats,) = await replies(nc, "$SRV.STATS.moa")
        by_name = check_stats(stats)
        counts = {name: (ep["num_requests"], ep["num_errors"]) for name, ep in by_name.items()}
        assert counts == {"materialize": (4, 3), "status": (3, 1), "dematerialize": (1, 1),
                          "update": (0, 0)}, counts
        # the last error each endpoint answered, with its number and moa's word
        assert by_name["materialize"]["last_error"].startswith("400 invalid"), by_name
        assert by_name["status"]["last_error"].startswith("404 not_found"), by_name
        assert by_name["update"]["last_error"] == ""


async def test_nats_micro_client(nats_server: NatsServer, topo: Testbed) -> None:
    """nats-micro's client finds moa, reads its endpoints and statistics, and reads an error
    reply as a numeric code (it fails on a code that is not a number)."""
    host = _host()
    s = Subjects(host)
    async with box_service(nats_server, topo, host), nats_client(nats_server.url) as nc:
        client = MicroClient(nc, default_max_wait=0.5)
        (ping,) = await client.ping("moa")
        assert (ping.name, ping.metadata) == ("moa", {"host": host})
        (info,) = await client.info("moa")
        assert info.id == ping.id
        assert sorted(e.subject for e in info.endpoints) == sorted(
            s.op(op) for op in ("dematerialize", "materialize", "status", "update"))
        reply = await client.request(s.op("materialize"),
                                     json.dumps(materialize_doc("held", 600)).encode(), timeout=30)
        assert json.loads(reply.data)["ok"] is True
        with pytest.raises(ServiceError) as refused:
            await client.request(s.op("materialize"),
                                 json.dumps(materialize_doc("other", 600)).encode(), timeout=30)
        assert (refused.value.code, refused.value.description) == (409, "conflict")
        assert json.loads(refused.value.data)["error"]["code"] == "conflict"  # the Ack, unchanged
        with pytest.raises(ServiceError) as malformed:
            await client.request(s.op("update"), b"[", timeout=30)
        assert (malformed.value.code, malformed.value.description) == (400, "malformed")
        stats = await client.instance("moa", ping.id).stats()
        assert stats.id == ping.id and stats.started <= datetime.now(timezone.utc)
        got = {e.name: (e.num_requests, e.num_errors) for e in stats.endpoints}
        assert got["materialize"] == (2, 1) and got["update"] == (1, 1), got
