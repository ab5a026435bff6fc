"""Flow mode's rewrite (datapath/bpf/flow.h) through BPF_PROG_TEST_RUN of moa_ingress: a frame of
a flow-mode endpoint leaves with the peer's VNI, the peer's outer addresses and valid checksums,
its inner frame byte for byte as it came, and is redirected; anything else passes untouched.
The table's Python API (datapath/flow.py) refuses what the datapath could not apply."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from datapath.classifier import Classifier, ClassifierConfig
from datapath.flow import FlowEnd, FlowEntry, FlowTable, Uplink, link_entries
from schemas import Emulation
from tests.fixtures.classifier import INGRESS, mono, put_t_last
from tests.fixtures.packets import TC_ACT_OK, TC_ACT_SHOT, inner_tcp

TC_ACT_REDIRECT = 7
A, B = 100, 101
HV_A4, HV_B4, BOX4 = "192.0.2.11", "192.0.2.12", "192.0.2.1"
HV_A6, HV_B6, BOX6 = "fc00::11", "fc00::12", "fc00::1"
MAC_A, MAC_B, MAC_UP = "02:aa:00:00:00:11", "02:aa:00:00:00:12", "02:aa:00:00:00:01"
UPLINK_IFINDEX = 7
LLDP = bytes.fromhex("0180c200000e02006d6f610188cc") + bytes.fromhex(
    "0207046d6f61303031040305657468300602007800000000").ljust(46, b"\0")


@pytest.fixture
def flow_clf():
    with Classifier.load(ClassifierConfig(max_links=64, flow_mode=True)) as c:
        c.set_link(A)
        c.set_link(B)
        yield c


def table(c: Classifier, v6: bool = False) -> FlowTable:
    t = FlowTable(c)
    up = Uplink(UPLINK_IFINDEX, BOX6 if v6 else BOX4, MAC_UP)
    t.set(link_entries(up, FlowEnd(A, HV_A6 if v6 else HV_A4, MAC_A),
                       FlowEnd(B, HV_B6 if v6 else HV_B4, MAC_B)))
    return t


def frame(vni: int = A, *, v6: bool = False, csum: bool = True, inner: bytes | None = None,
          dst: str | None = None, tagged: bool = False, sport: int = 51234,
          ip_options: bool = False) -> bytes:
    """A frame as hypervisor A's VTEP sends it to the box."""
    p = Ether(src=MAC_A, dst=MAC_UP)
    if tagged:
        p = p / Dot1Q(vlan=42)
    p = p / (IPv6(src=HV_A6, dst=dst or BOX6, hlim=61) if v6 else
             IP(src=HV_A4, dst=dst or BOX4, ttl=61, id=4321, flags="DF",
                options=b"\x94\x04\x00\x00\x01\x01\x01\x00" if ip_options else b""))
    udp = UDP(sport=sport, dport=4789) if csum else UDP(sport=sport, dport=4789, chksum=0)
    return bytes(p / udp / VXLAN(vni=vni) / Raw(inner if inner is not None else
                                                 bytes(inner_tcp(payload=300))))


def expected(sent: bytes, *, v6: bool, csum: bool) -> bytes:
    """The frame as it must leave: scapy's own rewrite, checksums recomputed by scapy."""
    p = Ether(sent)
    p[Ether].src, p[Ether].dst = MAC_UP, MAC_B
    ip = p[IPv6] if v6 else p[IP]
    ip.src, ip.dst = (BOX6, HV_B6) if v6 else (BOX4, HV_B4)
    if not v6:
        del p[IP].chksum
    p[VXLAN].vni = B
    if csum:
        del p[UDP].chksum
    return bytes(p)


def ingress(c: Classifier, data: bytes):
    return c.ingress_program.test_run(data, ctx=c.abi.SkBuff())


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("csum", [False, True], ids=["zero-udp-csum", "udp-csum"])
@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "vlan"])
def test_rewritten_toward_the_peer_and_redirected(flow_clf, v6, csum, tagged) -> None:
    t = table(flow_clf, v6)
    for sport in (51234, 1, 65535):  # the source port (the inner flow's hash) is kept
        sent = frame(v6=v6, csum=csum, tagged=tagged, sport=sport)
        r = ingress(flow_clf, sent)
        assert r.retval == TC_ACT_REDIRECT
        assert r.data == expected(sent, v6=v6, csum=csum)
        assert Ether(r.data)[UDP].sport == sport
        if csum:  # scapy agrees with the incrementally updated checksum
            assert Ether(r.data)[UDP].chksum != 0
    assert t.counters() == {"redirect": 3, "mismatch": 0, "error": 0, "released": 0,
                            "pending": 0}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_inner_frame_untouched_lldp_included(flow_clf, v6) -> None:
    table(flow_clf, v6)
    sent = frame(v6=v6, inner=LLDP)
    r = ingress(flow_clf, sent)
    assert r.retval == TC_ACT_REDIRECT
    assert r.data[-len(LLDP):] == LLDP and r.data == expected(sent, v6=v6, csum=True)


@pytest.mark.parametrize("csum", [False, True], ids=["zero-udp-csum", "udp-csum"])
def test_ipv4_options(flow_clf, csum) -> None:
    """An outer IPv4 header of 28 bytes (Router Alert and padding): rewritten all the same."""
    table(flow_clf)
    sent = frame(csum=csum, ip_options=True)
    assert Ether(sent)[IP].ihl == 7
    r = ingress(flow_clf, sent)
    assert r.retval == TC_ACT_REDIRECT and r.data == expected(sent, v6=False, csum=csum)


def test_the_other_direction_and_other_frames(flow_clf) -> None:
    t = table(flow_clf)
    # B's frames go to A with A's VNI.
    p = Ether(frame(B))
    p[IP].src = HV_B4
    del p[IP].chksum, p[UDP].chksum
    r = ingress(flow_clf, bytes(p))
    out = Ether(r.data)
    assert r.retval == TC_ACT_REDIRECT
    assert (out[VXLAN].vni, out[IP].dst, out[Ether].dst) == (A, HV_A4, MAC_A)
    # A VNI without an entry, a frame not addressed to the box, a frame of the other family:
    # passed as they came.
    flow_clf.set_link(555)
    for sent in (frame(555), frame(dst="192.0.2.99"), frame(v6=True)):
        r = ingress(flow_clf, sent)
        assert (r.retval, r.data) == (TC_ACT_OK, sent)
    assert t.counters() == {"redirect": 1, "mismatch": 2, "error": 0, "released": 0,
                            "pending": 0}
    # Removed: passed like any frame.
    assert t.remove([A, B]) == 2 and t.entries() == {}
    sent = frame()
    r = ingress(flow_clf, sent)
    assert (r.retval, r.data) == (TC_ACT_OK, sent)


def test_the_ingress_stage_comes_first(flow_clf) -> None:
    table(flow_clf)
    flow_clf.set_link(A, ingress=Emulation(loss=1.0))
    r = ingress(flow_clf, frame())
    assert r.retval == TC_ACT_SHOT
    assert flow_clf.link_counters(A)["ingress"].drops["loss"] == 1
    flow_clf.set_link(A, ingress=Emulation(loss=0.0))
    assert ingress(flow_clf, frame()).retval == TC_ACT_REDIRECT


def test_the_ingress_stages_handover_rides_along(flow_clf) -> None:
    """An ingress stage with a rate whose port is busy for another second: the frame waits
    behind it, and is rewritten and redirected with that wait in skb->mark for the egress stage
    (handover.h), as in VTEP mode."""
    table(flow_clf)
    flow_clf.set_link(A, ingress=Emulation(capacity=8_000_000, queue=0))
    put_t_last(flow_clf, A, INGRESS, mono() + 10**9)
    r = ingress(flow_clf, frame())
    assert r.retval == TC_ACT_REDIRECT and Ether(r.data)[VXLAN].vni == B
    assert r.ctx.mark >> 16 == 0xFFFF  # a second saturates the 16-bit field (67 ms)
    assert flow_clf.link_counters(A)["ingress"].packets == 1


def test_flow_mode_off_passes_and_refuses_a_table() -> None:
    with Classifier.load(ClassifierConfig(max_links=8)) as c:
        c.set_link(A)
        with pytest.raises(ValueError, match="^flow_mode: "):
            FlowTable(c)
        # An entry written behind the API's back is never read: the code is not there.
        c.obj.map("moa_flow").update(A, c.abi.Flow(peer_vni=B, ifindex=1, family=4))
        sent = frame()
        r = ingress(c, sent)
        assert (r.retval, r.data) == (TC_ACT_OK, sent)


def test_table_api_round_trip_and_refusals(flow_clf) -> None:
    t = table(flow_clf, v6=True)
    assert t.entries()[A] == FlowEntry(A, B, HV_B6, MAC_B, BOX6, MAC_UP, UPLINK_IFINDEX)
    assert t.entries()[B] == FlowEntry(B, A, HV_A6, MAC_A, BOX6, MAC_UP, UPLINK_IFINDEX)
    good = FlowEntry(A, B, HV_B4, MAC_B, BOX4, MAC_UP, UPLINK_IFINDEX)
    bad = {"vni": {"vni": 1 << 24}, "peer_vni": {"peer_vni": A},
           "ifindex": {"ifindex": 0}, "peer_ip": {"peer_ip": HV_B6},
           "src_ip": {"src_ip": "box"}, "peer_mac": {"peer_mac": "02:aa:00:00:00"},
           "src_mac": {"src_mac": "zz:aa:00:00:00:01"}}
    for fld, change in bad.items():
        with pytest.raises(ValueError, match=f"^{fld}: "):
            t.set([good, FlowEntry(**{**good.__dict__, **change})])
    assert t.entries()[A].peer_ip == HV_B6  # nothing of a refused batch was written
    assert t.set([good]) == 1 and t.entries()[A] == good


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_pending_entry_drops_and_counts_until_written_with_a_mac(flow_clf, v6) -> None:
    """An entry whose next hop has not answered (peer_mac None: MOA_FLOW_F_PENDING) drops its
    endpoint's frames with a counter of its own, never sends them to a zero MAC nor passes them
    to the stack; written again with the MAC, it rewrites as any other."""
    t = table(flow_clf, v6)
    pending = FlowEntry(A, B, HV_B6 if v6 else HV_B4, None, BOX6 if v6 else BOX4, MAC_UP,
                        UPLINK_IFINDEX)
    t.set([pending])
    raw = t.raw()[A]
    assert t.pending(raw) and raw[t.Flow.peer_mac.offset:][:6] == bytes(6)
    assert t.entries()[A] == pending and t.entries()[B].peer_mac == MAC_A
    sent = frame(v6=v6)
    for _ in range(3):
        assert ingress(flow_clf, sent).retval == TC_ACT_SHOT
    assert t.counters() == {"redirect": 0, "mismatch": 0, "error": 0, "released": 0,
                            "pending": 3}
    t.set([FlowEntry(**{**pending.__dict__, "peer_mac": MAC_B})])
    assert not t.pending(t.raw()[A])
    r = ingress(flow_clf, sent)
    assert (r.retval, r.data) == (TC_ACT_REDIRECT, expected(sent, v6=v6, csum=True))
    assert t.counters()["pending"] == 3 and t.counters()["redirect"] == 1


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_vnis_of_equal_checksum_sum(v6) -> None:
    """VNIs 0x010002 and 0x020001 add up to the same 16-bit sum: the VNI's change leaves the
    UDP checksum as it is, and the checksum state is found by a probe undone at once."""
    a, b = 0x010002, 0x020001
    with Classifier.load(ClassifierConfig(max_links=8, flow_mode=True)) as c:
        c.set_link(a)
        c.set_link(b)
        t = FlowTable(c)
        box = BOX6 if v6 else BOX4
        t.set(link_entries(Uplink(UPLINK_IFINDEX, box, MAC_UP),
                           FlowEnd(a, HV_A6 if v6 else HV_A4, MAC_A),
                           FlowEnd(b, HV_B6 if v6 else HV_B4, MAC_B)))
        sent = frame(a, v6=v6)
        r = ingress(c, sent)
        want = Ether(expected(sent, v6=v6, csum=True))
        want[VXLAN].vni = b
        del want[UDP].chksum
        assert r.retval == TC_ACT_REDIRECT and r.data == bytes(want)
        assert t.counters()["error"] == 0


def test_bench_figures_measure_the_rewrite() -> None:
    """`moa bench datapath`'s flow figures (moa_bus/lab/datapath_bench.py): every run of the
    rewrite cases was a rewrite (it raises otherwise), each figure a positive ns count; the
    spread case met both maps full."""
    from moa_bus.lab.datapath_bench import MANY, measure_flow

    r = measure_flow(repeat=1000, runs=1)
    assert set(r) == {"ingress_ns", "flow_pass_ns", "flow_rewrite_ns", "flow_rewrite_csum_ns",
                      "flow_rewrite_spread_ns", f"flow_rewrite_spread_ns_{MANY}",
                      f"flow_entries_{MANY}", f"flow_links_{MANY}"}
    assert r[f"flow_entries_{MANY}"] == r[f"flow_links_{MANY}"] == MANY, r
    assert all(isinstance(v, (int, float)) and v > 0 for v in r.values()), r


def test_sync_writes_what_differs_and_deletes_the_rest(flow_clf) -> None:
    t = table(flow_clf)
    up = Uplink(UPLINK_IFINDEX, BOX4, MAC_UP)
    many = [e for i in range(10) for e in link_entries(
        up, FlowEnd(1000 + 2 * i, HV_A4, MAC_A), FlowEnd(1001 + 2 * i, HV_B4, MAC_B))]
    assert t.sync(many) == (20, 2)  # A-B was not desired
    assert sorted(t.entries()) == list(range(1000, 1020))
    assert t.sync(many) == (0, 0)  # the kernel holds exactly that
    moved = [FlowEntry(**{**e.__dict__, "peer_ip": "192.0.2.99"}) if e.vni == 1000 else e
             for e in many[:4]]
    assert t.sync(moved) == (1, 16)
    assert t.entries()[1000].peer_ip == "192.0.2.99" and len(t.entries()) == 4


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("csum", [False, True], ids=["zero-udp-csum", "udp-csum"])
def test_the_peers_own_udp_port(flow_clf, v6, csum) -> None:
    """B's VTEP listens on 8472: A's frames leave with that destination port, checksum right."""
    box = BOX6 if v6 else BOX4
    t = FlowTable(flow_clf)
    t.set(link_entries(Uplink(UPLINK_IFINDEX, box, MAC_UP),
                       FlowEnd(A, HV_A6 if v6 else HV_A4, MAC_A),
                       FlowEnd(B, HV_B6 if v6 else HV_B4, MAC_B, port=8472)))
    assert t.entries()[A].peer_port == 8472 and t.entries()[B].peer_port == 4789
    sent = frame(v6=v6, csum=csum)
    r = ingress(flow_clf, sent)
    want = Ether(expected(sent, v6=v6, csum=csum))
    want[UDP].dport = 8472
    if csum:
        del want[UDP].chksum
    assert r.retval == TC_ACT_REDIRECT and r.data == bytes(want)
    with pytest.raises(ValueError, match="^peer_port: "):
        t.set([FlowEntry(A, B, HV_B4, MAC_B, BOX4, MAC_UP, UPLINK_IFINDEX, 0)])
