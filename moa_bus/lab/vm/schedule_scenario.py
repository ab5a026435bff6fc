"""A scheduled down/up in the VM (issue 14): the link `sd` goes down 2 s after a schedule's start
and up at 4 s, while hv1 sends it a numbered datagram every ms towards hv2.

The schedule is an Update sent from the box's namespace (schedule_probe.py), starting 10 s after
it is made; the sender starts ~3 s before the start and sends for 7 s; the sender logs each datagram's send time on CLOCK_REALTIME, the clock of the
box's schedule and of its reports (one VM: one clock). What is judged: each step's report
within 1 ms of its due time (late_ns), and the datagrams lost are exactly those sent while the
link was down. A step's write happened between its due time (the writer spins to it) and its
reported applied time (read when the write returned: a writer descheduled in between reports
late, as one boot under load did by 20 ms); a datagram sent from the earlier of the two less
`guard` to the applied time may go either way and is counted, not judged. Every other one
sent before the down step, or after the up step, arrives; every other one sent between them
is lost. The guard (2 ms) is the time from sendto on hv1 to the classifier on the box's
uplink, which the VM's software emulation makes unsteady.
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


def judge(sends: list[int], received: set[int], reports: list[dict]) -> dict:
    """Each datagram's fate against the reported applied times (module docstring)."""
    by_step = {r["step"]: r for r in reports}
    down, up = by_step[0]["applied_ns"], by_step[1]["applied_ns"]
    # where each step's write may have happened, less the guard (module docstring)
    bands = [(min(r["due_ns"], r["applied_ns"]) - GUARD_NS, r["applied_ns"])
             for r in (by_step[0], by_step[1])]
    wrong: list[int] = []
    ambiguous = 0
    for seq, t in enumerate(sends):
        if any(lo <= t < hi for lo, hi in bands):
            ambiguous += 1
            continue
        if (down <= t < up) == (seq in received):  # lost while down, received otherwise
            wrong.append(seq)
    lost = [seq for seq in range(len(sends)) if seq not in received]
    return {"sent": len(sends), "received": len(received), "lost": len(lost),
            "lost_first_ms": (sends[lost[0]] - down) / 1e6 if lost else None,
            "lost_last_ms": (sends[lost[-1]] - up) / 1e6 if lost else None,
            "sent_while_down": sum(1 for t in sends if down <= t < up),
            "ambiguous": ambiguous, "wrong": len(wrong), "wrong_first": wrong[:20],
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
        out: dict = {"method": __doc__.split("\n\n")[-1].strip()}
        s = ok.get("schedule-moa")
        if s is None:
            return out
        try:
            sched = json.loads(s.file(".sched.json").read_text())
            sends = json.loads(s.file(".sends.json").read_text())["sends"]
            arrivals = json.loads(s.file(".arrivals.json").read_text())["arrivals"]
            out.update(judge(sends, {seq for seq, _ in arrivals}, sched["reports"]))
        except (OSError, ValueError, KeyError) as e:
            out["error"] = f"{type(e).__name__}: {e}"
        return out
