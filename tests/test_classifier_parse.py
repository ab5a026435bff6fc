"""Classifier parsing through BPF_PROG_TEST_RUN: the fixture table, truncation, a fuzz.

Everything that is not VXLAN to a configured VNI must pass untouched (TC_ACT_OK, same bytes,
no departure time) and be counted; the configured VNI gets a departure time.
"""
from __future__ import annotations

import errno
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datapath.classifier import Classifier, ClassifierConfig
from schemas import Emulation
from datapath.libbpf import BpfError
from tests.fixtures.packets import (CASES, CONFIGURED_VNI, TC_ACT_OK, UNKNOWN_VNI, VXLAN_PORT,
                                    Case, inner_tcp, inner_udp, outer_len, vxlan)

LATENCY_NS = 1_000_000


@pytest.fixture(scope="module")
def clf():
    with Classifier.load(ClassifierConfig(max_links=256)) as c:
        c.set_link(CONFIGURED_VNI, egress=Emulation(latency=LATENCY_NS))
        yield c


def run(clf: Classifier, frame: bytes, program: str = "egress", mark: int = 0):
    ctx = clf.abi.SkBuff()
    ctx.mark = mark
    prog = clf.egress_program if program == "egress" else clf.ingress_program
    return prog.test_run(frame, ctx=ctx)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_fixture_table_egress(clf: Classifier, case: Case) -> None:
    before_g = clf.global_counters()
    before_l = clf.link_counters(CONFIGURED_VNI)["egress"]
    r = run(clf, case.frame)
    assert r.retval == case.verdict
    assert r.data[:len(case.frame)] == case.frame, "the classifier must not rewrite packets"
    assert (r.ctx.tstamp != 0) == case.delayed
    d = delta(before_g, clf.global_counters())
    expect = {"non_vxlan": 0, "unknown_vni": 0, "ringbuf_fail": 0, "handover": 0,
              "events_suppressed": 0, "port_held": 0}
    if case.counter:
        expect[case.counter] = 1
    assert d == expect
    after_l = clf.link_counters(CONFIGURED_VNI)["egress"]
    assert after_l.packets - before_l.packets == (1 if case.delayed else 0)
    if case.delayed:
        assert after_l.bytes - before_l.bytes == len(case.frame) - outer_len(case.frame)


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_fixture_table_ingress_idle_stage(clf: Classifier, case: Case) -> None:
    """The configured link has no ingress parameters: everything passes, nothing is marked."""
    r = run(clf, case.frame, "ingress", mark=0x1234)
    assert r.retval == TC_ACT_OK
    assert r.ctx.tstamp == 0
    assert r.ctx.mark == 0x1234


def test_departure_is_latency_after_now(clf: Classifier) -> None:
    import time
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    r = run(clf, vxlan())
    t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert t0 + LATENCY_NS <= r.ctx.tstamp <= t1 + LATENCY_NS


TRUNCATION_FRAMES = {
    "ipv4": vxlan(),
    "vlan": vxlan(tags=1),
    "qinq": vxlan(qinq=True),
    "ipv4-options": vxlan(ip_options=True),
    "ipv6": vxlan(ipv6=True),
    "ipv6-vlan": vxlan(ipv6=True, tags=2),
}


@pytest.mark.parametrize("name", sorted(TRUNCATION_FRAMES))
def test_truncation_at_every_header_boundary(clf: Classifier, name: str) -> None:
    """Cut the frame at every byte inside the outer headers (every boundary included): each
    prefix is not VXLAN.

    BPF_PROG_TEST_RUN itself refuses (EINVAL) frames shorter than an Ethernet header, and
    untagged IPv4/IPv6 frames shorter than their fixed IP header (it reads addresses for the
    socket it fakes). Those cuts never reach the program; the tagged frames, whose ethertype
    is 802.1Q/802.1ad, carry the same truncations inside the IP header to it."""
    frame = TRUNCATION_FRAMES[name]
    olen = outer_len(frame)
    refused = []
    for cut in range(14, olen):
        before = clf.global_counters()["non_vxlan"]
        try:
            r = run(clf, frame[:cut])
        except BpfError as e:
            assert e.errno == errno.EINVAL
            refused.append(cut)
            continue
        assert r.retval == TC_ACT_OK, cut
        assert r.ctx.tstamp == 0, cut
        assert clf.global_counters()["non_vxlan"] == before + 1, cut
    if name in ("ipv4", "ipv4-options"):
        assert refused == list(range(14, 34))
    elif name == "ipv6":
        assert refused == list(range(14, 54))
    else:
        assert refused == []
    # The whole outer stack with an empty inner frame is VXLAN: charged as a 60-byte frame.
    before = clf.link_counters(CONFIGURED_VNI)["egress"]
    r = run(clf, frame[:olen])
    assert r.retval == TC_ACT_OK and r.ctx.tstamp != 0
    assert clf.link_counters(CONFIGURED_VNI)["egress"].bytes - before.bytes == 60


def test_frames_shorter_than_ethernet_are_refused_by_test_run(clf: Classifier) -> None:
    for cut in (0, 1, 13):
        with pytest.raises(BpfError):
            run(clf, vxlan()[:cut])


def test_vxlan_port_is_a_load_time_setting() -> None:
    with Classifier.load(ClassifierConfig(max_links=16, vxlan_port=8472)) as c:
        c.set_link(CONFIGURED_VNI, egress=Emulation(latency=LATENCY_NS))
        assert run(c, vxlan(dport=8472)).ctx.tstamp != 0
        assert run(c, vxlan(dport=VXLAN_PORT)).ctx.tstamp == 0
        assert c.global_counters()["non_vxlan"] == 1


# --------------------------------------------------------------------------------------------
# Fuzz: random frames and mutated/truncated VXLAN frames, in batches of BATCH per example.

def reference_vni(frame: bytes, port: int = VXLAN_PORT) -> int | None:
    """An independent (Python) statement of what the classifier accepts: the VNI or None."""
    off, n = 12, len(frame)
    if n < 14:
        return None
    proto = struct.unpack_from("!H", frame, off)[0]
    off = 14
    for _ in range(2):
        if proto not in (0x8100, 0x88A8):
            break
        if n < off + 4:
            return None
        proto = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if proto == 0x0800:
        if n < off + 20:
            return None
        ihl = frame[off] & 0x0F
        if ihl < 5 or frame[off + 9] != 17:
            return None
        if struct.unpack_from("!H", frame, off + 6)[0] & 0x3FFF:
            return None
        off += ihl * 4
    elif proto == 0x86DD:
        if n < off + 40 or frame[off + 6] != 17:
            return None
        off += 40
    else:
        return None
    if n < off + 8 or struct.unpack_from("!H", frame, off + 2)[0] != port:
        return None
    off += 8
    if n < off + 8 or not frame[off] & 0x08:
        return None
    return int.from_bytes(frame[off + 4:off + 7], "big")


SEEDS = [vxlan(), vxlan(tags=1), vxlan(qinq=True), vxlan(ipv6=True), vxlan(ip_options=True),
         vxlan(UNKNOWN_VNI), vxlan(inner=inner_udp()),
         vxlan(inner=inner_tcp(ipv6=True, payload=40))]


SEED_OUTER = [(f, outer_len(f)) for f in SEEDS]


def mutate(rng: random.Random, seed: tuple[bytes, int]) -> bytes:
    frame, olen = seed
    b = bytearray(frame)
    for _ in range(rng.randrange(0, 4)):           # flip bytes, mostly in the outer headers
        i = rng.randrange(olen + 8)
        b[i] = rng.randrange(256)
    if rng.random() < 0.5:                         # truncate anywhere (>= 14: test_run minimum)
        b = b[:rng.randrange(14, len(b) + 1)]
    return bytes(b)


BATCH = 1000
EXAMPLES = 100          # 100 x 1000 = 100,000 frames


frame_batch = st.tuples(
    st.integers(0, 2**64 - 1),   # seeds the batch's generator (cheap to draw, shrinkable)
    st.lists(st.binary(min_size=14, max_size=200), min_size=0, max_size=20),
)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(frame_batch)
def test_fuzz_everything_but_the_configured_vni_passes_untouched(clf_fuzz, batch) -> None:
    seed, raw = batch
    rng = random.Random(seed)
    frames = list(raw)
    while len(frames) < BATCH:
        r = rng.random()
        if r < 0.2:
            frames.append(rng.randbytes(rng.randrange(14, 300)))
        else:
            frames.append(mutate(rng, rng.choice(SEED_OUTER)))
    ctx = clf_fuzz.abi.SkBuff()
    hits = 0
    for frame in frames:
        try:
            res = clf_fuzz.egress_program.test_run(frame, ctx=ctx)
        except BpfError as e:
            assert e.errno == errno.EINVAL and refused_by_test_run(frame), frame.hex()
            FUZZ_REFUSED[0] += 1
            continue
        vni = reference_vni(frame)
        assert res.retval == TC_ACT_OK, frame.hex()
        assert res.data[:len(frame)] == frame
        assert (res.ctx.tstamp != 0) == (vni == CONFIGURED_VNI), (frame.hex(), vni)
        hits += vni == CONFIGURED_VNI
    FUZZ_TOTAL[0] += len(frames)
    FUZZ_TOTAL[1] += hits


FUZZ_TOTAL = [0, 0]
FUZZ_REFUSED = [0]


def refused_by_test_run(frame: bytes) -> bool:
    """BPF_PROG_TEST_RUN's own EINVAL: an untagged IPv4/IPv6 frame shorter than its IP header."""
    proto = struct.unpack_from("!H", frame, 12)[0]
    return (proto == 0x0800 and len(frame) < 34) or (proto == 0x86DD and len(frame) < 54)


@pytest.fixture(scope="module")
def clf_fuzz():
    with Classifier.load(ClassifierConfig(max_links=16)) as c:
        c.set_link(CONFIGURED_VNI, egress=Emulation(latency=LATENCY_NS))
        yield c


def test_fuzz_covered_enough(clf_fuzz) -> None:
    """Runs after the fuzz (file order): it saw >= 100,000 frames, some of them hits, and the
    global counters account for every frame."""
    total, hits = FUZZ_TOTAL
    assert total >= 100_000
    assert hits > 1000
    g = clf_fuzz.global_counters()
    assert g["non_vxlan"] + g["unknown_vni"] + hits + FUZZ_REFUSED[0] == total
    assert clf_fuzz.link_counters(CONFIGURED_VNI)["egress"].packets == hits
