"""`moa bench control` judged where issues 10 and 11 set a target. Issue 10: `restart_s`, from
`kill -9` of a service holding 1,000 point-to-point links (and 50 LANs of 8) to its first status
reply that holds all of them at the generation acked before, under 3 s on this machine (one
measurement against a bound about four times what it measures here, 0.8 s:
docs/benchmarks.md). Issue 11: request/reply round trips, p50 <= 0.5 ms and p99 <= 2 ms."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.netns

RESTART_TARGET_S = 3.0


def test_restart_of_a_box_holding_1000_links_answers_within_3_s() -> None:
    r = subprocess.run([sys.executable, "-m", "moa_bus.cli", "bench", "control", "--json",
                        "--only", "materialize,restart"], capture_output=True, text=True,
                       timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["notes"] == [], out["notes"]
    assert out["p2p_links"] == 1000 and out["moa_devices"] == 2000 + 50 * 8 + 50, out
    assert out["restart_s"] is not None and out["restart_s"] < RESTART_TARGET_S, out


RTT_P50_TARGET_US = 500.0  # issue 11: status and an unchanged materialize, p50 <= 0.5 ms
RTT_P99_TARGET_US = 2000.0  # ... and p99 <= 2 ms


def test_request_reply_round_trip_within_issue_11_targets() -> None:
    """`rtt_p50_us`/`rtt_p99_us` over 2,000 status requests and 2,000 unchanged materializes
    of one link, each sequential through NATS to `moa serve` (docs/benchmarks.md)."""
    r = subprocess.run([sys.executable, "-m", "moa_bus.cli", "bench", "control", "--json",
                        "--only", "rtt"], capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["notes"] == [], out["notes"]
    assert out["rtt_p50_us"] <= RTT_P50_TARGET_US, out
    assert out["rtt_p99_us"] <= RTT_P99_TARGET_US, out
    for kind in ("status", "materialize_unchanged"):
        assert out[f"rtt_{kind}_p50_us"] <= RTT_P50_TARGET_US, out
    # the scale figures are in every report, null when their steps did not run
    for key in ("status_30k_ms", "materialize_30k_s", "status_during_apply_ms"):
        assert key in out and out[key] is None, out
