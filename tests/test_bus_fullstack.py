"""Full stack on the host kernel: NATS -> moa service -> KernelDatapath -> kernel state in
network namespaces -> Ack. The host has no sch_fq, so the box runs loss-only (allow_loss_only);
latency and capacity are refused per link with a coded Ack."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess

import nats
import pytest

from moa_bus.lab.host_testbed import BOX_ADDR, UPLINK, Testbed
from moa_bus.service.box import open_kernel_box
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.serve_loop import serve
from moa_bus.service.settings import ServeSettings
from moa_bus.service.subjects import Subjects
from tests.fixtures.moabox import ServeProcess, serve_cmd
from tests.fixtures.nats import nats_server  # noqa: F401
from tests.fixtures.processes import run_moa
from tests.fixtures.service import until_serving
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.nats]


def kernel_state(t: Testbed, dp) -> dict:
    """What moa made in the box's namespace: devices (with alias, master, xdp) and link params."""
    links = json.loads(subprocess.run(["ip", "-n", t.box, "-d", "-j", "link", "show"],
                                      capture_output=True, text=True, check=True).stdout)
    devices = sorted((d["ifname"], d.get("ifalias"), d.get("master"), d.get("operstate"),
                      json.dumps(d.get("xdp"), sort_keys=True))
                     for d in links if d.get("ifalias", "").startswith("moa"))
    params = {vni: raw.hex() for vni, raw in dp.classifier.raw_links(dp.classifier.vnis()).items()}
    return {"devices": devices, "params": params, "pairs": sorted(dp.pair.entries())}


def doc(t: Testbed, mid: str, vnis: tuple[int, int], emulation: dict) -> bytes:
    return json.dumps({"id": mid, "links": [{"id": "a-b", "tags": ["wan"], "emulation": emulation,
                       "endpoints": [{"vni": vnis[0], "remote": t.hv_addr(1)},
                                     {"vni": vnis[1], "remote": t.hv_addr(2)}]}]}).encode()


async def test_full_stack_materialize_update_dematerialize(topo: Testbed,
                                                           nats_server: NatsServer) -> None:
    host = f"fullstack{os.getpid()}"
    s = Subjects(host)
    holder: list = []

    async def factory(settings):
        box = await open_kernel_box(settings)
        holder.append(box.datapath)
        return box

    settings = ServeSettings(nats=nats_server.url, host=host, uplink=UPLINK, local=BOX_ADDR,
                                       netns=topo.box, pin_root=topo.pin_root, allow_loss_only=True,
                                       stats_interval=0.3, state_dir=topo.state_dir,
                                       p2p_mode="vtep")  # it looks at the VTEPs and pair
    stop = asyncio.Event()
    said: list[str] = []
    server = asyncio.create_task(serve(settings, factory, stop, said.append))
    nc = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        await until_serving(said, server, timeout=10)
        (dp,) = holder
        a = await asyncio.to_thread(topo.add_endpoint, 1, 100, "192.168.100.1/24")
        b = await asyncio.to_thread(topo.add_endpoint, 2, 101, "192.168.100.2/24")

        async def req(op: str, data: bytes) -> dict:
            return json.loads((await nc.request(s.op(op), data, timeout=30)).data)

        empty = kernel_state(topo, dp)
        ack = await req("materialize", doc(topo, "fs1", (100, 101), {"loss": 0}))
        assert ack["ok"] is True and ack["generation"] >= 1, ack
        made = kernel_state(topo, dp)
        assert set(made["params"]) == {100, 101} and len(made["devices"]) >= 2
        assert await asyncio.to_thread(topo.ping, a, b, 5) == (5, 5)

        # update through NATS: loss 1 on the link -> nothing gets through
        ack = await req("update", json.dumps({"id": "fs1", "links": [
            {"link": "a-b", "emulation": {"loss": 1.0}}]}).encode())
        assert ack["ok"] is True, ack
        lossy = kernel_state(topo, dp)
        assert lossy["params"] != made["params"] and lossy["devices"] == made["devices"]
        assert (await asyncio.to_thread(topo.ping, a, b, 3, 0.2, 1))[1] == 0

        # rejected messages leave the kernel exactly as it was
        bad = [
            ("materialize", doc(topo, "fs2", (0, 5), {})),  # VNI 0
            ("materialize", doc(topo, "fs2", (101, 300), {})),  # VNI held by fs1
            ("materialize", doc(topo, "fs2", (300, 301), {"latency": "10ms"})),  # loss-only box
            ("update", json.dumps({"id": "nope", "links": [
                {"link": "a-b", "emulation": {"loss": 0.5}}]}).encode()),
            ("dematerialize", b'{"id": "nope"}'),
            ("materialize", b'{"id": "fs2", "links": [}'),
        ]
        codes = []
        for op, data in bad:
            ack = await req(op, data)
            assert ack["ok"] is False, (op, data)
            codes.append(ack["error"]["code"])
        assert codes == ["invalid", "conflict", "unsupported", "not_found", "not_found",
                         "malformed"]
        assert kernel_state(topo, dp) == lossy

        # status and link telemetry carry the kernel's counters
        st = await req("status", b"{}")
        (m,) = st["materializations"]
        counters = m["links"][0]["counters"]
        assert sum(c["packets"] for c in counters) >= 5
        assert sum(c["drops"].get("loss", 0) for c in counters) >= 3
        sub = await nc.subscribe(s.links)
        tele = json.loads((await sub.next_msg(timeout=5)).data)
        assert {x["vni"] for x in tele["links"]} == {100, 101}

        # the durable path reaches the kernel too
        acks = await nc.subscribe(s.acks)
        await nc.jetstream().publish(s.event("update"), json.dumps({"id": "fs1", "links": [
            {"tag": "wan", "emulation": {"loss": 0}}]}).encode())
        jack = json.loads((await acks.next_msg(timeout=15)).data)
        assert jack["ok"] and jack["op"] == "update"
        assert kernel_state(topo, dp)["params"] == made["params"]
        assert await asyncio.to_thread(topo.ping, a, b, 3) == (3, 3)

        ack = await req("dematerialize", b'{"id": "fs1"}')
        assert ack["ok"] is True
        gone = kernel_state(topo, dp)
        assert gone["params"] == {} and gone["devices"] == empty["devices"] and gone["pairs"] == []
    finally:
        stop.set()
        await nc.close()
        assert await asyncio.wait_for(server, 30) == 0


async def test_moa_serve_on_uvloop_sigterm_leaves_datapath(topo: Testbed, nats_server: NatsServer,
                                                           tmp_path) -> None:
    """`moa serve` as a process (uvloop, real datapath): materialize with `moa materialize`,
    SIGTERM: exit 0, and the kernel keeps the links (traffic stays shaped across a restart)."""
    host = f"fullsig{os.getpid()}"
    proc = ServeProcess(serve_cmd(topo, nats_server.url, host), tmp_path / "serve.log").start()
    try:
        nc = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            await proc.wait_ready(nc, host)
        finally:
            await nc.close()
        f = tmp_path / "m.json"
        f.write_bytes(doc(topo, "sig1", (100, 101), {"loss": 0.25}))
        rc, out, err = await run_moa(
            "materialize", str(f), "--nats", nats_server.url, "--host", host,
            env={**os.environ, "MOA_NATS_URL": "", "MOA_UPLINK": ""})
        assert rc == 0, err
        assert json.loads(out)["ok"] is True
        assert await asyncio.to_thread(proc.stop) == 0, proc.log()  # SIGTERM
        assert "the datapath stays in place" in proc.log()
    finally:
        proc.kill9()
    links = json.loads(subprocess.run(["ip", "-n", topo.box, "-j", "link", "show"],
                                      capture_output=True, text=True, check=True).stdout)
    assert sum(1 for d in links if d.get("ifalias", "").startswith("moa")) >= 2
    assert os.listdir(topo.pin_root)  # pinned maps stay


def test_kernel_datapath_is_the_datapath_the_bus_calls() -> None:
    """datapath.api.Datapath is the one contract; KernelDatapath provides every method of it."""
    from datapath.api import Datapath, KernelDatapath

    wanted = {n for n in dir(Datapath) if not n.startswith("_")} | set(
        Datapath.__annotations__)
    missing = {n for n in wanted if not hasattr(KernelDatapath, n)
               and n not in KernelDatapath.__init__.__code__.co_names}
    assert missing == set()
