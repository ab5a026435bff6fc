"""The demo's traffic and what it measures: pings between nodes over each link, and the loss a
link dropped, read from its own counters between two statuses."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

import schemas
from moa_bus.lab.demo.processes import Processes
from moa_bus.lab.host_testbed import PingResult, Testbed, parse_ping, ping_cmd


@dataclass
class Pair:
    """Two nodes that ping each other over one link."""
    link: str
    src: int  # node number
    dst: int
    dst_ip: str

    @property
    def label(self) -> str:
        return f"node{self.src} -> node{self.dst} ({self.link})"


PAIRS = (Pair("p2p", 1, 2, "192.168.10.2"), Pair("lan", 1, 3, "192.168.20.3"),
         Pair("lan", 2, 3, "192.168.20.3"))


def run_pings(procs: Processes, tb: Testbed, pairs: tuple[Pair, ...], count: int,
              interval: float, tag: str) -> list[PingResult]:
    """`count` pings every `interval` s over every pair at once; their results in order."""
    running = [(procs.popen(ping_cmd(tb.node(p.src), p.dst_ip, count, interval),
                            procs.tmp / f"ping-{tag}-{i}.txt"), i) for i, p in enumerate(pairs)]
    results = []
    for proc, i in running:
        try:
            proc.wait(timeout=count * interval + 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        results.append(parse_ping((procs.tmp / f"ping-{tag}-{i}.txt").read_text(errors="replace")))
    return results


def measured_loss(before: schemas.StatusReply, after: schemas.StatusReply,
                  link: str) -> tuple[float, int]:
    """(dropped / offered, offered) on `link`'s egress stages between two statuses: the link's
    own counters (packets counts what passed, drops what it dropped)."""
    def sums(st: schemas.StatusReply) -> tuple[int, int]:
        passed = dropped = 0
        for m in st.materializations:
            for lk in m.links:
                if lk.id == link:
                    for c in lk.counters:
                        if c.stage == "egress":
                            passed += c.packets
                            dropped += c.drops.get("loss", 0)
        return passed, dropped
    p0, d0 = sums(before)
    p1, d1 = sums(after)
    offered = (p1 - p0) + (d1 - d0)
    return ((d1 - d0) / offered if offered else 0.0), offered
