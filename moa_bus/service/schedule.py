"""The box's schedules: one timer thread writes each step's parameters at its time and the
event loop reports it (docs/architecture.md, "Scheduled changes").

A schedule is part of its materialization's desired content (Materialize.schedule, its start
resolved to CLOCK_REALTIME ns when it is accepted, kept in the state file like the rest), so a
restart finds it and resumes in phase. What a schedule makes of the links at a time is pure
arithmetic on its offsets (schemas/schedule.py `position`); what each step writes was encoded
when the schedule was accepted (datapath/scheduled.py, through Datapath.schedule_writes), so a
step is one batch map write from this thread, no plan and no netlink.

Precision: the writes themselves are done by the datapath's step writer, a process of its own
that waits for each step's time and writes then (datapath/step_writer.py: a thread of this
process would need the interpreter's lock at that moment, and on a busy box the event loop
can hold it for many ms). This thread keeps it fed AHEAD_NS ahead of the clock; the writer
says when each write was done, and the report is made from that. `pause` cancels the
materialization's writes not done yet and returns once the writer confirmed it (from a worker
thread), so no step of a paused materialization is written after `pause` returned. A step that
came due while its materialization was paused (an Update or a Materialize being applied) is
written as soon as `arm` hands it over, and its report says how late it was.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

import schemas
from datapath.api import Datapath
from schemas.schedule import Expanded, expand, links_at, next_step, position

log = logging.getLogger("moa.bus")

AHEAD_NS = 5_000_000_000  # steps are handed to the step writer this long before their time
FEED_S = 0.1  # how often this thread looks for steps to hand over

Report = Callable[[schemas.ScheduleReport], Awaitable[None]]


@dataclass(eq=False)
class Armed:
    """One materialization's running schedule: its content (links as committed, the schedule
    with its start), what it makes of the links, each step's map values, the generation."""
    base: schemas.Materialize
    expanded: Expanded
    writes: object  # datapath.scheduled.ScheduleWrites
    generation: int = 0
    at: tuple[int, int] = (0, -1)  # (cycle, step) in force
    group: int = 0  # its writes' group in the step writer
    handed: tuple[int, int] = (0, -1)  # the last step handed to the writer
    pending: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    # tag -> (cycle, step, due CLOCK_REALTIME ns, due CLOCK_MONOTONIC ns)

    @property
    def schedule(self) -> schemas.Schedule:
        return self.base.schedule  # type: ignore[return-value]

    @property
    def start_ns(self) -> int:
        return self.schedule.start  # type: ignore[return-value]

    def content(self, at: tuple[int, int]) -> schemas.Materialize:
        """The links in force at (cycle, step), with the schedule."""
        return msgspec.structs.replace(self.base, links=links_at(self.base, self.expanded, *at))


def resolve_start(m: schemas.Materialize, held: schemas.Materialize | None,
                  now_ns: int) -> schemas.Materialize:
    """m with its schedule's start set: as given; else the start of the same schedule already
    held (a resend does not restart it); else `now_ns` (when the box accepts it)."""
    s = m.schedule
    if s is msgspec.UNSET or s.start is not None:
        return m
    if held is not None and held.schedule is not msgspec.UNSET:
        same = msgspec.structs.replace(s, start=held.schedule.start)
        if same == held.schedule:
            return msgspec.structs.replace(m, schedule=same)
    return msgspec.structs.replace(m, schedule=msgspec.structs.replace(s, start=now_ns))


def in_force(m: schemas.Materialize, now_ns: int | None = None) -> schemas.Materialize:
    """m (its schedule's start resolved) with the links its schedule puts in force now."""
    if m.schedule is msgspec.UNSET:
        return m
    at = position(m.schedule, m.schedule.start or 0, time.time_ns() if now_ns is None else now_ns)
    return msgspec.structs.replace(m, links=links_at(m, expand(m, m.schedule), *at))


def _clocks() -> tuple[int, int]:
    """(CLOCK_REALTIME, CLOCK_MONOTONIC) read together: a pair this thread was preempted
    between (a busy box) would put every step it converts late or early by that much."""
    for _ in range(100):
        before = time.monotonic_ns()
        real = time.time_ns()
        after = time.monotonic_ns()
        if after - before < 20_000:
            return real, (before + after) // 2
    return real, (before + after) // 2


@dataclass
class Scheduler:
    datapath: Datapath
    host: str
    report: Report | None = None
    # called on the loop with (materialization, links in force, generation) after each step
    shown: Callable[[str, list[schemas.Link], int], None] | None = None
    armed: dict[str, Armed] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())  # what is armed
        self._groups: dict[int, Armed] = {}  # the writer's groups, until cancelled
        self._seq = 0
        self.datapath.steps().written = self._written
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.reports: list[schemas.ScheduleReport] = []  # the last ones (tests, figures)

    # -- the loop's side --------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="moa-schedule", daemon=True)
        self._thread.start()

    async def ready(self) -> None:
        """The step writer started and ready, before the first schedule comes (on a busy box
        its start-up takes long enough to make a step due soon after late)."""
        try:
            await asyncio.to_thread(self.datapath.steps().start)
        except Exception as e:  # noqa: BLE001 - started again when a step is handed over
            log.error("the step writer did not start: %s", e)

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()

    def prepare(self, m: schemas.Materialize, generation: int = 0) -> Armed | None:
        """m's schedule (start resolved) as it stands now: what it makes of the links (every
        state checked: InvalidMessage naming the step's field), each step's values; None for
        a materialization without one. Nothing is written or armed yet."""
        if m.schedule is msgspec.UNSET:
            return None
        a = Armed(m, expand(m, m.schedule), None, generation)
        a.at = position(m.schedule, a.start_ns, time.time_ns())
        a.writes = self.datapath.schedule_writes(a.content(a.at))
        return a

    async def pause(self, mid: str) -> Armed | None:
        """No step of mid is written after this returns; its schedule (or None)."""
        if mid not in self.armed:
            return None
        return await asyncio.to_thread(self._pause, mid)

    def _pause(self, mid: str) -> Armed | None:
        with self._cv:
            a = self.armed.pop(mid, None)
        if a is not None:
            self.datapath.steps().cancel(a.group)
            with self._cv:
                self._groups.pop(a.group, None)
        return a

    def arm(self, a: Armed) -> None:
        """Run a's schedule from the step in force (a.at, already applied) on."""
        with self._cv:
            self._seq += 1
            a.group, a.handed, a.pending = self._seq, a.at, {}
            self.armed[a.base.id] = a
            self._groups[a.group] = a
            self._cv.notify()

    def _reported(self, r: schemas.ScheduleReport, links: list[schemas.Link]) -> None:
        self.reports = self.reports[-1023:] + [r]
        if self.shown is not None:
            self.shown(r.materialization, links, r.generation)
        if self.report is not None:
            task = asyncio.ensure_future(self.report(r))
            task.add_done_callback(lambda t: t.cancelled() or t.exception() is None or
                                   log.warning("schedule report: %s", t.exception()))

    # -- the feeding thread, and the writer's answers -------------------------------------------

    def _run(self) -> None:
        with self._cv:
            while not self._stopping:
                for a in list(self.armed.values()):
                    try:
                        self._feed(a)
                    except Exception:  # noqa: BLE001 - the thread must survive a failed hand-over
                        log.exception("schedule of %s: a step could not be handed over",
                                      a.base.id)
                self._cv.wait(FEED_S)

    def _feed(self, a: Armed) -> None:
        """Hand the writer a's steps due within AHEAD_NS (under _cv)."""
        steps = self.datapath.steps()
        now_real, now_mono = _clocks()
        while (nxt := next_step(a.schedule, a.start_ns, *a.handed)) is not None:
            cycle, k, due_real = nxt
            if due_real > now_real + AHEAD_NS:
                return
            w = a.writes
            values = (w.later if cycle > 0 and w.later is not None else w.first)[k]
            keys, entries = self.datapath.step_entries(values)
            self._seq += 1
            due_mono = due_real - now_real + now_mono
            a.pending[self._seq] = (cycle, k, due_real, due_mono)
            steps.add(a.group, self._seq, due_mono, keys, entries)
            a.handed = (cycle, k)

    def _written(self, group: int, tag: int, ok: bool, done_mono: int) -> None:
        """The writer's thread: one step written (or not)."""
        with self._cv:
            a = self._groups.get(group)
            step = a.pending.pop(tag, None) if a is not None else None
        if a is None or step is None:
            return
        cycle, k, due_real, due_mono = step
        if not ok:
            log.error("schedule of %s: step %d could not be written", a.base.id, k)
            return
        a.at = (cycle, k)
        late = done_mono - due_mono
        links = a.content(a.at).links
        r = schemas.ScheduleReport(
            host=self.host, materialization=a.base.id, generation=a.generation, step=k,
            cycle=cycle, links=[links[j].id for j in a.expanded.touched[k]], due_ns=due_real,
            applied_ns=due_real + late, late_ns=late)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._reported, r, links)
