"""`moa bench control` judged where issues 10 and 11 set a target. Issue 10: `restart_s`, from
`kill -9` of a service holding 1,000 point-to-point links (and 50 LANs of 8) to its first status
reply that holds all of them at the generation acked before, under 3 s on this machine (one
measurement against a bound about four times what it measures here, 0.8 s:
docs/benchmarks.md). Issue 11's round-trip targets (p50 <= 0.5 ms, p99 <= 2 ms) are judged
in docs/benchmarks.md from `moa bench control`'s figures, not here: on this shared two-core
machine the same code measures 400 to 600 us p50 from one run to the next, so a test holding
the target would pass or fail with the machine's load; this one checks that the figures are
made."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from moa_bus.lab import control_bench_classifier as classifier_steps
from moa_bus.lab import control_bench_flow as flow_steps
from moa_bus.service.subjects import Subjects
from tests.fixtures.nats import start_nats

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


def test_request_reply_round_trip_figures_are_reported() -> None:
    """`rtt_p50_us`/`rtt_p99_us` over 2,000 status requests and 2,000 unchanged materializes
    of one link, each sequential through NATS to `moa serve` (docs/benchmarks.md)."""
    r = subprocess.run([sys.executable, "-m", "moa_bus.cli", "bench", "control", "--json",
                        "--only", "rtt"], capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["notes"] == [], out["notes"]
    for kind in ("", "status_", "materialize_unchanged_"):
        p50, p99 = out[f"rtt_{kind}p50_us"], out[f"rtt_{kind}p99_us"]
        assert p50 is not None and 0 < p50 <= p99, out
    # the scale figures are in every report, null when their steps did not run
    for key in ("status_30k_ms", "materialize_30k_s", "status_during_apply_ms",
                *flow_steps.KEYS):
        assert key in out and out[key] is None, out


def test_flow_mode_figures_are_reported() -> None:
    """Issue 16's flow-mode keys (flow_materialize_10k_s, its target judged,
    flow_materialize_100k_s, flow_rss_mib, flow_status_100k_ms, an update of one link and of
    all, a restart's reconcile, flow_dematerialize_100k_s)
    through the same code as the full run, but with 200 and 2,000 links (`--flow-links
    200,2000`): the full 10,000 and 100,000 take minutes on this machine (docs/benchmarks.md
    has them). 2,000 links' status is
    larger than the server's 1 MB max_payload, so the walk crosses pages as at 100,000. Checks
    that the figures are made and the kernel held what was asked, never how fast."""
    r = subprocess.run([sys.executable, "-m", "moa_bus.cli", "bench", "control", "--json",
                        "--only", "flow", "--flow-links", "200,2000"], capture_output=True,
                       text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["notes"] == [], out["notes"]
    assert (out["flow_links_small"], out["flow_links_big"]) == (200, 2000), out
    assert out["flow_max_links"] >= 2 * 100_000, out  # the full run's 200,000 endpoints fit
    for key in flow_steps.KEYS:
        assert out[key] is not None, (key, out)
    for key in ("flow_materialize_10k_s", "flow_dematerialize_10k_s", "flow_materialize_100k_s",
                "flow_status_100k_ms", "flow_dematerialize_100k_s", "flow_rss_mib",
                "flow_update_1_of_100k_ms", "flow_update_all_100k_s", "flow_restart_100k_s"):
        assert out[key] > 0, (key, out)
    assert isinstance(out["flow_materialize_10k_target_met"], bool), out
    assert out["flow_entries"] == 4000 and out["flow_moa_devices"] == 0, out
    assert out["flow_restart_plan_operations"] == 0, out  # the restart's reconcile converged
    assert out["flow_status_100k_pages"] >= 2, out
    assert out["flow_status_100k_bytes"] > out["flow_max_payload"], out
    # the VTEP-mode figures did not run: null, as every step's keys are when skipped
    assert out["materialize_30k_s"] is None and out["rtt_p50_us"] is None, out


def test_map_update_figure_writes_10k_links_of_distinct_parameters() -> None:
    """map_update_10k_s is what its name says: 10,000 links, both directions, 20,000 VNIs each
    written an emulation of its own (map_updates checks the map and raises otherwise)."""
    out: dict = {"notes": []}
    classifier_steps.map_updates(out)
    assert out["map_update_vnis"] == 20_000 and out["map_update_10k_s"] > 0, out


def test_drop_events_lost_shows_events_that_did_not_arrive(tmp_path) -> None:
    """The figure can show a failure: with a ring buffer of one page, most reservations fail
    during the flood, and what has not arrived when the window closes is counted lost."""
    server = start_nats(tmp_path / "nats")
    out: dict = {"notes": []}
    try:
        asyncio.run(classifier_steps.drop_events(out, server.url, Subjects("bench"), 20_000,
                                                 ringbuf_bytes=4096))
    finally:
        server.stop()
    assert out["drop_events_ringbuf_fail"] > 0, out
    assert out["drop_events_lost"] >= out["drop_events_ringbuf_fail"], out
    assert out["drop_events"] + out["drop_events_lost"] == 20_000, out
