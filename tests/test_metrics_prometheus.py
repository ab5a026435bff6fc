"""A real Prometheus (Debian's package, on a free loopback port with its own data directory)
scrapes a live `moa serve` (a process, over the real box in the testbed's namespaces, a real
nats-server) every second while traffic crosses its links; PromQL through Prometheus's HTTP API
then says what the classifier's counters say (as `moa status` reads them, within one scrape
interval's traffic), a link with configured loss drops what it should (within 4 sigma), and
every query of examples/grafana-dashboard.json names a metric the endpoint really exports."""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

import schemas
from moa_bus.engine import MoaClient
from moa_bus.lab import dashboard_page
from moa_bus.lab.host_testbed import Endpoint, Testbed, ping_cmd
from moa_bus.service.embedded_nats import NatsServer, free_port
from tests.fixtures.moabox import ServeProcess, serve_cmd
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.fixtures.prometheus import Prometheus
from tests.fixtures.topology import topo  # noqa: F401
from tests.test_metrics import get, samples

pytestmark = [pytest.mark.netns, pytest.mark.nats]

DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana-dashboard.json"
LOSS = 0.25
STEADY_INTERVAL = 0.02  # s between pings on the steady link: 50 per second each way
LOSSY_PINGS = 2000

# Grafana's variables, as the dashboard would have them: every instance, materialization, link.
VARIABLES = {"$__rate_interval": "10s", "$instance": ".*", "$materialization": ".*",
             "$link": ".*", "${datasource}": ""}
_CLAUSES = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
          "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside strings, label
    matchers, ranges and grouping clauses that are not functions or keywords."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = _CLAUSES.sub(" ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if m.group(0) in _WORDS or e[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group(0))
    return names


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and its variables'
    label_values(selector, label) selectors."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            found = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            assert found, q
            exprs.append(found[1])
    return exprs


def substituted(expr: str) -> str:
    for k, v in VARIABLES.items():
        expr = expr.replace(k, v)
    return expr


def test_the_dashboard_checker_reads_names_and_finds_a_wrong_one() -> None:
    expr = ('sum by (link, reason) (rate(moa_link_drops_total{link=~"$link",reason!="x y"}'
            '[$__rate_interval])) / ignoring(reason) moa_links + on(instance) group_left '
            'histogram_quantile(0.99, moa_apply_duration_seconds_bucket)')
    assert metric_names(expr) == {"moa_link_drops_total", "moa_links",
                                  "moa_apply_duration_seconds_bucket"}
    queries = dashboard_queries()
    assert len(queries) >= 25
    names = set().union(*map(metric_names, queries))
    assert {"moa_link_bytes_total", "moa_link_drops_total", "moa_apply_duration_seconds_bucket",
            "moa_nats_connected", "moa_info"} <= names
    assert "up" not in names  # Prometheus's own series: not what moa exports


def screenshot(page: str, out: Path, workdir: Path) -> None:
    """The page, rendered by headless chromium into a PNG at `out`."""
    html_file = workdir / "dashboard.html"
    html_file.write_text(page)
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", "--window-size=1600,2400",
                        f"--screenshot={out.resolve()}", html_file.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and out.exists(), r.stderr


def _doc(t: Testbed) -> dict:
    def link(name: str, vnis: tuple[int, int], loss: float) -> dict:
        return {"id": name, "emulation": {"loss": loss}, "endpoints": [
            {"vni": vnis[0], "remote": t.hv_addr(1)}, {"vni": vnis[1], "remote": t.hv_addr(2)}]}
    return {"id": "prom", "links": [link("steady", (1200, 1201), 0.0),
                                    link("lossy", (1202, 1203), LOSS)]}


def _egress(st: schemas.StatusReply, vni: int) -> schemas.LinkStats:
    (found,) = [c for m in st.materializations for link in m.links for c in link.counters
                if c.vni == vni and c.stage == "egress"]
    return found


async def test_prometheus_scrapes_a_live_moa_serve(topo: Testbed, nats_server: NatsServer,
                                                   tmp_path: Path) -> None:
    host = f"prom{os.getpid()}"
    port = free_port()
    proc = ServeProcess(serve_cmd(topo, nats_server.url, host, "--metrics", f"127.0.0.1:{port}"),
                        tmp_path / "serve.log").start()
    pings: list[subprocess.Popen[bytes]] = []
    prom = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"])
    try:
        async with nats_client(nats_server.url) as nc:
            await proc.wait_ready(nc, host)
            await asyncio.to_thread(prom.start)
            await asyncio.to_thread(prom.wait_target_up)
            began = time.time()
            box = MoaClient(nc, host, timeout=60)
            ack = await box.materialize(_doc(topo))
            assert ack.ok, ack
            eps: dict[int, Endpoint] = {}
            for vni, node, addr in ((1200, 1, "192.168.120.1/24"), (1201, 2, "192.168.120.2/24"),
                                    (1202, 1, "192.168.121.1/24"), (1203, 2, "192.168.121.2/24")):
                eps[vni] = await asyncio.to_thread(topo.add_endpoint, node, vni, addr)
            await asyncio.to_thread(topo.quiet, eps[1200], eps[1201])
            await asyncio.to_thread(topo.quiet, eps[1202], eps[1203])

            # --- 1. counters under steady traffic: Prometheus's last sample vs status now
            a, b = eps[1200], eps[1201]
            pings.append(subprocess.Popen(
                ping_cmd(topo.node(a.node), b.ip, None, STEADY_INTERVAL, deadline=60, dev=a.dev),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            await asyncio.sleep(3)
            s0, t0 = await box.status(), time.time()
            await asyncio.sleep(2)
            s1, t1 = await box.status(), time.time()
            rate = (_egress(s1, 1201).packets - _egress(s0, 1201).packets) / (t1 - t0)
            assert rate > 0.5 / STEADY_INTERVAL, rate  # the traffic runs
            compared = []
            for _ in range(5):
                at = time.time()
                st = await box.status()
                for vni in (1200, 1201):
                    sel = f'{{link="steady",vni="{vni}",direction="egress"}}'
                    (labels, scraped), = prom.query(f"moa_link_packets_total{sel}", at)
                    sampled_at = prom.value(f"timestamp(moa_link_packets_total{sel})", at)
                    age = at - sampled_at
                    assert labels["materialization"] == "prom" and labels["job"] == "moa"
                    assert 0 <= age <= prom.interval + 0.5, age  # the last scrape's sample
                    # what status counted since that scrape: one scrape interval's traffic at most
                    # (the rate measured over 2 s, +20 % for its noise)
                    behind = _egress(st, vni).packets - scraped
                    bound = math.ceil(1.2 * rate * prom.interval) + 2
                    compared.append((vni, round(age, 3), behind, bound))
                    assert -2 <= behind <= bound, compared
                await asyncio.sleep(0.37)
            print(f"steady link at {rate:.0f} pkt/s: (vni, sample age s, status - scraped, "
                  f"bound) {compared}")
            pings.pop().kill()

            # --- 2. a link with 25% loss: drop rates through PromQL
            a, b = eps[1202], eps[1203]
            t_start = time.time()
            r = await asyncio.to_thread(subprocess.run, ping_cmd(
                topo.node(a.node), b.ip, LOSSY_PINGS, 0.004, wait=0.2, dev=a.dev),
                capture_output=True, text=True, timeout=120)
            t_end = time.time()
            assert "packets transmitted" in r.stdout, r.stdout + r.stderr
            await asyncio.to_thread(prom.wait_scrapes, 2)
            st = await box.status()

            # Traffic has stopped: every link series in Prometheus equals status exactly.
            body = (await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics"))[2].decode()
            for (mid, link, vni, stage), c in {
                    (m.id, ln.id, c.vni, c.stage): c for m in st.materializations
                    for ln in m.links for c in ln.counters}.items():
                sel = (f'{{materialization="{mid}",link="{link}",vni="{vni}",'
                       f'direction="{stage}"}}')
                assert prom.value(f"moa_link_packets_total{sel}") == c.packets, sel
                assert prom.value(f"moa_link_bytes_total{sel}") == c.bytes, sel
                for reason in schemas.DROP_REASONS:
                    got = prom.value(f'moa_link_drops_total{sel[:-1]},reason="{reason}"}}')
                    assert got == c.drops.get(reason, 0), (sel, reason)

            lossy = 'link="lossy",direction="egress"'
            drops = f'sum(moa_link_drops_total{{{lossy},reason="loss"}})'
            passed = f"sum(moa_link_packets_total{{{lossy}}})"
            n = prom.value(f"{drops} + {passed}")
            ratio = prom.value(f"{drops} / ({drops} + {passed})")
            sigma = math.sqrt(LOSS * (1 - LOSS) / n)
            window = f"{math.ceil(t_end - t_start) + 3}s"
            rdrops = f'sum(rate(moa_link_drops_total{{{lossy},reason="loss"}}[{window}]))'
            rpassed = f"sum(rate(moa_link_packets_total{{{lossy}}}[{window}]))"
            rate_ratio = prom.value(f"{rdrops} / ({rdrops} + {rpassed})", t_end + 1.5)
            print(f"lossy link, {LOSS:.0%} configured: {ratio:.4f} of {n:.0f} frames dropped "
                  f"(rate over {window}: {rate_ratio:.4f}); 4 sigma = {4 * sigma:.4f}")
            assert n >= LOSSY_PINGS  # requests, and replies to those that passed
            assert abs(ratio - LOSS) <= 4 * sigma, (ratio, n)
            assert abs(rate_ratio - LOSS) <= 4 * sigma, (rate_ratio, n)
            # the steady link lost nothing
            assert prom.value('sum(moa_link_drops_total{link="steady"})') == 0

            # --- 3. every dashboard query names an exported metric, and Prometheus runs it
            exported = {name for name, _ in samples(body)}
            missing = {}
            for expr in dashboard_queries():
                unknown = metric_names(expr) - exported
                if unknown:
                    missing[expr] = unknown
                prom.query(substituted(expr))  # fails the test on a PromQL error
            assert missing == {}, missing
            for expr in dashboard_queries():  # the link panels show this box's links
                if "moa_link_" in expr and "queue|horizon" not in expr:
                    assert prom.query(substituted(expr)), expr

            # --- 4. every panel draws data over the test's time range (a static page of them)
            dash = json.loads(DASHBOARD.read_text())
            page, drawn = await asyncio.to_thread(
                dashboard_page.render, dash, prom.url, began, time.time())
            empty = [p.title for p in drawn if p.kind != "text" and not p.series]
            assert empty == [] and len(drawn) >= 20, empty
            # ... rendered by headless chromium (README's picture: MOA_DASHBOARD_SCREENSHOT
            # names where to keep it; docs/benchmarks.md says how it was made)
            shot = Path(os.environ.get("MOA_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
            await asyncio.to_thread(screenshot, page, shot, tmp_path)
            assert shot.stat().st_size > 50_000  # a page of panels, not an empty one
    finally:
        for p in pings:
            p.kill()
        prom.stop()
        assert await asyncio.to_thread(proc.stop) == 0, proc.log()
