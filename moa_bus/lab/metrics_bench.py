"""`moa bench metrics`: what a scrape of the Prometheus endpoint costs on a box holding many
links, and whether scraping slows the datapath or the event loop the apply queue runs in.

A classifier of its own in this process (no service, no netlink, no NATS) is filled to
`--links` VNIs (endpoints of point-to-point links, in 10 materializations) with non-zero
counters in every CPU's copy; the endpoint (moa_bus/service/metrics.py, the code `moa serve`
runs) serves it on a loopback port. Figures (milliseconds unless named otherwise):

  read_ms           Datapath.counter_table(): every link's counters, summed over CPUs
  render_ms         the per-link families rendered (moa_bus/service/metrics_links.py)
  client_render_ms  the same samples through prometheus_client's generate_latest, for comparison
  scrape_ms         one GET /metrics over HTTP, as Prometheus does it (median), with
  scrape_cpu_ms     the process CPU time it took, and the body's size raw and gzipped
  loop_lag_*_ms     how late a 1 ms timer of an asyncio loop in this process fires, without and
                    during back-to-back scrapes (the apply queue runs in such a loop)
  datapath_*_ns     ns per packet of moa_egress (BPF_PROG_TEST_RUN of --repeat packets on a
                    configured VNI, median over --runs seconds), without and during back-to-back
                    scrapes
The endpoint here renders every scrape (reuse_s=0): the cost of a rendering, not of a reuse.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import threading
import time
import urllib.request
from types import SimpleNamespace
from typing import Any

import schemas
from datapath.api import MapUsage
from datapath.classifier import Classifier, ClassifierConfig
from moa_bus.service.desired import DesiredState, Held

__all__ = ["add_arguments", "run", "measure"]

MATERIALIZATIONS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--links", type=int, default=30_000,
                        help="VNIs the classifier holds (2 per point-to-point link)")
    parser.add_argument("--scrapes", type=int, default=15, help="scrapes per figure (median)")
    parser.add_argument("--repeat", type=int, default=200_000,
                        help="BPF_PROG_TEST_RUN repetitions per datapath measurement")
    parser.add_argument("--runs", type=int, default=5,
                        help="seconds of datapath measurements, idle and scraping (median)")


class _Box:
    """The Datapath methods the endpoint reads, over a bare classifier."""
    loss_only = True

    def __init__(self, clf: Classifier) -> None:
        self.clf = clf

    def counter_table(self):
        return self.clf.counter_table()

    def box_counters(self) -> dict[str, int]:
        return self.clf.global_counters()

    def fq_memory_bytes(self) -> int:
        return 0

    def map_usage(self) -> list[MapUsage]:
        m = self.clf.links_map
        return [MapUsage(m.name, self.clf.link_count(), m.max_entries)]


def _fill(clf: Classifier, n: int) -> DesiredState:
    """n VNIs (1..n) in the classifier with counters in every CPU's copy, owned by
    MATERIALIZATIONS materializations of point-to-point links."""
    emulation = schemas.Emulation(loss=0.001)
    stages = clf.encode_stages(emulation, None)
    for vni in range(1, n + 1):
        clf.set_link_stages(vni, stages)
    counters = clf.abi.LinkCounters
    for vni in range(1, n + 1):
        slot = clf.slot(vni)
        for stage in range(len(schemas.STAGES)):
            per_cpu = []
            for cpu in range(clf.counters_map.ncpu):
                c = counters()
                c.packets = 1_000_003 * vni + 7 * cpu + stage
                c.bytes = c.packets * 1_200
                c.drops[0] = vni % 1_000
                per_cpu.append(c)
            clf.counters_map.update(slot * len(schemas.STAGES) + stage, per_cpu)
    held = {}
    per = -(-n // MATERIALIZATIONS)
    for k in range(MATERIALIZATIONS):
        vnis = list(range(1 + k * per, min(n, (k + 1) * per) + 1))
        links = [schemas.Link(id=f"l{i}", emulation=emulation, endpoints=[
            schemas.Endpoint(vni=a, remote="10.0.0.1"), schemas.Endpoint(vni=b, remote="10.0.0.2")])
            for i, (a, b) in enumerate(zip(vnis[::2], vnis[1::2]))]
        if links:
            mid = f"exp{k}"
            held[mid] = Held(schemas.Materialize(id=mid, links=links), k + 1)
    return DesiredState(held=held, generation=MATERIALIZATIONS)


def _service(clf: Classifier, desired: DesiredState) -> Any:
    """What ServiceMetrics reads of a MoaService."""
    return SimpleNamespace(
        datapath=_Box(clf), desired=desired, config=SimpleNamespace(host="bench"),
        applier=SimpleNamespace(pending=0, busy=False, unconverged={}),
        nc=SimpleNamespace(stats={}, is_connected=True),
        telemetry=SimpleNamespace(events_published=0))


def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


class _Scraper:
    """GET /metrics back to back in a thread, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with urllib.request.urlopen(self.url, timeout=60) as r:
                r.read()
            self.count += 1

    def __enter__(self) -> "_Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)


async def _loop_lag(seconds: float) -> list[float]:
    """How late (ms) a 1 ms sleep wakes up, for `seconds`."""
    lags = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - t0) * 1000 - 1)
    return lags


def _lag_figures(lags: list[float]) -> dict[str, float]:
    lags = sorted(lags)
    return {"p50": round(lags[len(lags) // 2], 2), "p99": round(lags[int(len(lags) * 0.99)], 2),
            "max": round(lags[-1], 2)}


def measure(links: int = 30_000, scrapes: int = 15, repeat: int = 200_000,
            runs: int = 5) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, generate_latest

    from moa_bus.lab.datapath_bench import HIT_VNI, _frames
    from moa_bus.service.metrics import MetricsEndpoint, ServiceMetrics

    out: dict[str, Any] = {"links": links}
    with Classifier.load(ClassifierConfig(max_links=links + 16)) as clf:
        t0 = time.perf_counter()
        desired = _fill(clf, links)
        out["fill_s"] = round(time.perf_counter() - t0, 1)
        metrics = ServiceMetrics(_service(clf, desired))  # type: ignore[arg-type]
        fam = metrics.links
        out["read_ms"] = _median_ms(clf.counter_table, scrapes)
        out["render_ms"] = _median_ms(fam.render, scrapes)
        reg = CollectorRegistry(auto_describe=False)
        reg.register(fam)
        out["client_render_ms"] = _median_ms(lambda: generate_latest(reg), 3)

        endpoint = MetricsEndpoint(metrics, "127.0.0.1:0", reuse_s=0)  # every scrape renders
        endpoint.start()
        try:
            url = endpoint.url
            body = urllib.request.urlopen(url, timeout=60).read()
            out["body_bytes"] = len(body)
            out["body_gzip_bytes"] = len(gzip.compress(body, compresslevel=1))
            out["samples"] = sum(1 for line in body.splitlines() if not line.startswith(b"#"))
            walls, cpus = [], []
            for _ in range(scrapes):
                c0, w0 = time.process_time(), time.perf_counter()
                with urllib.request.urlopen(url, timeout=60) as r:
                    r.read()
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
            out["scrape_ms"] = round(statistics.median(walls) * 1000, 1)
            out["scrape_cpu_ms"] = round(statistics.median(cpus) * 1000, 1)

            out["loop_lag_idle_ms"] = _lag_figures(asyncio.run(_loop_lag(3)))
            with _Scraper(url) as s:
                out["loop_lag_scraping_ms"] = _lag_figures(asyncio.run(_loop_lag(3)))
            out["loop_lag_scrapes"] = s.count

            frame = _frames()["loss"]  # VXLAN to HIT_VNI, a link with 1% loss
            clf.set_link(HIT_VNI, egress=schemas.Emulation(loss=0.01))
            prog, ctx = clf.egress_program, clf.abi.SkBuff()

            def ns() -> float:
                """Median over `runs` seconds of test runs of `repeat` packets each."""
                samples, end = [], time.monotonic() + runs
                while time.monotonic() < end:
                    samples.append(prog.test_run(frame, ctx=ctx, repeat=repeat).duration_ns)
                return statistics.median(samples)
            out["datapath_idle_ns"] = round(ns(), 1)
            with _Scraper(url) as s:
                out["datapath_scraping_ns"] = round(ns(), 1)
            out["datapath_scrapes"] = s.count
        finally:
            endpoint.stop()
    return out


def run(args: argparse.Namespace) -> int:
    out = measure(args.links, args.scrapes, args.repeat, args.runs)
    if args.json:
        print(json.dumps(out))
        return 0
    for k, v in out.items():
        print(f"{k:24s} {v}")
    return 0
