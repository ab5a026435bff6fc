"""The planner and the pure parts of the plumbing (no kernel): ordering, fewest operations,
conflicts, the LAN port stage, fq sizing, the ifalias format."""
from __future__ import annotations

import pytest

import schemas
from datapath.emulation import queue_bytes
from datapath.netlink.model import FqSizing, MoaDevice, fq_sizing_for, make_alias, parse_alias
from datapath.pair import PeerEntry
from datapath.plan.devices import (
    AttachToBridge, CreateBridge, CreateVtep, DeleteBridge, DeleteVtep, HoldAtPort,
)
from datapath.plan.operation import Env, Operation
from datapath.plan.pair import CreatePair, DeletePair
from datapath.plan.params import DeleteLinkParams, SetLinkParams
from datapath.plan.planner import (
    Current, PlanConfig, PlanConflict, bridge_name, desired_state, plan, port_stage, vtep_name,
)
from datapath.plan.runner import PlanError, run_plan
from schemas import Emulation

CFG = PlanConfig(uplink="up0", local="10.0.0.1", vtep_mtu=1450)
UPLINK_INDEX = 2


def encode(stages) -> bytes:
    return repr(stages).encode()


def mat(mid: str = "m", emulation: str = "{}", remote_b: str = "10.0.0.12",
        lan: bool = True) -> schemas.Materialize:
    links = [f'''{{"id": "a-b", "emulation": {emulation}, "endpoints": [
                  {{"vni": 100, "remote": "10.0.0.11"}}, '''
             f'''{{"vni": 101, "remote": "{remote_b}"}}]}}''']
    if lan:
        links.append('''{"id": "lan", "emulation": {"capacity": "100mbps"}, "endpoints": [
                  {"vni": 200, "remote": "10.0.0.11"}, {"vni": 201, "remote": "10.0.0.12"},
                  {"vni": 202, "remote": "10.0.0.13"}]}''')
    return schemas.decode(schemas.Materialize, f'{{"id": "{mid}", "links": [{", ".join(links)}]}}')


def applied(m: schemas.Materialize) -> Current:
    """The Current a box holds once `m` is fully applied."""
    d = desired_state(m, CFG)
    cur = Current()
    index = 10
    for name, link in d.bridges.items():
        cur.devices[name] = MoaDevice(name=name, index=index, kind="bridge", materialization=m.id,
                                      link=link, up=True, mtu=1450, master=None)
        index += 1
    bridges = {n: dev.index for n, dev in cur.devices.items()}
    for name, (spec, link) in d.vteps.items():
        master = d.masters.get(name)
        cur.devices[name] = MoaDevice(
            name=name, index=index, kind="vxlan", materialization=m.id, link=link, up=True,
            mtu=spec.mtu, master=bridges[master] if master else None, vni=spec.vni,
            local=spec.local, remote=spec.remote, port=spec.port, underlay=UPLINK_INDEX)
        index += 1
    for a, b in d.pairs:
        ia, ib = cur.devices[a].index, cur.devices[b].index
        cur.pairs[ia] = PeerEntry(ia, ib, 1450)
        cur.pairs[ib] = PeerEntry(ib, ia, 1450)
    for slot, (vni, (stages, _)) in enumerate(sorted(d.params.items())):
        cur.params[vni] = encode(stages)
        cur.links[vni] = slot.to_bytes(8, "little") + encode(stages)  # what the map read gives
    return cur


def run(m: schemas.Materialize, cur: Current) -> list[Operation]:
    return plan(m, cur, CFG, encode, UPLINK_INDEX)


def kinds(ops: list[Operation]) -> list[str]:
    return [type(op).__name__ for op in ops]


def test_fresh_plan_puts_parameters_before_vteps_and_pairs_last():
    ops = run(mat(), Current())
    assert kinds(ops) == (["SetLinkParams"] * 5 + ["CreateBridge"] + ["CreateVtep"] * 5
                          + ["AttachToBridge"] * 3 + ["CreatePair"])
    first_vtep = kinds(ops).index("CreateVtep")
    vnis_before = {op.vni for op in ops[:first_vtep] if isinstance(op, SetLinkParams)}
    assert vnis_before == {100, 101, 200, 201, 202}
    pair = ops[-1]
    assert isinstance(pair, CreatePair) and {pair.a, pair.b} == {"mv100", "mv101"}
    vtep = next(op for op in ops if isinstance(op, CreateVtep) and op.spec.vni == 101)
    assert (vtep.spec.remote, vtep.spec.local, vtep.spec.port, vtep.spec.mtu) == (
        "10.0.0.12", "10.0.0.1", 4789, 1450)


def test_p2p_has_egress_only_and_lan_has_a_port_stage():
    d = desired_state(mat(), CFG)
    (eg, ing), _ = d.params[100]
    assert eg == Emulation() and ing is None
    (eg, ing), _ = d.params[201]
    assert eg.capacity == 100_000_000
    # 2 ms at 100 Mbit/s = 25,000 bytes, below the shared queue (64 KiB default)
    assert ing == Emulation(capacity=100_000_000, queue=25_000)
    assert d.masters["mv201"] == bridge_name("m", "lan")


def test_port_stage_bounds():
    assert port_stage(Emulation()) is None  # unlimited: no port to model
    slow = port_stage(Emulation(capacity=1_000_000))
    assert slow.queue == 2 * 1538  # at least two full frames
    tight = port_stage(Emulation(capacity=10_000_000_000, queue=10_000))
    assert tight.queue == 10_000  # never more than the shared queue


HELD = PlanConfig(uplink="up0", local="10.0.0.1", vtep_mtu=1450, port_hold=FqSizing())


def test_with_sch_fq_lan_vteps_hold_at_the_port_before_joining_the_bridge():
    """Two real hops (datapath/bpf/port.h): every LAN member's VTEP holds frames, the point-to-
    point VTEPs do not; the hold is in place before the VTEP joins its bridge."""
    ops = plan(mat(), Current(), HELD, encode, UPLINK_INDEX)
    assert kinds(ops) == (["SetLinkParams"] * 5 + ["CreateBridge"] + ["CreateVtep"] * 5
                          + ["HoldAtPort"] * 3 + ["AttachToBridge"] * 3 + ["CreatePair"])
    held = [op for op in ops if isinstance(op, HoldAtPort)]
    assert {op.vtep for op in held} == {"mv200", "mv201", "mv202"}
    assert all(op.fq == FqSizing() for op in held)


def test_held_port_stage_has_the_link_queue_within_60_ms():
    d = desired_state(mat(), HELD)
    (eg, ing), _ = d.params[201]
    # 100 Mbit/s: 60 ms is 750,000 bytes; the link's own queue (64 KiB default) is smaller
    assert ing == Emulation(capacity=100_000_000, queue=queue_bytes(eg))
    deep = Emulation(capacity=10_000_000, queue=1_000_000)
    assert port_stage(deep, held=True).queue == 75_000  # 60 ms at 10 Mbit/s
    assert port_stage(Emulation(capacity=100_000), held=True).queue == 2 * 1538


def test_vtep_moving_from_a_pair_to_a_lan_gets_held():
    """A kept VTEP that joins a bridge (its link grew from 2 to 3 endpoints) is held too."""
    before = schemas.decode(schemas.Materialize,
                            '''{"id": "m", "links": [{"id": "lan", "endpoints": [
        {"vni": 200, "remote": "10.0.0.11"}, {"vni": 201, "remote": "10.0.0.12"}]}]}''')
    ops = plan(mat(lan=True), applied(before), HELD, encode, UPLINK_INDEX)
    assert not any(isinstance(op, DeleteVtep) for op in ops), "mv200 and mv201 are kept"
    assert {op.vtep for op in ops if isinstance(op, HoldAtPort)} == {"mv200", "mv201", "mv202"}


def test_a_held_vtep_deleted_is_rebuilt_with_its_hold_and_mac():
    """What undoes a DeleteVtep comes from the kernel's reading: the LAN member's root qdisc
    (sch_fq: it was held at its port), its bridge and its MAC. A point-to-point VTEP (no fq)
    comes back without a hold. (DeleteVtep.revert runs them on a kernel with sch_fq in the VM
    tier.)"""
    import dataclasses

    cur = applied(mat())
    for name in ("mv200", "mv201", "mv202"):
        cur.devices[name] = dataclasses.replace(cur.devices[name], root_qdisc="fq",
                                                address=f"02:00:00:00:02:{name[-2:]}")
    ops = plan(schemas.Materialize(id="m", links=[]), cur, HELD, encode, UPLINK_INDEX)
    deleted = {op.spec.name: op for op in ops if isinstance(op, DeleteVtep)}
    assert {n: op.hold for n, op in deleted.items()} == {
        "mv100": None, "mv101": None, "mv200": FqSizing(), "mv201": FqSizing(), "mv202": FqSizing()}
    assert deleted["mv201"].spec.address == "02:00:00:00:02:01"
    assert deleted["mv201"].master == bridge_name("m", "lan")


def test_held_plan_of_identical_content_is_empty():
    m = mat()
    cur = applied(m)
    d = desired_state(m, HELD)
    for vni, (stages, _) in d.params.items():
        cur.params[vni] = encode(stages)
    assert plan(m, cur, HELD, encode, UPLINK_INDEX) == []


def test_identical_content_plans_nothing():
    m = mat()
    assert run(m, applied(m)) == []


def test_parameter_change_is_parameters_only():
    cur = applied(mat())
    ops = run(mat(emulation='{"loss": 0.1}'), cur)
    assert kinds(ops) == ["SetLinkParams", "SetLinkParams"]
    assert [op.vni for op in ops] == [100, 101]
    # what revert restores: the map entry read from the kernel before the plan
    assert [op.previous for op in ops] == [cur.links[100], cur.links[101]]


def test_changed_remote_recreates_that_vtep_and_its_pair_only():
    cur = applied(mat())
    ops = run(mat(remote_b="10.0.0.99"), cur)
    assert kinds(ops) == ["DeletePair", "DeleteVtep", "CreateVtep", "CreatePair"]
    assert ops[1].spec.name == "mv101" and ops[2].spec.remote == "10.0.0.99"


def test_removal_runs_in_reverse_order():
    cur = applied(mat())
    ops = run(schemas.Materialize(id="m", links=[]), cur)
    assert kinds(ops) == (["DeletePair"] + ["DeleteVtep"] * 5 + ["DeleteBridge"]
                          + ["DeleteLinkParams"] * 5)
    lan_vtep = next(op for op in ops if isinstance(op, DeleteVtep) and op.spec.vni == 200)
    assert lan_vtep.master == bridge_name("m", "lan")  # revert puts it back on its bridge


def test_dropping_one_link_touches_only_it():
    cur = applied(mat())
    ops = run(mat(lan=False), cur)
    assert kinds(ops) == ["DeleteVtep"] * 3 + ["DeleteBridge"] + ["DeleteLinkParams"] * 3
    assert {op.vni for op in ops if isinstance(op, DeleteLinkParams)} == {200, 201, 202}
    assert all(op.previous == cur.links[op.vni] for op in ops if isinstance(op, DeleteLinkParams))


def test_half_applied_state_is_completed():
    m = mat(lan=False)
    cur = applied(m)
    del cur.devices["mv101"]
    cur.pairs.clear()
    ops = run(m, cur)
    assert kinds(ops) == ["CreateVtep", "CreatePair"]


def test_vni_of_another_materialization_is_a_conflict():
    cur = applied(mat("other", lan=False))
    with pytest.raises(PlanConflict, match="belongs to materialization 'other'"):
        run(mat("m"), cur)
    # and the other's devices are not planned away by m's plan
    ops = run(schemas.decode(schemas.Materialize, '{"id": "m", "links": []}'), cur)
    assert ops == []


def test_duplicate_vni_inside_one_materialization():
    m = schemas.Materialize(id="m", links=[
        schemas.Link(id="x", endpoints=[schemas.Endpoint(vni=5, remote="10.0.0.2"),
                                        schemas.Endpoint(vni=5, remote="10.0.0.3")])])
    with pytest.raises(PlanConflict) as e:
        run(m, Current())
    assert e.value.field == "links[0].endpoints[1].vni"


def test_names_fit_ifnamsiz():
    assert len(vtep_name(16_777_215)) <= 15
    assert len(bridge_name("x" * 200, "y" * 200)) <= 15
    assert bridge_name("a", "bc") != bridge_name("ab", "c")


def test_alias_roundtrip_and_foreign_aliases():
    a = make_alias("rlz:42.exp", "a:b%c")
    assert parse_alias(a) == ("rlz:42.exp", "a:b%c")
    assert parse_alias(None) is None
    assert parse_alias("uplink to rack 3") is None
    assert parse_alias("moa:only-one-part") is None


def test_fq_sizing():
    s = fq_sizing_for(max_bdp_bytes=6_250_000, total_bdp_bytes=50_000_000)  # 1 Gbit/s x 50 ms
    assert s.flow_limit >= 6_250_000 // 1500 and s.limit >= 50_000_000 // 1500
    assert s.orphan_mask == s.buckets - 1
    # What the links ask of fq, and its memory: tests/test_box_limits.py.


class _Rec(Operation):
    def __init__(self, log: list[str], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    def apply(self, env):
        self.log.append(f"apply {self.name}")
        if self.fail:
            raise OSError("no")

    def revert(self, env):
        self.log.append(f"revert {self.name}")

    def describe(self):
        return self.name


def test_run_plan_reverts_in_reverse_and_names_the_failed_operation():
    log: list[str] = []
    ops = [_Rec(log, "a"), _Rec(log, "b"), _Rec(log, "c", fail=True), _Rec(log, "d")]
    with pytest.raises(PlanError) as e:
        run_plan(ops, Env(nl=None))  # type: ignore[arg-type]
    assert e.value.operation is ops[2] and e.value.index == 2
    assert "operation 3 (c) failed: no" in str(e.value)
    assert log == ["apply a", "apply b", "apply c", "revert c", "revert b", "revert a"]


def test_operation_descriptions_are_printable():
    ops = run(mat(emulation='{"latency": "10ms", "loss": 0.01, "capacity": "1gbps"}'), Current())
    text = [op.describe() for op in ops]
    assert any("latency 10000000ns" in t and "capacity 1000000000bit/s" in t for t in text)
    assert any(t.startswith("create pair mv100 <-> mv101") for t in text)
    assert isinstance(ops[5], CreateBridge) and isinstance(ops[-2], AttachToBridge)
    assert not any(isinstance(op, (DeletePair, DeleteBridge)) for op in ops)
