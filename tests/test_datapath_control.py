"""The control path at scale, correctness side (timings are in docs/benchmarks.md, not asserted):
bulk creation (pipelined rtnetlink), bulk deletion (one device group, one unregister), and the
parameter-only update that goes straight to the classifier map without netlink.
"""
from __future__ import annotations

import json

import pytest

import schemas
from datapath.netlink.tc import MOA_TC_PRIO
from datapath.plan import devices as plan_devices
from datapath.plan.planner import bridge_name
from datapath.plan.runner import PlanError
from moa_bus.lab.host_testbed import UPLINK, Testbed, sh
from tests.fixtures.moabox import box, ip_json, removal, updated  # noqa: F401
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = pytest.mark.netns

P2P, LANS, LAN_N = 24, 3, 5


def many(t: Testbed, mid: str = "big", loss: float = 0.0) -> schemas.Materialize:
    links = [{"id": f"p{i}", "tags": ["all", "p2p"], "emulation": {"loss": loss},
              "endpoints": [{"vni": 1000 + 2 * i, "remote": t.hv_addr(1)},
                            {"vni": 1001 + 2 * i, "remote": t.hv_addr(2)}]} for i in range(P2P)]
    links += [{"id": f"l{j}", "tags": ["all"], "emulation": {"loss": loss},
               "endpoints": [{"vni": 3000 + 10 * j + k, "remote": t.hv_addr(1 + k % 2)}
                             for k in range(LAN_N)]} for j in range(LANS)]
    return schemas.decode(schemas.Materialize, json.dumps({"id": mid, "links": links}))


def vteps_of(m: schemas.Materialize) -> set[str]:
    return {f"mv{ep.vni}" for link in m.links for ep in link.endpoints}


async def test_bulk_materialize_builds_every_device_pair_and_port(topo, box):
    m = many(topo)
    res = await box.apply(m)
    n_vteps = 2 * P2P + LANS * LAN_N
    assert res.operations == n_vteps + n_vteps + LANS + LANS * LAN_N + P2P  # params, VTEPs, ...
    links = {d["ifname"]: d for d in ip_json(topo.box, "-d", "link", "show")}
    assert vteps_of(m) <= set(links)
    for name in vteps_of(m):
        d = links[name]
        assert d["ifalias"].startswith("moa:big:") and "UP" in d["flags"]
        assert d["linkinfo"]["info_kind"] == "vxlan" and d["mtu"] == 1450
        assert d["linkinfo"]["info_data"]["learning"] is False
    for j in range(LANS):
        br = bridge_name("big", f"l{j}")
        assert links[br]["linkinfo"]["info_data"]["mcast_snooping"] == 0
        ports = [n for n, d in links.items() if d.get("master") == br]
        assert sorted(ports) == sorted(f"mv{3000 + 10 * j + k}" for k in range(LAN_N))
    # moa's devices carry no address of their own: nothing they could send into a link
    addrs = {a["ifname"]: a.get("addr_info", []) for a in ip_json(topo.box, "addr", "show")}
    assert all(addrs.get(n, []) == [] for n in vteps_of(m))
    # each P2P VTEP has the pair's tc filter at moa's slot, and both map entries point across
    entries = box.pair.entries()
    for i in range(P2P):
        a, b = f"mv{1000 + 2 * i}", f"mv{1001 + 2 * i}"
        for dev in (a, b):
            fs = box.worker.run(box.worker.nl.list_filters, dev, "ingress")
            assert [(f.prio, f.name) for f in fs] == [(MOA_TC_PRIO, "moa_pair")]
        ia, ib = links[a]["ifindex"], links[b]["ifindex"]
        assert (entries[ia].peer_ifindex, entries[ib].peer_ifindex) == (ib, ia)
        assert entries[ia].peer_mtu == 1450
    # and the same content plans to nothing
    again = await box.apply(m)
    assert (again.changed, again.operations) == (False, 0)


async def test_bulk_teardown_removes_all_and_spares_foreign_devices(topo, box, monkeypatch):
    m = many(topo)
    await box.apply(m)
    # Someone else's devices: one in the group moa would pick first, one plain.
    first = plan_devices.MOA_GROUP_BASE | 0x1234
    sh("ip", "-n", topo.box, "link", "add", "foreign0", "type", "veth", "peer", "name", "foreign1")
    sh("ip", "-n", topo.box, "link", "set", "foreign0", "group", str(first))
    picks = iter([0x1234, 0x1235])
    monkeypatch.setattr(plan_devices.secrets, "randbelow", lambda n: next(picks))
    res = await box.apply(removal("big"))
    assert res.changed
    names = {d["ifname"] for d in ip_json(topo.box, "link", "show")}
    assert names == {"lo", UPLINK, "foreign0", "foreign1"}
    assert box.pair.entries() == {} and box.classifier.vnis() == []
    groups = {d["ifname"]: d.get("group") for d in ip_json(topo.box, "-d", "link", "show")}
    assert groups["foreign0"] == str(first) or groups["foreign0"] == first


async def test_parameter_update_needs_no_netlink(topo, box):
    m = many(topo)
    await box.apply(m)
    before = {vni: box.classifier.slot(vni) for vni in box.classifier.vnis()}

    class NoNetlink:
        def __getattr__(self, name):
            raise AssertionError(f"netlink used by a parameter-only update ({name})")

    nl = box.worker.nl
    saved = nl.ipr, nl.rtnl
    nl.ipr, nl.rtnl = NoNetlink(), NoNetlink()  # type: ignore[assignment]
    try:
        m1 = updated(m, '{"id": "big", "links": [{"tag": "p2p", "emulation": {"loss": 0.25}}]}')
        res = await box.apply(m1, params_only=True)
        assert (res.changed, res.operations) == (True, 2 * P2P)  # the P2P VNIs, nothing else
        again = await box.apply(m1, params_only=True)
        assert (again.changed, again.operations) == (False, 0)
        m2 = updated(m1, '{"id": "big", "links": [{"link": "l1", "emulation": {"loss": 0.5}}]}')
        assert (await box.apply(m2, params_only=True)).operations == LAN_N
    finally:
        nl.ipr, nl.rtnl = saved
    threshold = box.classifier.abi.LossModel.BERNOULLI
    for i in range(P2P):
        for vni in (1000 + 2 * i, 1001 + 2 * i):
            p = box.classifier.link(vni).stage[0]
            assert p.loss_model == threshold and p.loss_threshold == round(0.25 * 2**32)
    assert box.classifier.link(3010).stage[0].loss_threshold == round(0.5 * 2**32)
    assert box.classifier.link(3000).stage[0].loss_model == box.classifier.abi.LossModel.NONE
    assert ({vni: box.classifier.slot(vni) for vni in box.classifier.vnis()}
            == before)  # timelines kept
    # the full plan, reading the kernel, agrees that it holds what the fast path wrote
    assert await box.plan(m2) == []


async def test_parameter_update_rolls_back_when_the_map_write_fails(topo, box, monkeypatch):
    m = many(topo)
    await box.apply(m)
    raw = {vni: bytes(box.classifier.link(vni)) for vni in box.classifier.vnis()}
    calls = []
    real = box.classifier.update_links

    def failing(links):
        calls.append(len(links))
        if len(calls) == 1:
            real({k: links[k] for k in list(links)[:3]})  # a partial write, then failure
            raise OSError(12, "injected")
        return real(links)

    monkeypatch.setattr(box.classifier, "update_links", failing)
    m1 = updated(m, '{"id": "big", "links": [{"tag": "all", "emulation": {"loss": 0.1}}]}')
    with pytest.raises(PlanError) as e:
        await box.apply(m1, params_only=True)
    assert "injected" in str(e.value) and e.value.rollback_errors == []
    assert {vni: bytes(box.classifier.link(vni)) for vni in box.classifier.vnis()} == raw
    assert await box.plan(m) == []  # the kernel holds m, as before the update


async def test_bulk_create_leaves_a_foreign_device_alone_and_rolls_back(topo, box):
    # A name moa would use, taken by someone else's device, in the middle of a bulk round.
    sh("ip", "-n", topo.box, "link", "add", "mv1011", "type", "veth", "peer", "name", "foreign9")
    with pytest.raises(PlanError) as e:
        await box.apply(many(topo))
    assert "not moa's" in str(e.value.cause) and "mv1011" in e.value.operation.describe()
    assert e.value.rollback_errors == []
    links = {d["ifname"]: d for d in ip_json(topo.box, "link", "show")}
    assert set(links) == {"lo", UPLINK, "mv1011", "foreign9"}
    assert "ifalias" not in links["mv1011"]  # never marked
    assert box.classifier.vnis() == [] and box.pair.entries() == {}
