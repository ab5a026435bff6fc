"""The moa service on NATS: request/reply endpoints (the NATS micro protocol: moa_bus/service/
micro.py), the durable JetStream path, acks and telemetry, all feeding one Applier so that the box
sees its events strictly in order.

Transport only: decoding, checks and datapath calls live in moa_bus/service/applier.py.

An error reply carries moa's Ack (its `error.code` a word: docs/contract.md) and the micro
protocol's headers: Nats-Service-Error is that word, Nats-Service-Error-Code its number
(ERROR_STATUS). A request the service could not take (it is stopping) is answered 503 with an
empty body: it was not applied.

Sizes (docs/contract.md, "Sizes"): no reply or telemetry message is larger than the connected
server's max_payload (status is paged: moa_bus/service/status.py); a document larger than that
comes through the JetStream object store (`MOA_DOCS_<host>`), named by the Moa-Object header of
an empty request or event, and is deleted once it has been answered or acked. A body (or such a
document) beyond `max_body_bytes` is refused `invalid` without being read. Past the apply
queue's bound a request is answered `busy` and a JetStream event is handed back (nak) so that
it comes again.
"""
from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as jsapi

import schemas
from datapath.api import Datapath
from moa_bus.service import status
from moa_bus.service.applier import APPLY_OPS, QUEUE_LIMIT, Applier, Body, Outcome
from moa_bus.service.desired import DesiredState
from moa_bus.service.micro import DEFAULT_QUEUE_GROUP, Endpoint, MicroService, error_headers
from moa_bus.service.settings import SettingsError
from moa_bus.service.subjects import DRY_RUN_HEADER, OBJECT_HEADER, SERVICE_NAME, Subjects
from moa_bus.service.telemetry import Telemetry
from schemas import InvalidMessage

log = logging.getLogger("moa.bus")

VERSION = "0.1.0"
ENDPOINTS = (*APPLY_OPS, "status")  # request/reply on moa.<host>.<endpoint>

# moa's error words (an Ack's error.code) as the numbers of Nats-Service-Error-Code
# (docs/contract.md, "Ack"); a word not listed here is 500.
ERROR_STATUS: dict[str, int] = {
    "malformed": 400, "invalid": 400, "not_found": 404, "conflict": 409, "unsupported": 422,
    "busy": 429, "apply_failed": 500, "rollback_incomplete": 500, "internal": 500,
}
UNAVAILABLE = 503  # not taken: the service is stopping
MAX_BODY_BYTES = 64 << 20  # a request's body, or the document it names; beyond: invalid
DOCS_TTL_S = 7 * 24 * 3600  # a document nobody named in a request is dropped by the store then
BUSY_RETRY_S = 1.0  # a JetStream event refused busy comes back after this


def error_status(code: str) -> int:
    """The micro protocol's number for moa's error word `code`."""
    return ERROR_STATUS.get(code, 500)


class JetStreamUnavailable(RuntimeError):
    """The NATS server does not offer JetStream to this connection (the message says why and what
    to do); `moa serve` prints it and exits 1."""


def _server_url(nc: Client) -> str:
    u = nc.connected_url  # the server of a cluster's list this client is connected to
    return f"{u.scheme}://{u.hostname}:{u.port}" if u is not None else "(not connected)"


async def require_jetstream(nc: Client, timeout: float = 5.0) -> None:
    """Return if JetStream answers for this connection's account; else JetStreamUnavailable."""
    url = _server_url(nc)
    try:
        await nc.jetstream(timeout=timeout).account_info()
    except nats.js.errors.ServiceUnavailableError as e:
        why = (e.description or "").lower()
        if not why:  # nothing answers $JS.API: the server runs without JetStream
            raise JetStreamUnavailable(
                f"the NATS server at {url} has no JetStream, which moa needs (its events stream "
                "and durable consumer): start nats-server with -js, or put `jetstream {}` in its "
                "configuration file, or give moa no NATS URL to use its embedded server") from None
        if "not enabled for account" in why:
            raise JetStreamUnavailable(
                f"the NATS server at {url} has JetStream, but not for the account moa connects "
                f"as ({e.description}): enable it for that account in the server's "
                "configuration (`jetstream: enabled` in the account's block)") from None
        raise JetStreamUnavailable(
            f"JetStream at {url} is unavailable ({e.description})") from None
    except nats.errors.TimeoutError:
        raise JetStreamUnavailable(
            f"JetStream at {url} did not answer within {timeout:g} s") from None


@dataclass
class ServiceConfig:
    host: str
    stats_interval: float = 1.0  # s between telemetry.links messages
    drop_interval: float = 0.25  # s between telemetry.drops batches
    ack_wait: float = 30.0  # s JetStream waits for our ack before redelivering (extended by +WPI)
    jetstream: bool = True
    # JetStream replicas of the events stream when we create it (3 on a cluster)
    stream_replicas: int = 1
    queue_limit: int = QUEUE_LIMIT  # operations waiting in the apply queue; past it: busy
    max_body_bytes: int = MAX_BODY_BYTES  # a request body or the document it names
    busy_retry: float = BUSY_RETRY_S  # s before a JetStream event refused busy comes again
    metrics: str | None = None  # ADDR:PORT of the Prometheus endpoint (moa_bus/service/metrics.py)
    # s between checks of flow mode's next hops (datapath/next_hops.py)
    next_hop_interval: float = 2.0


class MoaService:
    """`unconverged`: materializations the start-up reconcile could not converge (id -> why)."""

    def __init__(self, nc: Client, datapath: Datapath, desired: DesiredState,
                 config: ServiceConfig, unconverged: dict[str, str] | None = None) -> None:
        self.nc = nc
        self.datapath = datapath
        self.desired = desired
        self.config = config
        self.subjects = Subjects(config.host)
        self.applier = Applier(datapath, desired, config.host, self._publish_ack,
                               dict(unconverged or {}), limit=config.queue_limit,
                               reply_room=lambda: status.room(self.nc.max_payload))
        self.applier.scheduler.report = self._publish_schedule
        self.status = status.StatusPages(desired, datapath, config.host,
                                         self.applier.unconverged)
        self.telemetry = Telemetry(nc, datapath, desired, self.subjects,
                                   config.stats_interval, config.drop_interval,
                                   give_way=self.status.walking)
        self.micro = MicroService(SERVICE_NAME, VERSION, "moa: in-kernel link emulation",
                                  metadata={"host": config.host})
        self._endpoints: dict[str, tuple[str, Endpoint]] = {
            self.subjects.op(op): (op, self.micro.add_endpoint(op, self.subjects.op(op)))
            for op in ENDPOINTS}
        self._ops_sub: Subscription | None = None
        self._responders: set[asyncio.Task[None]] = set()
        self._pull_task: asyncio.Task[None] | None = None
        self._hops_task: asyncio.Task[None] | None = None
        self._fetching = False
        self._stopping = asyncio.Event()
        self._last_seq = 0  # highest stream sequence applied by this process
        self._busy_naks: dict[int, int] = {}  # stream seq -> deliveries refused busy
        self.events_refused_busy = 0  # JetStream deliveries handed back: the queue was full
        self._docs = None  # the object store of large documents (JetStream)
        self.metrics = None  # ServiceMetrics, with config.metrics
        self.metrics_endpoint = None  # MetricsEndpoint: .url, .address once started

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.config.metrics is not None:  # first: an address in use stops the start here
            from moa_bus.service.metrics import MetricsEndpoint, ServiceMetrics

            self.metrics = ServiceMetrics(self)
            endpoint = MetricsEndpoint(self.metrics, self.config.metrics)
            try:
                endpoint.start()
            except OSError as e:
                raise SettingsError(f"--metrics {self.config.metrics} (metrics in --config): "
                                    f"cannot listen there: {e.strerror or e}") from None
            self.metrics_endpoint = endpoint
        self.applier.start()
        await self.applier.resume_schedules()
        await self.micro.start(self.nc)
        # One subscription for every endpoint: see _dispatch for why.
        self._ops_sub = await self.nc.subscribe(
            self.subjects.op("*"), queue=DEFAULT_QUEUE_GROUP, cb=self._dispatch)
        if self.config.jetstream:
            psub = await self._ensure_jetstream()
            self._docs = await self._ensure_docs()
            self._pull_task = asyncio.create_task(self._pull_loop(psub), name="moa-jetstream")
        self.telemetry.start()
        self._hops_task = asyncio.create_task(self._follow_next_hops(), name="moa-next-hops")
        await self.nc.flush()

    async def stop(self) -> None:
        """Stop taking new work, finish the operation in hand and those accepted, flush; the
        datapath's state stays as it is."""
        self._stopping.set()
        if self._ops_sub is not None:
            await self._ops_sub.unsubscribe()
            self._ops_sub = None
        await self.micro.stop()
        if self._hops_task is not None:
            self._hops_task.cancel()
            await asyncio.gather(self._hops_task, return_exceptions=True)
        if self._pull_task is not None:
            if self._fetching:  # idle in a fetch: nothing in hand, stop waiting
                self._pull_task.cancel()
            await asyncio.gather(self._pull_task, return_exceptions=True)
        await self.applier.drain()
        if self._responders:
            await asyncio.gather(*self._responders, return_exceptions=True)
        await self.telemetry.stop()
        if self.metrics_endpoint is not None:  # before the datapath it reads is closed
            await asyncio.to_thread(self.metrics_endpoint.stop)
            self.metrics_endpoint = None
        try:
            await self.nc.flush(timeout=2)
        except Exception as e:
            log.warning("flush at stop: %s", e)

    async def _follow_next_hops(self) -> None:
        """Flow mode's entries follow the box's neighbour table (datapath/next_hops.py)."""
        while True:
            await asyncio.sleep(self.config.next_hop_interval)
            try:
                for line in await self.datapath.follow_next_hops():
                    log.warning("%s", line)
            except Exception as e:  # noqa: BLE001 - the next check tries again
                log.warning("following flow mode's next hops: %s", e)

    # ------------------------------------------------------------------ request/reply

    async def _dispatch(self, msg: Msg) -> None:
        """Every request to moa.<host>.<endpoint>, in the order the server delivered them.

        nats-py runs each subscription's callbacks in a task of its own, so requests sent in one
        order on different subjects (materialize, then update) would reach separate
        subscriptions' handlers in another. This one subscription's task hands each request to
        the applier before it takes the next (no await before the enqueue) and answers later,
        so a slow operation does not hold back the reading of those after it."""
        found = self._endpoints.get(msg.subject)
        if found is None:  # moa.<host>.acks also matches moa.<host>.*: not a request
            return
        op, endpoint = found
        t0 = time.perf_counter_ns()
        pending: Awaitable[Outcome]
        if op == "status":  # answered from the committed desired state: never queued
            pending = self._status(msg.data)
        else:
            kind = op
            if op == "materialize" and msg.headers and msg.headers.get(DRY_RUN_HEADER):
                kind = "plan"
            pending = self.applier.submit(kind, self._body(op, msg))
        task = asyncio.create_task(self._respond(msg, endpoint, pending, t0))
        self._responders.add(task)
        task.add_done_callback(self._responders.discard)

    def _body(self, op: str, msg: Msg) -> Body:
        """The payload of a request or event: its data, or the document its Moa-Object header
        names; either refused `invalid` beyond max_body_bytes (nothing decoded)."""
        name = msg.headers.get(OBJECT_HEADER) if msg.headers else None
        limit = self.config.max_body_bytes
        if name is not None:
            return lambda: self._fetch(name)
        if len(msg.data) > limit:
            async def too_large() -> bytes:
                raise InvalidMessage("", f"the body is {len(msg.data):,} B, more than "
                                     f"{limit:,} B (docs/contract.md, \"Sizes\")")
            return too_large
        return msg.data

    async def _fetch(self, name: str) -> bytes:
        """The document `name` of the object store, once its size is known to be within
        bounds (InvalidMessage otherwise, or not_found)."""
        if self._docs is None:
            raise InvalidMessage(OBJECT_HEADER, f"this service has no object store "
                                 f"{self.subjects.docs} (it runs without JetStream, or the "
                                 "server refused it: see its log)", "unsupported")
        try:
            info = await self._docs.get_info(name)
        except nats.js.errors.NotFoundError:  # ObjectNotFoundError is one
            raise InvalidMessage(OBJECT_HEADER, f"no object {name!r} in {self.subjects.docs}",
                                 "not_found") from None
        limit = self.config.max_body_bytes
        if (info.size or 0) > limit:
            raise InvalidMessage(OBJECT_HEADER, f"object {name!r} is {info.size:,} B, more "
                                 f"than {limit:,} B (docs/contract.md, \"Sizes\")")
        out = io.BytesIO()
        await self._docs.get(name, writeinto=out)
        return out.getvalue()

    async def _forget(self, msg: Msg) -> None:
        """Delete the document a request or event named, once it was answered or acked."""
        name = msg.headers.get(OBJECT_HEADER) if msg.headers else None
        if name is None or self._docs is None:
            return
        try:
            await self._docs.delete(name)
        except Exception as e:  # noqa: BLE001 - gone already, or the store is away: its TTL
            log.info("object %s not deleted: %s", name, e)

    async def _status(self, data: bytes) -> Outcome:
        t0 = time.perf_counter()
        req = None
        try:
            if len(data) > self.config.max_body_bytes:
                raise InvalidMessage("", f"the body is {len(data):,} B, more than "
                                     f"{self.config.max_body_bytes:,} B")
            req = schemas.decode(schemas.StatusRequest, data)
            return Outcome(None, await self.status.page(req, self.nc.max_payload))
        except InvalidMessage as e:
            return self.applier._error("status", req.id if req else None, e, t0)

    async def _respond(self, msg: Msg, endpoint: Endpoint, pending: Awaitable[Outcome],
                       t0: int) -> None:
        try:
            outcome = await pending
        except Exception as e:
            text = f"not applied: {e}"
            log.exception("%s: %s", msg.subject, text)
            if msg.reply:
                await self.nc.publish(msg.reply, b"", headers=error_headers(UNAVAILABLE, text))
            endpoint.record(time.perf_counter_ns() - t0, f"{UNAVAILABLE} {text}")
            return
        headers = error = None
        if len(outcome.reply) > status.room(self.nc.max_payload):  # never sent: say why
            log.error("a %d B reply to %s is larger than a message", len(outcome.reply),
                      msg.subject)
            outcome = self.applier._error(endpoint.name, None, InvalidMessage(
                "", f"the reply ({len(outcome.reply):,} B) is larger than the server's "
                f"max_payload ({self.nc.max_payload:,} B)", "internal"), time.perf_counter())
        if outcome.ack is not None and outcome.ack.error is not None:
            word = outcome.ack.error.code
            headers = error_headers(error_status(word), word)
            error = f"{error_status(word)} {word}: {outcome.ack.error.message}"
        if msg.reply:
            await self.nc.publish(msg.reply, outcome.reply, headers=headers)
        endpoint.record(time.perf_counter_ns() - t0, error)
        if not outcome.busy:
            await self._forget(msg)

    async def _publish_schedule(self, report: schemas.ScheduleReport) -> None:
        """A scheduled step took effect (docs/contract.md, "Scheduled changes")."""
        await self.nc.publish(self.subjects.schedule, schemas.encode(report))

    async def _publish_ack(self, ack: schemas.Ack) -> None:
        if self.metrics is not None:
            self.metrics.observe_ack(ack)
        await self.nc.publish(self.subjects.acks, schemas.encode(ack))

    # ------------------------------------------------------------------ JetStream

    async def _ensure_jetstream(self):
        """The stream for moa.<host>.events.* and our durable pull consumer, created if missing."""
        await require_jetstream(self.nc)  # one line saying why, rather than a 503 from below
        js = self.nc.jetstream()
        s = self.subjects
        try:
            stream = await js.find_stream_name_by_subject(s.events)
        except nats.js.errors.NotFoundError:
            stream = s.stream
            await js.add_stream(name=stream, subjects=[s.events], storage=jsapi.StorageType.FILE,
                                num_replicas=self.config.stream_replicas)
            log.info("created JetStream stream %s for %s (replicas %d)", stream, s.events,
                     self.config.stream_replicas)
        try:
            await js.consumer_info(stream, s.durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(stream, jsapi.ConsumerConfig(
                durable_name=s.durable, ack_policy=jsapi.AckPolicy.EXPLICIT,
                deliver_policy=jsapi.DeliverPolicy.ALL, filter_subject=s.events,
                # one event in flight: a redelivery can never overtake a later event
                max_ack_pending=1, ack_wait=self.config.ack_wait))
            log.info("created durable consumer %s on %s", s.durable, stream)
        return await js.pull_subscribe_bind(s.durable, stream)

    async def _ensure_docs(self):
        """The object store for documents larger than max_payload, created if missing; None
        when the server refuses it (its permissions for our user): the service runs, and a
        request naming a document is refused saying why."""
        js = self.nc.jetstream()
        try:
            try:
                return await js.object_store(self.subjects.docs)
            except nats.js.errors.BucketNotFoundError:
                store = await js.create_object_store(self.subjects.docs, jsapi.ObjectStoreConfig(
                    description=f"moa: documents for {self.subjects.op('*')} larger than a "
                    "message", ttl=DOCS_TTL_S, replicas=self.config.stream_replicas,
                    storage=jsapi.StorageType.FILE))
                log.info("created object store %s (large documents)", self.subjects.docs)
                return store
        except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError) as e:
            log.warning("no object store %s (%s): documents larger than a message are refused "
                        "(examples/nats-server.conf has the permissions it needs)",
                        self.subjects.docs, e or type(e).__name__)
            return None

    async def _pull_loop(self, psub) -> None:
        while not self._stopping.is_set():
            self._fetching = True
            try:
                msgs = await psub.fetch(1, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except asyncio.CancelledError:
                return
            except Exception as e:  # disconnected, server restarting: the client reconnects
                log.warning("JetStream fetch: %s", e)
                await asyncio.sleep(0.5)
                continue
            finally:
                self._fetching = False
            for msg in msgs:
                await self._handle_event(msg)

    async def _handle_event(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        if seq <= self._last_seq:  # redelivered after we applied it (our ack was lost): ack again
            if await self._ack(msg):
                await self._forget(msg)
            return
        op = msg.subject.rsplit(".", 1)[-1]
        # a delivery refused busy was not applied: it does not make the next one a redelivery
        deliveries = meta.num_delivered - self._busy_naks.get(seq, 0)
        fut = self.applier.submit(op, self._body(op, msg), redelivered=deliveries > 1)
        # A long materialization: keep telling JetStream we are on it, so it does not redeliver.
        while True:
            done, _ = await asyncio.wait({fut}, timeout=self.config.ack_wait / 3)
            if done:
                break
            try:
                await msg.in_progress()
            except Exception as e:
                log.warning("in-progress ack: %s", e)
        if fut.cancelled() or fut.exception() is not None:  # not applied: leave it for redelivery
            return
        if fut.result().busy:  # not taken: JetStream delivers it again (before any later one)
            self._busy_naks[seq] = self._busy_naks.get(seq, 0) + 1
            self.events_refused_busy += 1
            try:
                await msg.nak(delay=self.config.busy_retry)
            except Exception as e:  # its ack_wait brings it back all the same
                log.warning("nak of a busy event: %s", e)
            return
        self._busy_naks.pop(seq, None)
        self._last_seq = seq
        if await self._ack(msg):
            await self._forget(msg)

    @staticmethod
    async def _ack(msg: Msg) -> bool:
        try:
            await msg.ack_sync(timeout=5)
            return True
        except Exception as e:  # the next delivery of this message is then recognized by its seq
            log.warning("ack of stream message failed: %s", e)
            return False
