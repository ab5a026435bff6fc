"""Issue 14's scheduled changes in the VM (conftest.reference_run; the scenario:
moa_bus/lab/vm/schedule_scenario.py): a link scheduled down at +2 s and up at +4 s while a
datagram crosses it every ms. The datagrams lost are exactly those sent while the link was
down (outside a 2 ms guard band at each change, whose datagrams are counted and may go either
way).

How late a step is: the 1 ms bound is judged on the host (tests/test_bus_schedule.py, the
reports within 0.3 ms with the service kept busy). Under this VM's software emulation a
process that spins towards its time is still descheduled for ms by the host (measured: the
first step 44 ms late, the writer's first write, the second 3.6 ms); here the reports are
printed and judged against 100 ms, which a step left to the service's event loop or a lost
hand-over to the writer process would exceed by far.
"""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]


def _run(reference_run) -> dict:
    r = reference_run.results.get("schedule", {})
    assert "error" not in r and r.get("sent", 0) >= 6000, (r, reference_run.results["vm"])
    return r


def test_scheduled_steps_reported_in_time(reference_run) -> None:
    r = _run(reference_run)
    print(f"schedule lateness in the VM (ms): {r['late_ms']}")
    assert all(0 <= late <= 100 for late in r["late_ms"]), r


def test_scheduled_down_loses_exactly_what_was_sent_while_down(reference_run) -> None:
    r = _run(reference_run)
    assert r["wrong"] == 0, r
    assert (r["sent_while_down"] - r["ambiguous"] <= r["lost"]
            <= r["sent_while_down"] + r["ambiguous"]), r
    # the link was down for the 2 s between the steps: about 2,000 datagrams lost
    assert 1900 <= r["lost"] <= 2100, r
