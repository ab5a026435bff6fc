"""A LAN member's port through BPF_PROG_TEST_RUN: the ingress stage (the sender's port: its
rate and queue), the handover of its wait in skb->mark (default mask 0xffff0000, 1024 ns units),
the egress stage adding it when nothing held the frame, and moa_port_hold (datapath/bpf/port.h)
turning it into the frame's departure on the receiving member's VTEP.

Cut-through: a frame is handed on when its transmission on the sender's port begins, so the
handover is the wait behind the frames ahead of it; a frame that finds its port idle carries
none. Deterministic as in test_classifier_edt.py: backlogs are put into the port's timeline far
ahead of the clock."""
from __future__ import annotations

from datapath.classifier import Classifier, ClassifierConfig
from schemas import Emulation
from tests.fixtures.classifier import (  # noqa: F401 (clf is a fixture)
    EGRESS, INGRESS, INNER, RATE, SER, VNI, clf, mono, put_t_last, send,
)
from tests.fixtures.packets import TC_ACT_OK, inner_tcp, vxlan

RX_VNI = 301  # the receiving endpoint (egress stage)
PORT = Emulation(capacity=RATE, queue=0)


def units(ns: int) -> int:
    return (ns + 512) >> 10


def hold(c: Classifier, mark: int, frame: bytes | None = None):
    """moa_port_hold on an inner frame (what the VTEP transmits: it parses nothing)."""
    ctx = c.abi.SkBuff()
    ctx.mark = mark
    return c.port_hold_program.test_run(frame or inner_tcp(payload=1000), ctx=ctx)


# -- the ingress stage ---------------------------------------------------------------------------

def test_idle_port_hands_nothing_over(clf: Classifier) -> None:
    clf.set_link(VNI, ingress=PORT)
    r = send(clf, stage=INGRESS, mark=0x1234)
    assert r.retval == TC_ACT_OK
    assert r.ctx.tstamp == 0, "ingress never delays itself: no qdisc holds packets there"
    assert r.ctx.mark == 0x1234, "cut-through: an idle port passes the frame on at once"
    # ... but it occupies the port: the next frame waits for it (less the us the test took),
    # handed on at a random point of its own transmission (the phase dither, handover.h).
    second = send(clf, stage=INGRESS).ctx.mark >> 16
    assert units(SER - 200_000) <= second <= units(2 * SER)
    assert clf.link_counters(VNI)["ingress"].packets == 2


def test_backlogged_port_hands_its_wait_over(clf: Classifier) -> None:
    clf.set_link(VNI, ingress=PORT)
    put_t_last(clf, VNI, INGRESS, mono() + 5_000_000)  # 5 ms of frames ahead
    first = send(clf, stage=INGRESS, mark=0x1234).ctx.mark
    # the wait (less the few us the test took) and a dither within the frame's own transmission
    assert units(5_000_000 - 200_000) <= first >> 16 <= units(5_000_000 + SER)
    assert first & 0xFFFF == 0x1234
    second = send(clf, stage=INGRESS).ctx.mark >> 16
    assert units(5_000_000 + SER - 200_000) <= second <= units(5_000_000 + 2 * SER)


def test_dither_spreads_over_the_frame_time(clf: Classifier) -> None:
    """The phase dither (handover.h): uniform over [0, ser) of the frame, so a flooding port's
    frames do not reach the shared queue in lock-step with the room it frees."""
    clf.set_link(VNI, ingress=PORT)
    dithers = []
    for _ in range(400):
        t_start = mono() + 50_000_000
        put_t_last(clf, VNI, INGRESS, t_start)
        before = mono()
        handed = (send(clf, stage=INGRESS).ctx.mark >> 16) << 10
        after = mono()
        # handed = t_start - now + dither (+-512 ns of rounding), now in [before, after]
        assert t_start - after - 512 <= handed <= t_start - before + SER + 512
        dithers.append(handed - (t_start - before))
    assert min(dithers) < SER / 10 and max(dithers) > SER * 9 / 10, "not spread over [0, ser)"
    below_half = sum(d < SER / 2 for d in dithers)
    assert 140 <= below_half <= 260, below_half  # 200 +- 4 sigma (binomial, p = 0.5)


def test_ingress_handover_saturates(clf: Classifier) -> None:
    clf.set_link(VNI, ingress=PORT)
    put_t_last(clf, VNI, INGRESS, mono() + 500_000_000)
    assert send(clf, stage=INGRESS).ctx.mark == 0xFFFF0000


def test_ingress_tail_drop_at_its_own_queue(clf: Classifier) -> None:
    clf.set_link(VNI, ingress=Emulation(capacity=RATE, queue=3 * (INNER + 24)))
    send(clf, stage=INGRESS, repeat=10)
    c = clf.link_counters(VNI)
    assert (c["ingress"].packets, c["ingress"].drops["queue"]) == (3, 7)
    assert c["egress"].packets == 0


def test_handover_disabled_with_mark_mask_zero() -> None:
    with Classifier.load(ClassifierConfig(max_links=8, mark_mask=0)) as c:
        c.set_link(VNI, ingress=PORT)
        put_t_last(c, VNI, INGRESS, mono() + 5_000_000)
        assert send(c, stage=INGRESS, mark=7).ctx.mark == 7
        c.set_link(RX_VNI)
        r = send(c, vxlan(RX_VNI), mark=0xFFFF0000)
        assert (r.ctx.mark, r.ctx.tstamp) == (0xFFFF0000, 0)


# -- the egress stage, when nothing held the frame (no sch_fq: loss-only boxes) ----------------

def test_egress_adds_handover_after_capacity_and_clears_the_bits(clf: Classifier) -> None:
    lat = 1_000_000
    rx = vxlan(RX_VNI, inner_tcp(payload=1000))
    clf.set_link(RX_VNI, egress=Emulation(capacity=RATE, latency=lat, queue=0))
    t0 = mono() + 1_000_000_000
    put_t_last(clf, RX_VNI, EGRESS, t0)
    before = clf.global_counters()["handover"]
    # Other bits of the mark are kept (not 0x8000: the copy's bit, duplicate.h).
    r = send(clf, rx, mark=(3000 << 16) | 0x3EEF)
    assert r.ctx.mark == 0x3EEF
    assert r.ctx.tstamp == t0 + SER + lat + 3000 * 1024
    assert clf.stage_state(RX_VNI, EGRESS).t_last == t0 + SER, "handover is not capacity"
    assert clf.global_counters()["handover"] == before + 1


def test_handover_alone_delays_an_otherwise_idle_egress_stage(clf: Classifier) -> None:
    clf.set_link(RX_VNI)                                   # both stages idle
    rx = vxlan(RX_VNI, inner_tcp(payload=100))
    t0 = mono()
    r = send(clf, rx, mark=100 << 16)
    t1 = mono()
    assert t0 + 100 * 1024 <= r.ctx.tstamp <= t1 + 100 * 1024
    assert r.ctx.mark == 0
    assert send(clf, rx).ctx.tstamp == 0                   # without a mark: untouched


def test_handover_round_trip_ingress_then_egress(clf: Classifier) -> None:
    """The sender's port (ingress, VNI) feeds the receiver's link (egress, RX_VNI)."""
    clf.set_link(VNI, ingress=PORT)
    clf.set_link(RX_VNI, egress=Emulation(capacity=RATE * 100, queue=0))
    put_t_last(clf, VNI, INGRESS, mono() + 5_000_000)
    mark = send(clf, stage=INGRESS).ctx.mark
    t0 = mono() + 1_000_000_000
    put_t_last(clf, RX_VNI, EGRESS, t0)
    r = send(clf, vxlan(RX_VNI, inner_tcp(payload=1000)), mark=mark)
    assert r.ctx.tstamp == t0 + SER // 100 + ((mark >> 16) << 10)
    assert r.ctx.mark == 0


# -- moa_port_hold on the receiving VTEP -----------------------------------------------------------

def test_hold_makes_the_handover_the_departure_and_clears_its_bits(clf: Classifier) -> None:
    before = clf.global_counters()["port_held"]
    t0 = mono()
    r = hold(clf, (3000 << 16) | 0xBEEF)
    t1 = mono()
    assert r.retval == TC_ACT_OK
    assert t0 + 3000 * 1024 <= r.ctx.tstamp <= t1 + 3000 * 1024
    assert r.ctx.mark == 0xBEEF, "only the handover bits are taken"
    assert clf.global_counters()["port_held"] == before + 1


def test_hold_leaves_a_frame_without_handover_alone(clf: Classifier) -> None:
    r = hold(clf, 0x0000BEEF)
    assert (r.retval, r.ctx.tstamp, r.ctx.mark) == (TC_ACT_OK, 0, 0xBEEF)
    assert clf.global_counters()["port_held"] == 0


def test_hold_with_another_mark_mask() -> None:
    """The mask is the classifier's (config.h): the low byte here."""
    with Classifier.load(ClassifierConfig(max_links=8, mark_mask=0xFF)) as c:
        t0 = mono()
        r = hold(c, 0xABCD0010)
        assert r.ctx.mark == 0xABCD0000
        assert r.ctx.tstamp >= t0 + 16 * 1024


def test_port_wait_round_trips_through_the_hold(clf: Classifier) -> None:
    """Sender's port (uplink ingress) -> the receiving VTEP's hold: the frame departs during
    its transmission on the port, and the egress stage then finds no handover."""
    clf.set_link(VNI, ingress=PORT)
    t_start = mono() + 5_000_000
    put_t_last(clf, VNI, INGRESS, t_start)
    t0 = mono()
    mark = send(clf, stage=INGRESS).ctx.mark
    r = hold(clf, mark)
    between = mono() - t0  # the hold counts the wait from its own clock read
    assert r.ctx.mark == 0
    # the 1.024 us units round the wait to +-512 ns; the dither adds less than one frame time
    assert t_start - 512 <= r.ctx.tstamp <= t_start + SER + 512 + between
    assert clf.global_counters()["handover"] == 0
