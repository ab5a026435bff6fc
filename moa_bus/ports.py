"""What the bus needs from the datapath: a typing.Protocol matching datapath.api.Datapath.

The bus only ever calls these methods with schemas Structs; all kernel work happens behind them.
The real implementation is datapath.api.Datapath; tests of pure ordering, acks and redelivery use
tests' RecordingFakeDatapath.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import schemas

try:  # the datapath's own error types, so that `except PlanError` catches what it raises
    from datapath.api import PlanConflict, PlanError
except ImportError:  # datapath/api.py missing or not importable here (no pyroute2, ...)

    class PlanError(Exception):  # type: ignore[no-redef]
        """A plan failed and was rolled back: `operation` names the step, the message says why."""

        def __init__(self, operation: object, cause: BaseException, index: int = 0) -> None:
            super().__init__(f"operation {index + 1} ({operation}) failed: {cause}")
            self.operation = operation
            self.cause = cause
            self.index = index

    class PlanConflict(ValueError):  # type: ignore[no-redef]
        """The desired state cannot be planned: a VNI or name held by another materialization."""

        def __init__(self, field: str, message: str) -> None:
            super().__init__(f"{field}: {message}")
            self.field = field
            self.message = message


class ApplyResultLike(Protocol):
    """datapath.api.ApplyResult: the generation now held, whether anything changed, what ran."""

    generation: int
    changed: bool
    operations: Sequence[Any]


DropCallback = Callable[[schemas.DropEvent], None]


@runtime_checkable
class Datapath(Protocol):
    async def materialize(self, m: schemas.Materialize) -> ApplyResultLike: ...

    async def dematerialize(self, id: str) -> ApplyResultLike: ...

    async def update(self, u: schemas.Update) -> ApplyResultLike: ...

    async def status(self, id: str | None = None) -> schemas.StatusReply: ...

    async def link_stats(self) -> list[schemas.LinkStats]: ...

    # Optional (looked up with getattr; telemetry.drops stays silent without it):
    #   drop_events(callback: DropCallback) -> None: call `callback` in the event loop for every
    #       drop event read from the ring buffer;
    #   drop_event_losses() -> (suppressed, lost): totals since start (see drop_losses);
    #   plan_for(m) -> list[str]: the operations materialize(m) would run (`--dry-run`).

    async def close(self) -> None:
        """Release handles; the kernel state stays in place."""
        ...


def plan_error_operation(e: BaseException) -> str:
    """A description of the operation a PlanError blames ("" when it names none)."""
    op = getattr(e, "operation", None)
    if op is None:
        return ""
    describe = getattr(op, "describe", None)
    return str(describe() if callable(describe) else op)


def drop_losses(dp: object) -> tuple[int, int]:
    """(suppressed, lost) drop-event totals since start, when the datapath counts them.

    Optional in the interface: `drop_event_losses() -> (suppressed by the BPF budget, lost to a full
    ring buffer)`. Without it both are reported as 0.
    """
    fn = getattr(dp, "drop_event_losses", None)
    if fn is None:
        return (0, 0)
    suppressed, lost = fn()
    return (int(suppressed), int(lost))
