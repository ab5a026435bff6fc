"""netem's duplicate, reorder-with-gap and slots next to moa's in the VM (issue 13), seen by a
receiver: numbered UDP datagrams hv1 -> hv2 (moa_bus/lab/vm/seqprobe.py) over a moa link and,
in the same boot, over the plain bridge lan0 with netem towards hv2.

    feature    moa link (moa_stack.LINKS)                       netem (towards hv2)
    duplicate  dp: 10 ms, duplicate 0.1                        delay 10ms duplicate 10%
    reorder    ro: 10 ms, reorder_early 0.25 gap 5             delay 10ms reorder 25% gap 5
    slot       sa: 10 ms, slot 20 ms                           delay 10ms slot 20ms
    slot_pkts  sb: 10 ms, slot 20 ms, 6 packets a slot         delay 10ms slot 20ms packets 6

Datagrams every 2 ms: 5 are in flight within the 10 ms delay, so an early one overtakes. What
is compared: the duplicated share (theory 0.1); the share of datagrams that overtook a lower-
numbered one (theory P / (1 + (G - 1) P) = 0.125: a candidate every G-th delayed packet, early
with probability P); the arrivals grouped into bursts (no more than 5 ms between neighbours):
a slot every 20 ms releases the ~10 datagrams that became due in it (slot), or at most 6 of them
(slot_pkts: 300 datagrams, the backlog of 4 a slot draining after the last is sent).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from . import shaping
from .batch import Batch, StepResult
from .impairment_scenarios import netem_towards
from .measure import RECEIVED, in_ns, seqprobe_receiver
from .moa_stack import MoaStack, link
from .scripted_testbed import Testbed
from .seqprobe import analyse

FEATURES = {  # name -> (moa link, netem options, datagrams, interval s)
    "duplicate": ("dp", "delay 10ms duplicate 10%", 3000, 0.002),
    "reorder": ("ro", "delay 10ms reorder 25% gap 5", 3000, 0.002),
    "slot": ("sa", "delay 10ms slot 20ms", 1500, 0.002),
    "slot_pkts": ("sb", "delay 10ms slot 20ms packets 6", 300, 0.002),
}
PORT = 9100


@dataclass
class NetemFeatures:
    tb: Testbed
    stack: MoaStack
    netem_vni: int      # lan0's VNI on hv2
    netem_dst: str      # hv2's address on lan0

    def _probe(self, dst: str, count: int, interval_s: float) -> list[str]:
        py = self.stack.python
        return [
            *seqprobe_receiver(py, self.tb.ns("hv2"), PORT),
            in_ns(self.tb.ns("hv1"), f"{py} -m moa_bus.lab.vm.seqprobe send --dst {dst} "
                                      f"--port {PORT} --count {count} --interval {interval_s}"),
            RECEIVED,
        ]

    def features(self, batch: Batch) -> None:
        for name, (lk, opts, count, interval) in FEATURES.items():
            batch.add(f"feat-{name}-moa", shaping.clear(self.tb)
                      + self._probe(link(lk).address("hv2"), count, interval))
            batch.add(f"feat-{name}-netem", netem_towards(self.tb, (self.netem_vni,), opts)
                      + self._probe(self.netem_dst, count, interval) + shaping.clear(self.tb))

    def analyse(self, ok: dict[str, StepResult]) -> dict:
        out: dict = {"method": " ".join(__doc__.split("\n\n")[-1].split())}
        for name, (_, opts, count, _) in FEATURES.items():
            r: dict = {"netem": opts}
            for side in ("moa", "netem"):
                s = ok.get(f"feat-{name}-{side}")
                if s is None:
                    continue
                try:
                    arrivals = json.loads(s.file(".arrivals.json").read_text())["arrivals"]
                    r[side] = analyse(arrivals, count)
                except (OSError, ValueError, KeyError) as e:
                    r[side] = {"error": str(e)}
            out[name] = r
        return out
