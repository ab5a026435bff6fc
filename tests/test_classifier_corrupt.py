"""Corruption through BPF_PROG_TEST_RUN (datapath/bpf/corrupt.h; docs/semantics.md, "Corruption"):
the fraction of packets corrupted over 200,000 runs within 4 sigma of the configured one, and
each corrupted frame differing from what went in by exactly one bit, inside its inner payload
(after the inner L4 header; after the Ethernet header for a frame that is not IP), its
checksums and headers as they were. The payload bounds are computed here with scapy, apart
from the classifier's parser."""
from __future__ import annotations

import math

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from datapath.classifier import Classifier
from schemas import Emulation
from tests.fixtures.classifier import INGRESS, VNI, clf, send  # noqa: F401
from tests.fixtures.packets import TC_ACT_OK, inner_tcp, inner_udp, outer_len, vxlan

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _l4_payload_start(inner: bytes) -> int:
    """Where the payload of an inner frame starts, from scapy's dissection."""
    p = Ether(inner)
    raw = p.getlayer(Raw)
    return len(inner) - len(bytes(raw)) - len(_padding(p)) if raw is not None else len(inner)


def _padding(p) -> bytes:
    pad = p.getlayer("Padding")
    return bytes(pad) if pad is not None else b""


# (name, inner frame, the payload's [start, end) in it)
def _cases() -> list[tuple[str, bytes, int, int]]:
    out = []
    frames = {
        "ipv4 tcp": bytes(inner_tcp(payload=300)),
        "ipv6 tcp with options": bytes(inner_tcp(payload=200, ipv6=True, tcp_options=True)),
        "ipv4 udp": bytes(inner_udp(payload=64)),
        "icmp echo": bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP() / Raw(b"p" * 56)),
        "vlan-tagged tcp": bytes(ETH / Dot1Q(vlan=7) / IP(src="10.0.0.1", dst="10.0.0.2") /
                                 TCP(sport=1, dport=2) / Raw(b"v" * 40)),
        "ipv4 later fragment": bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", proto=6, frag=10)
                                     / Raw(b"f" * 80)),
    }
    for name, f in frames.items():
        out.append((name, f, _l4_payload_start(f), len(f)))
    # A short UDP datagram in a frame padded with 10 bytes beyond the IP packet: padding is no
    # payload.
    short = bytes(inner_udp(payload=4))
    out.append(("ethernet padding", short + b"\x00" * 10, len(short) - 4, len(short)))
    # Not IP: everything after the Ethernet header.
    other = b"\x02" * 12 + b"\x88\xb5" + bytes(range(50))
    out.append(("not ip", other, 14, len(other)))
    return out


CASES = _cases()


def _diff_bits(a: bytes, b: bytes) -> list[int]:
    assert len(a) == len(b)
    return [8 * i + k for i, (x, y) in enumerate(zip(a, b)) for k in range(8) if (x ^ y) >> k & 1]


def corrupted_count(c: Classifier) -> int:
    return c.link_counters(VNI)["egress"].corrupted


@pytest.mark.parametrize("name, inner, start, end", CASES, ids=[c[0] for c in CASES])
def test_a_corrupted_frame_differs_by_one_bit_inside_its_payload(clf: Classifier, name: str,
                                                                 inner: bytes, start: int,
                                                                 end: int) -> None:
    assert 0 < end - start, name
    clf.set_link(VNI, egress=Emulation(corrupt=1.0))
    frame = vxlan(VNI, inner)
    base = outer_len(frame)
    bytes_hit, bits_hit = set(), set()
    runs = 400
    for _ in range(runs):
        r = send(clf, frame)
        assert r.retval == TC_ACT_OK
        diff = _diff_bits(frame, r.data)
        assert len(diff) == 1, (name, diff)
        pos = diff[0] // 8 - base
        assert start <= pos < end, (name, pos, start, end)
        bytes_hit.add(pos)
        bits_hit.add(diff[0] % 8)
    assert corrupted_count(clf) == runs
    c = clf.link_counters(VNI)["egress"]
    assert c.packets == runs and c.corrupted == runs
    # The position is spread over the payload: every bit of a byte, most bytes of a short one.
    assert bits_hit == set(range(8))
    assert len(bytes_hit) >= min(end - start, 40) * 0.9


def test_a_frame_without_payload_is_left_whole(clf: Classifier) -> None:
    clf.set_link(VNI, egress=Emulation(corrupt=1.0))
    for inner in (bytes(inner_tcp(payload=0)), bytes(inner_udp(payload=0)),
                  bytes(inner_tcp(payload=0)) + b"\x00" * 6):  # a pure ACK, padded
        frame = vxlan(VNI, inner)
        r = send(clf, frame)
        assert (r.retval, r.data) == (TC_ACT_OK, frame)
    assert corrupted_count(clf) == 0
    assert clf.link_counters(VNI)["egress"].packets == 3


def test_a_gso_packet_is_never_corrupted(clf: Classifier) -> None:
    """Its segments' checksums are recomputed after the qdisc: a flip would go unnoticed."""
    clf.set_link(VNI, egress=Emulation(corrupt=1.0))
    frame = vxlan(VNI, inner_tcp(payload=2896))
    r = send(clf, frame, gso_segs=2, gso_size=1448)
    assert (r.retval, r.data) == (TC_ACT_OK, frame)
    assert corrupted_count(clf) == 0


def test_without_corrupt_nothing_changes(clf: Classifier) -> None:
    clf.set_link(VNI, egress=Emulation(loss=0.0, latency=1000))
    frame = vxlan(VNI, inner_tcp(payload=300))
    assert send(clf, frame).data == frame
    clf.set_link(VNI, egress=Emulation(corrupt=0.0))
    assert send(clf, frame, repeat=1000).data == frame
    assert corrupted_count(clf) == 0


def test_the_ingress_stage_never_corrupts(clf: Classifier) -> None:
    """On ingress the outer UDP checksum is still to be verified (a LAN port never has it)."""
    clf.set_link(VNI, ingress=Emulation(corrupt=1.0))
    frame = vxlan(VNI, inner_tcp(payload=300))
    assert send(clf, frame, stage=INGRESS).data == frame


@pytest.mark.parametrize("p", [0.1, 0.003])
def test_the_fraction_corrupted_is_the_configured_one(clf: Classifier, p: float) -> None:
    """200,000 packets (the program run 200,000 times on one skb): corrupted within 4 sigma."""
    n = 200_000
    clf.set_link(VNI, egress=Emulation(corrupt=p, capacity=0))
    frame = vxlan(VNI, inner_tcp(payload=1000))
    for _ in range(4):
        assert send(clf, frame, repeat=n // 4).retval == TC_ACT_OK
    got = corrupted_count(clf)
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(got - n * p) <= 4 * sigma, (got, n * p, sigma)
    assert clf.link_counters(VNI)["egress"].packets == n


def test_corruption_with_loss_counts_only_passed_packets(clf: Classifier) -> None:
    """A dropped packet is not corrupted: corrupted + lost = sent when every kept one is."""
    clf.set_link(VNI, egress=Emulation(corrupt=1.0, loss=0.5))
    frame = vxlan(VNI, inner_tcp(payload=100))
    send(clf, frame, repeat=10_000)
    c = clf.link_counters(VNI)["egress"]
    assert c.corrupted == c.packets and c.packets + c.drops["loss"] == 10_000
    assert 4_000 < c.packets < 6_000


def test_status_reports_the_corrupted_count(clf: Classifier) -> None:
    """The count lives in the stage's shared state (abi.h); status carries it per stage."""
    from moa_bus.service.status import _stats

    clf.set_link(VNI, egress=Emulation(corrupt=1.0))
    send(clf, vxlan(VNI, inner_tcp(payload=100)), repeat=7)
    stats = _stats("m", "l", [VNI], clf.counters_of([VNI]))
    assert {s.stage: s.corrupted for s in stats} == {"egress": 7, "ingress": 0}
