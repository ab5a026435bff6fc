"""`moa bench metrics`: what a scrape of the Prometheus endpoint costs on a box holding many
links, and whether scraping slows the datapath or the event loop the apply queue runs in.

A classifier of its own in this process (no service, no netlink, no NATS) is filled to
`--links` VNIs (endpoints of point-to-point links, in 10 materializations) with non-zero
counters in every CPU's copy; the endpoint (moa_bus/service/metrics.py, the code `moa serve`
runs) serves it on a loopback port. Figures (milliseconds unless named otherwise):

  read_ms           Datapath.counter_table(): every link's counters, summed over CPUs
  render_ms         the per-link families rendered (moa_bus/service/metrics_links.py)
  client_render_ms  the same samples through prometheus_client's generate_latest, for comparison
  scrape_ms         one GET /metrics over HTTP from another process, over a kept-alive
                    connection as Prometheus does it (median of --scrapes), and
  scrape_cpu_ms     the CPU time this process (which serves and does nothing else) spent per
                    scrape; the body's size raw and gzipped
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
import subprocess
import sys
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


# A scraper in a process of its own (the service's process only serves), over one kept-alive
# connection as Prometheus scrapes: GETs back to back, `count` of them or for `seconds`; prints
# how many it made and the median time of one, in ms.
_CLIENT = """
import http.client, statistics, sys, time, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1]); count, seconds = int(sys.argv[2]), float(sys.argv[3])
c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
times, end = [], time.monotonic() + seconds
while (len(times) < count) if count else (time.monotonic() < end):
    t0 = time.perf_counter(); c.request("GET", u.path); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    times.append(time.perf_counter() - t0)
print(len(times), statistics.median(times) * 1000)
"""


def _scrape_process(url: str, count: int = 0, seconds: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _CLIENT, url, str(count), str(seconds)],
                            stdout=subprocess.PIPE, text=True)


def _scraped(proc: subprocess.Popen[str]) -> tuple[int, float]:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the scraper failed ({proc.returncode})")
    n, ms = out.split()
    return int(n), float(ms)


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
            c0 = time.process_time()  # this process only serves: its CPU time is the scrapes'
            n, ms = _scraped(_scrape_process(url, count=scrapes))
            out["scrape_ms"] = round(ms, 1)
            out["scrape_cpu_ms"] = round((time.process_time() - c0) / n * 1000, 1)

            out["loop_lag_idle_ms"] = _lag_figures(asyncio.run(_loop_lag(3)))
            proc = _scrape_process(url, seconds=3)
            out["loop_lag_scraping_ms"] = _lag_figures(asyncio.run(_loop_lag(3)))
            out["loop_lag_scrapes"] = _scraped(proc)[0]

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
            proc = _scrape_process(url, seconds=runs)
            out["datapath_scraping_ns"] = round(ns(), 1)
            out["datapath_scrapes"] = _scraped(proc)[0]
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
