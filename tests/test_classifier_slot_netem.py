"""Slots together with netem's reorder and duplicate (docs/semantics.md, "Slots"): a slotted
stage's locked path (edt.h) also decides early packets and places copies.

Through BPF_PROG_TEST_RUN on a timeline parked ahead of the clock (tests/test_classifier_slots.py's
method), in a namespace of the test's own so that the copies' clones go to its loopback
(tests/test_classifier_duplicate.py's method)."""
from __future__ import annotations

import schemas
from datapath.classifier import Classifier
from schemas import Emulation, Slot
from tests.fixtures.classifier import EGRESS, RATE, SER, VNI, mono
from tests.fixtures.packets import TC_ACT_OK
from tests.test_classifier_duplicate import FRAME, _in_netns, clf_ns, netns  # noqa: F401
from tests.test_classifier_slots import park

MS = 1_000_000


def _send(c: Classifier) -> int:
    ctx = c.abi.SkBuff()
    ctx.ifindex = 1          # the namespace's loopback
    r = c.egress_program.test_run(FRAME, ctx=ctx)
    assert r.retval == TC_ACT_OK
    return r.ctx.tstamp


def test_a_copy_takes_its_own_place_in_the_slots(clf_ns: Classifier, netns: str) -> None:
    """duplicate 100 % through slots of 4 frames every 2 ms: original i takes place 2i, its
    copy place 2i + 1, so each slot carries two pairs."""
    clf_ns.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, duplicate=1.0,
                                          slot=Slot(min=2 * MS, packets=4)))
    t0 = mono() + 500 * MS
    opening = t0 + 100 * MS
    park(clf_ns, t0, slot_next=opening, slot_pkts=0, slot_used=0)
    deps = _in_netns(netns, lambda: [_send(clf_ns) for _ in range(5)])
    assert mono() < t0
    place = [opening + (j // 4) * 2 * MS + j % 4 for j in range(10)]
    assert deps == place[0::2]
    st = clf_ns.stage_state(VNI, EGRESS)
    assert (st.slot_next, st.slot_pkts) == (opening + 2 * 2 * MS, 2)
    assert st.t_depart == place[-1]              # the last copy's departure
    assert st.t_last == t0 + 10 * SER            # ten serialisations charged
    assert clf_ns.link_counters(VNI)["egress"].duplicated == 5


def test_a_copy_dropped_at_the_horizon_leaves_the_slot_as_its_original_left_it(
        clf_ns: Classifier, netns: str) -> None:
    """Slots of one frame: the original takes the current slot and its copy would need the
    next one, beyond the horizon (the classifier's default, 10 s): the copy is dropped alone and the
    slot keeps the original."""
    clf_ns.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, duplicate=1.0,
                                          slot=Slot(min=4_000 * MS, packets=1)))
    t0 = mono() + 500 * MS
    opening = t0 + 7_000 * MS          # the next slot would open 11.5 s ahead: past 10 s
    park(clf_ns, t0, slot_next=opening, slot_pkts=0, slot_used=0)
    dep = _in_netns(netns, lambda: _send(clf_ns))
    assert dep == opening
    st = clf_ns.stage_state(VNI, EGRESS)
    assert (st.slot_next, st.slot_pkts) == (opening, 1)
    c = clf_ns.link_counters(VNI)["egress"]
    assert c.duplicated == 0 and c.drops["horizon"] == 1 and c.packets == 1


def test_an_early_packet_shares_the_slot_at_its_instant(clf_ns: Classifier, netns: str) -> None:
    """reorder 100 % gap 2 through slots of 4 opening after every packet is ready: the delayed
    packets are spread 1 ns apart, an early one is not held behind them (it leaves at the
    opening itself); the fifth packet takes the next slot."""
    clf_ns.set_link(VNI, egress=Emulation(
        capacity=RATE, queue=0, latency=50 * MS, slot=Slot(min=2 * MS, packets=4),
        reorder_early=schemas.ReorderEarly(probability=1.0, gap=2)))
    t0 = mono() + 500 * MS
    opening = t0 + 100 * MS
    park(clf_ns, t0, slot_next=opening, slot_pkts=0, slot_used=0)
    deps = _in_netns(netns, lambda: [_send(clf_ns) for _ in range(5)])
    assert mono() < t0
    assert deps == [opening, opening, opening + 1, opening, opening + 2 * MS]
