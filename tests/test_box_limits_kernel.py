"""Every accepted setting is applied, or refused (issue 11), on the real kernel: VXLAN on an
endpoint's own UDP port is shaped (real packets through the testbed), ids of 128 + 128
characters work end to end, the uplink's previous root qdisc tree is kept in the kernel and put
back, and the service refuses what the box could not apply (horizon, capacity, fq memory) with
its code and field, while the 10 s latency with a queue is accepted and written.

This host's kernel has no sch_fq, so its boxes run loss-only, which refuses every delay before
the horizon is looked at. The refusals are therefore asked of a box started loss-only and then
told it has fq (`as_if_fq`): every check runs before any kernel work, and a point-to-point
link's parameters are written as on a box with fq (nothing holds its packets here). What needs
sch_fq itself (installing and resizing it, restoring a tree it replaced, traffic through a 10 s
link) runs in the VM tier (tests/vm/test_vm_moa.py)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import time

import pytest

import schemas
from datapath.api import KernelDatapath
from datapath.classifier import Classifier, ClassifierConfig
from datapath.netlink.model import ALIAS_MAX, owner_key, parse_alias
from datapath.plan.uplink import EnsureUplink
from moa_bus.lab.host_testbed import UPLINK, Testbed, sh
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.subjects import Subjects
from tests.fixtures.moabox import box, box_config, box_state, moa_devices, snapshot_diff  # noqa: F401
from tests.fixtures.nats import nats_server  # noqa: F401
from tests.fixtures.packets import TC_ACT_OK, inner_tcp, vxlan
from tests.fixtures.service import box_service, plan_of
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.netns]

PORT = 8472  # Linux's historical VXLAN port: a testbed whose nodes use it
S = 10**9


def p2p(mid: str, link: str, vnis: tuple[int, int], emulation: dict | None = None,
        port: int | None = None, remotes: tuple[str, str] = ("10.201.0.11", "10.201.0.12")) -> dict:
    eps = [{"vni": v, "remote": r, **({"port": port} if port else {})}
           for v, r in zip(vnis, remotes)]
    return {"id": mid, "links": [{"id": link, "endpoints": eps, "emulation": emulation or {}}]}


# ------------------------------------------------------------------------------ VXLAN ports

def test_the_classifier_takes_the_ports_in_its_set_as_vxlan() -> None:
    with Classifier.load(ClassifierConfig(max_links=8)) as c:
        c.set_link(100, egress=schemas.Emulation(latency=1_000_000))
        frame = vxlan(100, inner_tcp(), dport=PORT)

        def send() -> tuple[int, int, int]:
            before_g, before_l = c.global_counters()["non_vxlan"], c.link_counters(100)["egress"]
            r = c.egress_program.test_run(frame, ctx=c.abi.SkBuff())
            assert r.retval == TC_ACT_OK
            return (c.global_counters()["non_vxlan"] - before_g,
                    c.link_counters(100)["egress"].packets - before_l.packets, r.ctx.tstamp)

        assert c.vxlan_ports() == frozenset()
        assert send() == (1, 0, 0)           # not ours: passed untouched, counted
        c.set_vxlan_ports({PORT, 65535, 1})
        assert c.vxlan_ports() == frozenset({PORT, 65535, 1})
        non_vxlan, packets, tstamp = send()
        assert (non_vxlan, packets) == (0, 1) and tstamp > 0  # the link's: delayed
        c.set_vxlan_ports(set())
        assert send()[:2] == (1, 0)
        assert c.egress_program.test_run(vxlan(100, inner_tcp()), ctx=c.abi.SkBuff()).ctx.tstamp > 0
        with pytest.raises(ValueError):
            c.set_vxlan_ports({0})


async def test_vxlan_on_an_endpoints_own_port_is_shaped(topo: Testbed, box: KernelDatapath) -> None:
    a = topo.add_endpoint(1, 100, "192.168.100.1/24", port=PORT)
    b = topo.add_endpoint(2, 101, "192.168.100.2/24", port=PORT)
    topo.quiet(a, b)
    m = p2p("ports", "a-b", (100, 101), port=PORT,
            remotes=(topo.hv_addr(1), topo.hv_addr(2)))

    async def pings(count: int = 5) -> tuple[int, int, int]:
        """(answered, packets the link's egress stages counted, frames passed as non-VXLAN)."""
        c0 = await box.counters([100, 101])
        g0 = box.box_counters()["non_vxlan"]
        _, got = await asyncio.to_thread(topo.ping, a, b, count, 0.1, 3)
        c1 = await box.counters([100, 101])
        counted = sum(c1[v]["egress"].packets - c0[v]["egress"].packets for v in (100, 101))
        return got, counted, box.box_counters()["non_vxlan"] - g0

    plan = await box.plan(schemas.decode(schemas.Materialize, json.dumps(m)))
    assert plan[0] == f"classifier: take UDP port(s) {PORT} as VXLAN", plan
    await box.apply(schemas.decode(schemas.Materialize, json.dumps(m)))
    assert box.classifier.vxlan_ports() == frozenset({PORT})
    # Every echo and reply on the link's stages (the underlay's own ARP and IPv6 frames are
    # the only non-VXLAN ones).
    assert (await pings())[:2] == (5, 10)

    # Without the port in the set (as before issue 11) the same packets pass unshaped.
    box.classifier.set_vxlan_ports(set())
    got, counted, non_vxlan = await pings()
    assert (got, counted) == (5, 0) and non_vxlan >= 10
    # The plan puts it back (the kernel is read, the port found missing) ...
    m["links"][0]["emulation"] = {"loss": 1.0}
    await box.apply(schemas.decode(schemas.Materialize, json.dumps(m)))
    assert box.classifier.vxlan_ports() == frozenset({PORT})
    # ... and shaped means shaped: every packet of the link is lost, on its counters.
    c0 = await box.counters([101])
    assert (await pings())[0] == 0
    assert ((await box.counters([101]))[101]["egress"].drops["loss"]
            - c0[101]["egress"].drops["loss"] == 5)

    # A port stays while another materialization's VTEP uses it, and goes with the last one.
    other = p2p("ports2", "c-d", (102, 103), port=PORT)
    await box.apply(schemas.decode(schemas.Materialize, json.dumps(other)))
    await box.apply(schemas.Materialize(id="ports", links=[]))
    assert box.classifier.vxlan_ports() == frozenset({PORT})
    await box.apply(schemas.Materialize(id="ports2", links=[]))
    assert box.classifier.vxlan_ports() == frozenset()
    # A port bit nothing uses (a crash between two operations) is purged at start.
    box.classifier.set_vxlan_ports({9999})
    report = await box.reconcile([])
    assert "VXLAN port 9999" in report.purged and box.classifier.vxlan_ports() == frozenset()


# ------------------------------------------------------------------------------ long ids

async def test_ids_of_128_characters_each_work_end_to_end(topo: Testbed,
                                                          nats_server: NatsServer) -> None:
    host = f"ids{os.getpid()}"
    mid = "x:" * 64                      # 128 characters, 192 once percent-encoded
    link, lan = "L" * 127 + ":", ":" * 128
    doc = p2p(mid, link, (300, 301), {"loss": 0.1})
    doc["links"].append({"id": lan, "tags": ["t" * 128], "emulation": {"loss": 0.2},
                         "endpoints": [{"vni": 310 + k, "remote": f"10.201.0.{100 + k}"}
                                       for k in (1, 2, 3)]})
    s = Subjects(host)
    async with box_service(nats_server, topo, host) as svc:
        ack = json.loads((await svc.nc.request(s.op("materialize"), json.dumps(doc).encode(),
                                               timeout=60)).data)
        assert ack["ok"], ack["error"]
        devices = await asyncio.to_thread(moa_devices, topo.box)
        assert len(devices) == 6  # 5 VTEPs and the LAN's bridge
        for alias in devices.values():
            assert len(alias.encode()) <= ALIAS_MAX
            assert parse_alias(alias) in {(owner_key(mid), owner_key(link)),
                                          (owner_key(mid), owner_key(lan))}
        assert await plan_of(svc.nc, host, doc) == []  # the kernel holds it: nothing to do
        st = json.loads((await svc.nc.request(s.op("status"), json.dumps({"id": mid}).encode(),
                                              timeout=10)).data)
        assert [m["id"] for m in st["materializations"]] == [mid]
        assert sorted(x["id"] for x in st["materializations"][0]["links"]) == sorted([link, lan])
        up = {"id": mid, "links": [{"tag": "t" * 128, "emulation": {"loss": 0.3}}]}
        ack = json.loads((await svc.nc.request(s.op("update"), json.dumps(up).encode(),
                                               timeout=60)).data)
        assert ack["ok"], ack
        kernel = await asyncio.to_thread(box_state, topo.box, topo.pin_root)
    doc["links"][1]["emulation"] = {"loss": 0.3}
    async with box_service(nats_server, topo, host) as svc:  # a restart converges to it as is
        assert snapshot_diff(
            kernel, await asyncio.to_thread(box_state, topo.box, topo.pin_root)) == []
        assert await plan_of(svc.nc, host, doc) == []
        ack = json.loads((await svc.nc.request(s.op("dematerialize"),
                                               json.dumps({"id": mid}).encode(), timeout=60)).data)
        assert ack["ok"], ack
        assert await asyncio.to_thread(moa_devices, topo.box) == {}


# ------------------------------------------------------------------------------ the uplink's qdisc

def _tree(topo: Testbed) -> str:
    """The uplink's root qdisc tree as tc shows it, the ingress side (clsact) left out."""
    tc = ["tc", "-n", topo.box]
    out = [sh(*tc, "-d", "qdisc", "show", "dev", UPLINK).stdout,
           sh(*tc, "-d", "class", "show", "dev", UPLINK).stdout]
    for parent in ("1:", "1:1", "1:10"):  # absent parents answer an error: nothing to show
        out.append(sh(*tc, "filter", "show", "dev", UPLINK, "parent", parent, check=False).stdout)
    # htb's direct_packets_stat is a counter, not the tree: the uplink's own IPv6 router
    # solicitations and MLD reports can pass the root while the test runs (seen once in CI)
    text = re.sub(r"direct_packets_stat \d+ ", "", "\n".join(out))
    return "\n".join(line for line in text.splitlines() if "clsact" not in line)


def _htb(topo: Testbed) -> None:
    tc = ["tc", "-n", topo.box]
    sh(*tc, "qdisc", "replace", "dev", UPLINK, "root", "handle", "1:", "htb", "default", "20")
    sh(*tc, "class", "add", "dev", UPLINK, "parent", "1:", "classid", "1:1", "htb", "rate",
       "1gbit")
    for minor, rate in (("10", "400mbit"), ("20", "600mbit")):
        sh(*tc, "class", "add", "dev", UPLINK, "parent", "1:1", "classid", f"1:{minor}", "htb",
           "rate", rate, "ceil", "1gbit")
    sh(*tc, "qdisc", "add", "dev", UPLINK, "parent", "1:10", "handle", "10:", "bfifo", "limit",
       "300000")
    sh(*tc, "filter", "add", "dev", UPLINK, "parent", "1:", "protocol", "ip", "prio", "2", "u32",
       "match", "ip", "dport", "4789", "0xffff", "flowid", "1:10")
    sh(*tc, "filter", "add", "dev", UPLINK, "parent", "1:1", "protocol", "ip", "prio", "3",
       "u32", "match", "ip", "src", "10.201.0.11/32", "flowid", "1:20")


async def test_the_uplinks_root_qdisc_tree_is_kept_in_the_kernel_and_put_back(
        topo: Testbed) -> None:
    _htb(topo)
    before = _tree(topo)
    assert "qdisc htb 1: root" in before and "class htb 1:10" in before and "u32" in before
    dp = await KernelDatapath.start(box_config(topo))  # loss-only here: no sch_fq is put on
    try:
        await dp.worker.call(EnsureUplink.keep_root, dp.env, UPLINK)
        saved = dp.classifier.saved_qdiscs(UPLINK)
        assert saved  # the tree, as rtnetlink messages, in moa_saved_qdiscs
        # What moa's sch_fq does to the tree, done with a root qdisc this kernel has: the
        # whole tree is gone.
        sh("tc", "-n", topo.box, "qdisc", "replace", "dev", UPLINK, "root", "pfifo")
        assert "htb" not in _tree(topo)
        # A restart's EnsureUplink finds a tree kept: it stays the one kept first.
        await dp.worker.call(EnsureUplink.keep_root, dp.env, UPLINK)
        assert dp.classifier.saved_qdiscs(UPLINK) == saved
    finally:
        await dp.close()
    dp = await KernelDatapath.start(box_config(topo))  # a restarted service: from the pins
    try:
        assert dp.classifier.saved_qdiscs(UPLINK) == saved
        await dp.worker.call(EnsureUplink.restore_root, dp.env, UPLINK)
        assert _tree(topo) == before  # qdiscs, classes, leaf qdisc, filters: all back
        assert dp.classifier.saved_qdiscs(UPLINK) is None
        # A default root is kept as "nothing" and nothing is restored over it.
        sh("tc", "-n", topo.box, "qdisc", "del", "dev", UPLINK, "root")
        default = _tree(topo)
        await dp.worker.call(EnsureUplink.keep_root, dp.env, UPLINK)
        assert dp.classifier.saved_qdiscs(UPLINK) == b""
        await dp.worker.call(EnsureUplink.restore_root, dp.env, UPLINK)
        assert _tree(topo) == default and dp.classifier.saved_qdiscs(UPLINK) is None
    finally:
        await dp.teardown()


# ------------------------------------------------------------------------------ refusals

def as_if_fq(svc) -> KernelDatapath:
    """The service's datapath, told it has sch_fq (module doc): shaping is no longer refused as
    loss-only, so the horizon and the fq memory bound are what decide. The one thing it cannot
    do here is resize the uplink's sch_fq (there is none): its plans leave that out (sizes and
    the resize operations: tests/test_box_limits.py; the kernel: the VM tier)."""
    dp: KernelDatapath = svc.datapath
    dp.loss_only = False
    dp._resize_ops = lambda mid, figures: ([], [], dp.uplink_fq)  # type: ignore[method-assign]
    return dp


async def _ask(svc, host: str, op: str, body: dict) -> dict:
    msg = await svc.nc.request(Subjects(host).op(op), json.dumps(body).encode(), timeout=60)
    return json.loads(msg.data)


REFUSED = [
    ({"latency": "11s"}, "links[0].emulation.latency", "latency 11s"),
    ({"latency": "6s", "jitter": "5s"}, "links[0].emulation.jitter", "latency + jitter = 11s"),
    ({"latency": "9s", "capacity": "10mbps", "queue": "2MB"}, "links[0].emulation.queue",
     "latency + jitter + queue (1.6s at 10mbps) = 10.6s"),
    ({"latency": "9.6s", "capacity": "1mbps"}, "links[0].emulation.queue", "default queue"),
    ({"capacity": "1kbps"}, "links[0].emulation.capacity", "takes 11.904s"),
    ({"capacity": "1gbps", "latency": "100ms"}, "links", "above moa serve --fq-memory-max 4MiB"),
]


async def test_what_the_box_cannot_apply_is_refused_and_the_edge_cases_are_applied(
        topo: Testbed, nats_server: NatsServer) -> None:
    host = f"lim{os.getpid()}"
    async with box_service(nats_server, topo, host,
                           settings={"horizon": 10.0, "fq_memory_max": 4 << 20}) as svc:
        dp = as_if_fq(svc)
        assert dp.budget.horizon_ns == dp.classifier.config.horizon_ns == 10 * S
        for k, (emulation, field, words) in enumerate(REFUSED):
            doc = p2p(f"r{k}", "l", (400 + 2 * k, 401 + 2 * k), emulation)
            ack = await _ask(svc, host, "materialize", doc)
            assert ack["ok"] is False, (emulation, ack)
            err = ack["error"]
            assert (err["code"], err["field"]) == ("unsupported", field), (emulation, ack)
            assert words in err["message"], err["message"]
        # Both figures of the fq memory refusal: what it would be and the bound, in bytes.
        # 1 Gbit/s x (100 ms + its default queue, 50 ms) = 18.75 MB, at each of two endpoints
        assert "(4194304 B)" in err["message"] and "(37500000 B)" in err["message"], err
        assert await asyncio.to_thread(moa_devices, topo.box) == {}  # nothing was applied
        assert dp.fq_memory_bytes() == 0

        # At the edge: a delay just under the horizon, with a queue, is taken and written.
        edge = {"latency": "9.9s", "capacity": "1mbps", "queue": "1500B"}
        ack = await _ask(svc, host, "materialize", p2p("edge", "l", (500, 501), edge))
        assert ack["ok"], ack
        params = dp.classifier.link(501).stage[0]
        assert (params.latency_ns, params.rate_bps, params.queue_ns) == (9_900_000_000, 10**6,
                                                                        12_000_000)
        # An update past the horizon is refused on the update's own entry, the link unchanged.
        ack = await _ask(svc, host, "update", {"id": "edge", "links": [
            {"link": "l", "emulation": {"jitter": "1s"}}]})
        assert (ack["ok"], ack["error"]["code"], ack["error"]["field"]) == (
            False, "unsupported", "links[0].emulation.jitter"), ack
        assert dp.classifier.link(501).stage[0].jitter_ns == 0

    # The default horizon (30 s) takes a 10 s latency with a queue: written, and a packet of
    # it leaves 10 s (+ its serialisation) ahead instead of being dropped at the horizon.
    async with box_service(nats_server, topo, host) as svc:
        dp = as_if_fq(svc)
        assert dp.budget.horizon_ns == 30 * S
        ten = {"latency": "10s", "capacity": "100mbps", "queue": "256KiB"}
        ack = await _ask(svc, host, "materialize", p2p("ten", "l", (600, 601), ten))
        assert ack["ok"], ack
        assert dp.classifier.link(601).stage[0].latency_ns == 10 * S
        before = dp.classifier.link_counters(601)["egress"]
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r = dp.classifier.egress_program.test_run(vxlan(601, inner_tcp()),
                                                  ctx=dp.classifier.abi.SkBuff())
        after = dp.classifier.link_counters(601)["egress"]
        assert r.retval == TC_ACT_OK and after.packets == before.packets + 1
        assert after.drops["horizon"] == before.drops["horizon"] == 0
        assert 10 * S < r.ctx.tstamp - now < 10 * S + 100_000_000
        assert dp.fq_memory_bytes() > 2 * 125_000_000  # 100 Mbit/s x 10 s, both endpoints

    # A restart with a shorter --horizon keeps what the box holds: the horizon is raised to it.
    async with box_service(nats_server, topo, host, settings={"horizon": 5.0}) as svc:
        dp = svc.datapath
        assert dp.budget.horizon_ns == dp.classifier.config.horizon_ns
        assert dp.budget.horizon_ns >= 10 * S + 20_971_520  # 10 s + 256 KiB at 100 Mbit/s
        assert dp.config.fq.horizon_ns == dp.budget.horizon_ns  # the port holds' sch_fq too


# ------------------------------------------------------------------------------ routes to remotes

async def test_a_remote_the_box_does_not_route_through_the_uplink_is_refused(
        topo: Testbed, box: KernelDatapath) -> None:
    """moa's VTEPs are bound to no lower device (docs/architecture.md, "Building many VTEPs"):
    their frames follow the box's routes, so a remote that those routes do not send through the
    uplink would bypass the classifier, and one with no route would go nowhere. Both are
    refused `unsupported` naming the endpoint's remote; nothing is created."""
    before = await asyncio.to_thread(box_state, topo.box, topo.pin_root)
    sh("ip", "-n", topo.box, "link", "add", "side0", "type", "veth", "peer", "name", "side1")
    try:
        sh("ip", "-n", topo.box, "link", "set", "side0", "up")
        sh("ip", "-n", topo.box, "route", "add", "192.0.2.0/24", "dev", "side0")
        for remote, words in (("192.0.2.7", "routes send it through 'side0'"),
                              ("198.51.100.7", "no route to it")):
            m = schemas.decode(schemas.Materialize, json.dumps(
                p2p("r", "l", (700, 701), remotes=("10.201.0.11", remote))).encode())
            for ask in (box.apply, box.plan):
                with pytest.raises(schemas.InvalidMessage) as e:
                    await ask(m)
                assert (e.value.code, e.value.field) == (
                    "unsupported", "links[0].endpoints[1].remote"), e.value
                assert words in str(e.value) and "'up0'" in str(e.value), str(e.value)
    finally:
        sh("ip", "-n", topo.box, "link", "del", "side0")
    assert snapshot_diff(before, await asyncio.to_thread(box_state, topo.box, topo.pin_root)) == []
    # Through the uplink (the testbed's hypervisors): created, and bound to no device.
    m = schemas.decode(schemas.Materialize, json.dumps(p2p("r", "l", (700, 701))).encode())
    await box.apply(m)
    links = json.loads(sh("ip", "-n", topo.box, "-d", "-j", "link", "show", "type", "vxlan").stdout)
    assert sorted(x["ifname"] for x in links) == ["mv700", "mv701"], links
    assert all("link" not in x["linkinfo"]["info_data"] for x in links), links
    v6 = [sh("ip", "netns", "exec", topo.box, "sysctl", "-n",
             f"net.ipv6.conf.{x['ifname']}.disable_ipv6").stdout.strip() for x in links]
    assert v6 == ["1", "1"]


# ------------------------------------------------------------------------------ an update of a few

async def test_an_update_of_a_few_links_is_judged_and_written_alone(
        topo: Testbed, nats_server: NatsServer) -> None:
    """An Update without a schedule judges and writes only the links it changes (what keeps
    one link of 100,000 cheap: docs/architecture.md, "Updates"): its link's parameters are
    written; the box's figures are those of the whole new content judged anew, also once the
    link that held their maximum is lowered; another link's entry is not rewritten (a drift
    there is the resent materialize's to repair, and it does); a change past --fq-memory-max is
    refused, the link and the figures as they were."""
    host = f"upd{os.getpid()}"
    links = [{"id": f"l{i}", "endpoints": [{"vni": 800 + 2 * i, "remote": "10.201.0.11"},
                                           {"vni": 801 + 2 * i, "remote": "10.201.0.12"}],
              "emulation": {"latency": "1ms", "capacity": "100mbps"}} for i in range(12)]
    doc = {"id": "many", "links": links}
    async with box_service(nats_server, topo, host) as svc:
        dp = as_if_fq(svc)

        def latency(vni: int) -> int:
            return dp.classifier.link(vni).stage[0].latency_ns

        def whole():
            return dp._figures(svc.desired.get("many").materialize)

        assert (await _ask(svc, host, "materialize", doc))["ok"]
        dp.classifier.set_link(800, egress=schemas.Emulation(latency=7_000_000))  # a drift
        ack = await _ask(svc, host, "update", {"id": "many", "links": [
            {"link": "l7", "emulation": {"latency": "3s"}}]})
        assert ack["ok"], ack
        assert (latency(814), latency(815), latency(816)) == (3 * S, 3 * S, 1_000_000)
        assert latency(800) == 7_000_000  # not the update's link: not rewritten
        assert dp.budget.figures["many"] == whole()
        assert dp.budget.figures["many"].egress_hold_ns > 3 * S
        ack = await _ask(svc, host, "update", {"id": "many", "links": [
            {"link": "l7", "emulation": {"latency": "1ms"}}]})
        assert ack["ok"] and latency(814) == 1_000_000, ack
        assert dp.budget.figures["many"] == whole()
        assert dp.budget.figures["many"].egress_hold_ns < S  # the one that held it lowered

        held = dp.budget.figures["many"]
        dp.budget.fq_memory_max = dp.fq_memory_bytes()
        ack = await _ask(svc, host, "update", {"id": "many", "links": [
            {"link": "l3", "emulation": {"latency": "2s"}}]})
        assert (ack["ok"], ack["error"]["code"], ack["error"]["field"]) == (
            False, "unsupported", "links"), ack
        assert latency(806) == 1_000_000 and dp.budget.figures["many"] == held
        dp.budget.fq_memory_max = None

        assert (await _ask(svc, host, "materialize", doc))["ok"]  # the resend: drift repaired
        assert latency(800) == 1_000_000
