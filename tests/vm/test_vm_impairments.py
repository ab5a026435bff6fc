"""Issue 13's impairments in the VM, from the session's one boot (conftest.reference_run; the
scenarios: moa_bus/lab/vm/impairment_scenarios.py).

- The jitter's distributions: moa's added round-trip delay and netem's, both directions shaped
  with 20 ms and 4 ms of normal or pareto jitter, are one distribution: their two-sample
  Kolmogorov-Smirnov distance is under the 0.1% critical value for 600 + 600 pings (0.113) plus
  the distance between the two unshaped paths, each about its median (the plain bridge and
  moa's redirect pair; for independent parts the distance of the sums is at most the sum of
  the parts' distances). Measured in four boots: normal 0.033-0.060, pareto 0.045-0.090; the
  unshaped paths 0.037-0.068 apart.
- A link taken down and up under load: only its own datagrams are lost, the box counted them
  as link_down, and it carries its full rate again after `up`.
- An access link of 20 Mbit/s down and 2 Mbit/s up (its hv2 endpoint's own capacity): one TCP
  flow each way, each alone, at its own direction's rate within the capacity scenario's TCP
  tolerance (97-102 % of 1448/1538 of the rate); status shows the link's 20 Mbit/s and hv2's
  direction at 2 Mbit/s. Both at once are recorded: the down flow's ACKs share the up direction.

And issue 14's queue management: one bulk TCP flow over 20 ms each way, 20 Mbit/s and a 1 MB
queue. With the FIFO (`bb`) the flow fills the queue: the median RTT under load is at least
100 ms above the idle RTT. With CoDel (`cd`, target 5 ms) the median RTT under load stays within
10 ms of the idle RTT plus the target, CoDel dropped (reason `aqm`) and the flow's goodput is at
least 0.9 of the FIFO's. Beside it, in the same boot, the kernel's own codel on an equivalent
link (netem 20 ms + HTB at the same rate, a codel leaf per direction, on the plain bridge lan0):
moa's CoDel keeps the RTT under load within 10 ms of what the kernel's keeps, and carries at
least 0.85 of its goodput. Calibrated on one boot under host load 4-6 (moa +7.6 ms, 14.7
Mbit/s; the kernel's +3.8 ms, 13.6 Mbit/s): the bounds leave room for TCG's timers, not for an
algorithm that lets the queue grow (the FIFO: +100 ms and more).
"""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]


@pytest.mark.parametrize("dist", ["normal", "pareto"])
def test_jitter_distribution_is_netems(reference_run, dist: str) -> None:
    d = reference_run.results.get("distributions", {}).get(dist)
    vm = reference_run.results["vm"]
    assert d is not None and d["moa_count"] >= 590 and d["netem_count"] >= 590, (d, vm)
    assert d["ks"] <= d["ks_critical"] + d["base_ks"], (d, vm)


def test_a_link_down_loses_only_its_own_frames_and_comes_back(reference_run) -> None:
    st = reference_run.results.get("link_state")
    vm = reference_run.results["vm"]
    assert st and st["cli"] == {"down": 0, "up": 0}, (st, vm)
    assert st["ctl_lost"] == 0, (st, vm)                   # the other link, same time
    assert st["dn_lost"] > 0 and st["dn_link_down_drops"] > 0, (st, vm)
    assert st["dn_state"] == "up", st
    # Every whole second from 2 s after `up` was acked carries the link's rate again.
    after = st["dn_intervals_mbps"][int(st["acked_s"]["up"]) + 2:-1]  # the last may be partial
    assert len(after) >= 5, (st, vm)
    assert min(after) >= 0.9 * 4.0, (st, vm)


def test_an_access_link_carries_tcp_at_each_direction_s_own_rate(reference_run) -> None:
    acc = reference_run.results.get("access")
    vm = reference_run.results["vm"]
    assert acc and "down_goodput_ratio" in acc and "up_goodput_ratio" in acc, (acc, vm)
    assert 0.97 <= acc["down_goodput_ratio"] <= 1.02, (acc, vm)   # 20 Mbit/s towards hv1
    # 2 Mbit/s towards hv2: its default queue holds a few frames, so TCP's own losses cost it a
    # few percent (0.978 with 79 retransmissions in the first run): a wider lower bound
    assert 0.95 <= acc["up_goodput_ratio"] <= 1.02, (acc, vm)
    # each direction at its own rate, not the other's: 10x apart
    assert 8 <= acc["down_goodput_mbps"] / acc["up_goodput_mbps"] <= 12, (acc, vm)
    assert acc["status_capacity"] == 20_000_000, acc
    assert acc["status_directions"] == {"951": 2_000_000}, acc
    # both at once: neither direction goes past its own rate
    assert acc["both_down_goodput_ratio"] <= 1.02 and acc["both_up_goodput_ratio"] <= 1.02, (
        acc, vm)


def test_codel_keeps_the_queue_short_where_a_fifo_fills_it(reference_run) -> None:
    a = reference_run.results.get("aqm", {})
    vm = reference_run.results["vm"]
    bb, cd = a.get("bb"), a.get("cd")
    assert bb and cd and "error" not in bb and "error" not in cd, (a, vm)
    assert bb["loaded_pings"] >= 90 and cd["loaded_pings"] >= 90, (a, vm)
    assert bb["loaded_rtt_ms"] - bb["idle_rtt_ms"] >= 100, (a, vm)        # the FIFO fills
    assert cd["loaded_rtt_ms"] <= cd["idle_rtt_ms"] + 5 + 10, (a, vm)     # CoDel: target 5 ms
    assert cd["drops"]["aqm"] > 0 and bb["drops"]["aqm"] == 0, (a, vm)
    assert cd["goodput_mbps"] >= 0.9 * bb["goodput_mbps"], (a, vm)


def test_codel_is_the_kernels_codel(reference_run) -> None:
    a = reference_run.results.get("aqm", {})
    vm = reference_run.results["vm"]
    cd, k = a.get("cd"), a.get("kcodel")
    assert cd and k and "error" not in cd and "error" not in k, (a, vm)
    assert k["loaded_pings"] >= 90 and k["drops"]["aqm"], (a, vm)     # the kernel's dropped too
    moa_rise = cd["loaded_rtt_ms"] - cd["idle_rtt_ms"]
    kernel_rise = k["loaded_rtt_ms"] - k["idle_rtt_ms"]
    assert moa_rise <= kernel_rise + 10, (a, vm)
    assert cd["goodput_mbps"] >= 0.85 * k["goodput_mbps"], (a, vm)
