"""Flow mode through the service (`moa serve --p2p-mode flow`): point-to-point links realized as
moa_flow entries on the uplink, no VTEP in the box, over a real nats-server and the testbed's
namespaces (datapath/flow_mode.py, datapath/plan/flows.py; docs/architecture.md, "Flow mode in
the planner"). The engine's messages, acks and status are those of VTEP mode. Loss-only: this
host has no sch_fq.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

from datapath.flow import FlowTable
from datapath.libbpf import Map
from moa_bus.lab.host_testbed import UPLINK, Testbed, ns_exec, sh
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.metrics import ServiceMetrics
from moa_bus.service.subjects import Subjects
from tests.fixtures.moabox import ServeProcess, moa_devices, serve_cmd, vni_keys
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.fixtures.service import box_service, request_json as _req
from tests.fixtures.topology import topo  # noqa: F401
from tests.test_flow_netns import BOX6, _add_endpoint, hv_addr6

pytestmark = [pytest.mark.netns, pytest.mark.nats]

FLOW = {"p2p_mode": "flow"}
HOST = "flowsvc"


def p2p_doc(mid: str, a: int, b: int, loss: float = 0.0, link: str = "l0") -> dict:
    return {"id": mid, "links": [
        {"id": link, "endpoints": [{"vni": a, "remote": Testbed.hv_addr(1)},
                                   {"vni": b, "remote": Testbed.hv_addr(2)}],
         "emulation": {"loss": loss}}]}


def _entries(svc) -> dict:
    return FlowTable(svc.datapath.classifier).entries()


def _uplink_mac(topo: Testbed) -> str:
    out = ns_exec(topo.box, "ip", "-j", "link", "show", "up0").stdout
    return json.loads(out)[0]["address"]


def _hv_mac(topo: Testbed, i: int) -> str:
    out = ns_exec(topo.hv(i), "ip", "-j", "link", "show", "eth0").stdout
    return json.loads(out)[0]["address"]


async def _ping(topo: Testbed, a, b, count: int = 3, deadline: float = 5) -> tuple[int, int]:
    return await asyncio.to_thread(topo.ping, a, b, count, 0.2, deadline)


async def test_flow_link_through_the_service(nats_server: NatsServer, topo: Testbed) -> None:
    """Materialize, ping, status, loss by update, restart (entries kept, drift fixed),
    dematerialize: no VXLAN device in the box at any point."""
    s = Subjects(HOST)
    a = await asyncio.to_thread(topo.add_endpoint, 1, 40, "192.168.40.1/24")
    b = await asyncio.to_thread(topo.add_endpoint, 2, 41, "192.168.40.2/24")
    doc = p2p_doc("f1", 40, 41)
    async with box_service(nats_server, topo, HOST, settings=FLOW) as svc, \
            nats_client(nats_server.url) as nc:
        ack = await _req(nc, s.op("materialize"), doc)
        assert ack["ok"] and ack["generation"] == 1, ack
        assert await asyncio.to_thread(moa_devices, topo.box) == {}
        e = _entries(svc)
        assert set(e) == {40, 41}
        assert (e[40].peer_vni, e[40].peer_ip, e[40].peer_mac) == (
            41, Testbed.hv_addr(2), _hv_mac(topo, 2))
        assert (e[41].peer_vni, e[41].peer_ip, e[41].peer_mac) == (
            40, Testbed.hv_addr(1), _hv_mac(topo, 1))
        assert e[40].src_mac == _uplink_mac(topo) and e[40].ifindex == svc.datapath.uplink_index
        assert vni_keys(topo.pin_root) == {40, 41}
        usage = {u.name: u.entries for u in svc.datapath.map_usage()}
        assert (usage["moa_links"], usage["moa_flow"], usage["moa_pair_peers"]) == (2, 2, 0)
        assert await _ping(topo, a, b) == (3, 3)
        # unchanged resend: nothing to do
        again = await _req(nc, s.op("materialize"), doc)
        assert again["ok"] and again["generation"] == 1, again
        assert await svc.datapath.plan(svc.desired.held["f1"].materialize) == []

        st = (await _req(nc, s.op("status"), {}))["materializations"]
        (m,) = st
        counters = m["links"][0]["counters"]
        assert {c["vni"] for c in counters} >= {40, 41}, counters
        assert sum(c["packets"] for c in counters) >= 6, counters

        # loss 1 by an update: every frame dropped on the egress stage; then back to 0
        u = await _req(nc, s.op("update"), {"id": "f1", "links": [
            {"link": "l0", "emulation": {"loss": 1.0}}]})
        assert u["ok"], u
        assert await _ping(topo, a, b, 3, 1) == (3, 0)
        assert svc.datapath.classifier.link_counters(41)["egress"].drops.get("loss", 0) >= 3
        u = await _req(nc, s.op("update"), {"id": "f1", "links": [
            {"link": "l0", "emulation": {"loss": 0.0}}]})
        assert u["ok"], u
        assert await _ping(topo, a, b) == (3, 3)
        held = dict(_entries(svc))

    # drift while the service is down: an entry lost, a stranger's entry added
    with Map.from_pin(os.path.join(topo.pin_root, "moa_flow")) as flows:
        raw = flows.lookup(40)
        assert flows.delete(41)
        flows.update(77, raw)
    async with box_service(nats_server, topo, HOST, settings=FLOW) as svc, \
            nats_client(nats_server.url) as nc:
        assert _entries(svc) == held
        assert await asyncio.to_thread(moa_devices, topo.box) == {}
        assert await _ping(topo, a, b) == (3, 3)
        d = await _req(nc, s.op("dematerialize"), {"id": "f1"})
        assert d["ok"], d
        assert _entries(svc) == {}
        assert FlowTable(svc.datapath.classifier).owners() == {}
        assert vni_keys(topo.pin_root) == set()
        assert await _ping(topo, a, b, 2, 1) == (2, 0)


async def test_entries_follow_a_hypervisor_whose_mac_changed(nats_server: NatsServer,
                                                               topo: Testbed) -> None:
    """A hypervisor's NIC changes (its underlay MAC): the box's neighbour table learns the new
    MAC from its gratuitous ARP, and the service rewrites the flow entries toward it within a
    check or two (datapath/next_hops.py); the link carries traffic again without a new
    Materialize. Before the rewrite the old MAC's frames are dropped by hv2's device."""
    s = Subjects(HOST)
    a = await asyncio.to_thread(topo.add_endpoint, 1, 44, "192.168.44.1/24")
    b = await asyncio.to_thread(topo.add_endpoint, 2, 45, "192.168.44.2/24")
    async with box_service(nats_server, topo, HOST, settings=FLOW,
                           next_hop_interval=0.5) as svc, nats_client(nats_server.url) as nc:
        ack = await _req(nc, s.op("materialize"), p2p_doc("nh", 44, 45))
        assert ack["ok"], ack
        assert await _ping(topo, a, b) == (3, 3)
        old = _hv_mac(topo, 2)
        assert _entries(svc)[44].peer_mac == old
        new = "02:00:00:00:45:45"
        await asyncio.to_thread(ns_exec, topo.hv(2), "ip", "link", "set", "eth0", "address", new)
        assert _hv_mac(topo, 2) == new
        for _ in range(60):  # the gratuitous ARP, then a check of the service
            if _entries(svc)[44].peer_mac == new:
                break
            await asyncio.sleep(0.1)
        e = _entries(svc)
        assert (e[44].peer_mac, e[45].peer_mac) == (new, _hv_mac(topo, 1)), e
        assert svc.datapath.next_hops.macs[Testbed.hv_addr(2)] == new
        assert await _ping(topo, a, b) == (3, 3)
        assert await svc.datapath.follow_next_hops() == []  # nothing moved since
        d = await _req(nc, s.op("dematerialize"), {"id": "nh"})
        assert d["ok"], d


async def test_mixed_box_flow_p2p_beside_a_vtep_lan(nats_server: NatsServer,
                                                     topo: Testbed) -> None:
    """One materialization: a P2P link (flow entries) and a LAN of three (VTEPs on a bridge)."""
    s = Subjects(HOST)
    a = await asyncio.to_thread(topo.add_endpoint, 1, 50, "192.168.50.1/24")
    b = await asyncio.to_thread(topo.add_endpoint, 2, 51, "192.168.50.2/24")
    lan = [await asyncio.to_thread(topo.add_endpoint, i, 60 + i, f"192.168.60.{i}/24")
           for i in (1, 2, 3)]
    doc = p2p_doc("mix", 50, 51)
    doc["links"].append({"id": "lan", "endpoints": [
        {"vni": 60 + i, "remote": Testbed.hv_addr(i)} for i in (1, 2, 3)],
        "emulation": {"loss": 0.0}})
    async with box_service(nats_server, topo, HOST, settings=FLOW) as svc, \
            nats_client(nats_server.url) as nc:
        ack = await _req(nc, s.op("materialize"), doc)
        assert ack["ok"], ack
        devs = await asyncio.to_thread(moa_devices, topo.box)
        assert {n for n in devs if n.startswith("mv")} == {"mv61", "mv62", "mv63"}
        assert set(_entries(svc)) == {50, 51}
        assert await _ping(topo, a, b) == (3, 3)
        assert await _ping(topo, lan[0], lan[2]) == (3, 3)
        assert await _ping(topo, lan[1], lan[0]) == (3, 3)
        assert await svc.datapath.plan(svc.desired.held["mix"].materialize) == []
        d = await _req(nc, s.op("dematerialize"), {"id": "mix"})
        assert d["ok"], d
        assert await asyncio.to_thread(moa_devices, topo.box) == {}
        assert _entries(svc) == {} and vni_keys(topo.pin_root) == set()


async def test_a_silent_remote_goes_pending_and_resolves_when_it_answers(
        nats_server: NatsServer, topo: Testbed) -> None:
    """hv2 is cut from the underlay switch when its link is materialized: the ack is ok as in
    VTEP mode, the entries toward hv2 are pending (their frames dropped and counted as
    flow_pending in status), they survive a restart, and once hv2 is back the service's
    solicitation finds its MAC and rewrites them: pings cross with no new Materialize
    (datapath/next_hops.py). A pending remote whose link goes away is no longer solicited."""
    s = Subjects(HOST)
    a = await asyncio.to_thread(topo.add_endpoint, 1, 70, "192.168.70.1/24")
    b = await asyncio.to_thread(topo.add_endpoint, 2, 71, "192.168.70.2/24")
    hv2 = Testbed.hv_addr(2)
    await asyncio.to_thread(sh, "ip", "-n", topo.fab, "link", "set", "phv2", "down")
    await asyncio.to_thread(sh, "ip", "-n", topo.box, "neigh", "flush", "dev", UPLINK)
    try:
        async with box_service(nats_server, topo, HOST, settings=FLOW,
                               next_hop_interval=0.5) as svc, \
                nats_client(nats_server.url) as nc:
            ack = await _req(nc, s.op("materialize"), p2p_doc("hop", 70, 71))
            assert ack["ok"], ack
            e = _entries(svc)
            assert (e[70].peer_ip, e[70].peer_mac, e[71].peer_mac) == (
                hv2, None, _hv_mac(topo, 1)), e
            assert svc.datapath.next_hops.pending == {hv2}
            assert await _ping(topo, a, b, 3, 1) == (3, 0)
            st = await _req(nc, s.op("status"), {})
            # (node a's ARP requests for b: the frames that reach the box while b is unknown)
            assert st["datapath"]["flow_pending"] >= 1, st["datapath"]
            text = ServiceMetrics(svc).render().decode()  # and in metrics (docs/metrics.md)
            pending = re.search(r"^moa_flow_pending_packets_total (\S+)$", text, re.M)
            assert pending and float(pending.group(1)) >= st["datapath"]["flow_pending"], text
            # a second link toward a remote that never answers, then gone: not solicited
            ghost = p2p_doc("ghost", 72, 73)
            ghost["links"][0]["endpoints"][1]["remote"] = Testbed.hv_addr(9)
            assert (await _req(nc, s.op("materialize"), ghost))["ok"]
            assert Testbed.hv_addr(9) in svc.datapath.next_hops.pending
            assert (await _req(nc, s.op("dematerialize"), {"id": "ghost"}))["ok"]
            await svc.datapath.follow_next_hops()
            assert svc.datapath.next_hops.pending == {hv2}
        async with box_service(nats_server, topo, HOST, settings=FLOW,
                               next_hop_interval=0.5) as svc:
            assert svc.datapath.next_hops.pending == {hv2}  # read back from the entries
            assert _entries(svc)[70].peer_mac is None
            await asyncio.to_thread(sh, "ip", "-n", topo.fab, "link", "set", "phv2", "up")
            for _ in range(100):  # a solicitation, the answer, the next check
                if _entries(svc)[70].peer_mac is not None:
                    break
                await asyncio.sleep(0.1)
            assert _entries(svc)[70].peer_mac == _hv_mac(topo, 2)
            assert svc.datapath.next_hops.pending == set()
            assert svc.datapath.next_hops.macs[hv2] == _hv_mac(topo, 2)
            assert await _ping(topo, a, b) == (3, 3)
            assert await svc.datapath.plan(svc.desired.held["hop"].materialize) == []
    finally:
        await asyncio.to_thread(sh, "ip", "-n", topo.fab, "link", "set", "phv2", "up")


async def test_switching_modes_across_restarts_converges(nats_server: NatsServer,
                                                         topo: Testbed) -> None:
    """vtep -> flow -> vtep across restarts: the link is re-made in the box's mode each time
    and carries pings."""
    s = Subjects(HOST)
    a = await asyncio.to_thread(topo.add_endpoint, 1, 80, "192.168.80.1/24")
    b = await asyncio.to_thread(topo.add_endpoint, 2, 81, "192.168.80.2/24")
    async with box_service(nats_server, topo, HOST) as svc, nats_client(nats_server.url) as nc:
        assert (await _req(nc, s.op("materialize"), p2p_doc("sw", 80, 81)))["ok"]
        assert set(await asyncio.to_thread(moa_devices, topo.box)) == {"mv80", "mv81"}
        assert await _ping(topo, a, b) == (3, 3)
    async with box_service(nats_server, topo, HOST, settings=FLOW) as svc:
        assert await asyncio.to_thread(moa_devices, topo.box) == {}
        assert set(_entries(svc)) == {80, 81}
        assert await _ping(topo, a, b) == (3, 3)
        assert await svc.datapath.plan(svc.desired.held["sw"].materialize) == []
    async with box_service(nats_server, topo, HOST) as svc:
        assert set(await asyncio.to_thread(moa_devices, topo.box)) == {"mv80", "mv81"}
        assert await _ping(topo, a, b) == (3, 3)
        assert await svc.datapath.plan(svc.desired.held["sw"].materialize) == []


async def test_flow_link_over_an_ipv6_underlay(nats_server: NatsServer, topo: Testbed) -> None:
    """The box's address and the remotes are IPv6 (the endpoints' `local`): the next hops are
    found by neighbour discovery, pings cross, loss applies, dematerialize leaves nothing."""
    s = Subjects(HOST)
    await asyncio.to_thread(_ipv6_underlay, topo)
    a = await asyncio.to_thread(_add_endpoint, topo, 1, 90, "192.168.90.1/24", True)
    b = await asyncio.to_thread(_add_endpoint, topo, 2, 91, "192.168.90.2/24", True)
    doc = {"id": "six", "links": [{"id": "l0", "endpoints": [
        {"vni": 90, "remote": hv_addr6(1), "local": BOX6},
        {"vni": 91, "remote": hv_addr6(2), "local": BOX6}], "emulation": {"loss": 0.0}}]}
    async with box_service(nats_server, topo, HOST, settings=FLOW) as svc, \
            nats_client(nats_server.url) as nc:
        ack = await _req(nc, s.op("materialize"), doc)
        assert ack["ok"], ack
        e = _entries(svc)
        assert (e[90].peer_ip, e[90].src_ip, e[90].peer_mac) == (
            hv_addr6(2), BOX6, _hv_mac(topo, 2))
        assert await asyncio.to_thread(moa_devices, topo.box) == {}
        assert await _ping(topo, a, b) == (3, 3)
        u = await _req(nc, s.op("update"), {"id": "six", "links": [
            {"link": "l0", "emulation": {"loss": 1.0}}]})
        assert u["ok"], u
        assert await _ping(topo, a, b, 2, 1) == (2, 0)
        assert (await _req(nc, s.op("dematerialize"), {"id": "six"}))["ok"]
        assert _entries(svc) == {} and vni_keys(topo.pin_root) == set()


def _ipv6_underlay(t: Testbed) -> None:
    ns_exec(t.box, "sysctl", "-qw", f"net.ipv6.conf.{UPLINK}.disable_ipv6=0")
    sh("ip", "-n", t.box, "addr", "add", f"{BOX6}/64", "dev", UPLINK, "nodad")
    for i in (1, 2):
        ns_exec(t.hv(i), "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0")
        sh("ip", "-n", t.hv(i), "addr", "add", f"{hv_addr6(i)}/64", "dev", "eth0", "nodad")


def _pinned_flows(topo: Testbed) -> set[int]:
    with Map.from_pin(os.path.join(topo.pin_root, "moa_flow")) as m:
        return {int.from_bytes(bytes(k), sys.byteorder) for k, _ in m.items()}


async def test_moa_serve_p2p_mode_flow_survives_a_crash(nats_server: NatsServer, topo: Testbed,
                                                        tmp_path: Path) -> None:
    """`moa serve --p2p-mode flow` as a process: the link made of entries, SIGKILL, restarted:
    the entries were never removed (traffic kept flowing) and the service converges to them."""
    s = Subjects(HOST)
    a = await asyncio.to_thread(topo.add_endpoint, 1, 44, "192.168.44.1/24")
    b = await asyncio.to_thread(topo.add_endpoint, 2, 45, "192.168.44.2/24")
    cmd = serve_cmd(topo, nats_server.url, HOST, "--p2p-mode", "flow")
    first = ServeProcess(cmd, tmp_path / "first.log").start()
    second: ServeProcess | None = None
    try:
        async with nats_client(nats_server.url) as nc:
            await first.wait_ready(nc, HOST)
            ack = await _req(nc, s.op("materialize"), p2p_doc("p", 44, 45))
            assert ack["ok"], (ack, first.log())
            assert _pinned_flows(topo) == {44, 45}
            assert await asyncio.to_thread(moa_devices, topo.box) == {}
            first.kill9()
            assert await _ping(topo, a, b) == (3, 3)  # no service: the kernel carries on
            second = ServeProcess(cmd, tmp_path / "second.log").start()
            await second.wait_ready(nc, HOST)
            assert _pinned_flows(topo) == {44, 45}
            assert await _ping(topo, a, b) == (3, 3)
            st = (await _req(nc, s.op("status"), {}))["materializations"]
            assert [m["id"] for m in st] == ["p"] and st[0]["error"] is None, st
            assert (await _req(nc, s.op("dematerialize"), {"id": "p"}))["ok"]
            assert _pinned_flows(topo) == set()
    finally:
        first.kill9()
        if second is not None:
            assert await asyncio.to_thread(second.stop) == 0, second.log()
