"""`moa bench datapath`: ns per packet of the classifier, from BPF_PROG_TEST_RUN.

Each figure is the kernel's average over `--repeat` runs of the program on one packet
(test_run duration), the median of `--runs` such measurements. The baseline is an empty tc
program (baseline.bpf.o) measured in the same run, so the figures can be read as "baseline +
what moa costs". Cases, with 1 link in moa_links:
  hit       VXLAN, configured VNI, capacity (100 Gbit/s, so the queue never fills) + 1 ms latency
  loss      VXLAN, configured VNI, Bernoulli loss 1% only
  miss      VXLAN, VNI not configured
  non_vxlan UDP to another port

One packet repeated a million times finds its link's hash bucket and parameters in the CPU's
cache, whatever the map holds: with 65,536 links that figure says nothing about the map. So the
65,536-link cases are *spread*: SPREAD frames, each to a different VNI spread evenly over the
whole map (misses to as many distinct unconfigured VNIs), one BPF_PROG_TEST_RUN each (repeat 1),
the mean over them; the baseline and the 1-link map are measured the same way (the one link's
frame SPREAD times), so `hit_65536_over_1` compares like with like, what moa pays above the
empty program per call. A call of one packet includes the kernel's timer around it, which the
baseline carries too.

Flow mode (datapath/bpf/flow.h), 1 link, on moa_ingress (the rewrite's program), beside the
ingress stage's cost today (flow mode off, an endpoint with no ingress stage):
  ingress            flow mode off
  flow_pass          flow mode on, a VNI without a flow entry (a LAN's frame pays this)
  flow_rewrite       flow mode on, rewritten and redirected: IPv4 outer, UDP checksum 0
  flow_rewrite_csum  the same over IPv6, its UDP checksum updated
and the IPv4 rewrite once more as a spread case: with moa_flow (and moa_links) full, 65,536
entries, SPREAD frames to as many distinct flow-mode endpoints spread over the table, one call
each, beside the one link's frame as often (flow_rewrite_spread_ns / _65536: what a full flow
table costs the rewrite per packet, the host's side of the VM's throughput check).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from typing import Any

import msgspec

import schemas
from datapath.bpf import object_path
from datapath.classifier import Classifier, ClassifierConfig
from datapath.libbpf import BpfObject, Program

__all__ = ["add_arguments", "run", "measure", "measure_flow"]

HIT_VNI = 70_000          # outside 1..65535, the filler links
MISS_VNI = 1 << 23
FLOW_FILLER_VNI = 100_000  # the fillers of the flow spread case: above HIT_VNI and its peer
MANY = 65_536
SPREAD = 8_192            # distinct VNIs per spread sweep (every 8th link of the map)
CURVE = (16, 128, 1024, SPREAD)
VNI_OFFSET = 46           # Ether 14 + IPv4 20 + UDP 8 + VXLAN flags 4: the 3-byte VNI
TARGET_HIT_OVER_BASELINE_NS = 40
TARGET_MANY_OVER_ONE = 0.10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeat", type=int, default=1_000_000,
                        help="BPF_PROG_TEST_RUN repetitions per measurement (>= 1,000,000)")
    parser.add_argument("--runs", type=int, default=5, help="measurements per figure (median)")


def _frames() -> dict[str, bytes]:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Raw

    inner = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
             IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=5201) / Raw(b"x" * 1400))
    outer = Ether(src="02:aa:00:00:00:01", dst="02:aa:00:00:00:02") / IP(src="192.0.2.1",
                                                                        dst="192.0.2.2")

    def vx(vni: int) -> bytes:
        return bytes(outer / UDP(sport=50000, dport=4789) / VXLAN(flags=0x08, vni=vni) / inner)

    return {"hit": vx(HIT_VNI), "loss": vx(HIT_VNI), "miss": vx(MISS_VNI),
            "non_vxlan": bytes(outer / UDP(sport=50000, dport=53) / Raw(b"q" * 100))}


def _ns(prog: Program, frame: bytes, ctx: Any, repeat: int, runs: int) -> float:
    return statistics.median(prog.test_run(frame, ctx=ctx, repeat=repeat).duration_ns
                             for _ in range(runs))


def _with_vni(frame: bytes, vni: int) -> bytes:
    return frame[:VNI_OFFSET] + vni.to_bytes(3, "big") + frame[VNI_OFFSET + 3:]


def _ns_spread(prog: Program, frames: list[bytes], ctx: Any, runs: int) -> float:
    """Mean ns of one call per frame (repeat 1), the median over `runs` sweeps."""
    return statistics.median(
        sum(prog.test_run(f, ctx=ctx, repeat=1).duration_ns for f in frames) / len(frames)
        for _ in range(runs))


def _spread_figures(out: dict[str, Any], suffix: str, prog: Program, baseline: Program,
                    frames: dict[str, list[bytes]], ctx: Any, runs: int) -> None:
    out["spread_baseline_ns" + suffix] = round(_ns_spread(baseline, frames["hit"], ctx, runs), 1)
    for case in ("hit", "loss", "miss"):
        out[f"spread_{case}_ns" + suffix] = round(_ns_spread(prog, frames[case], ctx, runs), 1)


def measure_flow(repeat: int = 1_000_000, runs: int = 5) -> dict[str, Any]:
    """The ingress figures of flow mode (module docstring), ns per packet."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    from datapath.flow import FlowEnd, FlowTable, Uplink, link_entries

    inner = Ether(_frames()["hit"])[VXLAN].payload
    peer = HIT_VNI + 1

    def vx(vni: int, v6: bool) -> bytes:
        ip = IPv6(src="fc00::11", dst="fc00::1") if v6 else IP(src="192.0.2.11", dst="192.0.2.1")
        udp = UDP(sport=50000, dport=4789) if v6 else UDP(sport=50000, dport=4789, chksum=0)
        return bytes(Ether(src="02:aa:00:00:00:11", dst="02:aa:00:00:00:01") / ip / udp /
                     VXLAN(flags=0x08, vni=vni) / inner)

    out: dict[str, Any] = {}
    for flow in (False, True):
        with Classifier.load(ClassifierConfig(max_links=MANY if flow else 64,
                                              flow_mode=flow)) as clf:
            ctx = clf.abi.SkBuff()
            for vni in (HIT_VNI, peer, MISS_VNI):
                clf.set_link(vni)
            if not flow:
                out["ingress_ns"] = _ns(clf.ingress_program, vx(HIT_VNI, False), ctx, repeat, runs)
                continue
            out["flow_pass_ns"] = _ns(clf.ingress_program, vx(MISS_VNI, False), ctx, repeat, runs)
            # BPF_PROG_TEST_RUN runs the program `repeat` times on one skb: both endpoints'
            # VTEPs are the box's own address, so each run finds the frame the last one wrote
            # addressed to the box again, with the other VNI, and rewrites it in full.
            for v6, name in ((False, "flow_rewrite_ns"), (True, "flow_rewrite_csum_ns")):
                box = "fc00::1" if v6 else "192.0.2.1"
                table = FlowTable(clf)
                table.set(link_entries(Uplink(1, box, "02:aa:00:00:00:01"),
                                       FlowEnd(HIT_VNI, box, "02:aa:00:00:00:11"),
                                       FlowEnd(peer, box, "02:aa:00:00:00:12")))
                before = table.counters()["redirect"]
                out[name] = _ns(clf.ingress_program, vx(HIT_VNI, v6), ctx, repeat, runs)
                if table.counters()["redirect"] - before != repeat * runs:
                    raise RuntimeError(f"{name}: not every run was rewritten ({table.counters()})")
            clf.delete_link(MISS_VNI)  # room for the fillers: both maps full at MANY
            _flow_spread(out, clf, vx, runs)
    return out


def _flow_spread(out: dict[str, Any], clf: Classifier, vx: Any, runs: int) -> None:
    """The IPv4 rewrite, one call per frame: the one link's frame SPREAD times, then, with
    moa_links and moa_flow filled to MANY entries (the fillers of moa_bus/lab/vm/fill_map.py,
    as the VM's scale scenario has them), SPREAD frames to distinct fillers in a fixed random
    order. Every call must have been a rewrite (the redirect counter says so)."""
    from datapath.flow import FlowEnd, FlowTable, Uplink, link_entries
    from moa_bus.lab.vm.fill_map import filler_flows

    box = "192.0.2.1"
    table = FlowTable(clf)
    table.set(link_entries(Uplink(1, box, "02:aa:00:00:00:01"),
                           FlowEnd(HIT_VNI, box, "02:aa:00:00:00:11"),
                           FlowEnd(HIT_VNI + 1, box, "02:aa:00:00:00:12")))
    prog = clf.ingress_program
    ctx = clf.abi.SkBuff()

    def sweep(name: str, frames: list[bytes]) -> None:
        before = table.counters()["redirect"]
        out[name] = round(_ns_spread(prog, frames, ctx, runs), 1)
        if table.counters()["redirect"] - before != len(frames) * runs:
            raise RuntimeError(f"{name}: not every call was rewritten ({table.counters()})")

    sweep("flow_rewrite_spread_ns", [vx(HIT_VNI, False)] * SPREAD)
    fillers = filler_flows(table, FLOW_FILLER_VNI, MANY - len(table.raw()))
    latency = schemas.Emulation(latency=1_000_000)
    clf.update_links({e.vni: clf.encode_stages(latency, None) for e in fillers})
    table.set(fillers)
    out[f"flow_entries_{MANY}"] = len(table.raw())
    out[f"flow_links_{MANY}"] = clf.link_count()
    picked = random.Random(2).sample(fillers, SPREAD)
    sweep(f"flow_rewrite_spread_ns_{MANY}", [vx(e.vni, False) for e in picked])


def measure(repeat: int = 1_000_000, runs: int = 5) -> dict[str, Any]:
    frames = _frames()
    out: dict[str, Any] = {}
    hit = schemas.Emulation(capacity=100_000_000_000, latency=1_000_000)
    loss = schemas.Emulation(loss=0.01)
    with BpfObject.open(object_path("baseline")) as base, \
            Classifier.load(ClassifierConfig(max_links=MANY + 1)) as clf:
        ctx = clf.abi.SkBuff()
        baseline = base.program("moa_baseline")
        out["baseline_ns"] = _ns(baseline, frames["hit"], ctx, repeat, runs)
        one = {case: [frames[case]] * SPREAD for case in ("hit", "loss", "miss")}
        # The map's links are 1..65535 and HIT_VNI; every 8th of them, and as many misses.
        # in a fixed random order, so that no stride through memory helps the prefetcher.
        order = random.Random(1).sample(range(SPREAD), SPREAD)
        spread = {case: [_with_vni(frames["hit"], 8 * i + 1) for i in order]
                  for case in ("hit", "loss")}
        spread["miss"] = [_with_vni(frames["miss"], MISS_VNI + 8 * i) for i in order]
        for links in (1, MANY):
            suffix = "" if links == 1 else f"_{MANY}"
            if links == MANY:
                t0 = time.monotonic()
                for vni in range(1, MANY):          # + HIT_VNI = 65,536 links
                    clf.set_link(vni, egress=hit)
                out["fill_s"] = round(time.monotonic() - t0, 2)
                clf.set_link(HIT_VNI, egress=hit)
                _spread_figures(out, suffix, clf.egress_program, baseline, spread, ctx, runs)
                out["distinct_vnis_65536"] = len(set(spread["hit"]))
                # How the cost grows with the links in use: the same sweep over fewer of them.
                out["spread_hit_ns_by_links_in_use"] = {
                    n: round(_ns_spread(clf.egress_program,
                                        (spread["hit"][:n] * (SPREAD // n))[:SPREAD], ctx, runs), 1)
                    for n in CURVE}
                for vni in range(1, MANY, 8):
                    clf.set_link(vni, egress=loss)
                out["spread_loss_ns" + suffix] = round(
                    _ns_spread(clf.egress_program, spread["loss"], ctx, runs), 1)
            out["links" + suffix] = len(clf.vnis()) + (0 if HIT_VNI in clf.vnis() else 1)
            clf.set_link(HIT_VNI, egress=hit)
            if links == 1:
                _spread_figures(out, suffix, clf.egress_program, baseline, one, ctx, runs)
                clf.set_link(HIT_VNI, egress=loss)
                out["spread_loss_ns"] = round(
                    _ns_spread(clf.egress_program, one["loss"], ctx, runs), 1)
                clf.set_link(HIT_VNI, egress=hit)
            out["hit_ns" + suffix] = _ns(clf.egress_program, frames["hit"], ctx, repeat, runs)
            clf.set_link(HIT_VNI, egress=loss)
            out["loss_ns" + suffix] = _ns(clf.egress_program, frames["loss"], ctx, repeat, runs)
            if links == 1:
                # The hit with CoDel or PIE on (the locked path; the queue stays below target
                # at this rate), and CoDel with ECN as well (the inner IP header read too).
                for name, kind, ecn in (("codel", "codel", False), ("codel_ecn", "codel", True),
                                        ("pie", "pie", False)):
                    clf.set_link(HIT_VNI, egress=msgspec.structs.replace(
                        hit, aqm=schemas.Aqm(kind=kind, ecn=ecn)))
                    out[name + "_ns"] = _ns(clf.egress_program, frames["hit"], ctx, repeat, runs)
                clf.set_link(HIT_VNI, egress=loss)
            out["miss_ns" + suffix] = _ns(clf.egress_program, frames["miss"], ctx, repeat, runs)
            out["non_vxlan_ns" + suffix] = _ns(clf.egress_program, frames["non_vxlan"], ctx,
                                               repeat, runs)
        out["baseline_ns_end"] = _ns(baseline, frames["hit"], ctx, repeat, runs)
    out.update(measure_flow(repeat, runs))
    out["hit_over_baseline_ns"] = out["hit_ns"] - out["baseline_ns"]
    # What moa pays above the empty program per one-packet call, spread map against one link.
    moa_1 = out["spread_hit_ns"] - out["spread_baseline_ns"]
    moa_many = out[f"spread_hit_ns_{MANY}"] - out[f"spread_baseline_ns_{MANY}"]
    out["hit_65536_over_1"] = round(moa_many / moa_1 - 1, 4)
    out["target_hit_met"] = out["hit_over_baseline_ns"] <= TARGET_HIT_OVER_BASELINE_NS
    out["target_65536_met"] = out["hit_65536_over_1"] <= TARGET_MANY_OVER_ONE
    out.update(repeat=repeat, runs=runs, kernel=platform.release(), cpus=os.cpu_count())
    return out


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1_000_000:
        raise SystemExit("moa bench datapath: --repeat must be at least 1,000,000")
    r = measure(args.repeat, args.runs)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"moa datapath, ns/packet (BPF_PROG_TEST_RUN, repeat {r['repeat']:,}, "
          f"median of {r['runs']}; kernel {r['kernel']})")
    print(f"{'case':<12}{'1 link':>10}{MANY:>10,}  (one packet repeated: its link stays in cache)")
    print(f"{'baseline':<12}{r['baseline_ns']:>10.0f}{r['baseline_ns_end']:>10.0f}  (start / end)")
    for case in ("hit", "loss", "miss", "non_vxlan"):
        print(f"{case:<12}{r[case + '_ns']:>10.0f}{r[f'{case}_ns_{MANY}']:>10.0f}")
    for case in ("codel", "codel_ecn", "pie"):
        print(f"{'hit ' + case.replace('_', '+'):<12}{r[case + '_ns']:>10.0f}")
    print(f"spread: one call per packet, {r['distinct_vnis_65536']:,} distinct VNIs over the "
          f"{MANY:,}-link map (1 link: its one VNI as often)")
    for case in ("baseline", "hit", "loss", "miss"):
        print(f"{case:<12}{r[f'spread_{case}_ns']:>10.1f}{r[f'spread_{case}_ns_{MANY}']:>10.1f}")
    curve = r["spread_hit_ns_by_links_in_use"]
    print("spread hit by links in use: " + ", ".join(f"{n:,}: {ns:.0f}" for n, ns in curve.items()))
    for case in ("ingress", "flow_pass", "flow_rewrite", "flow_rewrite_csum"):
        print(f"{case:<20}{r[case + '_ns']:>10.0f}  (moa_ingress, 1 link)")
    print(f"{'flow_rewrite spread':<20}{r['flow_rewrite_spread_ns']:>10.1f}"
          f"{r[f'flow_rewrite_spread_ns_{MANY}']:>10.1f}  (one call per packet: 1 link / "
          f"moa_flow full, {r[f'flow_entries_{MANY}']:,} entries, {SPREAD:,} distinct VNIs)")
    print(f"hit - baseline: {r['hit_over_baseline_ns']:.0f} ns (target <= "
          f"{TARGET_HIT_OVER_BASELINE_NS}: {'met' if r['target_hit_met'] else 'MISSED'}); "
          f"{MANY:,} links (spread) vs 1: {r['hit_65536_over_1']:+.1%} (target <= "
          f"{TARGET_MANY_OVER_ONE:.0%}: {'met' if r['target_65536_met'] else 'MISSED'})")
    return 0
