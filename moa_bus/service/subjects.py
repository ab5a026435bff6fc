"""NATS subject names and headers of docs/contract.md, for one box (`host`), and the host id."""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass

PREFIX = "moa"
SERVICE_NAME = "moa"
# On a materialize request: reply with the plan (the ordered operations), apply nothing.
DRY_RUN_HEADER = "Moa-Dry-Run"
# On an empty request or event: its document is this object of the store `Subjects.docs`
# (a document larger than the server's max_payload: docs/contract.md, "Sizes").
OBJECT_HEADER = "Moa-Object"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def default_host() -> str:
    """MOA_HOST, else the short hostname, as a single NATS subject token."""
    host = os.environ.get("MOA_HOST") or socket.gethostname().split(".")[0]
    return check_host(re.sub(r"[^A-Za-z0-9_-]", "-", host))


def check_host(host: str) -> str:
    """A host id is one subject token: letters, digits, '_' and '-' (no '.', '*', '>', spaces)."""
    if not _TOKEN.fullmatch(host):
        raise ValueError(f"host id {host!r} must be letters, digits, '_' or '-' "
                         "(one NATS subject token)")
    return host


@dataclass(frozen=True)
class Subjects:
    host: str

    def op(self, name: str) -> str:
        """moa.<host>.materialize / dematerialize / update / status (request/reply)."""
        return f"{PREFIX}.{self.host}.{name}"

    def event(self, name: str) -> str:
        """moa.<host>.events.<name> (JetStream, durable)."""
        return f"{PREFIX}.{self.host}.events.{name}"

    @property
    def events(self) -> str:
        return f"{PREFIX}.{self.host}.events.*"

    @property
    def acks(self) -> str:
        return f"{PREFIX}.{self.host}.acks"

    @property
    def schedule(self) -> str:
        """moa.<host>.schedule: a ScheduleReport per scheduled step, when it took effect."""
        return f"{PREFIX}.{self.host}.schedule"

    @property
    def drops(self) -> str:
        return f"{PREFIX}.{self.host}.telemetry.drops"

    @property
    def links(self) -> str:
        return f"{PREFIX}.{self.host}.telemetry.links"

    @property
    def stream(self) -> str:
        """The JetStream stream holding this box's events (stream names allow no '.')."""
        return f"MOA_EVENTS_{self.host}"

    @property
    def durable(self) -> str:
        return f"moa_{self.host}"

    @property
    def docs(self) -> str:
        """The JetStream object store holding documents larger than one message."""
        return f"MOA_DOCS_{self.host}"
