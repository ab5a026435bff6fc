"""Queue telemetry through BPF_PROG_TEST_RUN: the sojourn histogram (abi.h, MOA_SOJOURN_*; the
bucket function of datapath/bpf/sojourn.h) and the backlog in time and bytes read from the
timeline (Classifier.backlogs).

The bucket function's edges are checked exactly in the selftest object, which compiles the same
header into a program returning the bucket of a value it is handed. Through the classifier the
sojourn is t_last - now with the kernel's own clock: the timeline's tail is put at a known time
and the clock read before and after the send brackets the kernel's now, so the sojourn is known
to lie in [t_last - after, t_last - before]; the values are in the middle of their buckets (in
log scale) and the test asserts the count landed in the bucket of that interval's ends.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

import schemas
from datapath.classifier import Classifier
from datapath.libbpf import BpfObject
from schemas import Emulation
from tests.fixtures.bpf import selftest_o  # noqa: F401
from tests.fixtures.classifier import (  # noqa: F401
    EGRESS, FRAME, INGRESS, INNER, RATE, SER, VNI, clf, mono, put_t_last, send)
from tests.fixtures.packets import TC_ACT_OK, inner_tcp, vxlan

NB = schemas.SOJOURN_BUCKETS


def bucket(ns: int) -> int:
    """The reference: min(bit_length(ns >> 10), 21), i.e. the first bound ns is below."""
    return min((ns >> schemas.SOJOURN_SHIFT).bit_length(), NB - 1)


def test_reference_is_the_documented_bounds() -> None:
    bounds = schemas.SOJOURN_BOUNDS_NS
    for k, b in enumerate(bounds):
        assert bucket(b - 1) == k and bucket(b) == k + 1
    assert bucket(0) == 0 and bucket(2**64 - 1) == NB - 1


@pytest.fixture(scope="module")
def st_obj(selftest_o: Path):  # noqa: F811
    o = BpfObject.open(str(selftest_o))
    try:
        yield o
    finally:
        o.close()


def _kernel_bucket(obj: BpfObject, ns: int) -> int:
    data = ns.to_bytes(8, "little") + bytes(56)   # a test run needs an Ethernet header's room
    return obj.program("st_sojourn_prog").test_run(data).retval


def test_bucket_edges_exact_in_bpf(st_obj: BpfObject) -> None:
    """Every bound and its predecessor, every power of two, and random values of every bit
    length: the BPF bucket is the reference's."""
    values = {0, 1, 2**64 - 1, 2**63, 2**32 - 1, 2**32}
    for b in schemas.SOJOURN_BOUNDS_NS:
        values |= {b - 1, b, b + 1}
    values |= {1 << i for i in range(64)} | {(1 << i) - 1 for i in range(1, 65)}
    rng = random.Random(14)
    values |= {rng.getrandbits(bits) for bits in range(1, 65) for _ in range(8)}
    got = {v: _kernel_bucket(st_obj, v) for v in sorted(values)}
    assert got == {v: bucket(v) for v in got}
    assert set(got.values()) == set(range(NB))


def _hist(c: Classifier, stage: str = "egress") -> list[int]:
    return c.link_counters(VNI)[stage].sojourn


def test_unshaped_traffic_counts_in_the_first_bucket(clf: Classifier) -> None:
    """No rate: no timeline and no wait. A stage with nothing set, one with loss only (no
    state read at all) and one with latency only each count their passed frames in bucket 0."""
    for emu in (None, Emulation(loss=0.000001), Emulation(latency=5_000_000)):
        clf.delete_link(VNI)
        clf.set_link(VNI, egress=emu)
        for _ in range(3):
            assert send(clf).retval == TC_ACT_OK
        c = clf.link_counters(VNI)["egress"]
        assert c.packets == 3
        assert c.sojourn == [3] + [0] * (NB - 1)
        assert (c.backlog_ns, c.backlog_bytes) == (0, 0)
        # Bucket 0 is implicit: the datapath wrote no bucket at all (abi.h).
        slot = clf.slot(VNI)
        raw = clf.counters_map.lookup(slot * 2 + EGRESS, clf.abi.LinkCounters)
        assert all(list(cpu.sojourn) == [0] * NB for cpu in raw)


@pytest.mark.parametrize("stage", [EGRESS, INGRESS])
def test_known_sojourns_land_in_their_buckets(clf: Classifier, stage: int) -> None:
    """The timeline's tail put `lead` ahead of the clock: the frame waits lead minus the send's
    own delay. Leads at 1.5 x a bucket's lower bound for buckets 8 .. 21 (131 us .. 1.6 s), and
    a lead at the middle of the top bucket's octave above it."""
    name = schemas.STAGES[stage]
    emu = Emulation(capacity=RATE, queue=0)
    clf.set_link(VNI, egress=emu if stage == EGRESS else None,
                 ingress=emu if stage == INGRESS else None)
    assert send(clf, stage=stage).retval == TC_ACT_OK   # warm: the empty timeline, bucket 0
    expected = [1] + [0] * (NB - 1)
    assert _hist(clf, name) == expected
    leads = [3 << (8 + k) for k in range(8, NB)] + [3 << 30]   # 1.5 x 2^(9+k) ns; 3.2 s
    hits = [0] * NB
    for lead in leads:
        before = mono()
        t_last = before + lead
        put_t_last(clf, VNI, stage, t_last)
        r = send(clf, stage=stage)
        after = mono()
        assert r.retval == TC_ACT_OK
        lo, hi = bucket(t_last - after), bucket(t_last - before)
        h = _hist(clf, name)
        diff = [a - b for a, b in zip(h, expected)]
        assert sum(diff) == 1 and diff.count(1) == 1
        k = diff.index(1)
        assert lo <= k <= hi, (lead, k, lo, hi)
        # In the middle of its bucket: only a send slower than a third of the lead moves it.
        assert k == bucket(lead) or after - before >= lead // 3
        hits[k] += 1
        expected = h
    assert expected == [1 + hits[0]] + hits[1:]
    assert clf.link_counters(VNI)[name].packets == len(leads) + 1


def test_gso_frames_counted_per_segment(clf: Classifier) -> None:
    """A GSO packet of 3 segments counts 3 in its bucket, as in packets."""
    frame = vxlan(VNI, inner_tcp(payload=3 * 1000))
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0))
    assert send(clf, frame, gso_segs=3).retval == TC_ACT_OK     # empty timeline: sojourn 0
    lead = 3 << 25                                               # ~50 ms, bucket 16
    before = mono()
    put_t_last(clf, VNI, EGRESS, before + lead)
    assert send(clf, frame, gso_segs=3).retval == TC_ACT_OK
    after = mono()
    c = clf.link_counters(VNI)["egress"]
    assert c.packets == 6 and sum(c.sojourn) == 6 and c.sojourn[0] == 3
    k = next(i for i in range(1, NB) if c.sojourn[i])
    assert c.sojourn[k] == 3 and bucket(before + lead - after) <= k <= bucket(lead)


def test_backlog_is_the_timeline_tail_minus_now(clf: Classifier) -> None:
    """Back-to-back frames into an 8 Mbit/s link (1 byte = 1000 ns): the backlog in time is the
    tail the kernel wrote (t_last) minus the clock at the read, and in bytes that time at the
    rate, rounded down; the other stage (no rate) has none."""
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0), ingress=Emulation(latency=1000))
    t0 = mono() + 200_000_000                 # the queue already holds 200 ms
    put_t_last(clf, VNI, EGRESS, t0)
    n = 20
    for _ in range(n):
        assert send(clf).retval == TC_ACT_OK
    t_last = clf.stage_state(VNI, EGRESS).t_last
    assert t_last == t0 + n * SER             # the timeline model: each frame adds its time
    before = mono()
    counters = clf.link_counters(VNI)
    after = mono()
    c = counters["egress"]
    assert t_last - after <= c.backlog_ns <= t_last - before
    assert c.backlog_bytes == c.backlog_ns * RATE // 8_000_000_000
    # At 8 Mbit/s a byte is 1000 ns: the bytes queued are the L1 bytes still ahead.
    assert c.backlog_bytes == c.backlog_ns // 1000
    assert counters["ingress"].backlog_ns == 0 and counters["ingress"].backlog_bytes == 0
    # A drained timeline (its tail in the past) has no backlog.
    put_t_last(clf, VNI, EGRESS, mono() - 1_000_000)
    c = clf.link_counters(VNI)["egress"]
    assert (c.backlog_ns, c.backlog_bytes) == (0, 0)


def test_backlog_of_many_links_in_one_read(clf: Classifier) -> None:
    """counters_of reads every link's backlog from one batch read of moa_state and moa_links:
    each link's own tail, at its own rate."""
    leads = {VNI + i: (i + 1) * 10_000_000 for i in range(10)}
    rates = {v: RATE * (i + 1) for i, v in enumerate(leads)}
    for v in leads:
        clf.set_link(v, egress=Emulation(capacity=rates[v], queue=0))
    before = mono()
    for v, lead in leads.items():
        put_t_last(clf, v, EGRESS, before + lead)
    out = clf.counters_of(list(leads))
    after = mono()
    for v, lead in leads.items():
        c = out[v]["egress"]
        assert before + lead - after <= c.backlog_ns <= lead
        assert c.backlog_bytes == c.backlog_ns * rates[v] // 8_000_000_000
