"""Issue 16's throughput at scale, from the session's one boot (conftest.reference_run; the
scenario: moa_bus/lab/vm/scale_scenarios.py): one TCP flow through moa's link `tput` with the
classifier's map as materialized and with it filled to 65,534 VNIs, in balanced rounds of
(1, 65,534, 65,534, 1) back to back, a round's ratio its many-link runs' throughput over its
1-link runs' (the scenario's doc says why balanced). The issue's bound: the 65,534-link
throughput at least 0.95 of the 1-link one.
Under TCG one 5 s run varies by about 8 % (rounds measured 0.89-1.08 in a quiet boot), so the
test judges the rounds' ratios statistically: their mean plus two standard errors must reach
0.95, i.e. the rounds do not show a drop below 0.95 (about 97.5 % one-sided). That the test can
fail is shown by the comparison in the same boot: netem + HTB with 4,095 u32 filters, whose
rounds (0.55-0.70) fail the same check. Five balanced rounds: with four single-pair rounds,
one stalled 1-filter run (a netem round of 1.09) once lifted netem's mean + 2 SE past 0.95; in
a balanced round a stalled run is half of its side (docs/benchmarks.md). CPU time per GB of
each case is reported, not judged. This boot is VTEP mode's (vtep_tput_ratio_65534); flow
mode's figure, with moa_flow full as well, comes from the flow-mode boot
(tests/vm/test_vm_flow_mode.py, the same check).
"""
from __future__ import annotations

import pytest

from moa_bus.lab.vm.measure import mean_plus_2se

pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]


def test_a_full_map_costs_moa_no_throughput(reference_run) -> None:
    sc = reference_run.results.get("scale", {})
    vm = reference_run.results["vm"]
    assert not sc.get("errors"), (sc, vm)
    assert '"count": 65534' in (sc.get("moa_fill") or ""), (sc, vm)   # the map was full
    moa = sc["vtep_tput_ratio_65534_by_round"]
    assert len(moa) == sc["runs"] >= 5, (sc, vm)
    assert mean_plus_2se(moa) >= 0.95, (sc, vm)
    assert sc["moa_1_cpu_s_per_gb"] and sc["moa_65534_cpu_s_per_gb"], (sc, vm)


def test_the_same_check_catches_netems_per_filter_cost(reference_run) -> None:
    sc = reference_run.results.get("scale", {})
    netem = sc.get("netem_tput_ratio_4095_by_round") or []
    assert len(netem) == sc["runs"], sc
    assert mean_plus_2se(netem) < 0.95, sc
