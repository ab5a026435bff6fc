"""Per-direction emulation (issue 13): an endpoint's own parameters over the link's, for the
frames delivered towards it (docs/semantics.md, "Each direction").

Pure parts first (an Update of one direction, a link-wide one keeping each direction's own
fields, the planner's stages per VNI, the box's limits counting every direction), then the
real kernel: each VNI's entry in the classifier's map read back with the classifier's own
readers, and asymmetric loss through the whole service (NATS -> moa service -> classifier in a
network namespace) with real pings, one direction updated on its own, and a restart that keeps
and re-applies each direction's parameters.
"""
from __future__ import annotations

import asyncio
import json
import os

import msgspec
import pytest

import schemas
from datapath import faults, limits
from datapath.api import PlanError
from datapath.classifier import Classifier, ClassifierConfig
from datapath.netlink.model import FqSizing
from datapath.plan.planner import PlanConfig, link_stages, port_stage, stage_groups
from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.desired import DesiredState, Held
from moa_bus.service.subjects import Subjects
from schemas import Emulation, InvalidMessage
from tests.fixtures.moabox import box, updated  # noqa: F401
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.fixtures.packets import inner_udp, vxlan
from tests.fixtures.service import box_service
from tests.fixtures.topology import topo  # noqa: F401
from tests.test_bus_fullstack import kernel_state

MS = 1_000_000
S = 1_000_000_000
MBIT = 1_000_000
FRAME = limits.frame_bytes(1450)


def access_link(**own: object) -> schemas.Materialize:
    """An access link a-b, 20 Mbit/s towards VNI 100 (down) and 2 Mbit/s towards 101 (up)."""
    return schemas.decode(schemas.Materialize, json.dumps({"id": "m", "links": [
        {"id": "a-b", "tags": ["acc"],
         "emulation": {"latency": "5ms", "capacity": "20mbps", "queue": "256KiB", "loss": 0.01},
         "endpoints": [{"vni": 100, "remote": "10.0.0.1"},
                       {"vni": 101, "remote": "10.0.0.2",
                        "emulation": own or {"capacity": "2mbps", "queue": "32KiB"}}]}]}))


def resolve(m: schemas.Materialize, links: list[dict]) -> schemas.Materialize:
    desired = DesiredState(held={m.id: Held(m, 1)}, generation=1)
    return desired.resolve_update(schemas.decode(schemas.Update, json.dumps(
        {"id": m.id, "links": links})))[0]


def directions_of(m: schemas.Materialize) -> dict[int, Emulation]:
    link = m.links[0]
    return {ep.vni: schemas.direction(link.emulation, ep.emulation) for ep in link.endpoints}


# ------------------------------------------------------------------------------ updates

def test_an_update_of_one_direction_changes_only_that_direction() -> None:
    m = access_link()
    before = directions_of(m)
    after = resolve(m, [{"link": "a-b", "endpoint": 101, "emulation": {"loss": 0.2}}])
    d = directions_of(after)
    assert d[100] == before[100]
    assert d[101] == msgspec.structs.replace(before[101], loss=0.2)
    assert after.links[0].emulation == m.links[0].emulation
    # The held content is new Structs: the old one (status snapshots share it) is untouched.
    assert m.links[0].endpoints[1].emulation.loss is msgspec.UNSET
    # inherit: that field follows the link's again; all of them: no parameters of its own
    back = resolve(after, [{"link": "a-b", "endpoint": 101, "inherit": ["capacity"]}])
    assert directions_of(back)[101] == msgspec.structs.replace(before[101], loss=0.2,
                                                               capacity=20 * MBIT)
    gone = resolve(back, [{"link": "a-b", "endpoint": 101, "inherit": ["queue", "loss"]}])
    assert gone.links[0].endpoints[1].emulation is msgspec.UNSET
    assert directions_of(gone) == {100: m.links[0].emulation, 101: m.links[0].emulation}
    # A direction that had none gets some.
    own = resolve(m, [{"link": "a-b", "endpoint": 100, "emulation": {"state": "down"}}])
    assert directions_of(own)[100].state == "down" and directions_of(own)[101].state == "up"


def test_a_link_wide_update_keeps_each_direction_s_own_fields() -> None:
    m = access_link()
    after = resolve(m, [{"tag": "acc", "emulation": {"latency": "9ms", "capacity": "50mbps"}}])
    d = directions_of(after)
    assert (d[100].latency, d[100].capacity, d[100].queue) == (9 * MS, 50 * MBIT, 256 * 1024)
    assert (d[101].latency, d[101].capacity, d[101].queue) == (9 * MS, 2 * MBIT, 32 * 1024)


def test_an_update_that_breaks_a_direction_is_refused_saying_which() -> None:
    m = access_link(latency="1ms", loss=0.3)
    with pytest.raises(InvalidMessage) as e:  # the link's jitter over 101's own latency
        resolve(m, [{"link": "a-b", "emulation": {"jitter": "3ms"}}])
    assert (e.value.code, e.value.field) == ("invalid", "links[0].emulation.jitter")
    assert "in the direction towards endpoint VNI 101 of link 'a-b'" in e.value.message
    with pytest.raises(InvalidMessage) as e:  # a burst model beside 101's own loss
        resolve(m, [{"link": "a-b", "emulation": {"loss": 0, "burst": {"p": 0.1, "r": 0.5}}}])
    assert e.value.field == "links[0].emulation.loss" and "VNI 101" in e.value.message
    with pytest.raises(InvalidMessage) as e:  # 101's own latency under the link's jitter
        resolve(m, [{"link": "a-b", "endpoint": 100, "emulation": {"loss": 0.5}},
                    {"link": "a-b", "endpoint": 101, "emulation": {"jitter": "2ms"}}])
    assert e.value.field == "links[1].emulation.jitter" and "larger than latency 1ms" in (
        e.value.message)
    with pytest.raises(InvalidMessage) as e:
        resolve(m, [{"link": "a-b", "endpoint": 7, "emulation": {"loss": 0.5}}])
    assert (e.value.code, e.value.field) == ("not_found", "links[0].endpoint")


# ------------------------------------------------------------------------------ planner, limits

def test_each_vni_gets_its_own_direction_and_a_lan_port_stays_the_link_s() -> None:
    cfg = PlanConfig(uplink="up0", local="10.0.0.9", port_hold=FqSizing())
    m = access_link()
    (e100, i100), (e101, i101) = link_stages(m.links[0], cfg)
    assert e100 is m.links[0].emulation and e101.capacity == 2 * MBIT and i100 is i101 is None
    lan = schemas.decode(schemas.Materialize, json.dumps({"id": "m", "links": [
        {"id": "lan", "emulation": {"capacity": "100mbps", "loss": 0.1},
         "endpoints": [{"vni": 200, "remote": "10.0.0.1"},
                       {"vni": 201, "remote": "10.0.0.2", "emulation": {"capacity": "10mbps"}},
                       {"vni": 202, "remote": "10.0.0.3"}]}]}))
    stages = link_stages(lan.links[0], cfg)
    port = port_stage(lan.links[0].emulation, held=True)
    assert [st[1] for st in stages] == [port, port, port]  # what a member sends: the link's
    assert [st[0].capacity for st in stages] == [100 * MBIT, 10 * MBIT, 100 * MBIT]
    assert stages[0] is stages[2]  # shared: encoded once
    assert [(n, path) for _, n, path in stage_groups(lan, cfg)] == [
        (2, "links[0].emulation"), (1, "links[0].endpoints[1].emulation")]


def test_the_box_s_limits_count_every_direction_and_name_the_one_beyond() -> None:
    cfg = PlanConfig(uplink="up0", local="10.0.0.9")
    m = access_link(latency="12s")
    budget = limits.Budget(10 * S, FRAME, 10**10)
    with pytest.raises(InvalidMessage) as e:
        budget.admit("m", stage_groups(m, cfg))
    assert (e.value.code, e.value.field) == ("unsupported",
                                             "links[0].endpoints[1].emulation.latency")
    # fq's worst case: each direction at its own rate and hold
    m = access_link()
    figures = budget.figures_of((st, n) for st, n, _ in stage_groups(m, cfg))
    down, up = (st[0] for st in link_stages(m.links[0], cfg))
    assert figures.egress_bytes == (limits.stage_bytes(down, FRAME, 10**10)
                                    + limits.stage_bytes(up, FRAME, 10**10))
    assert figures.egress_bytes != 2 * limits.stage_bytes(down, FRAME, 10**10)
    # a loss-only box refuses a direction's own shaping by its field
    with pytest.raises(InvalidMessage) as e:
        limits.refuse_shaping(access_link(loss=0.5, latency="1ms"), loss_only=True)
    assert (e.value.code, e.value.field) == ("unsupported", "links[0].emulation.latency")
    loss_only = schemas.decode(schemas.Materialize, json.dumps({"id": "m", "links": [
        {"id": "a-b", "endpoints": [{"vni": 1, "remote": "10.0.0.1"},
                                    {"vni": 2, "remote": "10.0.0.2",
                                     "emulation": {"loss": 0.5, "capacity": "1mbps"}}]}]}))
    with pytest.raises(InvalidMessage) as e:
        limits.refuse_shaping(loss_only, loss_only=True)
    assert e.value.field == "links[0].endpoints[1].emulation.capacity"


# ------------------------------------------------------------------------------ BPF_PROG_TEST_RUN

def test_each_vni_s_frames_meet_their_own_direction_in_the_classifier() -> None:
    """The planner's stages of each VNI written as the plan writes them, then frames of each
    VNI through the egress program: the direction towards 101 loses all (its own loss 1.0),
    towards 100 none (the link's 0); on a LAN the member that is down drops with its reason,
    the others pass."""
    cfg = PlanConfig(uplink="up0", local="10.0.0.9")
    m = schemas.decode(schemas.Materialize, json.dumps({"id": "m", "links": [
        {"id": "p", "endpoints": [{"vni": 100, "remote": "10.0.0.1"},
                                  {"vni": 101, "remote": "10.0.0.2", "emulation": {"loss": 1.0}}]},
        {"id": "lan", "emulation": {"loss": 0.0},
         "endpoints": [{"vni": 200, "remote": "10.0.0.1"},
                       {"vni": 201, "remote": "10.0.0.2", "emulation": {"state": "down"}},
                       {"vni": 202, "remote": "10.0.0.3"}]}]}))
    n = 1000
    with Classifier.load(ClassifierConfig(max_links=16, event_budget=1)) as c:
        for link in m.links:
            for ep, st in zip(link.endpoints, link_stages(link, cfg)):
                c.set_link_stages(ep.vni, c.encode_stages(*st))
        for vni in (100, 101, 200, 201, 202):
            c.egress_program.test_run(vxlan(vni, inner_udp(64)), ctx=c.abi.SkBuff(), repeat=n)
        got = {vni: (c.link_counters(vni)["egress"].packets,
                     dict(c.link_counters(vni)["egress"].drops))
               for vni in (100, 101, 200, 201, 202)}
    zero = {r: 0 for r in schemas.DROP_REASONS}
    assert got[100] == (n, zero) and got[101] == (0, zero | {"loss": n})
    assert got[200] == got[202] == (n, zero) and got[201] == (0, zero | {"link_down": n})


# ------------------------------------------------------------------------------ the kernel's map

def _lossy(t: Testbed) -> schemas.Materialize:
    """A p2p link (loss 0.1, 0.5 towards 301) and a LAN (towards 311 down, 312 loss 0.25)."""
    return schemas.decode(schemas.Materialize, json.dumps({"id": "dir", "links": [
        {"id": "p", "emulation": {"loss": 0.1},
         "endpoints": [{"vni": 300, "remote": t.hv_addr(1)},
                       {"vni": 301, "remote": t.hv_addr(2), "emulation": {"loss": 0.5}}]},
        {"id": "lan", "emulation": {"loss": 0.05},
         "endpoints": [{"vni": 310, "remote": t.hv_addr(1)},
                       {"vni": 311, "remote": t.hv_addr(2), "emulation": {"state": "down"}},
                       {"vni": 312, "remote": t.hv_addr(3),
                        "emulation": {"loss": 0.25, "loss_correlation": 0.5}}]}]}))


def _read(dp, vnis: list[int]) -> dict[int, object]:
    """Each VNI's struct moa_link, through the classifier's readers and its ABI."""
    raw = dp.classifier.raw_links(vnis)
    assert sorted(raw) == sorted(vnis)
    return {v: dp.classifier.abi.Link.from_buffer_copy(raw[v]) for v in vnis}


def _threshold(p: float) -> int:
    return round(p * (1 << 32))


@pytest.mark.netns
async def test_each_direction_s_parameters_reach_its_own_vni(topo: Testbed, box) -> None:
    abi = box.classifier.abi
    m = _lossy(topo)
    await box.apply(m)
    got = _read(box, [300, 301, 310, 311, 312])
    egress = {v: link.stage[int(abi.Stage.EGRESS)] for v, link in got.items()}
    bernoulli = int(abi.LossModel.BERNOULLI)
    assert (egress[300].loss_model, egress[300].loss_threshold) == (bernoulli, _threshold(0.1))
    assert (egress[301].loss_model, egress[301].loss_threshold) == (bernoulli, _threshold(0.5))
    assert egress[310].loss_threshold == _threshold(0.05)
    down = int(abi.StageFlags.DOWN)
    assert [bool(egress[v].flags & down) for v in (310, 311, 312)] == [False, True, False]
    # 312's own correlated loss runs as its chain (docs/semantics.md, "Loss"); 310's does not
    assert egress[312].loss_model == int(abi.LossModel.GILBERT_ELLIOTT)
    assert egress[310].loss_model == bernoulli
    # the held check reads the same: nothing to repair
    assert await box.holds(m)
    # One direction updated on its own: the parameters' path writes that VNI's entry alone.
    before = {v: box.classifier.raw_links([v])[v] for v in (300, 301, 310, 311, 312)}
    m2 = updated(m, json.dumps({"id": "dir", "links": [
        {"link": "p", "endpoint": 300, "emulation": {"loss": 1.0}}]}))
    res = await box.apply(m2, params_only=True)
    assert (res.changed, res.operations) == (True, 1)
    after = {v: box.classifier.raw_links([v])[v] for v in before}
    assert [v for v in before if before[v] != after[v]] == [300]
    assert _read(box, [300])[300].stage[int(abi.Stage.EGRESS)].loss_threshold == _threshold(1.0)
    assert await box.holds(m2) and not await box.holds(m)
    # A failed write of two directions at once is undone: every entry as it was.
    held = {v: box.classifier.raw_links([v])[v] for v in before}
    m3 = updated(m2, json.dumps({"id": "dir", "links": [
        {"link": "p", "endpoint": 301, "emulation": {"loss": 0.0}},
        {"link": "lan", "endpoint": 310, "emulation": {"state": "down"}}]}))
    faults.arm("params.after-write/dir=error:map")
    try:
        with pytest.raises(PlanError):
            await box.apply(m3, params_only=True)
    finally:
        faults.disarm()
    assert {v: box.classifier.raw_links([v])[v] for v in before} == held
    # ... and so is a failed plan (a direction's own parameters and a new VTEP's, rolled back)
    m4 = schemas.decode(schemas.Materialize, schemas.encode(m3).replace(
        b'"id":"lan"', b'"id":"lan2"'))
    faults.arm("plan.after/dir/*=error:netlink@3")
    try:
        with pytest.raises(PlanError):
            await box.apply(m4)
    finally:
        faults.disarm()
    assert {v: box.classifier.raw_links([v])[v] for v in before} == held
    assert await box.holds(m2)


# ------------------------------------------------------------------------------ the service

def _egress(status: dict, vni: int) -> tuple[int, int]:
    """(packets, loss drops) of VNI `vni`'s egress stage in a status reply."""
    (m,) = status["materializations"]
    (c,) = [c for c in m["links"][0]["counters"] if c["vni"] == vni and c["stage"] == "egress"]
    return c["packets"], c["drops"].get("loss", 0)


def _doc(t: Testbed, endpoint_b: dict | None) -> bytes:
    b = {"vni": 101, "remote": t.hv_addr(2)}
    if endpoint_b is not None:
        b["emulation"] = endpoint_b
    return json.dumps({"id": "asym", "links": [{"id": "a-b", "tags": ["wan"],
                                                "emulation": {"loss": 0.0},
                                                "endpoints": [{"vni": 100,
                                                               "remote": t.hv_addr(1)}, b]}]}
                      ).encode()


@pytest.mark.netns
@pytest.mark.nats
async def test_asymmetric_loss_through_the_service(topo: Testbed, nats_server) -> None:
    """Loss 0 towards A (VNI 100), 1.0 towards B (101): A's requests all die on the way to B,
    B's reach A and their replies die; counters per VNI say exactly that. Then one direction
    is updated on its own, a link-wide update keeps the other's own fields, and refusals name
    their field and leave the box as it was."""
    host = f"asym{os.getpid()}"
    s = Subjects(host)
    n = 4
    async with box_service(nats_server, topo, host) as svc, \
            nats_client(nats_server.url) as nc:
        dp = svc.datapath
        a = await asyncio.to_thread(topo.add_endpoint, 1, 100, "192.168.100.1/24")
        b = await asyncio.to_thread(topo.add_endpoint, 2, 101, "192.168.100.2/24")
        await asyncio.to_thread(topo.quiet, a, b)  # no ARP: only the pings cross the link

        async def req(op: str, body: dict | bytes) -> dict:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            return json.loads((await nc.request(s.op(op), data, timeout=30)).data)

        async def pings(src, dst) -> int:
            return (await asyncio.to_thread(topo.ping, src, dst, n, 0.05, 1))[1]

        ack = await req("materialize", _doc(topo, {"loss": 1.0}))
        assert ack["ok"], ack
        assert await pings(a, b) == 0   # requests lost towards B
        assert await pings(b, a) == 0   # requests reach A; replies lost towards B
        status = await req("status", b"{}")
        assert _egress(status, 100) == (n, 0)      # B's requests, all delivered to A
        assert _egress(status, 101) == (0, 2 * n)  # A's requests and A's replies, all lost
        link = status["materializations"][0]["links"][0]
        assert link["emulation"]["loss"] == 0.0    # the link-wide one, as before
        assert [(d["vni"], d["emulation"]["loss"]) for d in link["directions"]] == [(101, 1.0)]

        # One direction updated on its own: both ways pass.
        ack = await req("update", {"id": "asym", "links": [
            {"link": "a-b", "endpoint": 101, "emulation": {"loss": 0.0}}]})
        assert ack["ok"], ack
        assert await pings(a, b) == n and await pings(b, a) == n
        # A link-wide loss 1.0: towards A it applies; towards B the direction's own 0 stays.
        ack = await req("update", {"id": "asym", "links": [
            {"tag": "wan", "emulation": {"loss": 1.0}}]})
        assert ack["ok"], ack
        status = await req("status", b"{}")
        p100, l100 = _egress(status, 100)
        p101, l101 = _egress(status, 101)
        assert await pings(b, a) == 0
        status = await req("status", b"{}")
        assert _egress(status, 100) == (p100, l100 + n) and _egress(status, 101) == (p101, l101)
        link = status["materializations"][0]["links"][0]
        assert link["emulation"]["loss"] == 1.0
        assert [(d["vni"], d["emulation"]["loss"]) for d in link["directions"]] == [(101, 0.0)]

        # Refused, named, and the box left as it was.
        before = kernel_state(topo, dp)
        for body, code, field, words in [
            ({"link": "a-b", "endpoint": 102, "emulation": {"loss": 0.5}}, "not_found",
             "links[0].endpoint", "no endpoint with VNI 102"),
            ({"tag": "wan", "endpoint": 101, "emulation": {"loss": 0.5}}, "invalid",
             "links[0].endpoint", "not with tag"),
            ({"link": "a-b", "endpoint": 101, "emulation": {"loss": 1.5}}, "invalid",
             "links[0].emulation.loss", "outside [0, 1]"),
            # A's direction follows the link's loss 1.0, which a burst model of its own excludes
            ({"link": "a-b", "endpoint": 100, "emulation": {"burst": {"p": 0.1, "r": 0.5}}},
             "invalid", "links[0].emulation.loss", "in the direction towards endpoint VNI 100"),
            ({"link": "a-b", "endpoint": 101, "emulation": {"latency": "1ms"}}, "unsupported",
             "links[0].emulation.latency", "loss-only"),
        ]:
            ack = await req("update", {"id": "asym", "links": [body]})
            assert not ack["ok"] and ack["error"]["code"] == code, ack
            assert ack["error"]["field"] == field and words in ack["error"]["message"], ack
        ack = await req("materialize", _doc(topo, {"loss": 0.1, "latency": "1ms"}))
        assert ack["error"] == {"code": "unsupported", "message": ack["error"]["message"],
                                "field": "links[0].endpoints[1].emulation.latency"}, ack
        assert kernel_state(topo, dp) == before
        assert svc.desired.get("asym").materialize.links[0].endpoints[1].emulation.loss == 0.0

        # Every field of the direction back to the link's: no direction of its own is left.
        ack = await req("update", {"id": "asym", "links": [
            {"link": "a-b", "endpoint": 101, "inherit": ["loss"]}]})
        assert ack["ok"], ack
        assert await pings(a, b) == 0
        status = await req("status", b"{}")
        assert status["materializations"][0]["links"][0]["directions"] == []
        assert (await req("dematerialize", {"id": "asym"}))["ok"]


@pytest.mark.netns
@pytest.mark.nats
async def test_a_restart_keeps_and_reapplies_each_direction(topo: Testbed, nats_server) -> None:
    """The desired state file keeps a direction's own parameters; at start the service
    reconciles the kernel to them: a VNI whose entry drifted to the link's gets its own back."""
    host = f"asymr{os.getpid()}"
    s = Subjects(host)
    async with box_service(nats_server, topo, host) as svc, \
            nats_client(nats_server.url) as nc:
        ack = json.loads((await nc.request(s.op("materialize"), _doc(topo, {"loss": 0.75}),
                                           timeout=30)).data)
        assert ack["ok"], ack
        dp = svc.datapath
        want = kernel_state(topo, dp)["params"]
        # drift: VNI 101's entry as the link's emulation alone would make it
        link_wide = dp.classifier.encode_stages(schemas.Emulation(), None)
        dp.classifier.update_links({101: link_wide})
        assert dp.classifier.stages_of(dp.classifier.raw_links([101])[101]) == link_wide
    async with box_service(nats_server, topo, host) as svc, \
            nats_client(nats_server.url) as nc:
        held = svc.desired.get("asym").materialize
        assert held.links[0].endpoints[1].emulation == schemas.EmulationPatch(loss=0.75)
        assert kernel_state(topo, svc.datapath)["params"] == want
        raw = svc.datapath.classifier.raw_links([101])[101]
        egress = svc.datapath.classifier.abi.Link.from_buffer_copy(raw).stage[0]
        assert egress.loss_threshold == _threshold(0.75)
        status = json.loads((await nc.request(s.op("status"), b"{}", timeout=30)).data)
        (link,) = status["materializations"][0]["links"]
        assert [(d["vni"], d["emulation"]["loss"]) for d in link["directions"]] == [(101, 0.75)]
        ack = json.loads((await nc.request(s.op("dematerialize"), b'{"id": "asym"}',
                                           timeout=30)).data)
        assert ack["ok"], ack


def test_a_link_cut_across_status_pages_carries_the_directions_of_its_piece() -> None:
    """A LAN cut by endpoint (docs/contract.md, "Status"): each piece lists the directions of its
    own VNIs, and the client's merge puts them back together."""
    from moa_bus.engine_paging import merge_pages
    from moa_bus.service.status import directions
    lan = schemas.decode(schemas.Materialize, json.dumps({"id": "m", "links": [
        {"id": "lan", "emulation": {"loss": 0.1},
         "endpoints": [{"vni": 200 + k, "remote": "10.0.0.1"}
                       | ({"emulation": {"loss": k / 10}} if k in (1, 3) else {})
                       for k in range(4)]}]})).links[0]
    first, second = directions(lan, [200, 201]), directions(lan, [202, 203])
    assert [(d.vni, d.emulation.loss) for d in first] == [(201, 0.1)]
    assert [(d.vni, d.emulation.loss) for d in second] == [(203, 0.3)]
    assert directions(lan) == first + second

    def page(vnis: list[int], own: list) -> dict:
        piece = schemas.LinkStatus(id="lan", kind="lan", vnis=vnis, emulation=lan.emulation,
                                   counters=[], directions=own)
        return json.loads(schemas.encode(schemas.StatusReply(
            host="h", fq_memory_bytes=0, materializations=[schemas.MaterializationStatus(
                id="m", generation=1, links=[piece])])))
    merged = merge_pages([page([200, 201], first), page([202, 203], second)])
    (link,) = merged["materializations"][0]["links"]
    assert link["vnis"] == [200, 201, 202, 203]
    assert [d["vni"] for d in link["directions"]] == [201, 203]
