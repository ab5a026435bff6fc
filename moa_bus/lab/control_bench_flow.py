"""`moa bench control`'s flow-mode step (issue 16; moa_bus/lab/control_bench.py runs it).

A box of its own: a second testbed (namespaces of its own) and a second `moa serve`, on the same
nats-server, with `--p2p-mode flow --max-links 262144` (every endpoint's VNI is a link of
moa_links and an entry of moa_flow: 200,000 of them for 100,000 links), so the VTEP-mode steps'
box and its pins are not touched. Then, in order:

- 10,000 point-to-point links in one Materialize, sent as `moa materialize` sends it (through
  the object store when larger than max_payload): flow_materialize_10k_s, judged against the
  issue's 1 s (flow_materialize_10k_target_met); then removed (flow_dematerialize_10k_s);
- 100,000 point-to-point links (200,000 endpoints) in one Materialize: flow_materialize_100k_s,
  checked in the kernel (moa_flow holds 200,000 entries, no moa device in the box);
- the service's resident memory holding them (flow_rss_mib) and its pinned BPF maps'
  (flow_bpf_map_bytes);
- the whole box's status, every page as `moa status` walks them (a reply of 100,000 links is
  larger than max_payload: docs/contract.md, "Message sizes"): the median of 3 walks
  (flow_status_100k_ms, with its pages and bytes);
- an Update of one of those links (flow_update_1_of_100k_ms: the median of 5, each until its
  ack) and one of all of them by their tag (flow_update_all_100k_s);
- a restart of the service holding them, from the start of `moa serve` to serving
  (flow_restart_100k_s: load from the pins, the reconcile of 100,000 links against the
  kernel), checked: the entries all there, the box's dry-run plan for them empty
  (flow_restart_plan_operations, 0);
- their dematerialize (flow_dematerialize_100k_s).

`links_small`/`links_big` are smaller in the test suite (tests/test_bench_control.py): the same
code path, the keys named for the full sizes carry the sizes measured in flow_links_small/big.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from moa_bus import engine
from moa_bus.lab.control_bench_scale import _pct, stop_serve, whole_status
from moa_bus.lab.host_testbed import Testbed, sh, unique_tag
from moa_bus.service.subjects import Subjects

FLOW_MAX_LINKS = 1 << 18  # 262,144 VNIs: 100,000 links' 200,000 endpoints fit
FLOW_FIRST_VNI = 1_000_000
FLOW_SMALL, FLOW_BIG = 10_000, 100_000
TARGET_10K_S = 1.0  # issue 16
KEYS = ("flow_materialize_10k_s", "flow_materialize_10k_target_met", "flow_dematerialize_10k_s",
        "flow_materialize_100k_s", "flow_rss_mib", "flow_status_100k_ms",
        "flow_update_1_of_100k_ms", "flow_update_all_100k_s", "flow_restart_100k_s",
        "flow_dematerialize_100k_s")


def sizes(text: str) -> tuple[int, int]:
    """`--flow-links SMALL,BIG`."""
    import argparse

    try:
        small, big = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SMALL,BIG (e.g. 10000,100000)") from None
    if not all(1 <= n <= FLOW_MAX_LINKS // 2 for n in (small, big)):
        raise argparse.ArgumentTypeError(f"{text!r}: each from 1 to {FLOW_MAX_LINKS // 2} links")
    return small, big


def describe(r: dict, fmt) -> str:
    """The human report's line (`fmt` is control_bench's: "not measured" for None)."""
    met = r.get("flow_materialize_10k_target_met")
    judged = "not judged" if met is None else "met" if met else "not met"
    return (f"  flow mode ({fmt(r.get('flow_max_links'))} VNIs): "
            f"{fmt(r.get('flow_links_small'))} P2P links materialized in "
            f"{fmt(r['flow_materialize_10k_s'], ' s')} (target <= 1 s: {judged}), removed in "
            f"{fmt(r['flow_dematerialize_10k_s'], ' s')}; {fmt(r.get('flow_links_big'))} in "
            f"{fmt(r['flow_materialize_100k_s'], ' s')}, service RSS "
            f"{fmt(r['flow_rss_mib'], ' MiB')}, whole-box status "
            f"{fmt(r['flow_status_100k_ms'], ' ms')} ({fmt(r.get('flow_status_100k_pages'))} "
            f"pages), one link updated in {fmt(r['flow_update_1_of_100k_ms'], ' ms')}, all in "
            f"{fmt(r['flow_update_all_100k_s'], ' s')}, restarted (reconciled) in "
            f"{fmt(r['flow_restart_100k_s'], ' s')}, removed in "
            f"{fmt(r['flow_dematerialize_100k_s'], ' s')}")


def flow_links(prefix: str, n: int, first_vni: int, bed: Testbed) -> list[dict]:
    return [{"id": f"{prefix}{i}", "tags": ["bench"], "emulation": {"loss": 0.001},
             "endpoints": [{"vni": first_vni + 2 * i, "remote": bed.hv_addr(1)},
                           {"vni": first_vni + 2 * i + 1, "remote": bed.hv_addr(2)}]}
            for i in range(n)]


def _flow_entries(pin_root: str) -> int:
    from datapath.libbpf import Map

    with Map.from_pin(os.path.join(pin_root, "moa_flow")) as m:
        return m.lookup_batch()[2]


def _moa_devices(bed: Testbed) -> int:
    links = json.loads(sh("ip", "-n", bed.box, "-j", "link", "show").stdout)
    return sum(1 for d in links if d.get("ifalias", "").startswith("moa:"))


async def _timed(what: str, call) -> float:
    """Seconds until the ack of `call` (an engine client call); RuntimeError when refused."""
    t0 = time.perf_counter()
    ack = await call
    took = time.perf_counter() - t0
    if not ack.ok:
        raise RuntimeError(f"{what} was refused: {ack}")
    return took


def _materialize(box: engine.MoaClient, doc: dict):
    return _timed(f"the {len(doc['links'])}-link flow-mode materialize",
                  box.materialize(json.dumps(doc).encode(), timeout=3600))


def _update(box: engine.MoaClient, doc: dict):
    return _timed(f"the flow-mode update {doc['links']}",
                  box.update(json.dumps(doc).encode(), timeout=3600))


async def _updates(box: engine.MoaClient, links: int) -> tuple[float, float]:
    """(the median of 5 one-link updates in ms, the update of all `links` by tag in s)."""
    one = []
    for i in range(5):
        doc = {"id": "flow-big", "links": [{"link": f"b{i * (links // 5)}",
                                            "emulation": {"loss": 0.002 + i / 1000}}]}
        one.append(await _update(box, doc) * 1000)
    every = await _update(box, {"id": "flow-big", "links": [
        {"tag": "bench", "emulation": {"loss": 0.01}}]})
    return _pct(one, 0.5), every


async def _restart(bench, nc, bed: Testbed, serve, tmp: Path, host: str, big: dict):
    """Stop `moa serve`, start it again: (the new process, seconds from its start to serving,
    the operations its dry-run plan for `big` lists: 0 when the reconcile converged)."""
    await stop_serve(serve, 60)
    t0 = time.perf_counter()
    serve = _start_flow_serve(bench, bed, tmp, host)
    await bench._wait_ready(nc, serve, tmp / "serve.log", subjects=Subjects(host))
    took = time.perf_counter() - t0
    plan = await engine.MoaClient(nc, host).plan(json.dumps(big).encode(), timeout=3600)
    return serve, took, plan.count


def _start_flow_serve(bench, bed: Testbed, tmp: Path, host: str):
    return bench._start_serve(bed, bench.url, tmp / "serve.log", host=host,
                              extra=["--p2p-mode", "flow", "--max-links", str(FLOW_MAX_LINKS)])


def _dematerialize(box: engine.MoaClient, mid: str):
    return _timed(f"the flow-mode dematerialize of {mid}", box.dematerialize(mid, timeout=3600))


async def flow(bench, nc, _bed: Testbed) -> None:
    """The step (module doc): its own testbed and service (not the VTEP-mode steps' `_bed`),
    both gone when it returns; sizes from --flow-links."""
    from moa_bus.lab.control_bench import _bpf_map_bytes, _rss_mib

    links_small, links_big = getattr(bench.args, "flow_links", (FLOW_SMALL, FLOW_BIG))
    out = bench.out
    out["flow_links_small"], out["flow_links_big"] = links_small, links_big
    out["flow_max_links"] = FLOW_MAX_LINKS
    host = f"{bench.host}f"
    subjects = Subjects(host)
    bed = Testbed(tag=unique_tag("mbf")).build()
    tmp = Path(tempfile.mkdtemp(prefix="moa-bench-flow-"))
    serve = None
    try:
        serve = _start_flow_serve(bench, bed, tmp, host)
        await bench._wait_ready(nc, serve, tmp / "serve.log", subjects=subjects)
        box = engine.MoaClient(nc, host)

        small = {"id": "flow-small", "links": flow_links("s", links_small, FLOW_FIRST_VNI, bed)}
        took = await _materialize(box, small)
        out["flow_materialize_10k_s"] = round(took, 3)
        out["flow_materialize_10k_target_s"] = TARGET_10K_S
        out["flow_materialize_10k_target_met"] = took <= TARGET_10K_S
        held = await asyncio.to_thread(_flow_entries, bed.pin_root)
        if held != 2 * links_small:
            raise RuntimeError(f"moa_flow holds {held} entries, not {2 * links_small}")
        out["flow_dematerialize_10k_s"] = round(await _dematerialize(box, "flow-small"), 3)

        big = {"id": "flow-big", "links": flow_links("b", links_big, FLOW_FIRST_VNI, bed)}
        out["flow_materialize_100k_s"] = round(await _materialize(box, big), 3)
        out["flow_entries"] = await asyncio.to_thread(_flow_entries, bed.pin_root)
        out["flow_moa_devices"] = await asyncio.to_thread(_moa_devices, bed)
        if out["flow_entries"] != 2 * links_big or out["flow_moa_devices"] != 0:
            raise RuntimeError(f"after the materialize the box holds {out['flow_entries']} flow "
                               f"entries and {out['flow_moa_devices']} moa devices, not "
                               f"{2 * links_big} and 0")
        out["flow_rss_mib"] = _rss_mib(serve.pid)
        out["flow_bpf_map_bytes"] = await asyncio.to_thread(_bpf_map_bytes, bed.pin_root)

        times = []
        for _ in range(3):
            t = time.perf_counter()
            st, pages, size = await whole_status(bench, nc, subjects=subjects)
            times.append((time.perf_counter() - t) * 1000)
        got = {m["id"]: len(m["links"]) for m in st["materializations"]}
        if got.get("flow-big") != links_big:
            raise RuntimeError(f"status holds {got.get('flow-big')} links of flow-big, "
                               f"not {links_big}")
        out["flow_status_100k_ms"] = round(_pct(times, 0.5), 1)
        out["flow_status_100k_pages"], out["flow_status_100k_bytes"] = pages, size
        out["flow_max_payload"] = nc.max_payload
        out["flow_rss_after_status_mib"] = _rss_mib(serve.pid)

        one, every = await _updates(box, links_big)
        out["flow_update_1_of_100k_ms"], out["flow_update_all_100k_s"] = round(one, 1), round(
            every, 3)
        for link in big["links"]:  # what the box holds now: the last update's loss
            link["emulation"] = {"loss": 0.01}
        serve, took, ops = await _restart(bench, nc, bed, serve, tmp, host, big)
        out["flow_restart_100k_s"], out["flow_restart_plan_operations"] = round(took, 3), ops
        held = await asyncio.to_thread(_flow_entries, bed.pin_root)
        if held != 2 * links_big or ops:
            raise RuntimeError(f"after the restart moa_flow holds {held} entries (not "
                               f"{2 * links_big}) and the plan for flow-big lists {ops} "
                               "operations (not 0)")

        out["flow_dematerialize_100k_s"] = round(await _dematerialize(box, "flow-big"), 3)
        left = await asyncio.to_thread(_flow_entries, bed.pin_root)
        if left:
            raise RuntimeError(f"after the dematerialize moa_flow still holds {left} entries")
    finally:
        if serve is not None:
            await stop_serve(serve, 60)
        out["notes"] += [f"cleanup (flow): {p}" for p in bed.cleanup()]
        shutil.rmtree(tmp, ignore_errors=True)
