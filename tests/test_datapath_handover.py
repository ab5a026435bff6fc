"""The ingress stage's handover in skb->mark survives VXLAN decapsulation, bridging and
re-encapsulation (issue 2), in network namespaces with real VXLAN traffic.

The host has no sch_fq, so the box runs loss-only and refuses capacity through materialize; the
proof writes capacity straight into the classifier map (Classifier.set_link), which is all the
datapath reads. Without fq the departure times are not honoured, but both stages run: the
ingress stage of the sending member's VNI writes its port delay into the mark, the egress stage
of each receiving member's VNI finds it (per-link `handover` counter), adds it and clears it.
"""
from __future__ import annotations


import pytest

import schemas
from datapath.api import KernelDatapath
from schemas import Emulation
from tests.fixtures.classifier import INGRESS, mono, put_t_last
from tests.fixtures.moabox import box  # noqa: F401
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = pytest.mark.netns

RATE = 10_000_000  # 10 Mbit/s
# A sender's port with a standing backlog of 5 s (within the 10 s horizon, no queue limit): a
# frame that found its port idle would be handed on at once (cut-through, port.h) and carry no
# mark; behind this backlog every frame carries a (saturated) handover.
BUSY_PORT = Emulation(capacity=RATE, queue=0)


def busy(dp: KernelDatapath, vni: int) -> None:
    put_t_last(dp.classifier, vni, INGRESS, mono() + 5_000_000_000)


def materialize_doc(mid: str, eps: list[tuple[int, str]]) -> schemas.Materialize:
    body = ", ".join(f'{{"vni": {vni}, "remote": "{remote}"}}' for vni, remote in eps)
    return schemas.decode(schemas.Materialize,
                          f'{{"id": "{mid}", "links": [{{"id": "l", "endpoints": [{body}]}}]}}')


def handovers(dp: KernelDatapath, vni: int) -> int:
    return dp.classifier.link_counters(vni)["egress"].handover


async def test_handover_survives_decap_bridge_and_encap_on_a_lan(topo, box):
    eps = [topo.add_endpoint(i, 200 + i, f"192.168.200.{i}/24") for i in (1, 2, 3)]
    topo.quiet(*eps)
    await box.apply(materialize_doc("lan", [(e.vni, topo.hv_addr(e.node)) for e in eps]))
    # Nothing configured yet: the egress stages see no mark.
    assert topo.ping(eps[0], eps[1], count=2) == (2, 2)
    assert [handovers(box, e.vni) for e in eps] == [0, 0, 0]
    assert box.classifier.global_counters()["handover"] == 0

    # A LAN with capacity (docs/semantics.md, LAN case), written by hand, every port backlogged.
    shared = Emulation(capacity=RATE)
    for e in eps:
        box.classifier.set_link(e.vni, egress=shared, ingress=BUSY_PORT)
        busy(box, e.vni)
    before = {e.vni: box.classifier.link_counters(e.vni) for e in eps}
    assert topo.ping(eps[0], eps[1], count=5) == (5, 5)
    after = {e.vni: box.classifier.link_counters(e.vni) for e in eps}

    # 5 requests 1 -> 2 and 5 replies 2 -> 1 went through the ingress stage of their sender's
    # VNI, were decapsulated, bridged, re-encapsulated with the receiver's VNI and met the
    # egress stage there carrying the mark.
    def delta(vni: int, stage: str, what: str) -> int:
        return getattr(after[vni][stage], what) - getattr(before[vni][stage], what)

    # Exactly the 5 requests and 5 replies, each marked (each waited at its port).
    for vni in (201, 202):
        assert delta(vni, "ingress", "packets") == 5
        assert delta(vni, "egress", "packets") == delta(vni, "egress", "handover") == 5
    assert delta(203, "egress", "packets") == 0  # unicast: the bridge learnt where 2 and 1 are
    assert box.classifier.global_counters()["handover"] == 10


async def test_handover_survives_the_p2p_pair(topo, box):
    """A point-to-point link hands nothing over (its emulation is the receiving VNI's egress
    stage alone, datapath/plan/planner.py); should an ingress stage be configured on it, its
    mark crosses the tc redirect pair too (bpf_redirect without BPF_F_INGRESS keeps skb->mark)."""
    a = topo.add_endpoint(1, 100, "192.168.100.1/24")
    b = topo.add_endpoint(2, 101, "192.168.100.2/24")
    await box.apply(materialize_doc("p2p", [(100, topo.hv_addr(1)), (101, topo.hv_addr(2))]))
    assert topo.ping(a, b, count=2) == (2, 2)
    assert handovers(box, 100) == handovers(box, 101) == 0

    box.classifier.set_link(100, egress=None, ingress=BUSY_PORT)
    busy(box, 100)
    assert topo.ping(a, b, count=5) == (5, 5)
    # requests a -> b: ingress stage of VNI 100 marks, the pair redirects to mv101, the egress
    # stage of VNI 101 takes the mark; replies b -> a pass VNI 101's (empty) ingress stage.
    assert handovers(box, 101) >= 5
    assert handovers(box, 100) == 0
    assert box.pair.counters()["tc_redirect"] >= 14


async def test_lan_vtep_hold_takes_the_handover_before_the_uplink_egress(topo, box):
    """Two real hops (datapath/bpf/port.h): moa_port_hold on the receiving member's VTEP takes the
    sender's port delay out of the mark after decapsulation and bridging, so the uplink's egress
    stage sees none. The host has no sch_fq: only the program part of HoldAtPort is attached
    here (the VM tier holds frames for real); its counter proves where the mark was taken."""
    from datapath.plan.devices import PORT_HOLD_FILTER

    eps = [topo.add_endpoint(i, 210 + i, f"192.168.210.{i}/24") for i in (1, 2, 3)]
    topo.quiet(*eps)
    await box.apply(materialize_doc("held", [(e.vni, topo.hv_addr(e.node)) for e in eps]))
    shared = Emulation(capacity=RATE)
    for e in eps:
        box.classifier.set_link(e.vni, egress=shared, ingress=BUSY_PORT)
        busy(box, e.vni)

    def attach() -> None:
        for e in eps:
            box.env.nl.attach_bpf(f"mv{e.vni}", "egress", box.classifier.port_hold_program.fd,
                                  PORT_HOLD_FILTER)
    await box.worker.call(attach)
    assert topo.ping(eps[0], eps[1], count=5) == (5, 5)
    # 5 requests + 5 replies, and whatever ARP the bridge flooded to both other members
    assert box.classifier.global_counters()["port_held"] >= 10
    assert box.classifier.global_counters()["handover"] == 0
    assert [handovers(box, e.vni) for e in eps] == [0, 0, 0]
    assert box.classifier.link_counters(212)["egress"].packets == 5  # requests, at the uplink


async def test_a_hold_the_kernel_refuses_rolls_the_whole_plan_back(topo, box):
    """HoldAtPort is a plan operation like any other: on this host (no sch_fq) it fails when
    forced on, and the Materialize is rolled back, leaving the box exactly as it was."""
    import dataclasses

    from datapath.netlink.model import FqSizing, FqUnavailable
    from datapath.plan.devices import HoldAtPort
    from datapath.plan.runner import PlanError
    from tests.fixtures.moabox import kernel_snapshot, moa_devices

    eps = [topo.add_endpoint(i, 220 + i, f"192.168.220.{i}/24") for i in (1, 2, 3)]
    before = kernel_snapshot(topo.box, topo.pin_root)
    box.plan_config = dataclasses.replace(box.plan_config, port_hold=FqSizing())
    with pytest.raises(PlanError) as e:
        await box.apply(materialize_doc("held", [(x.vni, topo.hv_addr(x.node))
                                                       for x in eps]))
    assert isinstance(e.value.operation, HoldAtPort), e.value
    assert isinstance(e.value.cause, FqUnavailable), e.value
    assert e.value.rollback_errors == []
    assert moa_devices(topo.box) == {}
    assert kernel_snapshot(topo.box, topo.pin_root) == before
