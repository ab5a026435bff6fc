"""The Prometheus endpoint of `moa serve` (`--metrics ADDR:PORT`, `metrics` in the TOML file; off
by default): the box's links, its datapath and the service itself, in Prometheus's text format,
for Prometheus and Grafana (the names and what each means: docs/metrics.md).

Where the work runs, so that a scrape slows neither the datapath nor the apply queue:

- The HTTP server is a thread of its own running its own asyncio loop (no thread per
  connection, a few lines of request parsing); a scrape never enters the service's event loop,
  never queues behind (or in front of) an operation in the applier, and takes no lock the apply
  path holds for longer than a dict copy.
- Counters are read in bulk from the per-CPU maps (`Datapath.counter_table`: a few
  BPF_MAP_LOOKUP_BATCH syscalls, no BPF-side lock, nothing written); the BPF programs keep
  incrementing their own CPU's copy, untouched by the read.
- A rendering serves every scrape that arrives within REUSE_S (0.1 s) after it began, and
  scrapes that arrive while one is being made wait for it: a scrape's numbers are at most
  0.1 s older than the scrape, and however many scrapers there are (Prometheus servers in HA
  pairs, dashboards, a scrape storm) the service renders at most ten times a second. Rendering
  is Python holding the GIL, which the event loop of the apply queue needs too: this bound is
  what keeps 100 scrapes/s from slowing applies (docs/benchmarks.md).
- The service's own metrics are prometheus_client metrics (a registry per service); the
  per-link families, tens of thousands of lines on a large box, are rendered by
  moa_bus/service/metrics_links.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector,
    disable_created_metrics, generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import schemas
from moa_bus.service.applier import APPLY_OPS
from moa_bus.service.metrics_links import LinkFamilies
from moa_bus.service.settings import parse_listen

if TYPE_CHECKING:
    from moa_bus.service.transport import MoaService

log = logging.getLogger("moa.bus")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; an apply is a map write (~1 ms) up to a materialization of thousands of links (~1 min).
APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0, 60.0, 120.0)
# Every word an Ack's error.code can be (docs/contract.md), and "ok".
CODES = ("ok", "malformed", "invalid", "conflict", "not_found", "unsupported", "apply_failed",
         "rollback_incomplete", "internal")

# struct moa_global_counters' fields as metric names (the two about drop events are
# moa_drop_events_*); a field added later is exported as moa_classifier_<field>_total.
CLASSIFIER = {
    "non_vxlan": ("moa_classifier_non_vxlan_packets",
                  "Frames on the uplink that were not VXLAN to moa's port: passed untouched."),
    "unknown_vni": ("moa_classifier_unknown_vni_packets",
                    "VXLAN frames whose VNI no link owns: passed untouched."),
    "handover": ("moa_classifier_handover_packets",
                 "Egress frames that carried a LAN ingress stage's handover in skb->mark."),
    "port_held": ("moa_classifier_port_held_packets",
                  "LAN frames a member's VTEP held until they left the sender's port."),
    # flow mode's counters (moa_flow_stats, datapath/bpf/flow.h)
    "flow_redirect": ("moa_flow_redirected_packets",
                      "Flow mode: frames rewritten toward their link's peer and redirected."),
    "flow_mismatch": ("moa_flow_mismatch_packets",
                      "Flow mode: frames of an entry's VNI not addressed to the box: passed."),
    "flow_error": ("moa_flow_error_packets",
                   "Flow mode: frames dropped because a rewrite helper failed."),
    "flow_released": ("moa_flow_released_packets",
                      "Flow mode: redirected frames a local socket owned, sent as a clone."),
    "flow_pending": ("moa_flow_pending_packets",
                     "Flow mode: frames dropped because the peer's next hop has not answered "
                     "ARP or neighbour discovery yet."),
}
DROP_EVENT_COUNTERS = {
    "events_suppressed": ("moa_drop_events_suppressed",
                          "Drops not reported as drop events: over a link stage's event budget."),
    "ringbuf_fail": ("moa_drop_events_lost",
                     "Drop events lost: the ring buffer was full."),
}


class ServiceMetrics:
    """The metrics of one MoaService: its registry, what the service feeds (`observe_ack`) and
    what is read at scrape time (the box, the applier, NATS)."""

    def __init__(self, service: "MoaService") -> None:
        # No <name>_created series: a gauge per counter and histogram that Prometheus's text
        # format (0.0.4) has no use for (process-wide in prometheus_client; moa has one registry).
        disable_created_metrics()
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.apply_seconds = Histogram(
            "moa_apply_duration_seconds",
            "Time from taking an operation off the apply queue to its ack (decode, judge, "
            "kernel, durable commit), by operation; refused ones too.",
            ["op"], buckets=APPLY_BUCKETS, registry=self.registry)
        self.operations = Counter(
            "moa_operations",
            "Operations the applier finished, by operation and the code of their Ack (ok: "
            "applied; otherwise the error word that refused it).",
            ["op", "code"], registry=self.registry)
        for op in APPLY_OPS:
            self.apply_seconds.labels(op)
            for code in CODES:
                self.operations.labels(op, code)
        self.links = LinkFamilies(service.datapath, service.desired)
        self.registry.register(_BoxCollector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.renders = 0
        self.last_render_seconds = 0.0

    def observe_ack(self, ack: schemas.Ack) -> None:
        """One finished apply operation (the applier's ack, published or not)."""
        code = "ok" if ack.ok else (ack.error.code if ack.error else "internal")
        self.operations.labels(ack.op, code).inc()
        if ack.elapsed_ms is not None:
            self.apply_seconds.labels(ack.op).observe(ack.elapsed_ms / 1000)

    def render_chunks(self) -> list[bytes]:
        """The whole exposition (text format 0.0.4), in pieces (metrics_links.CHUNK lines)."""
        t0 = time.perf_counter()
        chunks = [generate_latest(self.registry), *self.links.render_chunks()]
        self.last_render_seconds = time.perf_counter() - t0
        self.renders += 1
        return chunks

    def render(self) -> bytes:
        return b"".join(self.render_chunks())


class _BoxCollector:
    """Gauges and counters read when scraped: the box, the applier, NATS, drop events."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        svc = self.m.service
        dp, desired = svc.datapath, svc.desired

        def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, help_text, value=value)

        def counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, help_text, value=value)

        from moa_bus.service.transport import VERSION

        info = GaugeMetricFamily("moa_info", "The service: its host id, version and datapath "
                                 "mode (full, or loss-only without sch_fq); always 1.",
                                 labels=("host", "version", "mode"))
        info.add_metric((svc.config.host, VERSION, "loss-only" if dp.loss_only else "full"), 1)
        yield info
        held = dict(desired.held)
        yield gauge("moa_materializations", "Materializations the box holds.", len(held))
        yield gauge("moa_links", "Links the box holds (all materializations).",
                    sum(len(h.materialize.links) for h in held.values()))
        yield gauge("moa_generation", "The box's generation: the last one handed out.",
                    desired.generation)
        yield gauge("moa_unconverged_materializations",
                    "Materializations the kernel does not hold as desired (status says why).",
                    len(svc.applier.unconverged))
        yield gauge("moa_apply_queue_depth",
                    "Operations waiting in the apply queue (not counting the one in hand).",
                    svc.applier.pending)
        yield gauge("moa_apply_in_progress", "1 while the applier has an operation in hand.",
                    1 if svc.applier.busy else 0)

        nc = svc.nc
        stats = nc.stats
        yield gauge("moa_nats_connected", "1 while the service is connected to NATS.",
                    1 if nc.is_connected else 0)
        yield counter("moa_nats_reconnects", "Reconnections to NATS since the service started.",
                      stats.get("reconnects", 0))
        yield counter("moa_nats_received_messages", "Messages received from NATS.",
                      stats.get("in_msgs", 0))
        yield counter("moa_nats_sent_messages", "Messages sent to NATS.", stats.get("out_msgs", 0))
        yield counter("moa_nats_received_bytes", "Payload bytes received from NATS.",
                      stats.get("in_bytes", 0))
        yield counter("moa_nats_sent_bytes", "Payload bytes sent to NATS.",
                      stats.get("out_bytes", 0))

        yield counter("moa_drop_events_published",
                      "Drop events published on moa.<host>.telemetry.drops since the service "
                      "started.", svc.telemetry.events_published)
        box = dp.box_counters()
        for field, value in box.items():
            if field in DROP_EVENT_COUNTERS:
                name, help_text = DROP_EVENT_COUNTERS[field]
            else:
                name, help_text = CLASSIFIER.get(
                    field, (f"moa_classifier_{field}", f"The classifier's {field} counter."))
            yield counter(name, help_text + " Box-wide, since the maps were created.", value)

        entries = GaugeMetricFamily("moa_bpf_map_entries", "Entries a BPF map holds.",
                                    labels=("map",))
        size = GaugeMetricFamily("moa_bpf_map_max_entries",
                                 "A BPF map's size (max_entries, fixed when loaded).",
                                 labels=("map",))
        for u in dp.map_usage():
            entries.add_metric((u.name,), u.entries)
            size.add_metric((u.name,), u.max_entries)
        yield entries
        yield size
        yield gauge("moa_fq_memory_worst_case_bytes",
                    "Worst-case sch_fq memory of the links held: rate x (latency + jitter + "
                    "queue time), summed (0 on a loss-only box).", dp.fq_memory_bytes())
        yield gauge("moa_metrics_render_seconds",
                    "Time the previous rendering of this exposition took.",
                    self.m.last_render_seconds)
        yield counter("moa_metrics_renders", "Renderings of this exposition (the scrapes that "
                      "come within 0.1 s of one share it).", self.m.renders)


class EndpointClosed(RuntimeError):
    """A scrape after stop(): the datapath may be closed already."""


REUSE_S = 0.1  # a rendering serves the scrapes that come within this long after it began
IDLE_S = 300.0  # an idle kept-alive connection is closed after this long
_TEXT = "text/plain; charset=utf-8"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class _Rendering:
    began: float  # time.monotonic() when its rendering began
    chunks: list[bytes]  # the body, in pieces
    gzipped: list[bytes] | None = None


class MetricsEndpoint:
    """The HTTP server: GET /metrics (any other path: 404), HTTP/1.1 with keep-alive, in one
    thread of its own running an asyncio loop (no thread per connection, a few lines of
    request parsing: an answer costs the process little besides the rendering)."""

    def __init__(self, metrics: ServiceMetrics, listen: str, reuse_s: float = REUSE_S) -> None:
        self.metrics = metrics
        self.listen = listen
        self.reuse_s = reuse_s
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._render_lock = threading.Lock()
        self._last: _Rendering | None = None
        self._closed = False
        self._writers: set[asyncio.StreamWriter] = set()  # open connections (the loop's thread)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on (the port the kernel picked for port 0)."""
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def start(self) -> None:
        """Listen (OSError, here, when the address cannot be used), then serve in a thread."""
        host, port = parse_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=128)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="moa-metrics",
                                        daemon=True)
        self._thread.start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None and self._sock is not None
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(self._connection, sock=self._sock))
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for w in list(self._writers):  # kept-alive connections: their reads end
                w.close()
            pending = asyncio.all_tasks(loop)
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=5))
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop),
                                                   return_exceptions=True))
            loop.run_until_complete(server.wait_closed())
            loop.close()

    def stop(self) -> None:
        """Stop listening and close every connection; once this returns no scrape reads the
        datapath any more, so it may be closed."""
        with self._render_lock:  # a rendering in progress ends first
            self._closed = True
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = self._loop = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def rendering(self) -> _Rendering:
        """The body for a scrape arriving now: the last rendering when it began less than
        `reuse_s` before, else a new one (scrapes that arrive while it is made wait for it and
        share it). So the numbers a scrape gets are at most `reuse_s` older than the scrape, and
        however many scrapers there are, rendering happens at most 1/reuse_s times a second."""
        asked = time.monotonic()
        with self._render_lock:
            if self._closed:
                raise EndpointClosed("the service is stopping")
            last = self._last
            if last is not None and last.began >= asked - self.reuse_s:
                return last
            began = time.monotonic()
            self._last = _Rendering(began, self.metrics.render_chunks())
            return self._last

    def body(self) -> bytes:
        return b"".join(self.rendering().chunks)

    def _gzipped(self, r: _Rendering) -> list[bytes]:
        """The rendering gzipped, piece by piece (zlib lets go of the GIL while it works); once
        per rendering, whoever asks first."""
        if r.gzipped is not None:
            return r.gzipped
        z = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
        gz = [piece for c in r.chunks if (piece := z.compress(c))] + [z.flush()]
        with self._render_lock:
            if self._last is r:
                self._last = dataclasses.replace(r, gzipped=gz)
        return gz

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:  # asyncio sets it only for sockets made with proto IPPROTO_TCP
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writers.add(writer)
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_S)
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split()
                if len(parts) != 3:
                    await self._answer(writer, 400, b"moa: bad request\n", _TEXT, close=True)
                    return
                method, target, version = parts
                headers = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                keep = (version == "HTTP/1.1" and headers.get("connection", "").lower() != "close")
                if "content-length" in headers:  # a body we do not read: no keep-alive
                    keep = False
                status, body, ctype, extra = self._response(method, target, headers)
                await self._answer(writer, status, [] if method == "HEAD" else body, ctype,
                                   close=not keep, extra=extra, length=sum(map(len, body)))
                if not keep:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _response(self, method: str, target: str,
                  headers: dict[str, str]) -> tuple[int, list[bytes], str, dict[str, str]]:
        if method not in ("GET", "HEAD"):
            return 405, [b"moa: GET /metrics\n"], _TEXT, {"Allow": "GET, HEAD"}
        if target.split("?", 1)[0] not in ("/metrics", "/metrics/"):
            return 404, [b"moa: metrics are at /metrics\n"], _TEXT, {}
        try:
            r = self.rendering()
        except EndpointClosed as e:
            return 503, [f"moa: {e}\n".encode()], _TEXT, {}
        except Exception as e:  # a scrape must not take the server down
            log.exception("metrics: rendering failed")
            return 500, [f"moa: {type(e).__name__}: {e}\n".encode()], _TEXT, {}
        if "gzip" in headers.get("accept-encoding", ""):
            return 200, self._gzipped(r), CONTENT_TYPE, {"Content-Encoding": "gzip"}
        return 200, r.chunks, CONTENT_TYPE, {}

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: int, body: list[bytes], ctype: str,
                      *, close: bool, extra: dict[str, str] | None = None,
                      length: int | None = None) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}", f"Content-Type: {ctype}",
                f"Content-Length: {sum(map(len, body)) if length is None else length}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        if close:
            head.append("Connection: close")
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if sum(map(len, body)) <= 1 << 20:  # a small box: one write
            writer.write(b"".join([head_bytes, *body]))
            await writer.drain()
            return
        writer.write(head_bytes)
        for piece in body:  # piece by piece: no copy of the whole body in one go
            writer.write(piece)
            await writer.drain()
