"""The box is the truth at start (issue 10), through `moa serve` as a real process: the durable
desired state is what a restarted service reports and acts on; the kernel is converged to it
(orphans purged: parameters, devices and pair entries no materialization owns); every kind of
message works after a restart; generations never go back, across restarts, a dematerialize and
a new materialize of the same id, the loss of the state directory, the loss of the kernel's
state. Real nats-server, real KernelDatapath in namespaces (loss-only: no sch_fq here).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import nats
import pytest

from datapath.classifier import Classifier, ClassifierConfig
from schemas import Emulation
from datapath.pair import PairProgram
from moa_bus.lab.host_testbed import BOX_ADDR, UPLINK, Testbed, sh
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.subjects import DRY_RUN_HEADER, Subjects
from tests.fixtures.moabox import (
    ServeProcess, box_state, map_contents, moa_devices, serve_cmd, snapshot_diff, vni_keys,
)
from tests.fixtures.nats import nats_server  # noqa: F401
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.nats]


def doc(mid: str = "exp", loss: float = 0.01, extra: bool = False) -> dict:
    links = [
        {"id": "a-b", "tags": ["wan"], "emulation": {"loss": loss},
         "endpoints": [{"vni": 100, "remote": "10.201.0.11"},
                       {"vni": 101, "remote": "10.201.0.12"}]},
        {"id": "c-d", "tags": ["wan"], "emulation": {"burst": {"p": 0.01, "r": 0.3}},
         "endpoints": [{"vni": 102, "remote": "10.201.0.11"},
                       {"vni": 103, "remote": "10.201.0.13"}]},
        {"id": "lan", "tags": ["lan"], "emulation": {"loss": 0.02, "reorder": True},
         "endpoints": [{"vni": 200 + k, "remote": f"10.201.0.{100 + k}"} for k in range(1, 4)]},
    ]
    if extra:
        links.append({"id": "e-f", "endpoints": [{"vni": 104, "remote": "10.201.0.11"},
                                                 {"vni": 105, "remote": "10.201.0.12"}]})
    return {"id": mid, "links": links}


class Service:
    """`moa serve` for the testbed's box, started and stopped (or killed) as a test needs."""

    def __init__(self, topo: Testbed, server: NatsServer, tmp: Path, host: str) -> None:
        self.cmd = serve_cmd(topo, server.url, host)
        self.tmp, self.host, self.s = tmp, host, Subjects(host)
        self.proc: ServeProcess | None = None
        self.runs = 0

    async def start(self, nc) -> ServeProcess:
        self.runs += 1
        self.proc = ServeProcess(self.cmd, self.tmp / f"serve{self.runs}.log").start()
        await self.proc.wait_ready(nc, self.host)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            assert self.proc.stop() == 0, self.proc.log()

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill9()


async def request(nc, svc: Service, op: str, body: object, dry_run: bool = False) -> dict:
    data = json.dumps(body).encode()
    msg = await nc.request(svc.s.op(op), data, timeout=60,
                           headers={DRY_RUN_HEADER: "1"} if dry_run else None)
    return json.loads(msg.data)


async def status(nc, svc: Service) -> dict[str, dict]:
    return {m["id"]: m for m in (await request(nc, svc, "status", {}))["materializations"]}


def as_sent(d: dict) -> list:
    """A Materialize's links as status reports them: the emulation with every default filled."""
    full = {"latency": 0, "jitter": 0, "loss": 0.0, "capacity": 0, "queue": None, "burst": None,
            "reorder": False, "loss_correlation": 0.0, "state": "up", "distribution": "uniform",
            "delay_correlation": 0.0, "distribution_table": None, "overhead": 24, "cell_size": 0,
            "cell_overhead": 0, "corrupt": 0.0, "reorder_early": None, "duplicate": 0.0,
            "duplicate_correlation": 0.0, "slot": None, "trace": None,
            "aqm": {"kind": "taildrop", "target": None, "interval": None, "ecn": False}}
    out = []
    for link in sorted(d["links"], key=lambda x: x["id"]):
        emu = {**full, **link.get("emulation", {})}
        if emu["burst"] is not None:
            emu["burst"] = {"loss_good": 0.0, "loss_bad": 1.0, **emu["burst"]}
        out.append((link["id"], [ep["vni"] for ep in link["endpoints"]], emu))
    return out


def as_reported(m: dict) -> list:
    return [(link["id"], link["vnis"], link["emulation"]) for link in m["links"]]


async def test_restart_reports_the_durable_content_and_every_message_works(
        topo: Testbed, nats_server: NatsServer, tmp_path: Path) -> None:
    svc = Service(topo, nats_server, tmp_path, f"start{os.getpid()}")
    nc = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        await svc.start(nc)
        first = await request(nc, svc, "materialize", doc())
        assert first["ok"], first
        before = await status(nc, svc)
        kernel = box_state(topo.box, topo.pin_root)
        svc.kill9()

        await svc.start(nc)  # after kill -9: what a never-killed service reports
        after = await status(nc, svc)
        assert _same_but_counters(after, before)  # the counters are the kernel's, still counting
        assert as_reported(after["exp"]) == as_sent(doc())  # burst and reorder included
        assert after["exp"]["generation"] == first["generation"]
        assert snapshot_diff(kernel, box_state(topo.box, topo.pin_root)) == []  # no change

        # an update by link, then by tag: ok, generation + 1 each
        u1 = await request(nc, svc, "update", {"id": "exp", "links": [
            {"link": "a-b", "emulation": {"loss": 0.05}}]})
        assert u1["ok"] and u1["generation"] == first["generation"] + 1, u1
        u2 = await request(nc, svc, "update", {"id": "exp", "links": [
            {"tag": "wan", "emulation": {"reorder": True}}]})
        assert u2["ok"] and u2["generation"] == first["generation"] + 2, u2
        current = doc()
        current["links"][0]["emulation"] = {"loss": 0.05, "reorder": True}
        current["links"][1]["emulation"]["reorder"] = True
        assert as_reported((await status(nc, svc))["exp"]) == as_sent(current)
        svc.kill9()

        await svc.start(nc)
        assert as_reported((await status(nc, svc))["exp"]) == as_sent(current)
        # re-materialize, identical to what is held: no operation, same generation
        assert (await request(nc, svc, "materialize", current, dry_run=True))["operations"] == []
        kernel = box_state(topo.box, topo.pin_root)
        same = await request(nc, svc, "materialize", current)
        assert same["ok"] and same["generation"] == u2["generation"], same
        assert snapshot_diff(kernel, box_state(topo.box, topo.pin_root)) == []
        # changed: the fewest operations (one new link: 2 parameters, 2 VTEPs, 1 pair)
        changed = {**current, "links": [*current["links"], doc(extra=True)["links"][-1]]}
        ops = (await request(nc, svc, "materialize", changed, dry_run=True))["operations"]
        assert [op.split(" ")[:2] for op in ops] == [["set", "params"], ["set", "params"],
                                                     ["create", "VTEP"], ["create", "VTEP"],
                                                     ["create", "pair"]], ops
        ack = await request(nc, svc, "materialize", changed)
        assert ack["ok"] and ack["generation"] == u2["generation"] + 1, ack
        gone = await request(nc, svc, "dematerialize", {"id": "exp"})
        assert gone["ok"] and gone["generation"] == ack["generation"] + 1, gone
        assert await status(nc, svc) == {}
        assert moa_devices(topo.box) == {} and vni_keys(topo.pin_root) == set()
        svc.stop()
    finally:
        svc.kill9()
        await nc.close()


async def materialized_then_stopped(svc: Service, nc, topo: Testbed) -> dict:
    """doc() materialized by a service that then stops: the kernel's state it left."""
    await svc.start(nc)
    assert (await request(nc, svc, "materialize", doc()))["ok"]
    svc.stop()
    return box_state(topo.box, topo.pin_root)


def _same_but_counters(a: dict, b: dict) -> bool:
    def strip(x: dict) -> dict:
        return {mid: {**m, "links": [{**link, "counters": None} for link in m["links"]]}
                for mid, m in x.items()}
    return strip(a) == strip(b)


async def test_orphans_in_the_kernel_are_purged_at_start(topo: Testbed, nats_server: NatsServer,
                                                        tmp_path: Path) -> None:
    svc = Service(topo, nats_server, tmp_path, f"orph{os.getpid()}")
    nc = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        kernel = await materialized_then_stopped(svc, nc, topo)
        # Planted while no service runs: parameters of a VNI nobody has, a VTEP and a bridge
        # of a materialization the box does not hold, a VTEP of exp's under a link exp does
        # not have, a pair entry for a device that does not exist.
        clf = Classifier.load(ClassifierConfig(), pin_root=topo.pin_root)
        try:
            clf.set_link(9000, egress=Emulation(loss=0.5))
        finally:
            clf.close()
        pair = PairProgram(topo.pin_root, max_vteps=2 * ClassifierConfig().max_links)
        try:
            # (the DEVMAP half needs the ifindex to exist: a crash leaves the other half)
            pair.peers.update(99990, pair.Peer(peer_ifindex=99991, peer_mtu=1450))
        finally:
            pair.close()
        for name, vni, alias in (("mv9001", 9001, "moa:ghost:l0"), ("mv9002", 9002, "moa:exp:lx")):
            sh("ip", "-n", topo.box, "link", "add", name, "type", "vxlan", "id", str(vni),
               "local", BOX_ADDR, "remote", "10.201.0.50", "dstport", "4789", "dev", UPLINK)
            sh("ip", "-n", topo.box, "link", "set", name, "alias", alias)
        sh("ip", "-n", topo.box, "link", "add", "mbghost", "type", "bridge")
        sh("ip", "-n", topo.box, "link", "set", "mbghost", "alias", "moa:ghost:lan")
        sh("ip", "-n", topo.box, "link", "add", "notmoa0", "type", "vxlan", "id", "9003",
           "local", BOX_ADDR, "remote", "10.201.0.50", "dstport", "4789", "dev", UPLINK)
        assert {"mv9001", "mv9002", "mbghost"} <= set(moa_devices(topo.box))

        proc = await svc.start(nc)
        # all purged, and the box is exactly what it was (but for the foreign device)
        sh("ip", "-n", topo.box, "link", "del", "notmoa0")
        assert snapshot_diff(kernel, box_state(topo.box, topo.pin_root)) == []
        log = proc.log()
        assert "start-up: purged parameters of VNI 9000" in log, log
        assert "start-up: purged pair entry of ifindex 99990" in log, log
        assert "delete VTEP mv9001" in log and "delete VTEP mv9002" in log, log
        assert "delete bridge mbghost" in log, log
        assert (await status(nc, svc))["exp"]["generation"] >= 1
        svc.stop()
    finally:
        svc.kill9()
        await nc.close()


async def test_generation_never_goes_back(topo: Testbed, nats_server: NatsServer,
                                          tmp_path: Path) -> None:
    svc = Service(topo, nats_server, tmp_path, f"gen{os.getpid()}")
    state = Path(topo.state_dir) / "desired" / svc.host
    nc = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=1)
    seen: list[int] = []

    async def change(op: str, body: dict) -> dict:
        ack = await request(nc, svc, op, body)
        assert ack["ok"], ack
        assert not seen or ack["generation"] > seen[-1], (op, ack, seen)
        seen.append(ack["generation"])
        return ack

    try:
        await svc.start(nc)
        await change("materialize", doc())
        await change("dematerialize", {"id": "exp"})
        await change("materialize", doc())  # the same id again: a newer generation
        await change("update", {"id": "exp", "links": [{"tag": "lan", "emulation": {"loss": 0}}]})
        svc.kill9()

        await svc.start(nc)  # a restart
        await change("update", {"id": "exp", "links": [{"tag": "lan", "emulation": {"loss": 0.1}}]})
        svc.stop()

        # The state directory is lost: the kernel's record keeps the generation (and the
        # kernel's links, which no durable materialization owns any more, are purged).
        shutil.rmtree(state)
        proc = await svc.start(nc)
        assert await status(nc, svc) == {}
        assert moa_devices(topo.box) == {} and vni_keys(topo.pin_root) == set()
        assert "start-up: purged" in proc.log() or "delete VTEP" in proc.log()
        await change("materialize", doc())
        svc.stop()

        # The kernel's state is lost (a reboot: devices and pins gone), the state directory
        # kept: the links come back from it, and generations go on from it.
        for name in moa_devices(topo.box):
            sh("ip", "-n", topo.box, "link", "del", name)
        shutil.rmtree(topo.pin_root)
        await svc.start(nc)
        held = await status(nc, svc)
        assert held["exp"]["generation"] == seen[-1]
        assert len(moa_devices(topo.box)) == 2 + 2 + 3 + 1  # VTEPs and the LAN's bridge
        assert vni_keys(topo.pin_root) == {100, 101, 102, 103, 201, 202, 203}
        assert len(map_contents(topo.pin_root, "moa_pair_peers")) == 4
        await change("update", {"id": "exp",
                                "links": [{"link": "a-b", "emulation": {"loss": 0.3}}]})
        svc.stop()
    finally:
        svc.kill9()
        await nc.close()
    assert len(seen) == 7


async def test_a_damaged_state_file_stops_the_start_and_changes_nothing(
        topo: Testbed, nats_server: NatsServer, tmp_path: Path) -> None:
    svc = Service(topo, nats_server, tmp_path, f"dmg{os.getpid()}")
    nc = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        kernel = await materialized_then_stopped(svc, nc, topo)
        (path,) = (Path(topo.state_dir) / "desired" / svc.host).glob("mat.*.json")
        path.write_bytes(path.read_bytes()[:40])  # cut short
        proc = ServeProcess(svc.cmd, tmp_path / "damaged.log").start()
        assert await asyncio.to_thread(proc.wait_killed, 60) == 1, proc.log()
        assert f"{path} is damaged" in proc.log()
        assert snapshot_diff(kernel, box_state(topo.box, topo.pin_root)) == []
    finally:
        svc.kill9()
        await nc.close()
