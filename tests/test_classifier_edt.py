"""The EDT timeline through BPF_PROG_TEST_RUN: exact spacing, queue limit, latency after
capacity, jitter ordering, GSO charging, horizon, two CPUs on one link (the ingress stage and
its handover: test_classifier_port.py).

Deterministic: rates are chosen low enough that a link's timeline stays ahead of the clock for
the whole test, so every departure follows from t_last alone (read back from moa_state), never
from when the test happened to run.
"""
from __future__ import annotations

import pytest

from datapath.classifier import Classifier, ClassifierConfig
from schemas import Emulation
from tests.fixtures.classifier import (  # noqa: F401 (clf is a fixture)
    EGRESS, INNER, RATE, SER, VNI, clf, mono, on_two_cpus, put_t_last, send,
)
from tests.fixtures.packets import TC_ACT_OK, TC_ACT_SHOT, inner_tcp, outer_len, vxlan


def test_back_to_back_departures_spaced_by_serialisation(clf: Classifier) -> None:
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0))
    first = send(clf)
    second = send(clf)
    third = send(clf)
    assert first.retval == second.retval == third.retval == TC_ACT_OK
    assert second.ctx.tstamp - first.ctx.tstamp == SER
    assert third.ctx.tstamp - second.ctx.tstamp == SER
    assert clf.stage_state(VNI, EGRESS).t_last == third.ctx.tstamp
    c = clf.link_counters(VNI)["egress"]
    assert (c.packets, c.bytes) == (3, 3 * INNER)


def test_timeline_advances_exactly_with_repeat(clf: Classifier) -> None:
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0))
    t0 = mono() + 1_000_000_000
    put_t_last(clf, VNI, EGRESS, t0)
    send(clf, repeat=1000)
    assert clf.stage_state(VNI, EGRESS).t_last == t0 + 1000 * SER


@pytest.mark.parametrize("rate", [1_000_000, 40_000_000_000, 100_000_000_000, 400_000_000_000])
def test_serialisation_at_any_rate(clf: Classifier, rate: int) -> None:
    """64-bit rates, > 34 Gbit/s included; ser = floor(bytes * 8e9 / rate)."""
    clf.set_link(VNI, egress=Emulation(capacity=rate, queue=0))
    t0 = mono() + 1_000_000_000
    put_t_last(clf, VNI, EGRESS, t0)
    r = send(clf)
    assert r.ctx.tstamp == t0 + (INNER + 24) * 8 * 10**9 // rate


def test_small_frames_are_padded_to_60_bytes(clf: Classifier) -> None:
    tiny = vxlan(VNI, inner_tcp(payload=0))                # 54-byte inner frame
    assert len(tiny) - outer_len(tiny) == 54
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0))
    t0 = mono() + 1_000_000_000
    put_t_last(clf, VNI, EGRESS, t0)
    assert send(clf, tiny).ctx.tstamp == t0 + (60 + 24) * 1000
    assert clf.link_counters(VNI)["egress"].bytes == 60


def test_queue_limit_drops_start_exactly_at_the_limit(clf: Classifier) -> None:
    k = 10
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=k * (INNER + 24)))
    r = send(clf, repeat=3 * k)
    c = clf.link_counters(VNI)["egress"]
    assert c.packets == k
    assert c.drops["queue"] == 2 * k
    assert r.retval == TC_ACT_SHOT
    # The (k+1)th packet found k packets of backlog: exactly the queue, not one more.
    state = clf.stage_state(VNI, EGRESS)
    assert state.t_last - k * SER < mono()


def test_queue_limit_with_standing_backlog(clf: Classifier) -> None:
    """Backlog of 4.5 packets: a queue of 10 packets takes 5 more (the 6th would exceed it)."""
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=10 * (INNER + 24)))
    put_t_last(clf, VNI, EGRESS, mono() + 9 * SER // 2)
    send(clf, repeat=20)
    c = clf.link_counters(VNI)["egress"]
    assert (c.packets, c.drops["queue"]) == (5, 15)


def test_an_empty_queue_takes_a_packet_larger_than_the_queue(clf: Classifier) -> None:
    """A GSO packet of 3 frames into a queue of 1 frame: taken when nothing is queued, as an
    idle port takes the frame it starts sending; the next packet finds 3 frames queued."""
    gso = vxlan(VNI, inner_tcp(payload=3 * 1000))
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=INNER + 24))
    first, second = send(clf, gso, gso_segs=3), send(clf, gso, gso_segs=3)
    assert (first.retval, second.retval) == (TC_ACT_OK, TC_ACT_SHOT)
    c = clf.link_counters(VNI)["egress"]
    assert (c.packets, c.drops["queue"]) == (3, 3)
    assert send(clf).retval == TC_ACT_SHOT  # even one frame: 3 queued exceed the 1 it holds


def test_a_lowered_latency_never_departs_at_or_before_the_last_packet(clf: Classifier) -> None:
    """Latency lowered at run time: the next departure would fall before the last one; it is
    clamped to strictly after it (fq releases equal tstamps in enqueue order, which two CPUs
    can swap)."""
    clf.set_link(VNI, egress=Emulation(latency=50_000_000))
    before = send(clf).ctx.tstamp
    clf.set_link(VNI, egress=Emulation(latency=1_000_000))
    after = [send(clf).ctx.tstamp for _ in range(3)]
    assert after == [before + 1, before + 2, before + 3]


def test_latency_is_added_after_capacity(clf: Classifier) -> None:
    lat = 20_000_000
    clf.set_link(VNI, egress=Emulation(capacity=RATE, latency=lat, queue=0))
    t0 = mono() + 1_000_000_000
    put_t_last(clf, VNI, EGRESS, t0)
    a, b = send(clf), send(clf)
    assert a.ctx.tstamp == t0 + SER + lat
    assert b.ctx.tstamp == t0 + 2 * SER + lat
    assert clf.stage_state(VNI, EGRESS).t_last == t0 + 2 * SER


def departures(c: Classifier, n: int) -> tuple[list[int], int, int]:
    t0 = mono()
    out = [send(c).ctx.tstamp for _ in range(n)]
    return out, t0, mono()


def test_jitter_never_reorders_without_reorder_flag(clf: Classifier) -> None:
    lat, jit = 10_000_000, 5_000_000
    clf.set_link(VNI, egress=Emulation(latency=lat, jitter=jit))
    deps, t0, t1 = departures(clf, 2000)
    assert all(b > a for a, b in zip(deps, deps[1:]))  # strictly: fq keeps equal ones FIFO
    assert t0 + lat - jit <= deps[0] and deps[-1] <= t1 + lat + jit
    assert len(set(deps)) > 10             # jitter did something (clamping repeats values)


def test_jitter_reorders_with_reorder_flag(clf: Classifier) -> None:
    lat, jit = 10_000_000, 5_000_000
    clf.set_link(VNI, egress=Emulation(latency=lat, jitter=jit, reorder=True))
    sent, deps = [], []
    for _ in range(2000):
        sent.append(mono())
        deps.append(send(clf).ctx.tstamp)
    after = mono()
    assert any(b < a for a, b in zip(deps, deps[1:]))
    # Each sample within [lat - jit, lat + jit] of its send time.
    for i, d in enumerate(deps):
        upper = sent[i + 1] if i + 1 < len(sent) else after
        assert sent[i] + lat - jit <= d <= upper + lat + jit
    spread = [d - s for d, s in zip(deps, sent)]
    assert min(spread) < lat - jit // 2 and max(spread) > lat + jit // 2


def test_jitter_larger_than_latency_is_clamped_at_now(clf: Classifier) -> None:
    clf.set_link(VNI, egress=Emulation(latency=1000, jitter=50_000_000, reorder=True))
    for _ in range(200):
        t0 = mono()
        r = send(clf)
        assert r.retval == TC_ACT_OK
        assert r.ctx.tstamp == 0 or r.ctx.tstamp >= t0


@pytest.mark.parametrize("inner,hdr", [
    (inner_tcp(payload=2896), 14 + 20 + 20),
    (inner_tcp(payload=2896, ipv6=True, tcp_options=True), 14 + 40 + 32),
])
def test_gso_packet_charged_per_segment(clf: Classifier, inner, hdr: int) -> None:
    segs = 3
    frame = vxlan(VNI, inner)
    inner_len = len(frame) - outer_len(frame)
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0))
    t0 = mono() + 1_000_000_000
    put_t_last(clf, VNI, EGRESS, t0)
    r = send(clf, frame, gso_segs=segs)
    charged = inner_len + (segs - 1) * hdr
    assert r.ctx.tstamp == t0 + (charged + segs * 24) * 1000
    c = clf.link_counters(VNI)["egress"]
    assert (c.packets, c.bytes) == (segs, charged)


def test_gso_with_unparsable_inner_headers_charges_no_repeated_headers(clf: Classifier) -> None:
    frame = vxlan(VNI, b"\x02" * 12 + b"\x88\xb5" + b"z" * 3000)   # inner: local ethertype
    inner_len = len(frame) - outer_len(frame)
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0))
    t0 = mono() + 1_000_000_000
    put_t_last(clf, VNI, EGRESS, t0)
    r = send(clf, frame, gso_segs=3)
    assert r.ctx.tstamp == t0 + (inner_len + 3 * 24) * 1000


def test_horizon_drop_leaves_the_timeline_alone(clf: Classifier) -> None:
    clf.set_link(VNI, egress=Emulation(capacity=RATE, latency=11 * 10**9))
    before = clf.stage_state(VNI, EGRESS)
    r = send(clf)
    assert r.retval == TC_ACT_SHOT
    after = clf.stage_state(VNI, EGRESS)
    assert (after.t_last, after.t_depart) == (before.t_last, before.t_depart)
    assert clf.link_counters(VNI)["egress"].drops["horizon"] == 1


def test_horizon_setting_bounds_the_backlog() -> None:
    """horizon 50 ms, no queue limit: packets pass while departure - now <= 50 ms."""
    with Classifier.load(ClassifierConfig(max_links=8, horizon_ns=50_000_000)) as c:
        c.set_link(VNI, egress=Emulation(capacity=RATE, queue=0))
        send(c, repeat=100)
        counts = c.link_counters(VNI)["egress"]
        # 46 packets fit in 50 ms at SER = 1.078 ms (46 * 1.078 = 49.6; 47 * 1.078 = 50.7).
        assert counts.packets == 46
        assert counts.drops["horizon"] == 54


def test_two_cpus_one_link_lose_no_update(clf: Classifier) -> None:
    """Two threads pinned to two CPUs send on one link at once, on the lock-free path (capacity
    without Gilbert-Elliott: edt.h's cmpxchg): t_last advances by exactly one serialisation per
    packet (a lost update would leave it short). Both paths racing: test_classifier_timeline."""
    rate = 8_000_000_000                      # ser = 1078 ns, ahead of ~100-300 ns per packet
    ser = (INNER + 24) * 8 * 10**9 // rate
    n = 200_000
    clf.set_link(VNI, egress=Emulation(capacity=rate, queue=0))
    t0 = mono() + 50_000_000
    put_t_last(clf, VNI, EGRESS, t0)

    def work(_: int) -> None:
        for _ in range(4):
            send(clf, repeat=n // 4)

    on_two_cpus(work)
    assert clf.stage_state(VNI, EGRESS).t_last == t0 + 2 * n * ser
    per_cpu = clf.counters_map.lookup(clf.slot(VNI) * 2, clf.abi.LinkCounters)
    assert sum(c.packets for c in per_cpu) == 2 * n
    assert sorted(c.packets for c in per_cpu if c.packets) == [n, n], "both CPUs sent"
