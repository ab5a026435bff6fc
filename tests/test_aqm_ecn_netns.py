"""CoDel with ECN through the whole stack on the host kernel (issue 14): NATS -> moa service ->
the classifier on the box's uplink, real VXLAN devices in namespaces. A burst far beyond the
link's capacity builds a standing queue on the timeline; CoDel marks the ECN-capable flow's
packets CE and drops the other flow's. The receiving node reads each datagram's TOS after its
VXLAN device decapsulated it: it sees CE on the inner packet, and the non-ECT flow's losses are
the link's aqm drops.

This host's kernel has no sch_fq, so the service runs loss-only and refuses a capacity: the link
is materialized through NATS without one, then its parameters (capacity and CoDel) are written
into the classifier's map as the service's SetLinkParams writes them (Classifier.set_link, the
same encoding). What a departure time would do is sch_fq's; what is tested here - the marks and
drops the classifier decides and the CE bit surviving the receiver's decapsulation - is not."""
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

N = 400                # datagrams per flow
ECT_PORT, PLAIN_PORT = 5001, 5002

RECEIVER = r"""
import json, select, socket, sys, time
socks = {}
for port in (%(ect)d, %(plain)d):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    s.bind(("0.0.0.0", port))
    socks[s] = port
print("ready", flush=True)
seen = {str(p): [0, 0, 0, 0] for p in socks.values()}
deadline = time.monotonic() + 30
idle = None
while time.monotonic() < deadline:
    r, _, _ = select.select(list(socks), [], [], 0.5)
    if not r:
        if idle is not None and time.monotonic() - idle > 1.5:
            break
        continue
    for s in r:
        _, anc, _, _ = s.recvmsg(2048, socket.CMSG_SPACE(1))
        tos = next(d[0] for lvl, typ, d in anc if lvl == socket.IPPROTO_IP)
        seen[str(socks[s])][tos & 3] += 1
        idle = time.monotonic()
print(json.dumps(seen), flush=True)
"""

SENDER = r"""
import socket, sys, time
dst = sys.argv[1]
ect = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ect.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x02)      # ECT(0)
plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
plain.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x00)    # not-ECT
for i in range(%(n)d):
    ect.sendto(b"e" * 1000, (dst, %(ect)d))
    plain.sendto(b"p" * 1000, (dst, %(plain)d))
    time.sleep(0.0005)   # paced only so that no host buffer on the way overflows
"""


def _drops(status: dict, reason: str) -> int:
    (m,) = status["materializations"]
    return sum(c["drops"].get(reason, 0) for c in m["links"][0]["counters"])


def _marks(status: dict) -> int:
    (m,) = status["materializations"]
    return sum(c["marks"] for c in m["links"][0]["counters"])


async def test_codel_marks_ce_on_the_inner_packet_the_receiver_decapsulates(
        topo: Testbed, nats_server) -> None:
    host = f"aqm{os.getpid()}"
    s = Subjects(host)
    params = {"ect": ECT_PORT, "plain": PLAIN_PORT, "n": N}
    async with box_service(nats_server, topo, host) as svc, \
            nats_client(nats_server.url) as nc:
        a = await asyncio.to_thread(topo.add_endpoint, 1, 100, "192.168.100.1/24")
        b = await asyncio.to_thread(topo.add_endpoint, 2, 101, "192.168.100.2/24")
        await asyncio.to_thread(topo.quiet, a, b)

        async def req(op: str, body: dict | bytes) -> dict:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            return json.loads((await nc.request(s.op(op), data, timeout=30)).data)

        ack = await req("materialize", doc(topo, "aqm1", (100, 101), {}))
        assert ack["ok"], ack
        status = await req("status", b"{}")
        assert status["materializations"][0]["links"][0]["emulation"]["aqm"] == {
            "kind": "taildrop", "target": None, "interval": None, "ecn": False}
        # 2 Mbit/s: 400 + 400 datagrams sent at once are ~3.3 s of link time; CoDel's target and
        # interval are a small part of that, so most of the burst meets the dropping state.
        emu = schemas.Emulation(capacity=2_000_000, queue=1_000_000, aqm=schemas.Aqm(
            kind="codel", target=2_000_000, interval=20_000_000, ecn=True))
        for vni in (100, 101):
            svc.datapath.classifier.set_link(vni, egress=emu)

        receiver = subprocess.Popen(
            [*nsenter(topo.node(2)), sys.executable, "-c", RECEIVER % params],
            stdout=subprocess.PIPE, text=True)
        try:
            assert receiver.stdout is not None
            assert (await asyncio.to_thread(receiver.stdout.readline)).strip() == "ready"
            await asyncio.to_thread(
                subprocess.run, [*nsenter(topo.node(1)), sys.executable, "-c", SENDER % params,
                                 b.ip], check=True, timeout=60)
            out, _ = await asyncio.to_thread(receiver.communicate, timeout=60)
        finally:
            if receiver.poll() is None:
                receiver.kill()
                receiver.wait()
        seen = json.loads(out.strip().splitlines()[-1])
        ect, plain = seen[str(ECT_PORT)], seen[str(PLAIN_PORT)]
        status = await req("status", b"{}")

        # The ECN-capable flow: nothing lost, its marked packets arrive CE (3), the rest ECT(0).
        assert ect[0] == ect[1] == 0, seen
        assert ect[2] + ect[3] == N, seen
        assert ect[3] > 0, seen
        # The other flow: never marked, its losses are CoDel's drops.
        assert plain[1] == plain[2] == plain[3] == 0, seen
        assert plain[0] < N, seen
        assert _drops(status, "aqm") == N - plain[0]
        assert _marks(status) == ect[3]
        assert _drops(status, "queue") == 0 and _drops(status, "loss") == 0
        assert (await req("dematerialize", {"id": "aqm1"}))["ok"]
