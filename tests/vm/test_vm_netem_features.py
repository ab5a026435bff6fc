"""Issue 13's duplicate, reorder-with-gap and slots in the VM, beside netem's in the same boot
(conftest.reference_run; the scenario: moa_bus/lab/vm/netem_features.py), as a receiver counts
numbered UDP datagrams:

- duplicate 10 %: the share of datagrams the receiver got twice is within 4 sigma of 0.1
  (binomial over the ~3,000 datagrams) for moa, as for netem.
- reorder 25 % gap 5 with 10 ms of delay and a datagram every 2 ms: the share that overtook a
  lower-numbered one is within 4 sigma of P / (1 + (G - 1) P) = 0.125 for moa, as for netem.
- slot 20 ms with a datagram every 2 ms: bursts 20 ms apart (median within 2 ms), the ~10
  datagrams due in a slot each (mean of the whole bursts within 1), for moa as for netem.
- slot 20 ms, 6 packets a slot, the same sending (a backlog of 4 a slot): no burst above 6, the
  whole bursts 6 on average (within 0.5) and 20 ms apart; nothing lost.
"""
from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]


def _within_4_sigma(ratio: float, p: float, n: int) -> bool:
    return abs(ratio - p) <= 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("side", ["moa", "netem"])
def test_duplicate_share(reference_run, side: str) -> None:
    f = reference_run.results.get("features", {}).get("duplicate", {})
    r = f.get(side)
    assert r and "error" not in r and r["received"] >= 0.98 * r["sent"], (
        f, reference_run.results["vm"])
    assert _within_4_sigma(r["duplicate_ratio"], 0.1, r["received"]), f


@pytest.mark.parametrize("side", ["moa", "netem"])
def test_reorder_with_gap_share(reference_run, side: str) -> None:
    f = reference_run.results.get("features", {}).get("reorder", {})
    r = f.get(side)
    assert r and "error" not in r and r["received"] >= 0.98 * r["sent"], (
        f, reference_run.results["vm"])
    assert _within_4_sigma(r["early_ratio"], 0.125, r["received"]), f



def _slot_run(reference_run, name: str, side: str) -> dict:
    f = reference_run.results.get("features", {}).get(name, {})
    r = f.get(side)
    assert r and "error" not in r and r["received"] >= 0.98 * r["sent"], (
        f, reference_run.results["vm"])
    assert r["burst_spacing_median_ms"] is not None, f
    assert abs(r["burst_spacing_median_ms"] - 20) <= 2, f
    return r


@pytest.mark.parametrize("side", ["moa", "netem"])
def test_slot_bursts(reference_run, side: str) -> None:
    r = _slot_run(reference_run, "slot", side)
    assert abs(r["burst_mean_inner"] - 10) <= 1, r


@pytest.mark.parametrize("side", ["moa", "netem"])
def test_slot_packet_limit(reference_run, side: str) -> None:
    r = _slot_run(reference_run, "slot_pkts", side)
    assert r["burst_max"] <= 6 and abs(r["burst_mean_inner"] - 6) <= 0.5, r
