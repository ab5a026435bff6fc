"""A scheduled down/up in the VM (issue 14): the link `sd` goes down 2 s after a schedule's start
and up at 4 s, while hv1 sends it a numbered datagram every ms towards hv2.

The schedule is an Update sent from the box's namespace (schedule_probe.py), starting 10 s after
it is made; the sender starts ~3 s before the start and sends for 7 s, logging on
CLOCK_REALTIME (the clock of the box's schedule and of its reports: one VM, one clock) each
datagram's time before its sendto and after sendto returned. What is judged: each step's report
within 1 ms of its due time (late_ns), and the datagrams lost are exactly those sent while the
link was down. A step's write happened between its due time (the writer spins to it) and its
reported applied time (read when the write returned: a writer descheduled in between reports
late, as one boot under load did by 20 ms). A datagram met the classifier after its sendto
began and, if it arrived, before its arrival, else within `guard` of sendto's return; one whose
window meets a step's write may go either way and is counted, not judged (one CI boot saw a
datagram arrive 22 ms after its clock read, its sender descheduled; another boot, a sendto
that took 18.6 ms). Every other one met the link wholly up or wholly down: arrived if up, lost
if down. The guard (2 ms) is the time from sendto's return on hv1 to the classifier on the
box's uplink, which the VM's software emulation makes unsteady.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .batch import Batch, StepResult
from .measure import RECEIVED, in_ns, seqprobe_receiver, wait_until
from .moa_stack import HOST, MATERIALIZATION, STATE_DIR, MoaStack, link
from .scripted_testbed import Testbed

PORT = 9120
INTERVAL_S = 0.001
# The start 10 s after the Update is made: the box hands steps to its writer 5 s ahead of them
# (docs/architecture.md, "Scheduled changes"), and the sender's Python starts in seconds here.
DOWN_S, UP_S, LEAD_S = 2.0, 4.0, 10.0
SEND_S = 7.0  # from the start less 1 s to 2 s after the up step
GUARD_NS = 2_000_000


def judge(sends: list[int], arrivals: dict[int, int], reports: list[dict],
          returned: list[int] | None = None) -> dict:
    """Each datagram's fate against the reported applied times (module docstring). sends and
    returned: each datagram's time before its sendto and after it returned (returned defaults
    to sends); arrivals: each received datagram's arrival time by sequence number."""
    by_step = {r["step"]: r for r in reports}
    down, up = by_step[0]["applied_ns"], by_step[1]["applied_ns"]
    # where each step's write may have happened (module docstring)
    writes = [(min(r["due_ns"], r["applied_ns"]), r["applied_ns"])
              for r in (by_step[0], by_step[1])]
    surely_down = (writes[0][1], writes[1][0])  # after the down write, before the up one's earliest
    returned = returned or sends
    wrong: list[int] = []
    ambiguous = 0
    for seq, t in enumerate(sends):
        arrived = arrivals.get(seq)
        met_from, met_by = t, arrived if arrived is not None else returned[seq] + GUARD_NS
        if any(met_from <= hi and met_by >= lo for lo, hi in writes):
            ambiguous += 1
            continue
        met_down = surely_down[0] <= met_from and met_by < surely_down[1]
        if met_down == (arrived is not None):  # lost while down, arrived otherwise
            wrong.append(seq)
    lost = [seq for seq in range(len(sends)) if seq not in arrivals]
    return {"sent": len(sends), "received": len(arrivals), "lost": len(lost),
            "lost_first_ms": (sends[lost[0]] - down) / 1e6 if lost else None,
            "lost_last_ms": (sends[lost[-1]] - up) / 1e6 if lost else None,
            "sent_while_down": sum(1 for t in sends if down <= t < up),
            "ambiguous": ambiguous, "wrong": len(wrong), "wrong_first": wrong[:20],
            "longest_send_ms": max(b - a for a, b in zip(sends, returned)) / 1e6 if sends else 0,
            "late_ms": [by_step[i]["late_ns"] / 1e6 for i in (0, 1)],
            "down_for_ms": (up - down) / 1e6}


@dataclass
class ScheduleScenario:
    tb: Testbed
    stack: MoaStack

    def schedule(self, batch: Batch) -> None:
        py = self.stack.python
        count = int(SEND_S / INTERVAL_S)
        probe = (f"env MOA_STATE_DIR={STATE_DIR} {py} -m moa_bus.lab.vm.schedule_probe "
                 f"--nats {self.stack.nats_url} --host {HOST} --id {MATERIALIZATION} "
                 f"--link sd --down {DOWN_S} --up {UP_S} --lead {LEAD_S} "
                 '--out "$STEP.sched.json" --started "$STEP.start"')
        batch.add("schedule-moa", [
            *seqprobe_receiver(py, self.tb.ns("hv2"), PORT, also=("_p",)),
            in_ns(self.stack.box, f"{probe} &"), "_p=$!",
            wait_until('[ -s "$STEP.start" ]', timeout_s=120, poll_s=0.2),
            '[ "$(cat "$STEP.start")" != 0 ]',  # the Update was refused: its ack says why
            # the sender's first datagram ~1 s before the start (Python's start: ~2 s here)
            '_w=$(( ($(cat "$STEP.start") - $(date +%s%N)) / 1000000 - 3000 ))',
            '[ "$_w" -gt 0 ] && sleep "$(echo "$_w" | awk \'{printf "%.3f", $1 / 1000}\')"',
            in_ns(self.tb.ns("hv1"), f"{py} -m moa_bus.lab.vm.seqprobe send "
                                      f"--dst {link('sd').address('hv2')} --port {PORT} "
                                      f"--count {count} --interval {INTERVAL_S} "
                                      '--log "$STEP.sends.json"'),
            "wait $_p", RECEIVED,
        ])

    def analyse(self, ok: dict[str, StepResult]) -> dict:
        out: dict = {"method": " ".join(__doc__.split("\n\n")[-1].split())}
        s = ok.get("schedule-moa")
        if s is None:
            return out
        try:
            sched = json.loads(s.file(".sched.json").read_text())
            log = json.loads(s.file(".sends.json").read_text())
            arrivals = json.loads(s.file(".arrivals.json").read_text())["arrivals"]
            first = {}  # a datagram's first arrival (none is duplicated here)
            for seq, ns in arrivals:
                first.setdefault(seq, ns)
            out.update(judge(log["sends"], first, sched["reports"], log.get("returned")))
        except (OSError, ValueError, KeyError) as e:
            out["error"] = f"{type(e).__name__}: {e}"
        return out
