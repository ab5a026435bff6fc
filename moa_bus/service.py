"""The moa service on NATS: request/reply endpoints (nats.micro), the durable JetStream path, acks
and telemetry, all feeding one Applier so that the box sees its events strictly in order.

Transport only: decoding, checks and datapath calls live in moa_bus.applier.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as jsapi
from nats.micro import add_service
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, Request
from nats.micro.service import DEFAULT_QUEUE_GROUP, Service

import schemas
from datapath.api import Datapath
from moa_bus.applier import APPLY_OPS, Applier, Outcome
from moa_bus.desired import DesiredState
from moa_bus.subjects import SERVICE_NAME, Subjects
from moa_bus.telemetry import Telemetry

log = logging.getLogger("moa.bus")

VERSION = "0.1.0"
DRY_RUN_HEADER = "Moa-Dry-Run"  # on a materialize request: reply with the plan, apply nothing


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
    stream_replicas: int = 1  # JetStream replicas of the events stream when we create it (3 on a cluster)


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
                               dict(unconverged or {}))
        self.telemetry = Telemetry(nc, datapath, desired, self.subjects,
                                   config.stats_interval, config.drop_interval)
        self.micro: Service | None = None
        self._endpoints: dict[str, Any] = {}
        self._ops_sub: Subscription | None = None
        self._responders: set[asyncio.Task[None]] = set()
        self._pull_task: asyncio.Task[None] | None = None
        self._fetching = False
        self._stopping = asyncio.Event()
        self._last_seq = 0  # highest stream sequence applied by this process

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.applier.start()
        self.micro = await add_service(
            self.nc, name=SERVICE_NAME, version=VERSION,
            description="moa: in-kernel link emulation", metadata={"host": self.config.host})
        for op in (*APPLY_OPS, "status"):
            await self.micro.add_endpoint(name=op, subject=self.subjects.op(op),
                                          handler=self._handler(op))
        await self._route_through_one_subscription()
        if self.config.jetstream:
            psub = await self._ensure_jetstream()
            self._pull_task = asyncio.create_task(self._pull_loop(psub), name="moa-jetstream")
        self.telemetry.start()
        await self.nc.flush()

    async def stop(self) -> None:
        """Stop taking new work, finish the operation in hand and those accepted, flush; the
        datapath's state stays as it is."""
        self._stopping.set()
        if self._ops_sub is not None:
            await self._ops_sub.unsubscribe()
            self._ops_sub = None
        if self.micro is not None:
            self.micro._endpoints = []  # their subscriptions are already gone (see below)
            await self.micro.stop()
        if self._pull_task is not None:
            if self._fetching:  # idle in a fetch: nothing in hand, stop waiting
                self._pull_task.cancel()
            await asyncio.gather(self._pull_task, return_exceptions=True)
        await self.applier.drain()
        if self._responders:
            await asyncio.gather(*self._responders, return_exceptions=True)
        await self.telemetry.stop()
        try:
            await self.nc.flush(timeout=2)
        except Exception as e:
            log.warning("flush at stop: %s", e)

    # ------------------------------------------------------------------ request/reply

    async def _route_through_one_subscription(self) -> None:
        """nats-py runs each subscription's callbacks in a task of its own, so requests sent in
        one order on different subjects (materialize, then update) can reach the handlers in
        another. The micro endpoints stay registered (they answer $SRV.INFO and count $SRV.STATS)
        but their own subscriptions are replaced by a single one on moa.<host>.*, whose one task
        hands every request to its endpoint in the order the server delivered them.
        (Relies on nats.micro internals of the pinned nats-py 2.16: Endpoint._subscription and
        Endpoint._handle_request; tests/test_bus_service.py checks INFO, STATS and the order.)"""
        assert self.micro is not None
        self._endpoints = {ep._subject: ep for ep in self.micro._endpoints}
        for ep in self.micro._endpoints:
            await ep._subscription.unsubscribe()
            ep._subscription = None
        self._ops_sub = await self.nc.subscribe(
            self.subjects.op("*"), queue=DEFAULT_QUEUE_GROUP, cb=self._dispatch)

    async def _dispatch(self, msg: Msg) -> None:
        ep = self._endpoints.get(msg.subject)
        if ep is not None:  # moa.<host>.acks also matches moa.<host>.*: not a request
            await ep._handle_request(msg)

    def _handler(self, op: str):
        async def handle(req: Request) -> None:
            # Enqueue now and answer later, so a slow operation on one subject does not hold back
            # the messages that arrived after it on other subjects (arrival order is kept).
            kind = op
            if op == "materialize" and req.headers and req.headers.get(DRY_RUN_HEADER):
                kind = "plan"
            fut = self.applier.submit(kind, req.data)
            task = asyncio.create_task(self._respond(req, fut))
            self._responders.add(task)
            task.add_done_callback(self._responders.discard)
        return handle

    async def _respond(self, req: Request, fut: asyncio.Future[Outcome]) -> None:
        try:
            outcome = await fut
        except Exception as e:
            await req.respond_error("503", f"not applied: {e}")
            return
        headers = None
        if outcome.ack is not None and outcome.ack.error is not None:
            # micro clients (and `nats req`) see the error in the headers as well as in the Ack
            headers = {ERROR_HEADER: outcome.ack.error.message, ERROR_CODE_HEADER: outcome.ack.error.code}
        if req._msg.reply:
            await req.respond(outcome.reply, headers=headers)

    async def _publish_ack(self, ack: schemas.Ack) -> None:
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
            await self._ack(msg)
            return
        op = msg.subject.rsplit(".", 1)[-1]
        fut = self.applier.submit(op, msg.data, redelivered=meta.num_delivered > 1)
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
        self._last_seq = seq
        await self._ack(msg)

    @staticmethod
    async def _ack(msg: Msg) -> None:
        try:
            await msg.ack_sync(timeout=5)
        except Exception as e:  # the next delivery of this message is then recognized by its seq
            log.warning("ack of stream message failed: %s", e)
