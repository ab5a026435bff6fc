"""Slots (netem's `slot`; docs/semantics.md, "Slots"), through BPF_PROG_TEST_RUN on a timeline
parked ahead of the clock (tests/test_classifier_cells.py's method): at RATE one byte takes
1000 ns, so a packet's readiness is exactly the parked t_last + its charge + the latency, and its
departure (skb->tstamp) can be checked to the ns against tests/slot_model.py.

Random gaps cannot be seeded in the kernel: a fixed gap (min = max) gives the model's departures
exactly; a random one is checked by replaying the model with the gaps read off the departures,
each of which must lie in the configured range (and, over many, have its distribution).
"""
from __future__ import annotations

import math
import random

import pytest

from datapath import limits
from datapath.classifier import Classifier
from datapath.distributions import table_of
from datapath.emulation import stage_params
from schemas import Emulation, InvalidMessage, Slot, decode
from tests.fixtures.classifier import (  # noqa: F401 (clf is a fixture)
    EGRESS, RATE, VNI, clf, mono, send,
)
from tests.fixtures.packets import TC_ACT_OK, TC_ACT_SHOT, inner_tcp, vxlan
from tests.slot_model import UNLIMITED, SlotState, release

MS = 1_000_000
# Kolmogorov-Smirnov: P(sqrt(n) D > 2.15) is about 2 exp(-2 x 2.15^2) = 1e-4 for a sample of the
# distribution itself (less for a discrete one), so the checks below fail by chance rarely.
KS_BOUND = 2.15
HDR = 54                      # the inner Ethernet/IPv4/TCP headers of inner_tcp


def park(c: Classifier, t_last: int, **slot: int) -> None:
    """t_last (and any of the slot words) written into the egress stage's state."""
    st = c.stage_state(VNI, EGRESS)
    st.t_last = t_last
    for name, value in slot.items():
        setattr(st, name, value)
    c.set_stage_state(VNI, EGRESS, st)


def packet(rng: random.Random) -> tuple[bytes, int, int, dict[str, int]]:
    """A random frame: (frame, frames, bytes, send kwargs); one in eight a GSO packet."""
    if rng.random() < 0.125:
        return vxlan(VNI, inner_tcp(payload=2896)), 2, 2896 + 2 * HDR, {"gso_segs": 2,
                                                                         "gso_size": 1448}
    payload = rng.choice([0, 10, 100, 500, 1000, 1446])
    return vxlan(VNI, inner_tcp(payload=payload)), 1, max(60, HDR + payload), {}


def run(c: Classifier, seq: list, latency: int, t0: int) -> tuple[list[int], list[int]]:
    """Send `seq` ((frame, frames, bytes, kw, idle) each: idle ns added to t_last before it) on
    the parked timeline: (readiness, departure) of each, every one passed."""
    tl = t0
    ready, deps = [], []
    for frame, frames, size, kw, idle in seq:
        if idle:
            tl += idle
            park(c, tl)
        tl += (size + frames * 24) * 1000          # its charge at RATE, 24 B of L1 a frame
        r = send(c, frame, **kw)
        assert r.retval == TC_ACT_OK
        ready.append(tl + latency)
        deps.append(r.ctx.tstamp)
    assert mono() < t0, "the run outlasted the parked timeline's lead on the clock"
    return ready, deps


def slotted(c: Classifier, slot: Slot, latency: int = 0) -> None:
    c.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, latency=latency, slot=slot))


def test_each_slot_releases_at_most_its_packets_at_its_opening(clf: Classifier) -> None:
    """A backlog through slots of 4 packets every 2 ms: the k-th packet of slot j leaves at
    S + j * 2 ms + k ns (k ns: departures stay strictly increasing, edt.h)."""
    slotted(clf, Slot(min=2 * MS, packets=4))
    t0 = mono() + 500 * MS
    opening = t0 + 100 * MS
    park(clf, t0, slot_next=opening, slot_pkts=0, slot_used=0)
    deps = [send(clf).ctx.tstamp for _ in range(20)]      # all ready long before the opening
    assert deps == [opening + (i // 4) * 2 * MS + i % 4 for i in range(20)]
    st = clf.stage_state(VNI, EGRESS)
    assert (st.slot_next, st.slot_pkts) == (opening + 4 * 2 * MS, 4)


def test_a_slot_releases_at_most_its_bytes(clf: Classifier) -> None:
    """bytes 3000: 1054-byte frames go two a slot (a third would pass 3000); a frame larger
    than a whole slot (a 3004-byte GSO packet) takes one alone."""
    slotted(clf, Slot(min=MS, bytes=3000))
    t0 = mono() + 500 * MS
    opening = t0 + 100 * MS
    park(clf, t0, slot_next=opening)
    frame = vxlan(VNI, inner_tcp(payload=1000))
    deps = [send(clf, frame).ctx.tstamp for _ in range(5)]
    assert deps == [opening, opening + 1, opening + MS, opening + MS + 1, opening + 2 * MS]
    big = vxlan(VNI, inner_tcp(payload=2896))
    assert send(clf, big, gso_segs=2, gso_size=1448).ctx.tstamp == opening + 3 * MS
    assert send(clf, frame).ctx.tstamp == opening + 4 * MS


def test_a_packet_after_the_opening_waits_a_gap(clf: Classifier) -> None:
    """Ready after its slot opened (an idle link): the next slot opens one gap after it is."""
    slotted(clf, Slot(min=3 * MS, packets=10), latency=5 * MS)
    t0 = mono() + 500 * MS
    park(clf, t0, slot_next=t0 - 1)                       # the slot opened before it is ready
    ready = t0 + 1078 * 1000 + 5 * MS
    assert send(clf).ctx.tstamp == ready + 3 * MS


@pytest.mark.parametrize("seed", range(6))
def test_departures_equal_the_model(clf: Classifier, seed: int) -> None:
    """A random sequence (sizes, GSO packets, idle stretches shorter and longer than a gap)
    through a fixed gap: every departure equals the model's, to the ns."""
    rng = random.Random(seed)
    gap = rng.choice([300_000, MS, 4 * MS])
    n_max = rng.choice([0, 1, 3, 8])
    b_max = rng.choice([0, 2000, 6000])
    latency = rng.choice([0, 2 * MS])
    slotted(clf, Slot(min=gap, packets=n_max, bytes=b_max), latency=latency)
    seq = []
    for _ in range(300):
        idle = rng.choice([0, 0, 0, rng.randrange(1, 2 * gap), rng.randrange(gap, 5 * gap)])
        seq.append((*packet(rng), idle))
    t0 = mono() + 2000 * MS                  # the timeline stays ahead of the clock throughout
    park(clf, t0)
    ready, deps = run(clf, seq, latency, t0)
    want = release(SlotState(), [(r, f, b) for r, (_, f, b, _, _) in zip(ready, seq)],
                   n_max or UNLIMITED, b_max or UNLIMITED, lambda kind, base: gap)
    assert deps == want
    assert sum(d > r for d, r in zip(deps, ready)) > len(deps) // 2  # most waited for a slot


lo, hi = 1 * MS, 3 * MS


@pytest.mark.parametrize("n_max, b_max", [(1, UNLIMITED), (4, UNLIMITED), (UNLIMITED, 4000)])
def test_random_gaps_lie_between_min_and_max(clf: Classifier, n_max: int, b_max: int) -> None:
    """slot 1ms 3ms over a backlog (every packet ready before the first opening): each gap
    between two openings, read off the departures by replaying the model, lies in [1 ms, 3 ms],
    spread over the range, and the replay gives back every departure."""
    rng = random.Random(n_max)
    slotted(clf, Slot(min=lo, max=hi, packets=n_max % UNLIMITED, bytes=b_max % UNLIMITED))
    seq = [(*packet(rng), 0) for _ in range(300)]
    t0 = mono() + 2000 * MS                  # the timeline stays ahead of the clock throughout
    opening = t0 + 1000 * MS                 # after the last packet is ready (~0.4 s of frames)
    park(clf, t0, slot_next=opening)
    ready, deps = run(clf, seq, 0, t0)
    assert ready[-1] < opening
    gaps: list[int] = []

    def gap(kind: int, base: int) -> int:
        assert kind == 0                      # a backlog never waits for a packet
        g = deps[len(out_so_far)] - base       # the packet that opens the slot left at it
        gaps.append(g)
        return g

    state = SlotState(next=opening)
    out_so_far: list[int] = []
    for r, (_, f, b, _, _) in zip(ready, seq):
        out_so_far += release(state, [(r, f, b)], n_max, b_max, gap)
    assert out_so_far == deps
    assert len(gaps) > 40
    assert all(lo <= g <= hi for g in gaps), (min(gaps), max(gaps))
    quarter = (hi - lo) // 4
    assert min(gaps) < lo + quarter and max(gaps) > hi - quarter


def draw_gaps(c: Classifier, n: int, reanchor: bool) -> list[int]:
    """n gaps, each from a fresh parked state: a full slot of one packet (the gap after a
    slot) or a slot opened before the packet was ready (the gap after its readiness)."""
    out = []
    for _ in range(n):
        t0 = mono() + 200 * MS               # each draw ahead of the clock, however slow the run
        if reanchor:
            park(c, t0, slot_next=t0 - 1, slot_pkts=0, t_depart=0)
            base = t0 + 1078 * 1000
        else:
            park(c, t0, slot_next=t0 + 50 * MS, slot_pkts=1, t_depart=0)
            base = t0 + 50 * MS
        out.append(send(c).ctx.tstamp - base)
    return out


def ks_distance(sample: list[int], cdf) -> float:
    s = sorted(sample)
    n = len(s)
    return max(max(abs((i + 1) / n - cdf(x)), abs(i / n - cdf(x))) for i, x in enumerate(s))


@pytest.mark.parametrize("reanchor", [False, True])
def test_uniform_gaps_are_uniform(clf: Classifier, reanchor: bool) -> None:
    """Both gaps a packet can meet (after a full slot, after its own readiness) are uniform in
    [min, max]: Kolmogorov-Smirnov distance under 2.15 / sqrt(n) (the 0.01 % level)."""
    slotted(clf, Slot(min=lo, max=hi, packets=1))
    gaps = draw_gaps(clf, 4000, reanchor)
    assert all(lo <= g <= hi for g in gaps)
    d = ks_distance(gaps, lambda x: min(1.0, max(0.0, (x - lo) / (hi - lo))))
    assert d < KS_BOUND / math.sqrt(len(gaps)), d


@pytest.mark.parametrize("dist", ["normal", "pareto", "paretonormal"])
def test_distribution_gaps_follow_their_table(clf: Classifier, dist: str) -> None:
    """slot distribution DIST 10ms 2ms: the gaps are 10 ms + 2 ms x a table value, drawn
    uniformly from the table: KS distance against that empirical distribution under the 0.01 %
    level, and every gap one of its values."""
    delay, jitter = 10 * MS, 2 * MS
    slotted(clf, Slot(distribution=dist, delay=delay, jitter=jitter, packets=1))
    table = table_of(dist, None)
    values = sorted(delay + jitter * v // 8192 if v >= 0 else max(0, delay - jitter * -v // 8192)
                    for v in table)
    allowed = set(values)
    for reanchor in (False, True):
        gaps = draw_gaps(clf, 3000, reanchor)
        assert set(gaps) <= allowed
        n = len(values)

        def cdf(x: int) -> float:
            lo_i, hi_i = 0, n
            while lo_i < hi_i:
                mid = (lo_i + hi_i) // 2
                if values[mid] <= x:
                    lo_i = mid + 1
                else:
                    hi_i = mid
            return lo_i / n
        assert ks_distance(gaps, cdf) < KS_BOUND / math.sqrt(len(gaps)) + 1 / n


def test_the_horizon_applies_after_the_slot(clf: Classifier) -> None:
    """A slot opening beyond the horizon (10 s here) drops the packet `horizon` and leaves the
    slot's words and the timeline as they were."""
    slotted(clf, Slot(min=2 * MS, packets=1))
    t0 = mono() + 200 * MS
    park(clf, t0, slot_next=mono() + 10_000 * MS, slot_pkts=1)
    before = clf.stage_state(VNI, EGRESS)
    assert send(clf).retval == TC_ACT_SHOT
    after = clf.stage_state(VNI, EGRESS)
    assert (after.slot_next, after.slot_pkts, after.slot_used, after.t_last, after.t_depart) == (
        before.slot_next, before.slot_pkts, before.slot_used, before.t_last, before.t_depart)
    assert clf.link_counters(VNI)["egress"].drops["horizon"] == 1


def test_without_slots_the_flag_is_off_and_the_slot_words_untouched(clf: Classifier) -> None:
    """No slot: no MOA_F_SLOT (the fast path, as before: edt.h) and nothing of the slot is
    read or written; with one, the flag and its words."""
    abi = clf.abi
    off = stage_params(Emulation(capacity=RATE, latency=MS), abi)
    assert not off.flags & abi.StageFlags.SLOT
    assert (off.slot_gap_ns, off.slot_span_ns, off.slot_packets, off.slot_bytes) == (0, 0, 0, 0)
    on = stage_params(Emulation(slot=Slot(min=MS, max=3 * MS, packets=5)), abi)
    assert on.flags & abi.StageFlags.SLOT
    assert (on.slot_dist, on.slot_gap_ns, on.slot_span_ns, on.slot_packets, on.slot_bytes) == (
        0, MS, 2 * MS, 5, UNLIMITED)
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0))
    t0 = mono() + 200 * MS
    park(clf, t0, slot_next=12345, slot_pkts=6, slot_used=7)
    assert send(clf).ctx.tstamp == t0 + 1078 * 1000
    st = clf.stage_state(VNI, EGRESS)
    assert (st.slot_next, st.slot_pkts, st.slot_used) == (12345, 6, 7)


def test_a_slot_alone_needs_the_stage(clf: Classifier) -> None:
    """A link with nothing but slots (no capacity, no delay) still releases in slots."""
    clf.set_link(VNI, egress=Emulation(slot=Slot(min=2 * MS, packets=2)))
    opening = mono() + 300 * MS
    park(clf, 0, slot_next=opening)
    deps = [send(clf).ctx.tstamp for _ in range(5)]
    assert deps == [opening, opening + 1, opening + 2 * MS, opening + 2 * MS + 1, opening + 4 * MS]


# -- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("slot, field, words", [
    ({"min": "10ms", "max": "2ms"}, "slot.max", "below min"),
    ({"max": "2ms"}, "slot.min", "need min"),
    ({"min": 0}, "slot.max", "gap above 0"),
    ({"min": "5s"}, "slot.min", "above 4s"),
    ({"min": "1ms", "delay": "1ms"}, "slot.delay", "for a distribution"),
    ({"min": "1ms", "jitter": "1ms"}, "slot.jitter", "uniform slots take"),
    ({"distribution": "normal", "min": "1ms", "delay": "1ms"}, "slot.min", "for uniform"),
    ({"distribution": "normal", "jitter": "1ms"}, "slot.delay", "need delay"),
    ({"distribution": "pareto", "delay": 0, "jitter": 0}, "slot.jitter", "above 0"),
    ({"distribution": "pareto", "delay": "1ms"}, "slot.jitter", "above 0"),
    ({"distribution": "normal", "delay": "1ms", "jitter": "4001ms"}, "slot.jitter", "above 4s"),
    ({"distribution": "custom", "delay": "1ms"}, "slot.distribution", "paretonormal"),
    ({"min": "1ms", "packets": -1}, "slot.packets", ">= 0"),
    ({"min": "1ms", "bytes": 1 << 31}, "slot.bytes", "<="),
    ({"min": "1ms", "every": 3}, "slot.every", "unknown field"),
])
def test_refused_slots_name_their_field(slot: dict, field: str, words: str) -> None:
    import json
    with pytest.raises(InvalidMessage) as e:
        decode(Emulation, json.dumps({"slot": slot}))
    assert e.value.field == field and words in str(e.value), str(e.value)


def test_the_horizon_counts_the_longest_gap() -> None:
    """A box's horizon check adds the slot's longest gap to the delay (datapath/limits.py)."""
    e = Emulation(latency=9 * 10**9, slot=Slot(min=MS, max=2 * 10**9))
    assert limits.slot_ns(e) == 2 * 10**9
    refusal = limits.horizon_refusal(e, "links[0].emulation", 10 * 10**9, 1538)
    assert refusal is not None and refusal.field == "links[0].emulation.slot"
    assert limits.horizon_refusal(e, "e", 12 * 10**9, 1538) is None
    pareto = Emulation(slot=Slot(distribution="pareto", delay=MS, jitter=MS))
    assert MS + 3.99 * MS < limits.slot_ns(pareto) <= MS + 4 * MS  # pareto: up to 4 jitters


def test_a_loss_only_box_refuses_slots() -> None:
    """Slots are departure times: without sch_fq nothing holds them (datapath/limits.py)."""
    import json

    from schemas import Materialize
    m = decode(Materialize, json.dumps({"id": "m", "links": [
        {"id": "l", "emulation": {"loss": 0.1},
         "endpoints": [{"vni": 100, "remote": "10.0.0.1"},
                       {"vni": 101, "remote": "10.0.0.2",
                        "emulation": {"slot": {"min": "1ms"}}}]}]}))
    limits.refuse_shaping(m, loss_only=False)
    with pytest.raises(InvalidMessage) as e:
        limits.refuse_shaping(m, loss_only=True)
    assert e.value.field == "links[0].endpoints[1].emulation.slot" and e.value.code == "unsupported"


def test_slots_switched_on_and_off_at_run_time(clf: Classifier) -> None:
    """Off: the fast path, departures as without slots, the slot's words kept; on again: a
    slot that opened in the past re-anchors one gap after the packet (rule 2)."""
    slotted(clf, Slot(min=2 * MS, packets=1))
    t0 = mono() + 300 * MS
    park(clf, t0, slot_next=t0 + 50 * MS)
    assert send(clf).ctx.tstamp == t0 + 50 * MS
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0))
    t1 = t0 + 100 * MS
    park(clf, t1)
    assert send(clf).ctx.tstamp == t1 + 1078 * 1000
    assert clf.stage_state(VNI, EGRESS).slot_next == t0 + 50 * MS
    slotted(clf, Slot(min=2 * MS, packets=1))
    assert send(clf).ctx.tstamp == t1 + 2 * 1078 * 1000 + 2 * MS


def test_a_lost_packet_takes_no_room_in_a_slot(clf: Classifier) -> None:
    """Gilbert-Elliott (the locked path too) loses every packet in its bad state: the drops
    happen before the slot, whose words stay as they were."""
    from schemas import GilbertElliott
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, slot=Slot(min=MS, packets=2),
                                       burst=GilbertElliott(p=1.0, r=0.0, loss_good=1.0)))
    t0 = mono() + 300 * MS
    park(clf, t0, slot_next=t0 + 10 * MS, slot_pkts=1, slot_used=100)
    assert all(send(clf).retval == TC_ACT_SHOT for _ in range(5))
    st = clf.stage_state(VNI, EGRESS)
    assert (st.slot_next, st.slot_pkts, st.slot_used, st.t_last) == (t0 + 10 * MS, 1, 100, t0)
    assert clf.link_counters(VNI)["egress"].drops["loss"] == 5
