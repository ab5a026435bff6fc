"""`moa bench control` judged where issue 10 sets a target: `restart_s`, from `kill -9` of a
service holding 1,000 point-to-point links (and 50 LANs of 8) to its first status reply that
holds all of them at the generation acked before, under 3 s on this machine. One measurement
against a bound about four times what it measures here (0.8 s, docs/benchmarks.md)."""
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
