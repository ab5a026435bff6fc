"""PIE on the EDT timeline through BPF_PROG_TEST_RUN, against tests/pie_model.py (RFC 8033's
calculate_drop_prob in floating point): every update the kernel made, from the state it held
before and the queue delay it used (both read back from moa_state), gives the model's
probability within 1 %; the burst allowance is the model's; the model run on its own over the
whole sequence of queue delays stays within 1 % (or 1e-6 below that). Early drops follow the
probability (none while PIE is not congested), and with ECN ECT packets are marked, never dropped,
while the probability is at most 10 %.

The queue is shaped by how many packets each round sends, steered by the backlog read from the
timeline (the sleeps only pace the rounds: what the kernel did is read back, never assumed).
"""
from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from datapath.classifier import Classifier
from schemas import Aqm, Emulation
from tests.fixtures.classifier import EGRESS, VNI, clf, mono, put_t_last, send  # noqa: F401
from tests.fixtures.packets import TC_ACT_OK, TC_ACT_SHOT, outer_len, vxlan
from tests.pie_model import MAX_BURST, Pie

RATE = 8_000_000                 # a 1,054-byte frame: 1.078 ms
REF = 15_000_000
T_UPDATE = 5_000_000
ONE = 1 << 32
SER = 1_078_000
# (backlog the rounds steer toward, rounds): the queue grows, falls, grows, empties
PLAN = [(100_000_000, 60), (5_000_000, 60), (60_000_000, 40), (0, 200)]


def _frame(ecn: int) -> bytes:
    inner = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / \
        IP(src="10.0.0.1", dst="10.0.0.2", tos=ecn) / TCP(flags="A") / (b"x" * 1000)
    return vxlan(VNI, inner)


def _drive(c: Classifier, ecn: bool) -> list[tuple]:
    """Run the plan; per packet: (retval, ect, state before, state after). Each round sends
    what brings the backlog (read from the timeline) toward the phase's, at least one packet
    (the one that makes the update), so the queue follows the plan however long rounds take."""
    c.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, aqm=Aqm(
        kind="pie", target=REF, interval=T_UPDATE, ecn=ecn)))
    put_t_last(c, VNI, EGRESS, mono() + 20_000_000)
    frames = {0: _frame(0), 2: _frame(2)}
    out, i = [], 0
    before = c.stage_state(VNI, EGRESS)
    for want, rounds in PLAN:
        for _ in range(rounds):
            time.sleep(T_UPDATE * 1.1 / 1e9)
            backlog = max(0, before.t_last - mono())
            for _ in range(min(12, max(1, -(-(want - backlog) // SER)))):
                e = 2 if (ecn and i % 2) else 0
                r = send(c, frames[e])
                after = c.stage_state(VNI, EGRESS)
                out.append((r.retval, e != 0, before.aqm.pie, after.aqm.pie))
                before = after
                i += 1
    return out


def _updates(run: list[tuple]) -> list[tuple]:
    return [(b, a) for _, _, b, a in run if a.last_update != b.last_update and b.started]


def test_pie_probability_is_the_rfc_models_at_every_update(clf: Classifier) -> None:
    run = _drive(clf, ecn=False)
    ups = _updates(run)
    assert len(ups) >= 200
    worst = 0.0
    for k, (b, a) in enumerate(ups):
        assert a.last_update - b.last_update >= T_UPDATE
        m = Pie(REF / 1e9, T_UPDATE / 1e9, drop_prob=b.drop_prob / ONE,
                qdelay_old=b.qdelay_old / 1e9, burst_allowance=b.burst_allowance / 1e9)
        m.calculate_drop_prob(a.qdelay_old / 1e9)
        got = a.drop_prob / ONE
        # within 1 % (and the kernel's resolution, 2^-32, a few times over for the tiniest)
        assert abs(got - m.drop_prob) <= 0.01 * m.drop_prob + 4 / ONE, (k, got, m.drop_prob)
        if m.drop_prob > 1e-6:
            worst = max(worst, abs(got - m.drop_prob) / m.drop_prob)
        assert a.burst_allowance == round(m.burst_allowance * 1e9), k
    # The model run on its own over the same queue delays stays as close: within 1 %, or 1e-6
    # (the smallest probability the RFC scales for) where the probability is below that.
    free = Pie(REF / 1e9, T_UPDATE / 1e9)
    for k, (_, a) in enumerate(ups):
        free.calculate_drop_prob(a.qdelay_old / 1e9)
        got = a.drop_prob / ONE
        assert abs(got - free.drop_prob) <= max(0.01 * free.drop_prob, 1e-6), (k, got, free)
    probs = [a.drop_prob / ONE for _, a in ups]
    # the run went through PIE's regimes: congested above 10 %, back down, decayed to 0
    assert max(probs) > 0.1 and probs[-1] == 0.0
    zero = next(k for k in range(len(probs) - 1, -1, -1) if probs[k - 1] != 0.0)
    print(f"PIE: {len(ups)} updates, worst relative difference {worst:.2e} (p > 1e-6), peak "
          f"{max(probs):.3f}, 0 from update {zero} on")
    assert any(0 < p < 0.001 for p in probs)
    c = clf.link_counters(VNI)["egress"]
    assert c.drops["aqm"] > 0 and c.marks == 0
    # no early drop while PIE is not congested, or before the burst allowance is spent
    for retval, _, b, a in run:
        if retval == TC_ACT_SHOT:
            assert a.drop_prob > 0 and a.burst_allowance == 0
            assert a.qdelay_old >= REF // 2 or a.drop_prob >= 0.2 * ONE
    assert worst < 0.01


def test_pie_marks_ect_packets_while_the_probability_is_at_most_10_percent(
        clf: Classifier) -> None:
    run = _drive(clf, ecn=True)
    for retval, ect, _, a in run:
        assert retval in (TC_ACT_OK, TC_ACT_SHOT)
        if ect and retval == TC_ACT_SHOT:
            assert a.drop_prob > 0.1 * ONE      # only above 10 % is an ECT packet dropped
    c = clf.link_counters(VNI)["egress"]
    # (how many were marked depends on how long the probability stayed in (0, 10 %] while the
    # queue was congested: the next test makes marks and drops happen where they must)
    assert c.drops["aqm"] > 0 and c.packets + c.drops["aqm"] == len(run)


@pytest.mark.parametrize("prob,ect,verdict", [(0.05, True, "mark"), (0.05, False, "drop"),
                                              (0.3, True, "drop"), (0.1, True, "mark")])
def test_pie_due_decision_marks_or_drops(clf: Classifier, prob: float, ect: bool,
                                         verdict: str) -> None:
    """PIE's state with a drop decided whatever the draw (accu_prob at 8.5, the RFC's certain
    drop), congested, burst spent, no update due (T_UPDATE 3 s): the packet is marked when it is
    ECN-capable and the probability is at most 10 %, else dropped; a drop resets accu_prob."""
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, aqm=Aqm(
        kind="pie", target=REF, interval=3_000_000_000, ecn=True)))
    st = clf.stage_state(VNI, EGRESS)
    st.t_last = mono() + 500_000_000
    st.aqm.kind = int(clf.abi.Aqm.PIE)
    pie = st.aqm.pie
    pie.started, pie.burst_allowance, pie.qdelay_old = 1, 0, 2 * REF
    pie.drop_prob = int(prob * ONE) if prob != 0.1 else 429496729   # 0.1, rounded down
    pie.accu_prob = 36507222016 - pie.drop_prob                      # + drop_prob = 8.5
    pie.last_update = mono()
    clf.set_stage_state(VNI, EGRESS, st)
    frame = _frame(2 if ect else 0)
    r = send(clf, frame)
    after = clf.stage_state(VNI, EGRESS).aqm.pie
    c = clf.link_counters(VNI)["egress"]
    assert after.drop_prob == pie.drop_prob            # no update happened
    if verdict == "mark":
        assert r.retval == TC_ACT_OK and c.marks == 1 and c.drops["aqm"] == 0
        assert Ether(r.data[outer_len(r.data):])[IP].tos & 3 == 3
        assert after.accu_prob == 36507222016          # a mark keeps accu_prob (RFC 8033)
    else:
        assert r.retval == TC_ACT_SHOT and c.marks == 0 and c.drops["aqm"] == 1
        assert after.accu_prob == 0


@pytest.mark.parametrize("kind,target,interval", [("pie", 15_000_000, 15_000_000),
                                                  ("codel", 5_000_000, 100_000_000)])
def test_rfc_defaults_reach_the_stage(clf: Classifier, kind: str, target: int,
                                      interval: int) -> None:
    clf.set_link(VNI, egress=Emulation(capacity=RATE, aqm=Aqm(kind=kind)))
    st = clf.link(VNI).stage[EGRESS]
    assert (st.aqm, st.aqm_target_ns, st.aqm_interval_ns) == (
        int(clf.abi.Aqm[kind.upper()]), target, interval)
    assert MAX_BURST == 0.150


def test_switching_the_kind_starts_the_new_aqm_afresh(clf: Classifier) -> None:
    """The AQM state is one union: the first packet under another kind zeroes it."""
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, aqm=Aqm(
        kind="codel", target=1_000_000, interval=1_000_000)))
    put_t_last(clf, VNI, EGRESS, mono() + 500_000_000)
    for _ in range(20):
        send(clf)
    a = clf.stage_state(VNI, EGRESS).aqm
    assert a.kind == int(clf.abi.Aqm.CODEL) and a.codel.count > 0 and a.codel.dropping == 1
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, aqm=Aqm(kind="pie")))
    t = mono()
    assert send(clf).retval == TC_ACT_OK
    a = clf.stage_state(VNI, EGRESS).aqm
    assert a.kind == int(clf.abi.Aqm.PIE)
    assert (a.pie.started, a.pie.drop_prob, a.pie.accu_prob, a.pie.qdelay_old) == (1, 0, 0, 0)
    assert a.pie.burst_allowance == 150_000_000 and a.pie.last_update >= t
