"""The one place where operations reach the datapath: strictly one at a time, in arrival order.

Request/reply handlers and the JetStream consumer both call `submit()`, which enqueues without
awaiting anything first, so the order of the queue is the order in which the service received the
messages, whichever way they came. A single worker task takes them in that order, decodes and
checks them, calls the datapath, publishes the Ack (through `ack_sink`, in the same order) and
resolves the submitter's future with the reply to send.

A rejected message (malformed, invalid, conflict, not_found) never reaches the datapath; a
datapath PlanError was rolled back by the datapath: either way the box is unchanged.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

import schemas
from moa_bus.holdings import Holdings
from moa_bus.ports import Datapath, PlanConflict, PlanError, plan_error_operation
from schemas import InvalidMessage

log = logging.getLogger("moa.bus")

MESSAGE_TYPES: dict[str, type] = {
    "materialize": schemas.Materialize,
    "dematerialize": schemas.Dematerialize,
    "update": schemas.Update,
    "status": schemas.StatusRequest,
    "plan": schemas.Materialize,  # a materialize with the dry-run header: operations, no change
}
APPLY_OPS = ("materialize", "dematerialize", "update")  # the ops that change the box and are acked

AckSink = Callable[[schemas.Ack], Awaitable[None]]


@dataclass
class Outcome:
    """What one operation came to: the Ack (None for a successful status) and the reply bytes."""
    ack: schemas.Ack | None
    reply: bytes

    @property
    def ok(self) -> bool:
        return self.ack is None or self.ack.ok


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _best_effort_id(data: bytes) -> str | None:
    """The "id" of a message that failed to decode, when there is one to name in the Ack."""
    try:
        obj = msgspec.json.decode(data)
    except Exception:
        return None
    ident = obj.get("id") if isinstance(obj, dict) else None
    return ident if isinstance(ident, str) and len(ident) <= 256 else None


class Applier:
    def __init__(self, datapath: Datapath, ack_sink: AckSink | None = None) -> None:
        self.datapath = datapath
        self.ack_sink = ack_sink
        self.holdings = Holdings()
        self._queue: asyncio.Queue[tuple[str, bytes, bool, asyncio.Future[Outcome]] | None] = (
            asyncio.Queue())
        self._worker: asyncio.Task[None] | None = None
        self.busy = False  # an operation is in hand (for the shutdown message)

    async def start(self) -> None:
        """Learn what the box already holds, then start taking operations."""
        self.holdings.seed(await maybe_await(self.datapath.status(None)))
        self._worker = asyncio.create_task(self._run(), name="moa-applier")

    def submit(self, op: str, data: bytes, *, redelivered: bool = False) -> asyncio.Future[Outcome]:
        """Enqueue an operation now (no await before the enqueue: order is arrival order)."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if self._worker is None or self._worker.done():
            fut.set_exception(RuntimeError("the service is stopping"))
            return fut
        self._queue.put_nowait((op, data, redelivered, fut))
        return fut

    async def drain(self) -> None:
        """Finish the operation in hand and those already accepted, then stop the worker."""
        if self._worker is None:
            return
        self._queue.put_nowait(None)
        await self._worker

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            op, data, redelivered, fut = item
            self.busy = True
            try:
                outcome = await self._apply(op, data, redelivered)
                if outcome.ack is not None and op in APPLY_OPS and self.ack_sink is not None:
                    try:
                        await self.ack_sink(outcome.ack)
                    except Exception as e:  # a lost ack publish must not stop the worker
                        log.warning("could not publish ack: %s", e)
                if not fut.done():
                    fut.set_result(outcome)
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except BaseException as e:  # noqa: BLE001 - the worker must survive anything
                if not fut.done():
                    fut.set_exception(e)
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
            finally:
                self.busy = False

    # ------------------------------------------------------------------ one operation

    async def _apply(self, op: str, data: bytes, redelivered: bool) -> Outcome:
        t0 = time.perf_counter()
        kind = MESSAGE_TYPES.get(op)
        if kind is None:
            return self._error(op, None, InvalidMessage("", f"unknown operation {op!r}"), t0)
        try:
            msg = schemas.decode(kind, data)
        except InvalidMessage as e:
            return self._error(op, _best_effort_id(data), e, t0)
        try:
            if op == "status":
                return await self._status(msg, t0)
            if op == "plan":
                return await self._plan(msg)
            generation = await self._change(op, msg, redelivered)
        except InvalidMessage as e:
            return self._error(op, msg.id, e, t0)
        except PlanConflict as e:
            return self._error(op, msg.id, InvalidMessage(e.field, e.message, "conflict"), t0)
        except PlanError as e:
            where = plan_error_operation(e)
            text = str(e) if not where or where in str(e) else f"{where}: {e}"
            return self._error(op, msg.id, InvalidMessage("", text, "apply_failed"), t0)
        except Exception as e:
            # Not a rolled-back plan: what the box holds is uncertain, so ask the datapath again.
            log.exception("%s %s failed", op, getattr(msg, "id", None))
            await self._reseed()
            return self._error(op, msg.id, InvalidMessage("", f"{type(e).__name__}: {e}", "internal"), t0)
        ack = schemas.Ack(id=msg.id, op=op, ok=True, generation=generation,
                          elapsed_ms=round((time.perf_counter() - t0) * 1000, 3))
        return Outcome(ack, schemas.encode(ack))

    async def _change(self, op: str, msg: Any, redelivered: bool) -> int | None:
        """Check against the holdings, call the datapath, record; the generation now held."""
        h = self.holdings
        if op == "materialize":
            if redelivered and h.same_content(msg):
                return h.generation(msg.id)  # applied before the redelivery: nothing to do again
            h.check_materialize(msg)
            result = await self.datapath.materialize(msg)
            h.record_materialize(msg, result.generation)
            return result.generation
        if op == "dematerialize":
            if redelivered and h.generation(msg.id) is None:
                return None  # applied before the redelivery: already gone
            h.check_dematerialize(msg.id)
            result = await self.datapath.dematerialize(msg.id)
            h.record_dematerialize(msg.id)
            return result.generation
        # update
        h.check_update(msg)
        result = await self.datapath.update(msg)
        if h.knows_tags(msg.id):
            h.record_update(msg, result.generation)
        else:
            await self._reseed()
        return result.generation

    async def _status(self, req: schemas.StatusRequest, t0: float) -> Outcome:
        if req.id is not None and self.holdings.generation(req.id) is None:
            return self._error("status", req.id, InvalidMessage(
                "id", f"no materialization {req.id!r} on this box", "not_found"), t0)
        reply = await maybe_await(self.datapath.status(req.id))
        return Outcome(None, schemas.encode(reply))

    async def _plan(self, m: schemas.Materialize) -> Outcome:
        self.holdings.check_materialize(m)
        plan_for = getattr(self.datapath, "plan_for", None)
        if plan_for is None:
            raise InvalidMessage("", "this datapath cannot plan without applying", "unsupported")
        operations = [str(op) for op in await plan_for(m)]
        return Outcome(None, msgspec.json.encode({"id": m.id, "operations": operations}))

    async def _reseed(self) -> None:
        try:
            self.holdings.seed(await maybe_await(self.datapath.status(None)))
        except Exception as e:
            log.warning("could not re-read the datapath's status: %s", e)

    @staticmethod
    def _error(op: str, ident: str | None, e: InvalidMessage, t0: float) -> Outcome:
        ack = schemas.Ack(id=ident, op=op, ok=False, error=e.to_ack_error(),
                          elapsed_ms=round((time.perf_counter() - t0) * 1000, 3))
        return Outcome(ack, schemas.encode(ack))
