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
from datapath.emulation import LinkEmulation
from datapath.planner import port_stage
from tests.fixtures.moabox import box  # noqa: F401
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = pytest.mark.netns

RATE = 10_000_000  # 10 Mbit/s: a ping frame is ~100 us on the port, ~98 handover units


def materialize_doc(mid: str, eps: list[tuple[int, str]]) -> schemas.Materialize:
    body = ", ".join(f'{{"vni": {vni}, "remote": "{remote}"}}' for vni, remote in eps)
    return schemas.decode(schemas.Materialize,
                          f'{{"id": "{mid}", "links": [{{"id": "l", "endpoints": [{body}]}}]}}')


def handovers(dp: KernelDatapath, vni: int) -> int:
    return dp.classifier.link_counters(vni)["egress"].handover


async def test_handover_survives_decap_bridge_and_encap_on_a_lan(topo, box):
    eps = [topo.add_endpoint(i, 200 + i, f"192.168.200.{i}/24") for i in (1, 2, 3)]
    topo.quiet(*eps)
    await box.materialize(materialize_doc("lan", [(e.vni, topo.hv_addr(e.node)) for e in eps]))
    # Nothing configured yet: the egress stages see no mark.
    assert topo.ping(eps[0], eps[1], count=2) == (2, 2)
    assert [handovers(box, e.vni) for e in eps] == [0, 0, 0]
    assert box.classifier.global_counters()["handover"] == 0

    # What the planner gives a LAN with capacity (semantics.md, LAN case), written by hand.
    shared = LinkEmulation(capacity_bps=RATE)
    for e in eps:
        box.classifier.set_link(e.vni, egress=shared, ingress=port_stage(shared))
    before = {e.vni: box.classifier.link_counters(e.vni) for e in eps}
    assert topo.ping(eps[0], eps[1], count=5) == (5, 5)
    after = {e.vni: box.classifier.link_counters(e.vni) for e in eps}

    # 5 requests 1 -> 2 and 5 replies 2 -> 1 went through the ingress stage of their sender's
    # VNI, were decapsulated, bridged, re-encapsulated with the receiver's VNI and met the
    # egress stage there carrying the mark.
    def delta(vni: int, stage: str, what: str) -> int:
        return getattr(after[vni][stage], what) - getattr(before[vni][stage], what)

    # Exactly the 5 requests and 5 replies, each marked (the port stage always delays).
    for vni in (201, 202):
        assert delta(vni, "ingress", "packets") == 5
        assert delta(vni, "egress", "packets") == delta(vni, "egress", "handover") == 5
    assert delta(203, "egress", "packets") == 0  # unicast: the bridge learnt where 2 and 1 are
    assert box.classifier.global_counters()["handover"] == 10


async def test_handover_survives_the_p2p_pair(topo, box):
    """A point-to-point link hands nothing over (its emulation is the receiving VNI's egress
    stage alone, planner.py); should an ingress stage be configured on it, its mark crosses
    the tc redirect pair too (bpf_redirect without BPF_F_INGRESS keeps skb->mark)."""
    a = topo.add_endpoint(1, 100, "192.168.100.1/24")
    b = topo.add_endpoint(2, 101, "192.168.100.2/24")
    await box.materialize(materialize_doc("p2p", [(100, topo.hv_addr(1)), (101, topo.hv_addr(2))]))
    assert topo.ping(a, b, count=2) == (2, 2)
    assert handovers(box, 100) == handovers(box, 101) == 0

    box.classifier.set_link(100, egress=None, ingress=port_stage(LinkEmulation(capacity_bps=RATE)))
    assert topo.ping(a, b, count=5) == (5, 5)
    # requests a -> b: ingress stage of VNI 100 marks, the pair redirects to mv101, the egress
    # stage of VNI 101 takes the mark; replies b -> a pass VNI 101's (empty) ingress stage.
    assert handovers(box, 101) >= 5
    assert handovers(box, 100) == 0
    assert box.pair.counters()["tc_redirect"] >= 14
