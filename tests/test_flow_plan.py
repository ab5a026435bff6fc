"""Flow mode's plans (datapath/plan/planner.py, datapath/plan/flows.py): the order of their
operations (parameters before entries, entries gone before parameters), rollback of a failed
plan on the real kernel (the entries and owners the kernel held come back), conflicts with
another materialization's entries or VTEPs. The kernel half runs in the testbed's box
(loss-only: this host has no sch_fq).
"""
from __future__ import annotations

import asyncio

import pytest

import schemas
from datapath import faults
from datapath.api import KernelDatapath, PlanError
from datapath.flow import FlowTable, Uplink
from datapath.plan.flows import SetFlow
from datapath.plan.params import SetLinkParams
from datapath.plan.planner import (Current, FlowContext, PlanConfig, PlanConflict, desired_state,
                                   plan)
from moa_bus.lab.host_testbed import Testbed
from tests.fixtures.docs import materialize
from tests.fixtures.moabox import box_config, moa_devices, vni_keys
from tests.fixtures.topology import topo  # noqa: F401
from tests.test_flow_netns import BOX6, hv_addr6
from tests.test_flow_service import _ipv6_underlay

CFG = PlanConfig(uplink="up0", local="10.0.0.1", flow=True)


def _doc(mid: str, vni0: int, n: int = 1, remote2: int = 2, loss: float = 0.0) -> dict:
    return {"id": mid, "links": [
        {"id": f"l{i}", "endpoints": [{"vni": vni0 + 2 * i, "remote": Testbed.hv_addr(1)},
                                      {"vni": vni0 + 2 * i + 1,
                                       "remote": Testbed.hv_addr(remote2)}],
         "emulation": {"loss": loss}} for i in range(n)]}


def _ctx() -> FlowContext:
    hops = {Testbed.hv_addr(i): f"02:00:00:00:00:0{i}" for i in (1, 2, 3)}
    return FlowContext(Uplink(5, "10.0.0.1", "02:00:00:00:00:aa"), hops, repr)


def test_flow_plan_orders_parameters_and_entries() -> None:
    m = materialize(_doc("o", 10, n=2))
    d = desired_state(m, CFG)
    assert d.vteps == {} and d.pairs == [] and set(d.flows) == {10, 11, 12, 13}
    assert (d.flows[10][0].peer_vni, d.flows[11][0].peer_vni) == (11, 10)
    ops = plan(m, Current(), CFG, repr, 5, _ctx())
    kinds = [type(op) for op in ops]
    assert kinds == [SetLinkParams] * 4 + [SetFlow] * 4
    entry = next(op.entry for op in ops if isinstance(op, SetFlow) and op.entry.vni == 12)
    assert (entry.peer_vni, entry.peer_mac, entry.src_ip, entry.ifindex) == (
        13, "02:00:00:00:00:02", "10.0.0.1", 5)
    # a LAN in flow mode keeps its VTEPs
    lan = materialize({"id": "lan", "links": [{"id": "x", "endpoints": [
        {"vni": 20 + i, "remote": Testbed.hv_addr(i)} for i in (1, 2, 3)],
        "emulation": {"loss": 0.0}}]})
    d = desired_state(lan, CFG)
    assert set(d.vteps) == {"mv21", "mv22", "mv23"} and d.flows == {}


@pytest.mark.netns
async def test_failed_flow_plan_rolls_back_and_conflicts_are_refused(topo: Testbed) -> None:
    dp = await KernelDatapath.start(box_config(topo, p2p_mode="flow"))
    try:
        table = FlowTable(dp.classifier)
        a = materialize(_doc("a", 100, n=2))
        await dp.apply(a)
        held, owners = table.raw(), table.owners()
        assert set(held) == {100, 101, 102, 103} and set(owners) == set(held)

        # a change whose last operation fails: everything as it was, entries and owners too
        moved = materialize(_doc("a", 100, n=2, remote2=3, loss=0.5))
        n = len(await dp.plan(moved))
        faults.arm(f"plan.after/a/{n - 1}=error:map")
        try:
            with pytest.raises(PlanError):
                await dp.apply(moved)
        finally:
            faults.disarm()
        assert table.raw() == held and table.owners() == owners
        assert await dp.plan(a) == []
        # and without the failure it goes through: the peers at hypervisor 3 now
        await dp.apply(moved)
        assert {e.peer_ip for v, e in table.entries().items() if v % 2 == 0} == {
            Testbed.hv_addr(3)}

        # another materialization may not take a VNI of a's entries, nor a's VNI a VTEP of b's
        with pytest.raises(PlanConflict):
            await dp.apply(materialize(_doc("b", 101)))
        lan = materialize({"id": "c", "links": [{"id": "x", "endpoints": [
            {"vni": 200 + i, "remote": Testbed.hv_addr(i)} for i in (1, 2, 3)],
            "emulation": {"loss": 0.0}}]})
        await dp.apply(lan)
        with pytest.raises(PlanConflict):
            await dp.apply(materialize(_doc("d", 202)))
        assert set(table.raw()) == {100, 101, 102, 103}

        # endpoints whose frames would change outer family: refused, naming the remote
        await asyncio.to_thread(_ipv6_underlay, topo)
        mixed = _doc("e", 300)
        mixed["links"][0]["endpoints"][1].update(remote=hv_addr6(2), local=BOX6)
        with pytest.raises(schemas.InvalidMessage) as e:
            await dp.apply(materialize(mixed))
        assert (e.value.field, e.value.code) == ("links[0].endpoints[1].remote", "unsupported")
        assert "outer family" in e.value.message
        assert 300 not in table.raw() and 300 not in vni_keys(topo.pin_root)

        # removal: the entries, their owners, their parameters
        ops = await dp.plan(schemas.Materialize(id="a", links=[]))
        assert [o.split(" ")[0:2] for o in ops[:4]] == [["delete", "flow"]] * 4
        await dp.apply(schemas.Materialize(id="a", links=[]))
        await dp.apply(schemas.Materialize(id="c", links=[]))
        assert table.raw() == {} and table.owners() == {}
        assert vni_keys(topo.pin_root) == set()
        assert await asyncio.to_thread(moa_devices, topo.box) == {}
    finally:
        await dp.teardown()

