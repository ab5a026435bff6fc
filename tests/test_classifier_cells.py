"""What a frame is charged, through BPF_PROG_TEST_RUN: the per-frame overhead and cells (netem's
packetoverhead, cellsize, celloverhead; docs/semantics.md, "What a link's capacity is charged
for"). At RATE one byte takes 1000 ns, so a departure on a timeline that stays ahead of the
clock is t0 + the charged bytes x 1000, exactly (tests/test_classifier_edt.py's method).

The expected charges are written out here from the definition, not taken from frame_wire in
datapath/emulation.py (whose agreement with the classifier is checked below too).
"""
from __future__ import annotations

import pytest

from datapath import limits
from datapath.classifier import Classifier
from datapath.emulation import frame_wire, queue_bytes
from schemas import Emulation
from tests.fixtures.classifier import (  # noqa: F401 (clf is a fixture)
    EGRESS, RATE, VNI, clf, mono, put_t_last, send,
)
from tests.fixtures.packets import inner_tcp, inner_udp, outer_len, vxlan

NS_PER_BYTE = 8 * 10**9 // RATE  # 1000


def cells(length: int, overhead: int, size: int, cell_overhead: int) -> int:
    """ceil((max(len, 60) + overhead) / size) * (size + cell_overhead)."""
    n = max(length, 60) + overhead
    return -(-n // size) * (size + cell_overhead)


def departure_after(c: Classifier, frame: bytes, **kw) -> int:
    """The charge of `frame`, in bytes, from its departure on a timeline parked ahead of now."""
    t0 = mono() + 1_000_000_000
    put_t_last(c, VNI, EGRESS, t0)
    r = send(c, frame, **kw)
    assert r.retval == 0
    delta = r.ctx.tstamp - t0
    assert delta % NS_PER_BYTE == 0
    return delta // NS_PER_BYTE


SIZES = [0, 1, 5, 6, 42, 43, 100, 500, 1000, 1446]  # TCP payloads: inner frames of 54 + n bytes


@pytest.mark.parametrize("overhead, size, cell_overhead", [
    (24, 48, 5),      # ATM cells under the default L1 overhead
    (0, 48, 5),       # netem's own `rate R 0 48 5`
    (-14, 53, 0),     # a stripped Ethernet header, 53-byte cells of no overhead
    (10, 64, 1),      # PTM-like 64/65
    (0, 1, 0),        # cells of one byte: the frame + overhead itself
    (-60, 48, 5),     # the smallest overhead: a minimum frame is charged no cell
    (8, 4096, -4095), # the largest cell, one byte each
])
def test_each_frame_departs_at_its_cells(clf: Classifier, overhead: int, size: int,
                                         cell_overhead: int) -> None:
    e = Emulation(capacity=RATE, queue=0, overhead=overhead, cell_size=size,
                  cell_overhead=cell_overhead)
    clf.set_link(VNI, egress=e)
    seen = set()
    for payload in SIZES:
        frame = vxlan(VNI, inner_tcp(payload=payload))
        length = len(frame) - outer_len(frame)
        assert length == 54 + payload
        charged = departure_after(clf, frame)
        assert charged == cells(length, overhead, size, cell_overhead), (payload, charged)
        assert charged == frame_wire(e, length)  # the Python model of the limits agrees
        seen.add(charged)
    assert len(seen) > 1 or size == 4096  # the sizes span several cell counts
    # the counters' bytes stay the frames' bytes, padded, without overhead or cells
    c = clf.link_counters(VNI)["egress"]
    assert c.bytes == sum(max(60, 54 + p) for p in SIZES) and c.packets == len(SIZES)


def test_cells_make_steps_where_a_frame_needs_one_more_cell(clf: Classifier) -> None:
    """47 and 48 bytes (+ 0 overhead) are one 53-byte cell, 49 two: the step is exact."""
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, overhead=0, cell_size=48,
                                       cell_overhead=5))
    # inner UDP frames of 42 + n bytes, overhead 0: 96 = 2 cells, 97 = 3 cells
    two = vxlan(VNI, inner_udp(payload=96 - 42))
    three = vxlan(VNI, inner_udp(payload=97 - 42))
    assert departure_after(clf, two) == 2 * 53
    assert departure_after(clf, three) == 3 * 53


@pytest.mark.parametrize("overhead", [24, 0, -14, -60, 100, 4096])
def test_the_per_frame_overhead_without_cells(clf: Classifier, overhead: int) -> None:
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, overhead=overhead))
    for payload in (0, 1000):
        frame = vxlan(VNI, inner_tcp(payload=payload))
        length = len(frame) - outer_len(frame)
        assert departure_after(clf, frame) == max(60, length) + overhead


@pytest.mark.parametrize("payload, gso_size, segs", [
    (2896, 1448, 2),   # two full segments
    (3000, 1448, 3),   # the last one short (104 bytes of payload)
    (1000, 400, 3),    # the last 200
    (82, 40, 3),       # the last carries 2 bytes: a 56-byte frame, padded to 60
])
def test_a_gso_packet_is_charged_frame_by_frame(clf: Classifier, payload: int, gso_size: int,
                                                segs: int) -> None:
    """Every segment but the last carries gso_size bytes after the repeated inner headers (54
    for Ethernet/IPv4/TCP), the last one the rest; each frame is its own cells."""
    hdr = 54
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, overhead=20, cell_size=48,
                                       cell_overhead=5))
    frame = vxlan(VNI, inner_tcp(payload=payload))
    ctx_sizes = [gso_size] * (segs - 1) + [payload - gso_size * (segs - 1)]
    assert ctx_sizes[-1] > 0
    want = sum(cells(hdr + n, 20, 48, 5) for n in ctx_sizes)  # cells() pads to 60
    assert departure_after(clf, frame, gso_segs=segs, gso_size=gso_size) == want
    c = clf.link_counters(VNI)["egress"]
    assert (c.packets, c.bytes) == (segs, payload + segs * hdr)


def test_a_gso_packet_whose_gso_size_does_not_fit_is_taken_as_equal_frames(
        clf: Classifier) -> None:
    """gso_size larger than the packet can hold (or 0): the frames are taken as equal, the
    remainder on the last (charge.h)."""
    hdr = 54
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, overhead=0, cell_size=48,
                                       cell_overhead=5))
    frame = vxlan(VNI, inner_tcp(payload=1000))
    total = 1000 + 3 * hdr                    # 1162 bytes in 3 frames
    each = total // 3                         # 387, 387, 388
    want = 2 * cells(each, 0, 48, 5) + cells(total - 2 * each, 0, 48, 5)
    assert departure_after(clf, frame, gso_segs=3, gso_size=2000) == want


def test_without_cells_a_gso_packet_is_charged_as_before(clf: Classifier) -> None:
    """No cells: bytes + segs x overhead (tests/test_classifier_edt.py), gso_size unused."""
    clf.set_link(VNI, egress=Emulation(capacity=RATE, queue=0, overhead=-14))
    frame = vxlan(VNI, inner_tcp(payload=2896))
    length = len(frame) - outer_len(frame)
    assert departure_after(clf, frame, gso_segs=3, gso_size=1448) == length + 2 * 54 - 3 * 14


def test_limits_count_the_cells() -> None:
    """The horizon and sch_fq's figures charge a full frame as the link does (datapath/limits.py),
    and the default queue holds two such frames."""
    frame = limits.frame_bytes(1500)                         # 1538 with the default charge
    atm = Emulation(capacity=1_000_000, overhead=0, cell_size=48, cell_overhead=5)
    assert limits.charged_frame(Emulation(), frame) == frame
    assert limits.charged_frame(atm, frame) == cells(1514, 0, 48, 5) == 32 * 53
    assert limits.frame_ns(atm.capacity, limits.charged_frame(atm, frame)) == 32 * 53 * 8000
    assert queue_bytes(Emulation(capacity=10_000, overhead=0, cell_size=48, cell_overhead=5)) \
        == 2 * 32 * 53
    # A link of 1 kbit/s: one ATM-celled full frame takes 13.568 s, beyond a 13 s horizon,
    # though the same frame without cells (12.3 s) is within it.
    slow = Emulation(capacity=1000, queue=2 * 1696, overhead=0, cell_size=48, cell_overhead=5)
    refusal = limits.horizon_refusal(slow, "links[0].emulation", 13 * 10**9, frame)
    assert refusal is not None and refusal.field == "links[0].emulation.capacity"
    assert "(1696 B)" in refusal.message
    assert limits.horizon_refusal(Emulation(capacity=1000, queue=1538), "e", 13 * 10**9,
                                  frame) is None
    # A negative overhead charges a frame less than its bytes: fq holds more bytes than the
    # rate x hold (60-byte frames charged 46), none when a frame is charged nothing.
    assert limits.frame_ratio(-14, 0, 0, 1514) == 60 / 46
    assert limits.frame_ratio(24, 48, 5, 1514) == 1.0
    assert limits.frame_ratio(-60, 0, 0, 1514) is None
    stripped = Emulation(capacity=10**8, overhead=-14)
    assert limits.stage_bytes(stripped, frame, 10**10) > limits.stage_bytes(
        Emulation(capacity=10**8), frame, 10**10)
    free = Emulation(capacity=10**8, overhead=-60)  # the uplink's rate bounds it
    assert limits.stage_bytes(free, frame, 10**10) == (
        10**10 * limits.hold_ns(free, frame) // (8 * 10**9))


def test_a_lan_port_charges_as_its_link() -> None:
    """A LAN member's port stage (the ingress stage) is the same medium: the link's overhead
    and cells, and a queue of at least two frames as charged."""
    from datapath.plan.planner import port_stage

    atm = Emulation(capacity=10_000, overhead=0, cell_size=48, cell_overhead=5)
    port = port_stage(atm)
    assert port is not None
    assert (port.overhead, port.cell_size, port.cell_overhead) == (0, 48, 5)
    assert port.queue == 2 * 32 * 53 == queue_bytes(atm)
