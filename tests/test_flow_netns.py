"""Flow mode in network namespaces on the host kernel (datapath/bpf/flow.h, datapath/flow.py):
two nodes behind two hypervisors' VTEPs, a box with the classifier on its uplink and no device
of its own for the link. Ping, TCP (iperf3, offloads on: GSO super-packets are rewritten too)
and an LLDP frame cross; loss 1.0 on the egress stage drops every frame, as in VTEP mode. Over
an IPv4 and an IPv6 underlay (the VTEPs' IPv6 UDP checksums are on: the rewrite keeps them
valid). The host has no sch_fq: only loss is applied, as in tests/test_plumbing_netns.py.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from datapath.classifier import Classifier, ClassifierConfig
from datapath.flow import FlowEnd, FlowTable, Uplink, link_entries
from moa_bus.lab.host_testbed import BOX_ADDR, UPLINK, Endpoint, Testbed, ns_exec, sh, unique_tag
from schemas import Emulation
from tests.test_plumbing_netns import iperf3_tcp, lldp_crosses

pytestmark = pytest.mark.netns

A, B = 100, 101
BOX6 = "fd00:201::1"


def hv_addr6(i: int) -> str:
    return f"fd00:201::{10 + i}"


@dataclass
class FlowBox:
    topo: Testbed
    classifier: Classifier
    table: FlowTable
    v6: bool
    uplink: Uplink
    ends: list[FlowEnd]


def _link(ns: str, dev: str) -> dict:
    return json.loads(ns_exec(ns, "ip", "-j", "link", "show", dev).stdout)[0]


def _add_endpoint(t: Testbed, node: int, vni: int, addr: str, v6: bool,
                  port: int = 4789) -> Endpoint:
    """Testbed.add_endpoint, over the IPv6 underlay when v6."""
    if not v6:
        return t.add_endpoint(node, vni, addr, port)
    dev, hv = f"vx{vni}", t.hv(node)
    sh("ip", "-n", hv, "link", "add", dev, "type", "vxlan", "id", str(vni), "local",
       hv_addr6(node), "remote", BOX6, "dstport", str(port), "dev", "eth0", "nolearning")
    sh("ip", "-n", hv, "link", "set", dev, "netns", t.node(node))
    sh("ip", "-n", t.node(node), "addr", "add", addr, "dev", dev)
    ns_exec(t.node(node), "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
    sh("ip", "-n", t.node(node), "link", "set", dev, "up")
    ep = Endpoint(node, vni, addr, dev)
    t.endpoints.append(ep)
    return ep


@pytest.fixture(params=[False, True], ids=["ipv4-underlay", "ipv6-underlay"])
def flowbox(request: pytest.FixtureRequest) -> Iterator[FlowBox]:
    """The testbed (two hypervisors), the classifier with flow mode attached to the box's
    uplink by pinned programs, links A and B in moa_links and the flow entries of A-B. The
    namespaces and pins go with the testbed's cleanup, proved complete."""
    v6 = request.param
    t = Testbed(tag=unique_tag("mf"), hypervisors=2).build()
    clf = None
    try:
        if v6:
            ns_exec(t.box, "sysctl", "-qw", f"net.ipv6.conf.{UPLINK}.disable_ipv6=0")
            sh("ip", "-n", t.box, "addr", "add", f"{BOX6}/64", "dev", UPLINK, "nodad")
            for i in (1, 2):
                ns_exec(t.hv(i), "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0")
                sh("ip", "-n", t.hv(i), "addr", "add", f"{hv_addr6(i)}/64", "dev", "eth0",
                   "nodad")
        clf = Classifier.load(ClassifierConfig(max_links=64, flow_mode=True))
        os.makedirs(t.pin_root, exist_ok=True)
        sh("ip", "-n", t.box, "link", "set", UPLINK, "up")
        sh(*_tc(t, "qdisc", "add", "dev", UPLINK, "clsact"))
        for direction, prog in (("ingress", clf.ingress_program), ("egress", clf.egress_program)):
            path = f"{t.pin_root}/{direction}"
            prog.pin(path)
            sh(*_tc(t, "filter", "add", "dev", UPLINK, direction, "bpf", "direct-action",
                    "pinned", path))
        up = _link(t.box, UPLINK)
        uplink = Uplink(up["ifindex"], BOX6 if v6 else BOX_ADDR, up["address"])
        ends = [FlowEnd(vni, hv_addr6(i) if v6 else t.hv_addr(i), _link(t.hv(i), "eth0")["address"])
                for i, vni in ((1, A), (2, B))]
        clf.set_link(A)
        clf.set_link(B)
        table = FlowTable(clf)
        table.set(link_entries(uplink, *ends))
        yield FlowBox(t, clf, table, v6, uplink, ends)
    finally:
        if clf is not None:
            clf.close()
        problems = t.cleanup()
    assert problems == []
    assert t.leftover_namespaces() == []


def _tc(t: Testbed, *args: str) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/{t.box}", "tc", *args]


def endpoints(fb: FlowBox) -> tuple[Endpoint, Endpoint]:
    return (_add_endpoint(fb.topo, 1, A, "192.168.100.1/24", fb.v6),
            _add_endpoint(fb.topo, 2, B, "192.168.100.2/24", fb.v6))


def moa_devices(t: Testbed) -> list[str]:
    out = json.loads(sh("ip", "-n", t.box, "-j", "link", "show").stdout)
    return sorted(d["ifname"] for d in out)


def csum_errors(t: Testbed) -> dict[str, int]:
    """Each hypervisor's UDP checksum errors (IPv4 and IPv6), from its namespace's counters."""
    out = {}
    for i in (1, 2):
        text = ns_exec(t.hv(i), "cat", "/proc/net/snmp", "/proc/net/snmp6").stdout
        lines = text.splitlines()
        for names, values in zip(lines, lines[1:]):
            if names.startswith("Udp:") and values.startswith("Udp:"):
                row = dict(zip(names.split()[1:], values.split()[1:]))
                out[f"hv{i} Udp InCsumErrors"] = int(row["InCsumErrors"])
        for line in lines:
            if line.startswith("Udp6InCsumErrors"):
                out[f"hv{i} Udp6InCsumErrors"] = int(line.split()[1])
    return out


def test_ping_tcp_and_lldp_cross_a_flow_mode_link(flowbox: FlowBox) -> None:
    t, clf = flowbox.topo, flowbox.classifier
    a, b = endpoints(flowbox)
    assert t.ping(a, b, count=5) == (5, 5)
    assert t.ping(b, a, count=3) == (3, 3)
    # No device in the box for the link: the uplink and lo only.
    assert moa_devices(t) == sorted(["lo", UPLINK])
    # Both directions went through the rewrite and the egress stage under the receiver's VNI.
    c = flowbox.table.counters()
    assert c["redirect"] >= 16 and c["error"] == 0
    assert clf.link_counters(B)["egress"].packets >= 8
    assert clf.link_counters(A)["egress"].packets >= 8

    j = iperf3_tcp(t, a, b)
    gbps = j["end"]["sum_received"]["bits_per_second"] / 1e9
    print(f"flow mode ({'IPv6' if flowbox.v6 else 'IPv4'} underlay): {gbps:.2f} Gbit/s, "
          f"retransmits {j['end']['sum_sent'].get('retransmits')}, {flowbox.table.counters()}")
    assert gbps > 0.1
    assert clf.link_counters(B)["egress"].bytes >= j["end"]["sum_received"]["bytes"]
    assert flowbox.table.counters()["error"] == 0
    errors = csum_errors(t)
    assert len(errors) == 4 and set(errors.values()) == {0}, errors

    assert lldp_crosses(t, a, b)
    assert lldp_crosses(t, b, a)

    # The uplink without checksum offload: the box's stack finishes every partial checksum in
    # software, as a NIC without offloads would, and the hypervisors verify every outer one.
    # Frames of every checksum state cross (the TCP handshake's are partial elsewhere: local
    # checksum offload), none is refused for its checksum.
    ns_exec(t.box, "ethtool", "-K", UPLINK, "tx-checksum-ip-generic", "off")
    j = iperf3_tcp(t, a, b, seconds=2)
    assert j["end"]["sum_received"]["bits_per_second"] > 1e8
    errors = csum_errors(t)
    assert set(errors.values()) == {0}, errors


def test_loss_drops_every_frame_then_none(flowbox: FlowBox) -> None:
    t, clf = flowbox.topo, flowbox.classifier
    a, b = endpoints(flowbox)
    t.quiet(a, b)  # no ARP: each echo request is one frame on the wire
    clf.set_link(B, egress=Emulation(loss=1.0))
    assert t.ping(a, b, count=5, deadline=1) == (5, 0)
    assert clf.link_counters(B)["egress"].drops["loss"] == 5
    assert flowbox.table.counters()["redirect"] == 5  # rewritten, then dropped by the egress stage
    clf.set_link(B, egress=Emulation(loss=0.0))
    assert t.ping(a, b, count=3) == (3, 3)
    # Entries removed: the frames reach the box's stack, which has no VTEP for them.
    # one batch delete, which stops at the VNI the map lacks; the rest one by one
    assert flowbox.table.remove([A, 4_000_000, B]) == 2
    assert flowbox.table.remove([A, B]) == 0
    assert t.ping(a, b, count=2, deadline=1) == (2, 0)


def test_mixed_box_vtep_beside_flow_and_gro_super_packets(flowbox: FlowBox) -> None:
    """A VTEP in the box (VNI 300, its own address: how VTEP-mode links and LANs live) beside the
    flow-mode link: its frames pass the ingress to the stack untouched while the flow link
    carries TCP. With the VTEP's UDP socket the uplink may merge VXLAN frames by GRO (on here),
    besides the sending VTEPs' GSO super-packets that cross the veths whole: the rewrite sees
    fewer packets than the frames the egress stage counts. The uplink finishes checksums in
    software (offload off), so the hypervisors verify every segment's outer checksum."""
    t, clf, v6 = flowbox.topo, flowbox.classifier, flowbox.v6
    a, b = endpoints(flowbox)
    box, hv1 = (BOX6, hv_addr6(1)) if v6 else (BOX_ADDR, t.hv_addr(1))
    sh("ip", "-n", t.box, "link", "add", "mv300", "type", "vxlan", "id", "300", "local", box,
       "remote", hv1, "dstport", "4789", "dev", UPLINK, "nolearning")
    sh("ip", "-n", t.box, "addr", "add", "192.168.30.1/24", "dev", "mv300")
    sh("ip", "-n", t.box, "link", "set", "mv300", "up")
    clf.set_link(300)
    n300 = _add_endpoint(t, 1, 300, "192.168.30.2/24", v6)
    r = ns_exec(t.node(1), "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "5", "192.168.30.1",
                check=False)
    assert " 0% packet loss" in r.stdout, r.stdout
    assert clf.link_counters(300)["egress"].packets >= 3  # the box's VTEP's replies
    assert t.ping(a, b, count=3) == (3, 3)
    assert flowbox.table.counters()["mismatch"] == 0

    ns_exec(t.box, "ethtool", "-K", UPLINK, "gro", "on", "tx-checksum-ip-generic", "off")
    before = (flowbox.table.counters()["redirect"], clf.link_counters(B)["egress"].packets)
    j = iperf3_tcp(t, a, b, seconds=2)
    assert j["end"]["sum_received"]["bits_per_second"] > 1e8
    rewrites = flowbox.table.counters()["redirect"] - before[0]
    frames = clf.link_counters(B)["egress"].packets - before[1]
    print(f"GRO on the uplink ({'IPv6' if v6 else 'IPv4'}): {rewrites} rewrites for {frames} "
          f"frames toward B")
    assert 0 < rewrites < frames
    errors = csum_errors(t)
    assert set(errors.values()) == {0}, errors
    r = ns_exec(t.node(1), "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "5", "192.168.30.1",
                check=False)
    assert " 0% packet loss" in r.stdout, r.stdout
    del n300


def test_endpoints_on_different_udp_ports(flowbox: FlowBox) -> None:
    """B's VTEP on port 8472, A's on 4789: each direction leaves with the receiver's port."""
    t, clf = flowbox.topo, flowbox.classifier
    clf.set_vxlan_ports([8472])  # B's frames arrive on it: the classifier must parse them
    a = _add_endpoint(t, 1, A, "192.168.100.1/24", flowbox.v6)
    b = _add_endpoint(t, 2, B, "192.168.100.2/24", flowbox.v6, port=8472)
    end_a, end_b = flowbox.ends
    flowbox.table.set(link_entries(flowbox.uplink, end_a,
                                   FlowEnd(end_b.vni, end_b.ip, end_b.mac, port=8472)))
    assert t.ping(a, b, count=3) == (3, 3)
    assert clf.link_counters(B)["egress"].packets >= 3  # parsed at egress on port 8472
    assert flowbox.table.counters()["error"] == 0
