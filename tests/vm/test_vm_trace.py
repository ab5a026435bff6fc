"""Issue 14's trace-driven capacity in the VM (conftest.reference_run; the scenario:
moa_bus/lab/vm/trace_scenario.py): UDP above the trace's rate over the first 60 s of
TMobile-LTE-short.down set on a link with `moa set ... trace FILE`, the datagrams a receiver
gets in each second against the trace's delivery opportunities in that second.

The bound, calibrated in this VM (docs/benchmarks.md): most seconds match the trace exactly;
where the VM's software emulation stalls delivery or the receiver's softirq for tens of ms, a
second's datagrams are counted in the next (a -5 % second beside a +2 % one). Judged: every
second within 5 % but for at most 3 of the 60, those within 10 %, the minute within 2 %.
"""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]


def test_trace_second_by_second(reference_run) -> None:
    t = reference_run.results.get("trace", {})
    assert "error" not in t and t.get("seconds") == 60, (t, reference_run.results["vm"])
    shown = {k: t[k] for k in ("error_max", "seconds_over_5pct", "received", "opportunities")}
    assert len(t["seconds_over_5pct"]) <= 3 and t["error_max"] <= 0.10, shown
    assert abs(t["total_ratio"] - 1) <= 0.02, t["total_ratio"]
