"""The NATS micro protocol (ADR-32 "Service API", the protocol of nats.go's `micro` package), the
part a service answers: discovery and statistics on $SRV.PING, $SRV.INFO and $SRV.STATS (for
all services, for services of a name, for one instance: `$SRV.<VERB>[.<name>[.<id>]]`), with
the response types io.nats.micro.v1.{ping,info,stats}_response, per-endpoint statistics, and
error responses marked by the headers Nats-Service-Error (text) and Nats-Service-Error-Code (a
number).

Why moa keeps the protocol itself instead of using nats-py's `nats.micro`: that library gives
each endpoint a subscription of its own, and nats-py runs each subscription's callbacks in a
task of its own, so requests sent in one order on different subjects (materialize, then update)
could reach the service in another. moa receives all its endpoints' requests through one
subscription (moa_bus/service/transport.py) and records them here, endpoint by endpoint.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

API_PREFIX = "$SRV"
VERBS = ("PING", "INFO", "STATS")
DEFAULT_QUEUE_GROUP = "q"  # every instance of a service shares its requests
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
PING_RESPONSE = "io.nats.micro.v1.ping_response"
INFO_RESPONSE = "io.nats.micro.v1.info_response"
STATS_RESPONSE = "io.nats.micro.v1.stats_response"

_NAME = re.compile(r"[A-Za-z0-9_-]+")
# semver.org's suggested expression, as the protocol asks
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?")


async def discover(nc: Client, name: str, wait: float = 0.5) -> list[dict[str, object]]:
    """The PING responses of every running instance of service `name` that answer within
    `wait` seconds (as `nats micro ping NAME` finds them)."""
    found: list[dict[str, object]] = []

    async def on_reply(msg: Msg) -> None:
        try:
            reply = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            return
        if isinstance(reply, dict) and reply.get("type") == PING_RESPONSE:
            found.append(reply)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(f"{API_PREFIX}.PING.{name}", b"", reply=inbox)
        await nc.flush()
        await asyncio.sleep(wait)
    finally:
        await sub.unsubscribe()
    return found


def control_subjects(verb: str, name: str, instance: str) -> tuple[str, str, str]:
    """The three subjects on which a service answers `verb`: for all, by name, by name and id."""
    base = f"{API_PREFIX}.{verb}"
    return base, f"{base}.{name}", f"{base}.{name}.{instance}"


def error_headers(code: int, description: str) -> dict[str, str]:
    """The headers that make a reply an error response: a numeric code, and text for a user."""
    return {ERROR_HEADER: description, ERROR_CODE_HEADER: str(code)}


def rfc3339(t: datetime) -> str:
    """A UTC time as nats.go writes it (RFC 3339, fractional seconds, "Z")."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Endpoint:
    """One endpoint and its statistics (times in ns, the time from the request's arrival to its
    reply)."""
    name: str
    subject: str
    queue_group: str = DEFAULT_QUEUE_GROUP
    metadata: dict[str, str] = field(default_factory=dict)
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time: int = 0

    def record(self, elapsed_ns: int, error: str | None = None) -> None:
        """One request handled in `elapsed_ns`; `error`: it was answered with an error."""
        self.num_requests += 1
        self.processing_time += max(0, elapsed_ns)
        if error is not None:
            self.num_errors += 1
            self.last_error = error

    @property
    def average_processing_time(self) -> int:
        return self.processing_time // self.num_requests if self.num_requests else 0

    def info(self) -> dict[str, object]:
        return {"name": self.name, "subject": self.subject, "queue_group": self.queue_group,
                "metadata": self.metadata}

    def stats(self) -> dict[str, object]:
        return {"name": self.name, "subject": self.subject, "queue_group": self.queue_group,
                "num_requests": self.num_requests, "num_errors": self.num_errors,
                "last_error": self.last_error, "processing_time": self.processing_time,
                "average_processing_time": self.average_processing_time}


class MicroService:
    """A service's identity, its endpoints and the answers to $SRV requests. The endpoints'
    requests are received by the caller, who records each one on its Endpoint."""

    def __init__(self, name: str, version: str, description: str = "",
                 metadata: dict[str, str] | None = None) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"service name {name!r}: letters, digits, '-' and '_' only")
        if not _SEMVER.fullmatch(version):
            raise ValueError(f"service version {version!r} is not a semantic version")
        self.name = name
        self.version = version
        self.description = description
        self.metadata = dict(metadata or {})
        self.id = NUID().next().decode()
        self.started = datetime.now(timezone.utc)
        self.endpoints: list[Endpoint] = []
        self._subs: list[Subscription] = []
        self._nc: Client | None = None

    def add_endpoint(self, name: str, subject: str,
                     queue_group: str = DEFAULT_QUEUE_GROUP) -> Endpoint:
        if not _NAME.fullmatch(name):
            raise ValueError(f"endpoint name {name!r}: letters, digits, '-' and '_' only")
        ep = Endpoint(name, subject, queue_group)
        self.endpoints.append(ep)
        return ep

    # -- the three answers -------------------------------------------------------------------

    def _identity(self, kind: str) -> dict[str, object]:
        return {"type": kind, "name": self.name, "id": self.id, "version": self.version,
                "metadata": self.metadata}

    def ping(self) -> dict[str, object]:
        return self._identity(PING_RESPONSE)

    def info(self) -> dict[str, object]:
        return {**self._identity(INFO_RESPONSE), "description": self.description,
                "endpoints": [ep.info() for ep in self.endpoints]}

    def stats(self) -> dict[str, object]:
        return {**self._identity(STATS_RESPONSE), "started": rfc3339(self.started),
                "endpoints": [ep.stats() for ep in self.endpoints]}

    # -- on NATS -----------------------------------------------------------------------------

    async def start(self, nc: Client) -> None:
        """Answer $SRV.PING/INFO/STATS, for all services, by name and by id (not queue
        subscriptions: every instance answers)."""
        self._nc = nc
        self.started = datetime.now(timezone.utc)
        for verb in VERBS:
            for subject in control_subjects(verb, self.name, self.id):
                self._subs.append(await nc.subscribe(subject, cb=self._answer))

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone: nothing to stop
                pass

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply or self._nc is None:
            return
        verb = msg.subject.split(".")[1]
        body = {"PING": self.ping, "INFO": self.info, "STATS": self.stats}[verb]()
        await self._nc.publish(msg.reply, msgspec.json.encode(body))
