"""CoDel and ECN on the EDT timeline through BPF_PROG_TEST_RUN, against tests/codel_model.py (RFC
8289's pseudocode on a simulated FIFO): identical decisions packet by packet, and CE marks in
place of drops for ECN-capable packets.

Deterministic without a controlled clock: the timeline starts far enough ahead of the clock that
every packet's dequeue time is the timeline's (t_last, read back, exact) and its sojourn is
hundreds of ms from every threshold it is compared with. Below-target phases come from the
target itself, changed between packets (a run-time parameter update, which keeps the stage's
state): the model is given each packet's target. Each run checks those margins from the
measured clock before comparing, and that the sequence did exercise what CoDel does (entering
the dropping state, drops in the loop, several at one dequeue time, leaving, re-entering with
the count carried over).
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from datapath.classifier import Classifier
from schemas import Aqm, Emulation
from tests.codel_model import MAXPACKET, CoDel, Packet, run, ser_ns
from tests.fixtures.classifier import EGRESS, INNER, VNI, clf, mono, put_t_last, send  # noqa: F401
from tests.fixtures.packets import TC_ACT_OK, TC_ACT_SHOT, inner_tcp, outer_len, vxlan

RATE = 8_000_000
SER = ser_ns(INNER + 24, RATE)            # 1,078,000 ns
MAXPKT_NS = ser_ns(MAXPACKET + 24, RATE)
INTERVAL = 5_000_000
TARGET = 1_000_000
HIGH = 3_000_000_000                      # a target the sojourn stays below
LEAD = 300_000_000                        # the timeline starts this far ahead of the clock
MARGIN = 100_000_000

# (packets, target): above-target phases and short below-target ones.
PHASES = [(400, TARGET), (30, HIGH), (300, TARGET), (5, HIGH), (600, TARGET), (1, HIGH),
          (250, TARGET), (200, HIGH), (200, TARGET)]


def _frame(ecn: int, v6: bool = False) -> bytes:
    l3 = IPv6(src="fd00::1", dst="fd00::2", tc=ecn) if v6 else IP(src="10.0.0.1", dst="10.0.0.2",
                                                                  tos=ecn)
    inner = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3 / TCP(flags="A") / \
        (b"x" * (1000 if not v6 else 980))
    return vxlan(VNI, inner)


def _emulation(target: int, ecn: bool) -> Emulation:
    return Emulation(capacity=RATE, queue=0,
                     aqm=Aqm(kind="codel", target=target, interval=INTERVAL, ecn=ecn))


def _drive(c: Classifier, ecns: list[int], v6: list[bool] | None = None
           ) -> tuple[list[Packet], list, int]:
    """Send the phases' packets; returns the model's packets (arrival = the clock read just
    before each send), the kernel's results and the timeline's start."""
    ecn_on = any(ecns)
    c.set_link(VNI, egress=_emulation(TARGET, ecn_on))
    t0 = mono() + LEAD
    put_t_last(c, VNI, EGRESS, t0)
    frames = {(e, s): _frame(e, s) for e in set(ecns) for s in (False, True)}
    pkts, results, i = [], [], 0
    for n, target in PHASES:
        c.set_link(VNI, egress=_emulation(target, ecn_on))
        for _ in range(n):
            e = ecns[i % len(ecns)]
            six = v6[i % len(v6)] if v6 else False
            pkts.append(Packet(arrival=mono(), ser=SER, target=target, ect=e != 0))
            results.append(send(c, frames[(e, six)]))
            i += 1
    return pkts, results, t0


def _check_margins(pkts: list[Packet]) -> None:
    """Every sojourn the model computed is far from the thresholds it met (the clock read
    before a send is at most the kernel's now, and sends are microseconds apart)."""
    for p in pkts:
        if p.start < 0:
            continue
        sojourn = p.start - p.arrival
        assert sojourn >= MARGIN + max(TARGET, MAXPKT_NS)
        assert p.target == TARGET or sojourn <= HIGH - MARGIN


def _coverage(pkts: list[Packet]) -> dict[str, int]:
    v = [p.verdict for p in pkts]
    runs = sum(1 for a, b in zip(v, v[1:]) if a == b == "drop")
    return {"drops": v.count("drop"), "marks": v.count("mark"), "passes": v.count("pass"),
            "back_to_back_drops": runs}


def test_codel_decisions_are_the_rfc_models(clf: Classifier) -> None:
    pkts, results, t0 = _drive(clf, [0])
    codel = CoDel(INTERVAL, MAXPKT_NS)
    model = run([Packet(p.arrival, p.ser, p.target, p.ect) for p in pkts], t0, codel)
    _check_margins(model)

    got = ["drop" if r.retval == TC_ACT_SHOT else "pass" for r in results]
    assert all(r.retval in (TC_ACT_OK, TC_ACT_SHOT) for r in results)
    want = [p.verdict for p in model]
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert first is None, f"packet {first}: kernel {got[first]}, model {want[first]}"
    # Departures too: a passed packet leaves when its serialisation ends, as the model's link.
    for r, p in zip(results, model):
        if p.verdict == "pass":
            assert r.ctx.tstamp == p.start + p.ser
    cov = _coverage(model)
    assert cov["drops"] > 100 and cov["back_to_back_drops"] > 10 and cov["passes"] > 500
    st = clf.stage_state(VNI, EGRESS).aqm.codel
    assert (st.count, st.lastcount, st.drop_next) == (codel.count, codel.lastcount,
                                                      codel.drop_next)
    # The model's link ran dry after the last packet: a drop in the loop then found the queue
    # empty and left the dropping state; the kernel leaves that to the next packet (pending).
    assert st.dropping == int(codel.dropping) or (st.pending == 1 and not codel.dropping)
    c = clf.link_counters(VNI)["egress"]
    assert c.drops["aqm"] == cov["drops"] and c.marks == 0
    assert c.packets == cov["passes"]


def test_codel_reenters_with_the_count_it_left(clf: Classifier) -> None:
    """The sequence leaves the dropping state and comes back within 16 intervals: the model's
    count on re-entry is the drops of the last cycle (RFC 8289's delta), and the kernel's."""
    pkts, results, t0 = _drive(clf, [0])
    codel = CoDel(INTERVAL, MAXPKT_NS)
    entries = []
    orig = codel.control_law

    def law(t: int, count: int) -> int:
        if t not in (codel.drop_next,):
            entries.append(count)
        return orig(t, count)
    codel.control_law = law  # type: ignore[method-assign]
    model = run([Packet(p.arrival, p.ser, p.target, p.ect) for p in pkts], t0, codel)
    assert [r.retval == TC_ACT_SHOT for r in results] == [p.verdict == "drop" for p in model]
    assert len(entries) >= 3 and max(entries[1:]) > 1, entries


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_ecn_marks_ect_packets_and_drops_the_others(clf: Classifier, v6: bool) -> None:
    # not-ECT, ECT(1), ECT(0), CE, in turn
    ecns = [0, 1, 2, 3]
    pkts, results, t0 = _drive(clf, ecns, [v6])
    model = run([Packet(p.arrival, p.ser, p.target, p.ect) for p in pkts], t0,
                CoDel(INTERVAL, MAXPKT_NS, ecn=True))
    _check_margins(model)
    for i, (r, p) in enumerate(zip(results, model)):
        assert r.retval == (TC_ACT_SHOT if p.verdict == "drop" else TC_ACT_OK), i
        if p.verdict == "drop":
            assert ecns[i % 4] == 0, i                      # only non-ECT packets are dropped
            continue
        sent = _frame(ecns[i % 4], v6)
        inner = Ether(r.data[outer_len(r.data):])
        l3 = inner[IPv6] if v6 else inner[IP]
        ecn = (l3.tc if v6 else l3.tos) & 3
        assert ecn == (3 if p.verdict == "mark" else ecns[i % 4]), i
        if not v6:
            # the checksum the kernel left is the one of the header as it now is
            check = l3.chksum
            del l3.chksum
            assert IP(bytes(l3)).chksum == check
        # nothing else changed
        diff = [k for k, (a, b) in enumerate(zip(sent, r.data)) if a != b]
        assert len(r.data) == len(sent)
        assert (not diff) if p.verdict == "pass" else len(diff) <= 3, (i, diff)
        if p.verdict == "pass":
            assert r.ctx.tstamp == p.start + p.ser
    cov = _coverage(model)
    assert cov["marks"] > 50 and cov["drops"] > 20
    c = clf.link_counters(VNI)["egress"]
    assert c.marks == cov["marks"] and c.drops["aqm"] == cov["drops"]


def test_an_idle_link_leaves_the_dropping_state(clf: Classifier) -> None:
    """A packet that finds the queue empty (sojourn 0) ends the dropping state and clears
    first_above_time, as the RFC's dequeue of an empty queue does."""
    pkts, results, t0 = _drive(clf, [0])
    assert any(r.retval == TC_ACT_SHOT for r in results)
    before = clf.stage_state(VNI, EGRESS)
    before.aqm.codel.dropping = 1
    before.aqm.codel.first_above_time = before.t_last
    before.t_last = 0
    clf.set_stage_state(VNI, EGRESS, before)
    assert send(clf).retval == TC_ACT_OK
    after = clf.stage_state(VNI, EGRESS).aqm.codel
    assert (after.dropping, after.first_above_time) == (0, 0)
    assert after.count == before.aqm.codel.count


def test_taildrop_keeps_the_fast_path_state_untouched(clf: Classifier) -> None:
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0))
    put_t_last(clf, VNI, EGRESS, mono() + LEAD)
    for _ in range(50):
        assert send(clf).retval == TC_ACT_OK
    a = clf.stage_state(VNI, EGRESS).aqm
    assert a.kind == 0
    assert (a.codel.first_above_time, a.codel.drop_next, a.codel.count) == (0, 0, 0)
    assert clf.link_counters(VNI)["egress"].packets == 50


def test_inner_frame_sizes_are_what_the_model_charges() -> None:
    assert len(_frame(0)) - outer_len(_frame(0)) == INNER
    assert len(_frame(0, True)) - outer_len(_frame(0, True)) == INNER
    assert len(vxlan(VNI, inner_tcp(payload=1000))) == len(_frame(0))


def _due(c: Classifier) -> None:
    """CoDel's state with a drop due: dropping, above target since long ago, drop_next passed;
    the timeline LEAD ahead of the clock (the sojourn far above target)."""
    st = c.stage_state(VNI, EGRESS)
    st.t_last = mono() + LEAD
    st.aqm.kind = int(c.abi.Aqm.CODEL)
    st.aqm.codel.dropping = 1
    st.aqm.codel.first_above_time = 1
    st.aqm.codel.drop_next = 1
    st.aqm.codel.count = 1
    c.set_stage_state(VNI, EGRESS, st)


@pytest.mark.parametrize("case", ["vlan", "ip_options", "gso", "not_ip"])
def test_a_due_mark_lands_on_the_inner_header_whatever_its_layout(clf: Classifier,
                                                                 case: str) -> None:
    clf.set_link(VNI, egress=_emulation(TARGET, True))
    l2 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    ip = IP(src="10.0.0.1", dst="10.0.0.2", tos=0x02,
            options=b"\x94\x04\x00\x00" if case == "ip_options" else b"")
    if case == "vlan":
        inner = l2 / Dot1Q(vlan=7) / ip / TCP(flags="A") / (b"x" * 1000)
    elif case == "not_ip":
        inner = l2 / ARP() / (b"x" * 1000)
    else:
        inner = l2 / ip / TCP(flags="A") / (b"x" * 1000)
    frame = vxlan(VNI, inner)
    _due(clf)
    r = send(clf, frame, gso_segs=4 if case == "gso" else 0)
    c = clf.link_counters(VNI)["egress"]
    if case == "not_ip":      # not ECN-capable: CoDel's drop stands
        assert r.retval == TC_ACT_SHOT and c.drops["aqm"] == 1 and c.marks == 0
        return
    assert r.retval == TC_ACT_OK
    assert c.marks == (4 if case == "gso" else 1) and c.drops["aqm"] == 0
    got = Ether(r.data[outer_len(r.data):])[IP]
    assert got.tos == 0x03
    check = got.chksum
    del got.chksum
    assert IP(bytes(got)).chksum == check
    diff = [k for k, (a, b) in enumerate(zip(frame, r.data)) if a != b]
    assert len(r.data) == len(frame) and 1 <= len(diff) <= 3
