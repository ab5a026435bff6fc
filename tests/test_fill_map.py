"""moa_bus/lab/vm/fill_map.py on pinned maps as the service leaves them (the VM's
throughput-at-scale scenario fills the box's maps with it): on a flow-mode classifier, --flow
fills moa_links and moa_flow up to --total, keeps the box's own entries, and --remove takes
every filler out of both; on a VTEP-mode one, --flow is refused."""
from __future__ import annotations

import json

import pytest

from datapath.classifier import Classifier, ClassifierConfig
from datapath.flow import FlowEnd, FlowTable, Uplink, link_entries
from moa_bus.lab.vm import fill_map
from tests.fixtures.bpf import pin_root  # noqa: F401

FIRST = 100_000
UP = Uplink(9, "192.0.2.1", "02:aa:00:00:00:01")


def _run(capsys, *argv: str) -> dict:
    assert fill_map.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_flow_fill_fills_both_maps_and_remove_takes_both_out(
        pin_root: str, capsys) -> None:  # noqa: F811
    cfg = ClassifierConfig(max_links=64, flow_mode=True)
    with Classifier.load(cfg, pin_root=pin_root) as c:
        for vni in (10, 11, 20, 21, 22):                # a P2P link and a LAN of three
            c.set_link(vni)
        own = link_entries(UP, FlowEnd(10, "192.0.2.11", "02:aa:00:00:00:11"),
                           FlowEnd(11, "192.0.2.12", "02:aa:00:00:00:12"))
        FlowTable(c).set(own)
    args = ("--pin-root", pin_root, "--first-vni", str(FIRST))
    out = _run(capsys, *args, "--total", "62", "--flow")
    assert (out["vnis"], out["count"]) == (57, 62)
    assert (out["flow_vnis"], out["flow_count"]) == (60, 62)
    with Classifier.load(cfg, pin_root=pin_root) as c:
        flows = FlowTable(c).entries()
        assert flows[10] == own[0] and flows[11] == own[1]
        a, b = flows[FIRST], flows[FIRST + 1]
        assert (a.peer_vni, b.peer_vni) == (FIRST + 1, FIRST)
        assert (a.src_ip, a.src_mac, a.ifindex) == (UP.ip, UP.mac, UP.ifindex)
        assert a.peer_ip.startswith("10.250.") and a.peer_ip != b.peer_ip
        assert sorted(v for v in c.vnis() if v >= FIRST) == list(range(FIRST, FIRST + 57))
    out = _run(capsys, *args, "--remove")
    assert (out["vnis"], out["count"], out["flow_vnis"], out["flow_count"]) == (57, 5, 60, 2)
    with Classifier.load(cfg, pin_root=pin_root) as c:
        assert FlowTable(c).entries() == {10: own[0], 11: own[1]}
        assert c.vnis() == [10, 11, 20, 21, 22]


def test_vtep_mode_fills_the_links_only_and_refuses_flow(
        pin_root: str, capsys) -> None:  # noqa: F811
    with Classifier.load(ClassifierConfig(max_links=16), pin_root=pin_root) as c:
        c.set_link(10)
    args = ("--pin-root", pin_root, "--first-vni", str(FIRST))
    out = _run(capsys, *args, "--total", "16")
    assert (out["vnis"], out["count"], out["flow_vnis"], out["flow_count"]) == (15, 16, None, None)
    with pytest.raises(SystemExit, match="VTEP mode"):
        fill_map.main([*args, "--flow"])
    assert _run(capsys, *args, "--remove")["count"] == 1
