"""The one place where operations reach the datapath: strictly one at a time, in arrival order.

Request/reply handlers and the JetStream consumer both call `submit()`, which enqueues without
awaiting anything first, so the order of the queue is the order in which the service received the
messages, whichever way they came. A single worker task takes them in that order, decodes and
checks them, calls the datapath, publishes the Ack (through `ack_sink`, in the same order) and
resolves the submitter's future with the reply to send.

Each operation (its name is the last token of its subject, and the Ack's `op`) decodes its
payload to one schemas Struct and is handled by one method taking that Struct
(Applier.operations).

The queue has a bound (`limit` operations waiting): past it, `submit` answers `busy` at once
and nothing is queued (docs/contract.md, "Bounded work"). Reading the box (status) does not go
through the queue at all: moa_bus/service/status.py answers from the committed desired state.
A body may be bytes or a function that fetches it (a document in the object store): it is
fetched when the operation is taken up, so that only one large document is in memory at once.

A change goes: judged against the desired state (moa_bus/service/desired.py), applied by the
datapath, committed to the desired state (durable), acked. A rejected message (malformed, invalid,
conflict, not_found, unsupported) never reaches the datapath; a datapath PlanError was rolled
back from what the kernel held before the plan: either way the box is unchanged and the desired
state too. When a rollback could not undo everything, the box is read again and the ack says by
what it differs from before (code rollback_incomplete).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec

import schemas
from datapath import faults
from datapath.api import Datapath, LinkChange, PlanConflict, PlanError
from moa_bus.service.desired import DesiredState
from moa_bus.service.schedule import Scheduler, in_force, resolve_start
from schemas import InvalidMessage

log = logging.getLogger("moa.bus")

APPLY_OPS = ("materialize", "dematerialize", "update")  # the ops that change the box and are acked
SHOWN_DIFFERENCES = 10  # operations named in a rollback_incomplete ack (the count is exact)
QUEUE_LIMIT = 256  # operations waiting behind the one in hand; past it: busy (docs/contract.md)
BUSY = "busy"

AckSink = Callable[[schemas.Ack], Awaitable[None]]
Body = bytes | Callable[[], Awaitable[bytes]]  # a payload, or how to fetch it (object store)


@dataclass
class Outcome:
    """What one operation came to: the Ack (None for a successful dry run) and the reply bytes."""
    ack: schemas.Ack | None
    reply: bytes

    @property
    def ok(self) -> bool:
        return self.ack is None or self.ack.ok

    @property
    def busy(self) -> bool:
        """Not taken: the queue was full (nothing was judged or applied)."""
        return self.ack is not None and self.ack.error is not None and self.ack.error.code == BUSY


M = TypeVar("M")


@dataclass(frozen=True)
class Handler(Generic[M]):
    """An operation: the Struct its payload decodes to, and the method that handles that Struct
    (with whether the message is a redelivery, and the time it was taken up)."""
    message: type[M]
    run: Callable[[M, bool, float], Awaitable[Outcome]]


def _best_effort_id(data: bytes) -> str | None:
    """The "id" of a message that failed to decode, when there is one to name in the Ack."""
    try:
        obj = msgspec.json.decode(data)
    except Exception:
        return None
    ident = obj.get("id") if isinstance(obj, dict) else None
    return ident if isinstance(ident, str) and len(ident) <= 256 else None


_LINK_FIELD = re.compile(r"^links\[(\d+)\](\.endpoints\[(\d+)\](?=\.emulation))?")


def _in_update(e: InvalidMessage, m: schemas.Materialize, origin: dict[str, int]) -> InvalidMessage:
    """An error about links[j] of the materialization an Update resolved to, moved to the
    entry of the Update that changed that link (links[i] of the Update); one about a
    direction's emulation (links[j].endpoints[k].emulation) to that entry's emulation, with
    the direction named in the message."""
    found = _LINK_FIELD.match(e.field)
    if found is None or int(found[1]) >= len(m.links):
        return e
    link = m.links[int(found[1])]
    i = origin.get(link.id)
    if i is None:
        return e
    message = e.message
    if found[3] is not None and int(found[3]) < len(link.endpoints):
        message += f" (in the direction towards endpoint VNI {link.endpoints[int(found[3])].vni})"
    return InvalidMessage(f"links[{i}]" + e.field[found.end():], message, e.code)


DECODE_INLINE_BYTES = 64 * 1024  # larger bodies are decoded on a thread: the loop stays free


async def decode(kind: type[M], data: bytes) -> M:
    """schemas.decode; a large body on a worker thread, so that status and discovery are
    answered while a document of thousands of links is parsed and checked."""
    if len(data) <= DECODE_INLINE_BYTES:
        return schemas.decode(kind, data)
    return await asyncio.to_thread(schemas.decode, kind, data)


@dataclass
class Applier:
    datapath: Datapath
    desired: DesiredState
    host: str
    ack_sink: AckSink | None = None
    # materializations the kernel does not hold as desired (id -> why): status reports them
    unconverged: dict[str, str] = field(default_factory=dict)
    busy: bool = False  # an operation is in hand (for the shutdown message)
    limit: int = QUEUE_LIMIT  # operations waiting; past it submit answers busy
    # bytes the `plan` reply may take (the server's max_payload less headroom): a longer list
    # of operations is cut, with the count of all
    reply_room: Callable[[], int] | None = None
    # the schedules' timer: paused for a materialization while a change of it is applied,
    # armed again after (docs/architecture.md, "Scheduled changes")
    scheduler: Scheduler | None = None

    def __post_init__(self) -> None:
        if self.scheduler is None:
            self.scheduler = Scheduler(self.datapath, self.host, shown=self.desired.show)
        self._queue: asyncio.Queue[tuple[str, Body, bool, asyncio.Future[Outcome]] | None] = (
            asyncio.Queue())
        self._worker: asyncio.Task[None] | None = None
        self.operations: dict[str, Handler] = {
            "materialize": Handler(schemas.Materialize, self._materialize),
            "dematerialize": Handler(schemas.Dematerialize, self._dematerialize),
            "update": Handler(schemas.Update, self._update),
            # a materialize with the dry-run header: the operations, no change
            "plan": Handler(schemas.Materialize, lambda m, _, t0: self._plan(m)),
        }

    def start(self) -> None:
        self.scheduler.start()
        self._worker = asyncio.create_task(self._run(), name="moa-applier")

    async def resume_schedules(self) -> None:
        """At start, before any message: every held schedule from the step in force now (its
        links written, in case a step came due since the start-up reconcile), then armed.
        The step writer is started first."""
        await self.scheduler.ready()
        for mid, h in sorted(self.desired.held.items()):
            if h.materialize.schedule is msgspec.UNSET or mid in self.unconverged:
                continue
            try:
                a = self.scheduler.prepare(h.materialize, h.generation)
                await self.datapath.apply(a.content(a.at), params_only=True)
            except Exception as e:  # noqa: BLE001 - one schedule must not stop the others
                log.error("%s: its schedule could not be resumed: %s", mid, e)
                self.unconverged[mid] = f"its schedule could not be resumed: {e}"
                continue
            self.desired.show(mid, a.content(a.at).links)
            self.scheduler.arm(a)
            log.info("%s: schedule resumed at step %d of period %d", mid, a.at[1], a.at[0])

    def submit(self, op: str, data: Body, *, redelivered: bool = False) -> asyncio.Future[Outcome]:
        """Enqueue an operation now (no await before the enqueue: order is arrival order); with
        `limit` operations already waiting, the future is done at once with a `busy` Outcome
        and nothing is queued."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if self._worker is None or self._worker.done():
            fut.set_exception(RuntimeError("the service is stopping"))
            return fut
        if self._queue.qsize() >= self.limit:
            fut.set_result(self._error(op, None, InvalidMessage(
                "", f"{self._queue.qsize()} operations wait already (the bound is "
                f"{self.limit}): not taken, nothing changed; send it again later", BUSY),
                time.perf_counter()))
            return fut
        self._queue.put_nowait((op, data, redelivered, fut))
        return fut

    async def drain(self) -> None:
        """Finish the operation in hand and those already accepted, then stop the worker."""
        if self._worker is None:
            return
        self._queue.put_nowait(None)
        await self._worker
        await asyncio.to_thread(self.scheduler.stop)

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
                    faults.hit("ack.before", outcome.ack.id)
                    # The submitter's reply is made ready first: published in the same loop
                    # turn as the ack, both leave in one write to the server.
                    if not fut.done():
                        fut.set_result(outcome)
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

    async def _apply(self, op: str, body: Body, redelivered: bool) -> Outcome:
        t0 = time.perf_counter()
        handler = self.operations.get(op)
        if handler is None:
            return self._error(op, None, InvalidMessage("", f"unknown operation {op!r}"), t0)
        try:
            data = body if isinstance(body, bytes) else await body()
        except InvalidMessage as e:
            return self._error(op, None, e, t0)
        except Exception as e:  # noqa: BLE001 - the store failed: say so in the ack
            log.warning("%s: fetching its document failed: %s", op, e)
            return self._error(op, None, InvalidMessage(
                "", f"its document could not be fetched: {type(e).__name__}: {e}", "internal"),
                t0)
        try:
            msg = await decode(handler.message, data)
        except InvalidMessage as e:
            return self._error(op, _best_effort_id(data), e, t0)
        try:
            return await handler.run(msg, redelivered, t0)
        except InvalidMessage as e:
            return self._error(op, msg.id, e, t0)
        except PlanConflict as e:
            return self._error(op, msg.id, InvalidMessage(e.field, e.message, "conflict"), t0)
        except PlanError as e:
            return self._error(op, msg.id, await self._plan_failed(msg.id, e), t0)
        except Exception as e:
            log.exception("%s %s failed", op, getattr(msg, "id", None))
            return self._error(op, msg.id, InvalidMessage(
                "", f"{type(e).__name__}: {e}", "internal"), t0)

    @staticmethod
    def _acked(op: str, mid: str, generation: int | None, t0: float) -> Outcome:
        ack = schemas.Ack(id=mid, op=op, ok=True, generation=generation,
                          elapsed_ms=round((time.perf_counter() - t0) * 1000, 3))
        return Outcome(ack, schemas.encode(ack))

    # ------------------------------------------------------------------ the operations

    async def _materialize(self, m: schemas.Materialize, redelivered: bool,
                           t0: float) -> Outcome:
        """Judge, apply, commit (durable): the generation the materialization is now at."""
        d = self.desired
        held = d.get(m.id)
        m = resolve_start(m, held.materialize if held is not None else None, time.time_ns())
        if held is not None and d.same_content(m):
            m = in_force(m)
            # The same content again: nothing to commit. The kernel is the truth: when the
            # box was not converged to it, or a cheap reading of the kernel (each VNI's
            # parameters in the classifier's map, each VTEP by name) finds something missing
            # or different, plan and repair. A redelivery of an event already applied to a
            # converged box is acked as it was.
            if m.id in self.unconverged or (not redelivered and not await self.datapath.holds(m)):
                result = await self.datapath.apply(m)
                if result.changed:
                    log.warning("%s: repaired %d operation(s) of drift", m.id,
                                result.operations)
                self.unconverged.pop(m.id, None)
            return self._acked("materialize", m.id, held.generation, t0)
        d.check_materialize(m)
        return await self._changed("materialize", m, t0)

    async def _changed(self, op: str, m: schemas.Materialize, t0: float,
                       params_only: bool = False, change: LinkChange | None = None,
                       name: Callable[[InvalidMessage], InvalidMessage] | None = None) -> Outcome:
        """Apply m (with a schedule: the links it puts in force now, every state it goes
        through checked first), commit it, arm its schedule. m.id's running schedule is paused
        meanwhile, and armed again if the change fails. `change`: an Update's links, when
        neither m nor what it replaces has a schedule (only they are judged, written and
        journaled)."""
        armed = self.scheduler.prepare(m)  # InvalidMessage naming schedule.steps[k]...
        paused = await self.scheduler.pause(m.id)
        try:
            await self.datapath.apply(armed.content(armed.at) if armed else m,
                                      params_only=params_only, change=change)
        except BaseException as e:
            if paused is not None:
                self.scheduler.arm(paused)
            if isinstance(e, InvalidMessage) and name is not None:
                raise name(e) from None
            raise
        self.unconverged.pop(m.id, None)
        generation = await self.desired.commit(
            m, same_vnis=op == "update",
            positions=change.positions if change is not None else None)
        if armed is not None:
            armed.generation = generation
            self.desired.show(m.id, armed.content(armed.at).links)
            self.scheduler.arm(armed)
        return self._acked(op, m.id, generation, t0)

    async def _dematerialize(self, msg: schemas.Dematerialize, redelivered: bool,
                             t0: float) -> Outcome:
        d = self.desired
        if redelivered and d.get(msg.id) is None:
            # applied before the redelivery: already gone, at the generation it went
            return self._acked("dematerialize", msg.id, d.removed.get(msg.id), t0)
        d.check_dematerialize(msg.id)
        paused = await self.scheduler.pause(msg.id)
        try:
            await self.datapath.apply(schemas.Materialize(id=msg.id, links=[]))
        except BaseException:
            if paused is not None:
                self.scheduler.arm(paused)
            raise
        self.unconverged.pop(msg.id, None)
        return self._acked("dematerialize", msg.id, await d.remove(msg.id), t0)

    async def _update(self, u: schemas.Update, redelivered: bool, t0: float) -> Outcome:
        """Parameters only; the materialization's new content is made here, once."""
        d = self.desired
        m, origin = d.resolve_update(u)
        held = d.get(u.id)
        assert held is not None  # resolve_update raised not_found otherwise
        m = resolve_start(m, held.materialize, time.time_ns())
        change = None
        if m.schedule is msgspec.UNSET and held.materialize.schedule is msgspec.UNSET:
            # Without a schedule an Update changes the links it names and nothing else: they
            # are all that is compared, judged and written (not the whole materialization).
            index = held.link_index()
            positions = tuple(sorted(index[link_id] for link_id in origin))
            before = tuple(held.materialize.links[j] for j in positions)
            if all(m.links[j] == b for j, b in zip(positions, before)):
                return self._acked("update", u.id, held.generation, t0)
            # most of the links changed (a tag on all of them): judging the whole once is
            # cheaper than taking each out and putting it back
            change = LinkChange(positions, before) if 2 * len(positions) <= len(m.links) else None
        elif d.same_content(m):
            return self._acked("update", u.id, held.generation, t0)
        params_only = u.id not in self.unconverged
        # an error naming a link of m names the update's entry instead
        return await self._changed("update", m, t0, params_only=params_only,
                                   change=change if params_only else None,
                                   name=lambda e: _in_update(e, m, origin))

    async def _plan_failed(self, mid: str, e: PlanError) -> InvalidMessage:
        """The Ack's error for a failed plan. Rolled back in full: apply_failed, naming the
        operation. Not in full: the box is read again and the ack names what still differs
        from the previous desired state (rollback_incomplete); status reports it too."""
        text = str(e)
        if not e.rollback_errors:
            return InvalidMessage("", text, "apply_failed")
        held = self.desired.get(mid)
        previous = held.materialize if held is not None else schemas.Materialize(id=mid, links=[])
        try:
            remaining = await self.datapath.plan(previous)
        except Exception as re:  # noqa: BLE001 - the ack must still go out
            remaining = [f"(the box could not be read again: {re})"]
        if remaining:
            shown = "; ".join(remaining[:SHOWN_DIFFERENCES])
            more = (f" and {len(remaining) - SHOWN_DIFFERENCES} more"
                    if len(remaining) > SHOWN_DIFFERENCES else "")
            text += (f". Read again, the box differs from its previous state by "
                     f"{len(remaining)} operation(s): {shown}{more}")
            self.unconverged[mid] = text
            return InvalidMessage("", text, "rollback_incomplete")
        text += ". Read again, the box is as it was before"
        return InvalidMessage("", text, "apply_failed")

    async def _plan(self, m: schemas.Materialize) -> Outcome:
        """The operations, as many as fit in a reply (`count`: all of them)."""
        self.desired.check_materialize(m)
        held = self.desired.get(m.id)
        m = in_force(resolve_start(m, held.materialize if held else None, time.time_ns()))
        operations = await self.datapath.plan(m)
        room = self.reply_room() if self.reply_room is not None else None
        reply = msgspec.json.encode({"id": m.id, "operations": operations,
                                     "count": len(operations)})
        if room is not None and len(reply) > room:
            shown, used = [], 100 + len(m.id)
            for op in operations:
                used += len(msgspec.json.encode(op)) + 1
                if used > room:
                    break
                shown.append(op)
            reply = msgspec.json.encode({"id": m.id, "operations": shown,
                                         "count": len(operations)})
        return Outcome(None, reply)

    @staticmethod
    def _error(op: str, ident: str | None, e: InvalidMessage, t0: float) -> Outcome:
        ack = schemas.Ack(id=ident, op=op, ok=False, error=e.to_ack_error(),
                          elapsed_ms=round((time.perf_counter() - t0) * 1000, 3))
        return Outcome(ack, schemas.encode(ack))
