"""Queue telemetry through the whole stack on the host kernel (issue 14): NATS -> moa service ->
the classifier on the box's uplink, real VXLAN devices in namespaces, pings between two nodes.

This host's kernel has no sch_fq, so the service runs loss-only: the link it materializes has
no capacity, hence no queue, and every frame it passes counts sojourn 0 - the first bucket - in
status's counters and in telemetry.links, with no backlog. Then the link's parameters are given
a capacity in the classifier's map as the service's SetLinkParams writes them (the same
encoding, as tests/test_aqm_ecn_netns.py does): the frames of a burst wait on the timeline, and
status reports them in later buckets and a backlog consistent with the rate (what sch_fq would
do with the departures is not this test's; the classifier's decisions are)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

import schemas
from moa_bus.lab.host_testbed import Testbed, nsenter
from moa_bus.service.subjects import Subjects
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.fixtures.service import box_service
from tests.fixtures.topology import topo  # noqa: F401
from tests.test_bus_fullstack import doc

pytestmark = [pytest.mark.netns, pytest.mark.nats]

N = 200
PORT = 5003
SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(%(n)d):
    s.sendto(b"q" * 1000, (sys.argv[1], %(port)d))
    time.sleep(0.0005)   # paced only so that no host buffer on the way overflows
"""


def _egress(status: dict, vni: int) -> dict:
    (m,) = status["materializations"]
    (c,) = [c for c in m["links"][0]["counters"] if c["vni"] == vni and c["stage"] == "egress"]
    return c


async def test_status_and_telemetry_carry_the_sojourn_and_the_backlog(
        topo: Testbed, nats_server) -> None:
    host = f"qtel{os.getpid()}"
    s = Subjects(host)
    async with box_service(nats_server, topo, host, stats_interval=0.3) as svc, \
            nats_client(nats_server.url) as nc:
        a = await asyncio.to_thread(topo.add_endpoint, 1, 100, "192.168.100.1/24")
        b = await asyncio.to_thread(topo.add_endpoint, 2, 101, "192.168.100.2/24")
        await asyncio.to_thread(topo.quiet, a, b)

        async def req(op: str, body: dict | bytes) -> dict:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            return json.loads((await nc.request(s.op(op), data, timeout=30)).data)

        ack = await req("materialize", doc(topo, "qt1", (100, 101), {"loss": 0.0}))
        assert ack["ok"], ack
        assert await asyncio.to_thread(topo.ping, a, b, 5) == (5, 5)

        # Loss-only: no queue. Every frame that passed is in the first bucket; no backlog.
        status = await req("status", b"{}")
        for vni in (100, 101):
            c = _egress(status, vni)
            assert c["packets"] >= 5
            assert c["sojourn"] == [c["packets"]]
            assert (c["backlog_ns"], c["backlog_bytes"]) == (0, 0)
        # telemetry.links carries the same fields (counters only grow: the ping is over).
        sub = await nc.subscribe(s.links)
        tele = json.loads((await sub.next_msg(timeout=5)).data)
        rows = {(x["vni"], x["stage"]): x for x in tele["links"]}
        for vni in (100, 101):
            x = rows[(vni, "egress")]
            assert x["sojourn"] == [x["packets"]] and x["packets"] >= 5
            assert x["backlog_ns"] == 0 and x["backlog_bytes"] == 0
        await sub.unsubscribe()

        # A capacity: 1 Mbit/s, a burst of N datagrams is ~1.7 s of link time, more than the
        # default queue holds: the frames it takes wait, up to the queue's time.
        rate = 1_000_000
        svc.datapath.classifier.set_link(101, egress=schemas.Emulation(capacity=rate))
        before = _egress(status, 101)["packets"]
        await asyncio.to_thread(
            subprocess.run, [*nsenter(topo.node(1)), sys.executable, "-c",
                             SENDER % {"n": N, "port": PORT}, b.ip], check=True, timeout=60)
        status = await req("status", b"{}")
        c = _egress(status, 101)
        passed = c["packets"] - before
        # The link's default queue takes part of the burst, the rest is tail-dropped.
        assert passed + c["drops"]["queue"] >= N and c["drops"]["queue"] > 0
        assert sum(c["sojourn"]) == c["packets"]
        # The frames behind the burst's first waited: beyond the first bucket, up to the queue.
        assert sum(c["sojourn"][1:]) >= passed - 1
        bounds = schemas.SOJOURN_BOUNDS_NS
        assert len(c["sojourn"]) - 1 <= len(bounds)
        # The longest wait is at most the burst's link time, up to its bucket's bound.
        burst_ns = N * (1000 + 28 + 14 + 24) * 8 * 10**9 // rate
        assert bounds[len(c["sojourn"]) - 2] <= burst_ns
        # The backlog at the read is consistent: bytes at the rate of the time.
        assert c["backlog_bytes"] == c["backlog_ns"] * rate // 8_000_000_000
        assert 0 <= c["backlog_ns"] <= burst_ns
        assert (await req("dematerialize", {"id": "qt1"}))["ok"]
