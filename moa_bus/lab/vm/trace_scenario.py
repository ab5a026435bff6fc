"""A trace-driven link in the VM (issue 14): UDP over the first 60 s of a cellular trace, second
by second against the trace's own capacity.

The link `tr` gets the trace towards hv2 with `moa set tr trace FILE --endpoint 1031` (the
runtime path an operator takes: the file read by the CLI, an Update of ~0.5 MB through NATS),
then hv1 sends numbered 1,472-byte datagrams (1,500-byte IP packets: one delivery opportunity
each, docs/semantics.md, "Trace-driven capacity") at 36 Mbit/s for `seconds` + 2 s, above the
trace's busiest second (31.6 Mbit/s), so the link is never idle and every opportunity carries
one datagram; a 1 MB queue absorbs the sender's stalls. hv2 records each arrival's time
(seqprobe.py: the kernel's receive time). The trace starts with the first frame towards hv2
after it is set: the first datagram (the receiver is started before the trace is set). Its
origin is the first arrival less the first opportunity after 0 ms; second k then holds the
arrivals in [k, k + 1) s after it, against the trace's opportunities in that second (the trace
repeats after its last opportunity, as mm-link's does). What is judged: every second within 5 %
of the trace.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from .batch import Batch, StepResult
from .measure import RECEIVED, in_ns, seqprobe_receiver
from .moa_stack import HOST, MATERIALIZATION, MoaStack, link
from .scripted_testbed import Testbed

# Test data beside the other traces' heads (its README: origin and license).
TRACE = (Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "traces"
         / "TMobile-LTE-short.down.60s.gz")
TRACE_IN_VM = "/tmp/moa-trace-60s"  # the VM's /tmp: a tmpfs of its own
PORT = 9110
PAYLOAD = 1472
INTERVAL_S = 0.00033  # 3,030 datagrams a second: 36.4 Mbit/s of IP packets


def opportunities() -> list[int]:
    return [int(line) for line in gzip.open(TRACE, "rt") if line.strip()]


def expected_per_second(t_ms: list[int], seconds: int) -> list[int]:
    """Opportunities in each second from the trace's start, the trace repeating every
    t_ms[-1] ms."""
    period, counts, j = t_ms[-1], [0] * seconds, 0
    while j * period < seconds * 1000:
        for t in t_ms:
            at = t + j * period
            if at < seconds * 1000:
                counts[at // 1000] += 1
        j += 1
    return counts


def compare(arrival_ns: list[int], t_ms: list[int], seconds: int) -> dict:
    """Second-by-second datagrams received against the trace's opportunities."""
    first_opp = next(t for t in t_ms if t > 0)  # an idle link's first packet takes it
    origin = min(arrival_ns) - first_opp * 1_000_000
    got = [0] * seconds
    for ns in arrival_ns:
        k = (ns - origin) // 1_000_000_000
        if 0 <= k < seconds:
            got[k] += 1
    want = expected_per_second(t_ms, seconds)
    errors = [g / w - 1 for g, w in zip(got, want)]
    return {"seconds": seconds, "received": got, "opportunities": want,
            "error_max": max(abs(e) for e in errors),
            "seconds_over_5pct": [k for k, e in enumerate(errors) if abs(e) > 0.05],
            "total_ratio": sum(got) / sum(want)}


@dataclass
class TraceScenario:
    tb: Testbed
    stack: MoaStack
    seconds: int = 60

    def _set(self, label: str, *words: str, check: bool = True) -> list[str]:
        return self.stack.timed_cli(label, "set", "tr", *words, "--endpoint",
                                    str(dict(link("tr").members)["hv2"]), "--host", HOST,
                                    "--id", MATERIALIZATION, check=check)

    def trace(self, batch: Batch) -> None:
        py = self.stack.python
        count = int((self.seconds + 2) / INTERVAL_S)
        batch.add("trace-moa", [
            f"zcat {TRACE} >{TRACE_IN_VM}",
            *seqprobe_receiver(py, self.tb.ns("hv2"), PORT),
            *self._set("trace-on", "trace", TRACE_IN_VM, "queue", "1MB"),
            in_ns(self.tb.ns("hv1"), f"{py} -m moa_bus.lab.vm.seqprobe send "
                                      f"--dst {link('tr').address('hv2')} "
                                      f"--port {PORT} --count {count} --interval {INTERVAL_S} "
                                      f"--size {PAYLOAD}"),
            RECEIVED,
            # the direction follows the link's emulation again: later status pages stay small
            *self._set("trace-off", "trace", "inherit", "queue", "inherit", "capacity",
                       "inherit", check=False),
        ])

    def analyse(self, ok: dict[str, StepResult]) -> dict:
        out: dict = {"method": " ".join(__doc__.split("\n\n")[-1].split()), "trace": TRACE.name}
        s = ok.get("trace-moa")
        if s is None:
            return out
        try:
            arrivals = json.loads(s.file(".arrivals.json").read_text())["arrivals"]
            out.update(compare([ns for _, ns in arrivals], opportunities(), self.seconds))
            out["sent"] = int((self.seconds + 2) / INTERVAL_S)
        except (OSError, ValueError, KeyError, StopIteration) as e:
            out["error"] = str(e)
        return out
