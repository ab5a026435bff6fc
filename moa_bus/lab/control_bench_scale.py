"""`moa bench control`'s steps at scale (moa_bus/lab/control_bench.py runs them): whole-box
status while a 10,000-link Materialize is applied, and a box of 30,000 point-to-point links
(60,000 VTEPs) materialized through the object store, its status, its removal; and what the
other steps share (a percentile, a whole-box status walk, stopping a `moa serve`)."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

from moa_bus import engine, engine_paging
from moa_bus.lab.host_testbed import Testbed

APPLY_FIRST_VNI = 100_000  # the 10,000 links applied while status is asked
BIG_FIRST_VNI = 200_000  # the 30,000 links
APPLY_LINKS = 10_000
BIG_LINKS = 30_000


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def stop_serve(serve: subprocess.Popen[bytes], timeout: float) -> None:
    """Stop a `moa serve` of the bench as its unit would (SIGTERM), killed after `timeout` s."""
    if serve.poll() is not None:
        return
    serve.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(serve.wait, timeout)
    except subprocess.TimeoutExpired:
        serve.kill()
        serve.wait()


def p2p_links(prefix: str, n: int, first_vni: int, bed: Testbed) -> list[dict]:
    return [{"id": f"{prefix}{i}", "tags": ["bench"], "emulation": {"loss": 0.001},
             "endpoints": [{"vni": first_vni + 2 * i, "remote": bed.hv_addr(1)},
                           {"vni": first_vni + 2 * i + 1, "remote": bed.hv_addr(2)}]}
            for i in range(n)]


async def whole_status(bench, nc, subjects=None) -> tuple[dict, int, int]:
    """The whole box, every page (as `moa status` walks them): (merged, pages, bytes);
    `subjects` another box's (default the bench's)."""
    pages, size, cursor = [], 0, None
    subjects = subjects or bench.subjects
    while True:
        msg = await nc.request(subjects.op("status"), json.dumps(
            {"cursor": cursor} if cursor else {}).encode(), timeout=60)
        page = json.loads(msg.data)
        if page.get("ok") is False:
            raise RuntimeError(f"status refused: {page.get('error')}")
        pages.append(page)
        size += len(msg.data)
        cursor = page.get("next")
        if cursor is None:
            return engine_paging.merge_pages(pages), len(pages), size


async def during_apply(bench, nc, bed: Testbed) -> None:
    """Whole-box status, one request after the other, while a Materialize of 10,000
    point-to-point links is applied (until its ack); then that materialization removed."""
    doc = {"id": "apply", "links": p2p_links("a", APPLY_LINKS, APPLY_FIRST_VNI, bed)}
    data = json.dumps(doc).encode()
    held, _, _ = await whole_status(bench, nc)
    t0 = time.perf_counter()
    box = engine.MoaClient(nc, bench.subjects.host)
    applying = asyncio.create_task(box.materialize(data, timeout=1800))
    times: list[float] = []
    while not applying.done():
        t = time.perf_counter()
        await whole_status(bench, nc)
        times.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(0.01)
    ack = await applying
    if not ack.ok:
        raise RuntimeError(f"the 10,000-link materialize was refused: {ack}")
    bench.out["apply_10k_s"] = round(time.perf_counter() - t0, 1)
    bench.out["status_during_apply_links"] = sum(len(m["links"])
                                                for m in held["materializations"])
    bench.out["status_during_apply_requests"] = len(times)
    bench.out["status_during_apply_p50_ms"] = round(_pct(times, 0.5), 1)
    bench.out["status_during_apply_ms"] = round(_pct(times, 0.99), 1)
    bench.out["status_during_apply_max_ms"] = round(max(times), 1)
    await bench._request(nc, "dematerialize", {"id": "apply"}, timeout=1800)


async def big(bench, nc, bed: Testbed) -> None:
    """30,000 point-to-point links in one Materialize (through the object store: larger
    than max_payload), the whole box's status, then the dematerialize."""
    doc = {"id": "big", "links": p2p_links("b", BIG_LINKS, BIG_FIRST_VNI, bed)}
    data = json.dumps(doc).encode()
    bench.out["materialize_30k_bytes"] = len(data)
    bench.out["max_payload"] = nc.max_payload
    t0 = time.perf_counter()
    ack = await engine.MoaClient(nc, bench.subjects.host).materialize(data, timeout=3600)
    if not ack.ok:
        raise RuntimeError(f"the 30,000-link materialize was refused: {ack}")
    bench.out["materialize_30k_s"] = round(time.perf_counter() - t0, 1)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        st, pages, size = await whole_status(bench, nc)
        times.append((time.perf_counter() - t) * 1000)
    held = {m["id"]: len(m["links"]) for m in st["materializations"]}
    if held.get("big") != BIG_LINKS:
        raise RuntimeError(f"status holds {held.get('big')} links of big, not {BIG_LINKS}")
    bench.out["status_30k_ms"] = round(_pct(times, 0.5), 1)
    bench.out["status_30k_pages"], bench.out["status_30k_bytes"] = pages, size
    t0 = time.perf_counter()
    await bench._request(nc, "dematerialize", {"id": "big"}, timeout=3600)
    bench.out["dematerialize_30k_s"] = round(time.perf_counter() - t0, 1)
