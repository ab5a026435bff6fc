"""The lock-free timeline (edt.h): the fast path (cmpxchg on t_last and t_depart) and the
locked path (Gilbert-Elliott, and the fallback) racing on one link from two CPUs.

Both paths on one timeline at the same time: a second VNI is pointed at the first one's slot
with Gilbert-Elliott parameters (no loss), so its packets take the locked path while the first
VNI's take the fast path, on the same moa_stage_state. That is the state a run-time parameter
change produces for a moment (CPUs briefly use old and new parameters), made to last.

Deterministic as tests/test_classifier_edt.py: the timeline is put ahead of the clock, so
every t_last follows from the packets alone, never from when the test ran.
"""
from __future__ import annotations

import bisect

import pytest

from datapath.classifier import Classifier
from datapath.emulation import stage_params
from schemas import Emulation, GilbertElliott
from tests.fixtures.classifier import clf, mono, on_two_cpus  # noqa: F401 (clf: a fixture)
from tests.fixtures.packets import TC_ACT_OK, inner_tcp, outer_len, vxlan

FAST_VNI = 400          # its own parameters: the lock-free path
LOCKED_VNI = 401        # Gilbert-Elliott parameters on FAST_VNI's slot: the locked path
EGRESS = 0
FAST = vxlan(FAST_VNI, inner_tcp(payload=1000))
LOCKED = vxlan(LOCKED_VNI, inner_tcp(payload=1000))
WIRE = len(FAST) - outer_len(FAST) + 24        # 1078 bytes charged per packet
NO_LOSS = GilbertElliott(p=0.5, r=0.5, loss_good=0.0, loss_bad=0.0)
OWNED = (1 << 64) - 1                          # MOA_OWNED: a word a locked step holds


def ser_ns(rate: int) -> int:
    return WIRE * 8 * 10**9 // rate


def send(c: Classifier, frame: bytes, repeat: int = 1):
    return c.egress_program.test_run(frame, ctx=c.abi.SkBuff(), repeat=repeat)


def share_slot(c: Classifier, fast: Emulation, locked: Emulation) -> None:
    """FAST_VNI with `fast`; LOCKED_VNI with `locked` on the same slot (same timeline)."""
    assert fast.burst is None and locked.burst is not None
    c.set_link(FAST_VNI, egress=fast)
    link = c.abi.Link()
    link.slot = c.slot(FAST_VNI)
    link.stage[EGRESS] = stage_params(locked, c.abi)
    link.stage[1] = stage_params(Emulation(), c.abi)
    c.links_map.update(LOCKED_VNI, link)


def put_state(c: Classifier, **fields: int) -> None:
    state = c.stage_state(FAST_VNI, EGRESS)
    for name, value in fields.items():
        setattr(state, name, value)
    c.set_stage_state(FAST_VNI, EGRESS, state)


def race(c: Classifier, rate: int, lat: int, fast_jitter: int) -> int:
    """FAST_VNI (latency lat, fast_jitter) and LOCKED_VNI (lat / 2, Gilbert-Elliott) on one
    timeline of `rate`, put 50 ms ahead of the clock; returns that start (t0)."""
    share_slot(c,
               Emulation(capacity=rate, queue=0, latency=lat, jitter=fast_jitter),
               Emulation(capacity=rate, queue=0, latency=lat // 2, burst=NO_LOSS))
    t0 = mono() + 50_000_000
    put_state(c, t_last=t0)
    return t0


def egress_packets(c: Classifier) -> list[int]:
    per_cpu = c.counters_map.lookup(c.slot(FAST_VNI) * 2, c.abi.LinkCounters)
    return [x.packets for x in per_cpu]


# --------------------------------------------------------------------------------------------
# Both paths give the same answers

@pytest.mark.parametrize("path", ["fast", "locked"])
def test_both_paths_space_clamp_and_drop_alike(clf: Classifier, path: str) -> None:
    """The same sequence through either path: exact spacing, a run-time latency decrease
    clamped to strictly after the last departure, a tail drop exactly at the queue."""
    rate, lat = 8_000_000, 50_000_000
    ser = ser_ns(rate)
    ge = NO_LOSS if path == "locked" else None
    clf.set_link(FAST_VNI, egress=Emulation(capacity=rate, latency=lat, queue=0, burst=ge))
    t0 = mono() + 1_000_000_000
    put_state(clf, t_last=t0)
    a = send(clf, FAST).ctx.tstamp
    assert a == t0 + ser + lat
    clf.set_link(FAST_VNI, egress=Emulation(capacity=rate, latency=1_000_000, queue=0,
                                            burst=ge))
    b, c = send(clf, FAST).ctx.tstamp, send(clf, FAST).ctx.tstamp
    assert (b, c) == (a + 1, a + 2), "lowered latency: strictly after, never before"
    assert clf.stage_state(FAST_VNI, EGRESS).t_last == t0 + 3 * ser
    assert clf.stage_state(FAST_VNI, EGRESS).t_depart == a + 2
    # Queue: the backlog is about 1 s, far over a 3-packet queue; nothing is committed.
    clf.set_link(FAST_VNI, egress=Emulation(capacity=rate, queue=3 * WIRE, burst=ge))
    before = clf.stage_state(FAST_VNI, EGRESS)
    r = send(clf, FAST, repeat=5)
    after = clf.stage_state(FAST_VNI, EGRESS)
    assert r.retval != TC_ACT_OK
    assert (after.t_last, after.t_depart) == (before.t_last, before.t_depart)
    assert clf.link_counters(FAST_VNI)["egress"].drops["queue"] == 5


@pytest.mark.parametrize("word", ["t_last", "t_depart"])
def test_a_word_held_by_a_locked_step_sends_the_fast_path_to_the_lock(clf: Classifier,
                                                                      word: str) -> None:
    """A word reading MOA_OWNED (here left by hand, as if a locked step held it) makes the
    fast path fall back; the locked path, which only another step could have left it so,
    reads it as 'nothing yet' and puts a real time back."""
    rate = 8_000_000
    clf.set_link(FAST_VNI, egress=Emulation(capacity=rate, queue=0))
    t0 = mono() + 1_000_000_000
    put_state(clf, t_last=t0, t_depart=0)
    put_state(clf, **{word: OWNED})
    before = mono()
    dep = send(clf, FAST).ctx.tstamp
    after = mono()
    state = clf.stage_state(FAST_VNI, EGRESS)
    if word == "t_last":     # timeline restarts at now: the departure is now + ser
        assert before + ser_ns(rate) <= dep <= after + ser_ns(rate)
        assert state.t_last == dep
    else:                    # t_depart read as 0: the departure follows t_last alone
        assert dep == t0 + ser_ns(rate)
        assert state.t_last == t0 + ser_ns(rate)
    assert state.t_depart == dep


# --------------------------------------------------------------------------------------------
# Two CPUs, both paths, one timeline

@pytest.mark.parametrize("fast_jitter", [0, 300_000])
def test_two_cpus_both_paths_lose_no_update(clf: Classifier, fast_jitter: int) -> None:
    """Two CPUs alternate batches of fast-path and locked-path packets on one timeline (each
    CPU on the other path half of the time): t_last advances by exactly one serialisation per
    packet, and t_depart is at or after the last packet's departure."""
    rate = 8_000_000_000                     # ser = 1078 ns, ahead of ~100-300 ns per packet
    ser = ser_ns(rate)
    lat = 1_000_000
    t0 = race(clf, rate, lat, fast_jitter)
    n, batch = 400_000, 10_000

    def work(i: int) -> None:
        frames = (FAST, LOCKED) if i == 0 else (LOCKED, FAST)
        for k in range(n // batch):
            assert send(clf, frames[k % 2], repeat=batch).retval == TC_ACT_OK

    on_two_cpus(work)
    state = clf.stage_state(FAST_VNI, EGRESS)
    assert state.t_last == t0 + 2 * n * ser
    assert state.t_depart >= state.t_last + lat // 2
    assert state.t_depart < state.t_last + lat + fast_jitter + 2 * ser
    packets = egress_packets(clf)
    assert sum(packets) == 2 * n
    assert sorted(p for p in packets if p) == [n, n], "both CPUs sent"


@pytest.mark.parametrize("fast_jitter", [0, 300_000])
def test_two_cpus_both_paths_never_depart_backwards(clf: Classifier, fast_jitter: int) -> None:
    """Packet by packet on two CPUs, fast and locked paths interleaved, the locked path's
    latency lower (so its packets are clamped behind the fast path's): every departure is
    distinct, and a packet sent after another one returned departs strictly after it, also
    across CPUs and paths. t_last: no lost update."""
    rate = 21_560_000                        # ser = 400 us: the timeline outruns the test
    ser = ser_ns(rate)
    assert ser == 400_000
    lat = 2_000_000
    n = 10_000                               # per CPU: 20,000 * 400 us = 8 s of timeline
    t0 = race(clf, rate, lat, fast_jitter)
    records: list[list[tuple[int, int, int]]] = [[], []]

    def work(i: int) -> None:
        out = records[i]
        for k in range(n):
            frame = FAST if (k + i) % 3 else LOCKED
            start = mono()
            r = send(clf, frame)
            out.append((start, mono(), r.ctx.tstamp))
            assert r.retval == TC_ACT_OK

    on_two_cpus(work)
    state = clf.stage_state(FAST_VNI, EGRESS)
    assert mono() < t0 + 2 * n * ser, "the timeline fell behind the clock: test too slow"
    assert state.t_last == t0 + 2 * n * ser
    every = records[0] + records[1]
    deps = [d for _, _, d in every]
    assert len(set(deps)) == len(deps) == 2 * n, "departures are distinct"
    assert state.t_depart == max(deps)
    # Happens-before: a packet whose send started after another's returned departs later.
    by_end = sorted(every, key=lambda r: r[1])
    ends = [r[1] for r in by_end]
    latest: list[int] = []
    for _, _, d in by_end:
        latest.append(max(latest[-1], d) if latest else d)
    checked = 0
    for start, _, dep in every:
        k = bisect.bisect_left(ends, start)   # records that returned before this one started
        if k:
            assert dep > latest[k - 1]
            checked += 1
    assert checked > 2 * n - 10
    for mine in records:                       # and per CPU, in send order
        assert all(b[2] > a[2] for a, b in zip(mine, mine[1:]))
