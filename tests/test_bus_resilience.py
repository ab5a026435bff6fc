"""Kill -9 of `moa serve` in the middle of a 200-link materialization that came through JetStream;
the restarted service converges: every link's devices and map entries present, exactly once, and
the event acked ok exactly once. Real nats-server, real KernelDatapath in namespaces (loss-only)."""
from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import nats
import pytest

from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.subjects import Subjects
from tests.fixtures.moabox import (
    ServeProcess, ip_json, js_stream_idle, map_contents, moa_devices, p2p_materialize, serve_cmd,
    vni_keys,
)
from tests.fixtures.nats import nats_server  # noqa: F401
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.nats]

LINKS = 200
FIRST_VNI = 5000
ACK_WAIT = 3.0  # s: the killed process's unacked event comes back this soon


async def _kill_when_devices(ns: str, count: int, proc: ServeProcess, timeout: float,
                             phase: str) -> int:
    """Kill -9 `proc` as soon as `ip monitor` has reported `count` moa VTEPs in `ns` created
    (phase "created") or brought up (phase "up") -- an event stream: polling would see the plan
    finish first on a fast machine. Returns the count seen."""
    mon = await asyncio.create_subprocess_exec("ip", "-n", ns, "-o", "monitor", "link",
                                               stdout=asyncio.subprocess.PIPE)
    seen: set[str] = set()
    try:
        async def watch() -> None:
            assert mon.stdout is not None
            while len(seen) < count:
                line = (await mon.stdout.readline()).decode()
                if not line:
                    return
                m = re.search(r"^\d+: (mv\d+)(?:@\S+)?: <([^>]*)>", line)
                if m and (phase == "created" or "UP" in m.group(2).split(",")):
                    seen.add(m.group(1))
        await asyncio.wait_for(watch(), timeout)
        proc.kill9()
    finally:
        mon.kill()
        await mon.wait()
    return len(seen)


# Where the kill lands: while the VTEPs are being created (the datapath creates each and marks it
# with its ifalias, then brings them up), or while they are being brought up (all created and
# marked). The first case once caught a bulk path that created every device before marking any:
# the restarted service then refused the unmarked devices as not moa's.
@pytest.mark.parametrize("phase", ["created", "up"])
async def test_kill9_mid_materialization_then_restart_converges(
        topo: Testbed, nats_server: NatsServer, tmp_path: Path, phase: str) -> None:
    host = f"res{os.getpid()}"
    s = Subjects(host)
    pin = topo.pin_root
    cmd = serve_cmd(topo, nats_server.url, host, "--ack-wait", str(ACK_WAIT))
    doc = p2p_materialize("big", LINKS, FIRST_VNI, topo, loss=0.01, tags=["wan"])
    vnis = {FIRST_VNI + k for k in range(2 * LINKS)}

    nc = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=1)
    first = ServeProcess(cmd, tmp_path / "serve1.log").start()
    second: ServeProcess | None = None
    acks: list[dict] = []
    try:
        await first.wait_ready(nc, host)

        async def on_ack(msg) -> None:
            acks.append(json.loads(msg.data))
        await nc.subscribe(s.acks, cb=on_ack)
        # Kill -9 once a tenth of the 400 VTEPs exist: the plan is in the middle.
        killer = asyncio.create_task(_kill_when_devices(topo.box, 2 * LINKS // 10, first, 60,
                                                        phase))
        await asyncio.sleep(0.3)  # ip monitor is listening
        await nc.jetstream().publish(s.event("materialize"), json.dumps(doc).encode())
        made = await killer
        # Half-made: not all VTEPs exist (killed while creating; those created may not carry
        # moa's mark yet), or not all are up (killed while bringing them up).
        left = [d["ifname"] for d in await asyncio.to_thread(ip_json, topo.box, "link", "show")
                if d["ifname"].startswith("mv") and (phase == "created" or "UP" in d["flags"])]
        assert 2 * LINKS // 10 <= made <= len(left) < 2 * LINKS, (made, len(left), first.log())
        assert acks == []  # killed before it could ack

        second = ServeProcess(cmd, tmp_path / "serve2.log").start()
        await second.wait_ready(nc, host)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while not acks and loop.time() < deadline:
            await asyncio.sleep(0.1)
        assert acks, f"no ack after the restart:\n{second.log()}"
        # Long enough for a second redelivery (ack_wait) to show up if the ack had not stuck.
        await asyncio.sleep(2 * ACK_WAIT)
        assert await js_stream_idle(nc, s.stream, s.durable)
        assert [(a["id"], a["op"], a["ok"]) for a in acks] == [("big", "materialize", True)], \
            (acks, second.log())

        # Every link's two VTEPs, marked as that link's, and nothing else of moa's.
        devices = await asyncio.to_thread(moa_devices, topo.box)
        assert devices == {f"mv{FIRST_VNI + 2 * i + k}": f"moa:big:l{i}"
                           for i in range(LINKS) for k in (0, 1)}
        # Each VNI's parameters exactly once in moa_links, each in a slot of its own, and all
        # the same parameters (loss 1%, written by one plan or the other): struct moa_link is
        # {u32 slot, u32 pad, params[2]}.
        assert vni_keys(pin) == vnis
        values = [bytes.fromhex(v) for v in map_contents(pin, "moa_links").values()]
        assert len({v[:4] for v in values}) == 2 * LINKS
        assert len({v[8:] for v in values}) == 1 and any(values[0][8:])
        # The redirect pair joins each VTEP to its partner: 400 entries, one per VTEP.
        peers = map_contents(pin, "moa_pair_peers")
        assert len(peers) == 2 * LINKS

        # The service agrees: one materialization, 200 links of two VNIs each.
        st = json.loads((await nc.request(s.op("status"), b'{"id": "big"}', timeout=30)).data)
        (m,) = st["materializations"]
        assert len(m["links"]) == LINKS
        assert sorted(v for link in m["links"] for v in link["vnis"]) == sorted(vnis)

        # Sending the same content again changes nothing and acks ok.
        again = json.loads((await nc.request(s.op("materialize"), json.dumps(doc).encode(),
                                             timeout=60)).data)
        assert again["ok"] is True and again["generation"] == m["generation"], again
        assert await asyncio.to_thread(moa_devices, topo.box) == devices
        assert second.stop() == 0, second.log()
    finally:
        await nc.close()
        first.kill9()
        if second is not None:
            second.kill9()
