"""The Prometheus endpoint (moa_bus/service/metrics.py) of a service over the real box (the
testbed's box namespace, the real KernelDatapath, loss-only on this host), a real nats-server,
traffic through the box's links: what a scrape says is what the kernel's counters and the
service say, in names Prometheus's own linter accepts."""
from __future__ import annotations

import asyncio
import gzip
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import schemas
from moa_bus.engine import MoaClient
from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.embedded_nats import NatsServer
from moa_bus.service.metrics import REUSE_S
from moa_bus.service.serve_loop import serve
from moa_bus.service.settings import SettingsError, parse_listen, resolve
from tests.fixtures.docs import materialize_doc
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.fixtures.prometheus import promtool_check_metrics
from tests.fixtures.service import box_service, box_settings, until_serving
from tests.fixtures.topology import topo  # noqa: F401

LINK_FAMILIES = ("moa_link_packets_total", "moa_link_bytes_total", "moa_link_marks_total",
                 "moa_link_corrupted_total", "moa_link_duplicated_total", "moa_link_drops_total")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """(sample name, sorted labels) -> value of an exposition."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pick(all_samples: Samples, name: str, **labels: str) -> dict[tuple, float]:
    want = set(labels.items())
    return {lab: v for (n, lab), v in all_samples.items() if n == name and want <= set(lab)}


def one(all_samples: Samples, name: str, **labels: str) -> float:
    found = pick(all_samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return next(iter(found.values()))


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def scrape(url: str) -> str:
    status, _, body = await asyncio.to_thread(get, url)
    assert status == 200, body
    return body.decode()


def status_counters(st: schemas.StatusReply) -> dict[tuple[str, str, int, str], schemas.LinkStats]:
    return {(m.id, link.id, c.vni, c.stage): c for m in st.materializations for link in m.links
            for c in link.counters}


def assert_links_equal_status(text: str, st: schemas.StatusReply) -> None:
    """Every counter of every stage of every VNI in `st` is in the scrape with the same value,
    and the scrape has no link series that status does not have."""
    got = samples(text)
    want = status_counters(st)
    for (mid, link, vni, stage), c in want.items():
        labels = {"materialization": mid, "link": link, "vni": str(vni), "direction": stage}
        assert one(got, "moa_link_packets_total", **labels) == c.packets, labels
        assert one(got, "moa_link_bytes_total", **labels) == c.bytes, labels
        assert one(got, "moa_link_marks_total", **labels) == c.marks, labels
        assert one(got, "moa_link_corrupted_total", **labels) == c.corrupted, labels
        assert one(got, "moa_link_duplicated_total", **labels) == c.duplicated, labels
        for reason in schemas.DROP_REASONS:
            assert one(got, "moa_link_drops_total", reason=reason, **labels) == \
                c.drops.get(reason, 0), (labels, reason)
    assert len(pick(got, "moa_link_packets_total")) == len(want)


@pytest.mark.netns
@pytest.mark.nats
async def test_a_scrape_is_the_kernels_counters_and_the_services_state(
        topo: Testbed, nats_server: NatsServer) -> None:
    host = f"metrics{os.getpid()}"
    doc = materialize_doc("m1", 1100, n_links=2, loss=0.0)
    async with box_service(nats_server, topo, host, metrics="127.0.0.1:0") as svc, \
            nats_client(nats_server.url) as nc:
        url = svc.metrics_endpoint.url
        box = MoaClient(nc, host, timeout=60)
        ack = await box.materialize(doc)
        assert ack.ok, ack
        refused = await box.materialize(materialize_doc("m2", 1101))  # VNI 1101 is m1's
        assert refused.error is not None and refused.error.code == "conflict"
        a = await asyncio.to_thread(topo.add_endpoint, 1, 1100, "192.168.110.1/24")
        b = await asyncio.to_thread(topo.add_endpoint, 2, 1101, "192.168.110.2/24")
        await asyncio.to_thread(topo.quiet, a, b)
        assert await asyncio.to_thread(topo.ping, a, b, 10, 0.05) == (10, 10)

        # Traffic has stopped: the scrape and status read the same kernel counters.
        await asyncio.sleep(REUSE_S)
        text = await scrape(url)
        st = await box.status()
        assert_links_equal_status(text, st)
        got = samples(text)
        l0 = {"materialization": "m1", "link": "l0"}
        assert one(got, "moa_link_packets_total", vni="1101", direction="egress", **l0) >= 10
        assert one(got, "moa_link_packets_total", vni="1100", direction="egress", **l0) >= 10
        assert one(got, "moa_link_bytes_total", vni="1101", direction="egress", **l0) >= 10 * 98

        # Corruption and duplication (counted in each stage's state, not per CPU): every
        # frame towards VNI 1101 corrupted and duplicated, so the pings fail, and both counts
        # are in the scrape as status reads them.
        ack = await box.update({"id": "m1", "links": [
            {"link": "l0", "emulation": {"corrupt": 1.0, "duplicate": 1.0}}]})
        assert ack.ok, ack
        await asyncio.to_thread(topo.ping, a, b, 5, 0.05)
        await asyncio.sleep(REUSE_S)
        text = await scrape(url)
        assert_links_equal_status(text, await box.status())
        got = samples(text)
        assert one(got, "moa_link_corrupted_total", vni="1101", direction="egress", **l0) >= 5
        assert one(got, "moa_link_duplicated_total", vni="1101", direction="egress", **l0) >= 5

        # The service and the box.
        assert one(got, "moa_info", host=host, mode="loss-only") == 1
        assert one(got, "moa_materializations") == 1 and one(got, "moa_links") == 2
        assert one(got, "moa_generation") == ack.generation
        assert one(got, "moa_operations_total", op="materialize", code="ok") == 1
        assert one(got, "moa_operations_total", op="materialize", code="conflict") == 1
        assert one(got, "moa_operations_total", op="update", code="ok") == 1
        assert one(got, "moa_apply_duration_seconds_count", op="materialize") == 2
        assert one(got, "moa_apply_queue_depth") == 0
        assert one(got, "moa_nats_connected") == 1
        assert one(got, "moa_bpf_map_entries", map="moa_links") == 4
        assert one(got, "moa_bpf_map_entries", map="moa_pair_peers") == 4
        assert one(got, "moa_bpf_map_max_entries", map="moa_links") == \
            svc.datapath.classifier.config.max_links
        assert one(got, "moa_fq_memory_worst_case_bytes") == 0  # loss-only
        box_counters = svc.datapath.box_counters()  # read after the scrape: the box's own
        assert one(got, "moa_drop_events_lost_total") == box_counters["ringbuf_fail"]
        assert 0 < one(got, "moa_classifier_non_vxlan_packets_total") <= \
            box_counters["non_vxlan"]  # frames of the box's namespace (ARP ...) keep coming
        assert one(got, "process_resident_memory_bytes") > 0

        # Prometheus's own linter accepts the names, types and help texts.
        lint = await asyncio.to_thread(promtool_check_metrics, text)
        assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout + lint.stderr

        # The per-link families rendered by moa and by prometheus_client say the same.
        reg = CollectorRegistry(auto_describe=False)
        reg.register(svc.metrics.links)
        ours = {k: v for k, v in samples(svc.metrics.links.render()).items()}
        theirs = {k: v for k, v in samples(generate_latest(reg).decode()).items()}
        assert ours == theirs and len(ours) == 2 * 2 * 2 * (5 + len(schemas.DROP_REASONS))

        # gzip when asked for; other paths are 404.
        status, headers, body = await asyncio.to_thread(get, url, {"Accept-Encoding": "gzip"})
        assert status == 200 and headers.get("Content-Encoding") == "gzip"
        assert pick(samples(gzip.decompress(body).decode()), "moa_link_packets_total")
        status, _, _ = await asyncio.to_thread(get, url.replace("/metrics", "/other"))
        assert status == 404

        # Many scrapers at once share renderings: at most one per REUSE_S.
        before, t0 = svc.metrics.renders, time.monotonic()
        bodies = await asyncio.gather(*(scrape(url) for _ in range(40)))
        elapsed = time.monotonic() - t0
        rendered = svc.metrics.renders - before
        assert rendered <= math.ceil(elapsed / REUSE_S) + 1, (rendered, elapsed)
        assert len(set(bodies)) <= rendered + 1  # the one before them, and theirs

        # A dematerialized link leaves the scrape (once the last rendering is older than the
        # time a rendering is reused for: metrics.REUSE_S).
        assert (await box.dematerialize("m1")).ok
        await asyncio.sleep(REUSE_S)
        got = samples(await scrape(url))
        assert pick(got, "moa_link_packets_total") == {}
        assert one(got, "moa_operations_total", op="dematerialize", code="ok") == 1
    # Stopped with the service: nothing listens any more.
    with pytest.raises(OSError):
        socket.create_connection(parse_listen(url.split("/")[2]), timeout=2).close()


def test_metrics_setting_from_the_command_line_and_the_file(tmp_path: Path) -> None:
    assert resolve(None, {}).metrics is None  # off by default
    conf = tmp_path / "moa.toml"
    conf.write_text('metrics = "127.0.0.1:9464"\n')
    assert resolve(str(conf), {}).metrics == "127.0.0.1:9464"
    assert resolve(str(conf), {"metrics": "[::1]:9500"}).metrics == "[::1]:9500"
    assert parse_listen("[::1]:9500") == ("::1", 9500)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    for bad in ("9464", "localhost:http", "::1:9464", "127.0.0.1:70000"):
        with pytest.raises(SettingsError, match="metrics"):
            resolve(None, {"metrics": bad})
    conf.write_text("metrics = 9464\n")
    with pytest.raises(SettingsError, match='metrics = "..."'):
        resolve(str(conf), {})


@pytest.mark.netns
@pytest.mark.nats
async def test_an_address_in_use_is_a_settings_error(topo: Testbed,
                                                     nats_server: NatsServer) -> None:
    """`moa serve --metrics` on a port someone else holds: exit 2 naming the setting, and the
    service it had started on the way is stopped."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        said: list[str] = []
        settings = box_settings(topo, f"metricsbusy{os.getpid()}", nats_server.url,
                                metrics=f"127.0.0.1:{port}")
        rc = await asyncio.wait_for(serve(settings, say=said.append), 60)
        assert rc == 2, said
        assert any(f"--metrics 127.0.0.1:{port}" in x and "cannot listen" in x for x in said), said
    finally:
        taken.close()


@pytest.mark.netns
@pytest.mark.nats
async def test_serve_says_where_its_metrics_are(topo: Testbed, nats_server: NatsServer) -> None:
    said: list[str] = []
    stop = asyncio.Event()
    settings = box_settings(topo, f"metricsurl{os.getpid()}", nats_server.url,
                            metrics="127.0.0.1:0")
    server = asyncio.create_task(serve(settings, stop=stop, say=said.append))
    try:
        await until_serving(said, server)
        (line,) = [x for x in said if "Prometheus metrics on" in x]
        url = line.rsplit(" ", 1)[1]
        text = await scrape(url)
        assert "moa_info{" in text and "# TYPE moa_link_packets_total counter" in text
    finally:
        stop.set()
        assert await asyncio.wait_for(server, 30) == 0


def test_bench_metrics_runs_and_reads_every_link() -> None:
    """`moa bench metrics` (docs/benchmarks.md's figures) on a small box: it runs, and its
    scrape holds every VNI's series."""
    r = subprocess.run([sys.executable, "-m", "moa_bus.cli", "bench", "metrics", "--json",
                        "--links", "2000", "--scrapes", "3", "--repeat", "20000", "--runs", "3"],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["links"] == 2000
    # packets, bytes, marks, corrupted, duplicated
    per_vni = len(schemas.STAGES) * (5 + len(schemas.DROP_REASONS))
    assert 2000 * per_vni < out["samples"] < 2000 * per_vni + 300, out
    for key in ("read_ms", "render_ms", "client_render_ms", "scrape_ms", "scrape_cpu_ms",
                "datapath_idle_ns", "datapath_scraping_ns", "loop_lag_idle_ms",
                "loop_lag_scraping_ms"):
        assert key in out, (key, out)
    assert out["datapath_scrapes"] > 0 and out["loop_lag_scrapes"] > 0
