"""The engine client: a typed async Python API to one moa box, for realization engines (and the
`moa` command line, whose verbs are built on it).

    from moa_bus.engine import MoaClient
    import schemas

    async with await MoaClient.connect("nats://nats.example:4222", host="box1") as box:
        async with box.acks() as acks:                   # subscribe before sending
            ack = await box.materialize(schemas.Materialize(id="rlz42", links=[...]))
            assert ack.ok, ack.error
        st = await box.status("rlz42")                   # schemas.StatusReply
        await box.update({"id": "rlz42", "links": [{"link": "a-b", "emulation": {"loss": 0.01}}]})
        async with box.link_stats() as stats:
            batch = await stats.next(timeout=5)          # schemas.LinkStatsBatch
        await box.dematerialize("rlz42")

Messages are moa's msgspec Structs (`schemas`: Materialize, Update, Ack, StatusReply,
LinkStatsBatch, DropBatch; docs/contract.md); where a message is sent, a plain dict (JSON-ready,
units as strings or integers) or JSON bytes do too: the service checks every message either way.

What a call can end in:

- materialize, update, dematerialize return the box's **Ack**: `ack.ok`, `ack.generation`, or
  `ack.error` (`code`, `field`, `message`) when the box refused the change; a refused change
  changed nothing. Refusals are answers, not exceptions: an engine decides what to do with a
  conflict or an unsupported setting.
- status and plan return what was asked, or raise **Refused** (its `ack` says why, e.g.
  not_found for an id the box does not hold).
- Any of them raises **Unavailable** when no service answers on that host, when the service
  is stopping (the request was not applied: send it again), or when no reply came within the
  timeout (then whether it was applied is unknown: `status` or the acks tell).

Two ways to change the box, applied in one order with one set of rules: request/reply
(`materialize`, ...: the reply is the Ack) and the durable JetStream path (`send_event`: kept
by NATS until the box applied it, exactly once in effect; the Ack comes on `acks()`).

Any size fits (docs/contract.md, "Sizes"; moa_bus/engine_paging.py): `status` reads every page
of the box's status and returns it put together; a document larger than one message of the
server (its max_payload) goes through the service's object store, for materialize, update,
plan and send_event alike.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription

import schemas
from moa_bus import engine_paging
from moa_bus.service import connection
from moa_bus.service.subjects import (DRY_RUN_HEADER, OBJECT_HEADER, Subjects, check_host,
                                      default_host)

__all__ = ["MoaClient", "Feed", "Reply", "Plan", "MoaError", "Unavailable", "Refused",
           "Message", "DEFAULT_TIMEOUT"]

log = logging.getLogger("moa.engine")

DEFAULT_TIMEOUT = 60.0  # s; a materialization of thousands of links takes tens of seconds
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"

# What may be sent: a Struct of schemas, a JSON-ready mapping, or JSON text.
Message = msgspec.Struct | Mapping[str, Any] | bytes | str
Op = Literal["materialize", "update", "dematerialize"]
T = TypeVar("T")


class MoaError(Exception):
    """Base of the engine client's errors."""


class Unavailable(MoaError):
    """No answer: nobody serves that host, the service is stopping (not applied), or the reply
    did not come in time (applied or not: unknown)."""


class Refused(MoaError):
    """The box answered with an error Ack where a result was expected (status, plan)."""

    def __init__(self, ack: schemas.Ack) -> None:
        self.ack = ack
        err = ack.error
        where = f" at {err.field}" if err and err.field else ""
        super().__init__(f"{err.code if err else 'error'}{where}: "
                         f"{err.message if err else '(no message)'}")


@dataclass
class Reply:
    """A reply as it came: its bytes and headers."""
    data: bytes
    headers: dict[str, str] | None

    @property
    def json(self) -> object:
        try:
            return json.loads(self.data)
        except ValueError:
            return None

    @property
    def is_error(self) -> bool:
        """An error ack (ok: false) or a NATS micro error header."""
        if self.headers and ERROR_CODE_HEADER in self.headers:
            return True
        obj = self.json
        return isinstance(obj, dict) and obj.get("ok") is False


def payload(message: Message) -> bytes:
    """The JSON bytes of a message (a Struct, a mapping, or JSON text as it is)."""
    if isinstance(message, bytes):
        return message
    if isinstance(message, str):
        return message.encode()
    if isinstance(message, msgspec.Struct):
        return schemas.encode(message)
    return json.dumps(message).encode()


class Plan(list[str]):
    """The operations a materialize would run, in order (a list of str); `count` is how many
    there are in all: more than the list holds when the list was cut to fit one message."""

    def __init__(self, operations: list[str], count: int | None = None) -> None:
        super().__init__(operations)
        self.count = len(operations) if count is None else count


class Feed(Generic[T]):
    """Messages of one subject as they come, decoded: `async with` subscribes (before the
    requests whose effects it should see), `async for` or `next(timeout)` reads, leaving the
    block unsubscribes. A message that does not decode is logged and skipped."""

    def __init__(self, nc: Client, subject: str, kind: type[T]) -> None:
        self.nc = nc
        self.subject = subject
        self.kind = kind
        self._sub: Subscription | None = None

    async def __aenter__(self) -> "Feed[T]":
        self._sub = await self.nc.subscribe(self.subject)
        await self.nc.flush()  # the server has the subscription before anything is sent
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def next(self, timeout: float | None = None) -> T:
        """The next message; Unavailable (TimeoutError too) when none came within `timeout`."""
        if self._sub is None:
            raise RuntimeError("use the feed inside `async with`")
        while True:
            try:
                msg = await self._sub.next_msg(timeout=timeout)  # None: wait as long as it takes
            except nats.errors.TimeoutError:
                raise _Timeout(f"no message on {self.subject} within {timeout:g} s") from None
            try:
                return schemas.decode(self.kind, msg.data)
            except schemas.InvalidMessage as e:
                log.warning("%s: message skipped: %s", self.subject, e)

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            yield await self.next()


class _Timeout(Unavailable, TimeoutError):
    pass


class MoaClient:
    """One box's moa service over NATS (module docstring). `nc` is a connected nats-py client
    (its owner closes it, unless the client was made by `connect`); `host` the box's id in the
    subjects (default: MOA_HOST, else this machine's short hostname); `timeout` the seconds a
    request waits for its reply unless the call says otherwise."""

    def __init__(self, nc: Client, host: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.nc = nc
        self.host = check_host(host) if host else default_host()
        self.subjects = Subjects(self.host)
        self.timeout = timeout
        self._owns_nc = False

    @classmethod
    async def connect(cls, url: str | None = None, host: str | None = None, *,
                      options: connection.NatsOptions | None = None,
                      timeout: float = DEFAULT_TIMEOUT) -> "MoaClient":
        """Connect to NATS (`url`, or `options` for authentication and TLS; a comma-separated
        list of a cluster's servers works) within options.connect_timeout seconds
        (connection.BusConnectError otherwise); `close()` (or `async with`) disconnects."""
        opts = options or connection.NatsOptions()
        if url is not None:
            opts = dataclasses.replace(opts, url=url)
        nc = await connection.connect(opts)
        client = cls(nc, host, timeout=timeout)
        client._owns_nc = True
        return client

    async def close(self) -> None:
        """Disconnect, if this client made the connection."""
        if self._owns_nc and not self.nc.is_closed:
            await self.nc.close()

    async def __aenter__(self) -> "MoaClient":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- requests ---------------------------------------------------------------------------------

    async def request(self, op: str, message: Message, *, headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> Reply:
        """Send `message` to moa.<host>.<op> and return the reply as it came. Unavailable when
        nobody answers, the reply does not come in time, or the service is stopping (503)."""
        subject = self.subjects.op(op)
        wait = self.timeout if timeout is None else timeout
        try:
            msg = await self.nc.request(subject, payload(message), timeout=wait, headers=headers)
        except nats.errors.NoRespondersError:
            raise Unavailable(f"no service answers on {subject} (is `moa serve` running with "
                              "this --host?)") from None
        except nats.errors.TimeoutError:
            raise _Timeout(f"no reply on {subject} within {wait:g} s") from None
        reply = Reply(msg.data, msg.headers)
        if not reply.data and reply.headers and reply.headers.get(ERROR_CODE_HEADER) == "503":
            raise Unavailable(f"{subject}: {reply.headers.get(ERROR_HEADER) or 'unavailable'}")
        return reply

    async def send(self, op: str, message: Message, *, headers: dict[str, str] | None = None,
                   timeout: float | None = None) -> Reply:
        """As `request`, with a body larger than one message put in the service's object store
        first and named by the Moa-Object header (the service deletes it once read)."""
        async def ask(body: bytes, hdrs: dict[str, str] | None) -> Reply:
            return await self.request(op, body, headers=hdrs, timeout=timeout)
        return await engine_paging.send_document(self.nc, self.subjects, op, payload(message),
                                                 headers, ask, _busy)

    async def _ack(self, op: str, message: Message, timeout: float | None) -> schemas.Ack:
        reply = await self.send(op, message, timeout=timeout)
        return schemas.decode(schemas.Ack, reply.data)

    async def materialize(self, m: schemas.Materialize | Message, *,
                          timeout: float | None = None) -> schemas.Ack:
        """Make the box hold exactly `m` for m.id (new, or changed with the fewest operations);
        the Ack: ok with the generation, or the reason it was refused."""
        return await self._ack("materialize", m, timeout)

    async def update(self, u: schemas.Update | Message, *,
                     timeout: float | None = None) -> schemas.Ack:
        """Change some parameters of some links (chosen by link id or tag) of one id."""
        return await self._ack("update", u, timeout)

    async def dematerialize(self, mid: str, *, timeout: float | None = None) -> schemas.Ack:
        """Remove everything of materialization `mid` (not_found when the box holds none)."""
        return await self._ack("dematerialize", schemas.Dematerialize(id=mid), timeout)

    async def plan(self, m: schemas.Materialize | Message, *,
                   timeout: float | None = None) -> Plan:
        """The operations materialize(m) would run on the box now, in order; nothing applied
        (a Plan: a list, cut to fit one reply, with the `count` of them all). Refused when m is
        refused (invalid, conflict, unsupported)."""
        reply = await self.send("materialize", m, headers={DRY_RUN_HEADER: "1"},
                                timeout=timeout)
        if reply.is_error:
            raise Refused(schemas.decode(schemas.Ack, reply.data))
        plan = msgspec.json.decode(reply.data, type=_Plan)
        return Plan(plan.operations, plan.count)

    async def status(self, mid: str | None = None, *,
                     timeout: float | None = None) -> schemas.StatusReply:
        """What the box holds (one materialization, or all), with the kernel's counters: every
        page, put together (`timeout` is per page). Refused (not_found) for an id the box does
        not hold."""
        async def ask(body: bytes) -> Reply:
            return await self.request("status", body, timeout=timeout)
        got = await engine_paging.whole_status(ask, mid)
        if isinstance(got, Reply):
            raise Refused(schemas.decode(schemas.Ack, got.data))
        return schemas.decode(schemas.StatusReply, msgspec.json.encode(got))

    async def send_event(self, op: Op, message: Message, *, timeout: float = 5.0) -> int:
        """Send through the durable path (JetStream, moa.<host>.events.<op>): once NATS has it,
        the box applies it in order, exactly once in effect, even across a restart of either;
        its Ack comes on `acks()`. Returns the event's stream sequence number. A document larger
        than one message goes through the object store (the box deletes it once applied)."""
        data, headers = payload(message), None
        if not engine_paging.fits(self.nc, data):
            name = await engine_paging.put_document(self.nc, self.subjects, op, data)
            data, headers = b"", {OBJECT_HEADER: name}
        ack = await self.nc.jetstream().publish(self.subjects.event(op), data, timeout=timeout,
                                                headers=headers)
        return ack.seq

    # -- feeds ------------------------------------------------------------------------------------

    def acks(self) -> Feed[schemas.Ack]:
        """Every Ack the box publishes (moa.<host>.acks), whichever way its change came."""
        return Feed(self.nc, self.subjects.acks, schemas.Ack)

    def link_stats(self) -> Feed[schemas.LinkStatsBatch]:
        """Per-link counters, every stats_interval (moa.<host>.telemetry.links)."""
        return Feed(self.nc, self.subjects.links, schemas.LinkStatsBatch)

    def drops(self) -> Feed[schemas.DropBatch]:
        """Drop events in batches (moa.<host>.telemetry.drops), when something was dropped."""
        return Feed(self.nc, self.subjects.drops, schemas.DropBatch)


def _busy(reply: Reply) -> bool:
    """The service answered `busy`: it did not take the request (docs/contract.md)."""
    return bool(reply.headers) and reply.headers.get(ERROR_HEADER) == "busy"


class _Plan(msgspec.Struct):
    id: str
    operations: list[str]
    count: int | None = None
