"""Drop events: the classifier's ring buffer (moa_events) read in the event loop and turned into
schemas.DropEvent, plus the counts of drops that never became events.

One job, shared by KernelDatapath (which knows which link owns a VNI) and `moa bench control`
(which measures the same path with a bare classifier).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import schemas
from datapath.classifier import Classifier, DropEventError
from datapath.libbpf import RingBuffer

log = logging.getLogger(__name__)

# vni -> (materialization, link), (None, None) for a VNI nobody owns
OwnerLookup = Callable[[int], tuple[str | None, str | None]]


def _nobody(vni: int) -> tuple[None, None]:
    return None, None


class DropEventReader:
    def __init__(self, classifier: Classifier, owner: OwnerLookup = _nobody) -> None:
        self.classifier = classifier
        self.owner = owner
        self._reader: RingBuffer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # CLOCK_REALTIME - CLOCK_MONOTONIC, read once per batch (_on_readable): the records of a
        # batch are converted within microseconds, and only a clock step changes the offset.
        self._wall_offset = 0
        self._callbacks: list[Callable[[schemas.DropEvent], None]] = []

    def subscribe(self, callback: Callable[[schemas.DropEvent], None]) -> None:
        """Call `callback(schemas.DropEvent)` in the running event loop for every drop event the
        classifier writes to its ring buffer, with the owning link and materialization filled in.

        The ring buffer's epoll fd is watched by the loop: nothing polls, and a burst is read in
        one go. `time_ns` is wall-clock (CLOCK_REALTIME) nanoseconds, converted from the
        monotonic clock the datapath stamps with, so that it means the same on every host. Call
        from inside the loop; more callbacks may be added, each sees every event. Drops that
        never became events are counted by `losses()`.
        """
        self._callbacks.append(callback)
        if self._reader is None:
            # Watched here rather than by RingBuffer.attach, so that each batch reads the
            # clocks once before its records (_on_readable).
            reader = RingBuffer(self.classifier.events_map, self._on_record)
            loop = asyncio.get_running_loop()
            loop.add_reader(reader.fileno(), self._on_readable)
            self._reader, self._loop = reader, loop

    def losses(self) -> tuple[int, int]:
        """(suppressed, lost): drops not reported as events since the maps were created.

        suppressed: over a link stage's event budget (moa_global_counters.events_suppressed,
        the sum of every link's count that, unlike theirs, survives link deletion); lost: the
        ring buffer was full (ringbuf_fail). Both only grow: telemetry reports differences.
        """
        g = self.classifier.global_counters()
        return g["events_suppressed"], g["ringbuf_fail"]

    def close(self) -> None:
        if self._reader is not None:
            if self._loop is not None:  # off the loop before the fd (and the map it reads) goes
                self._loop.remove_reader(self._reader.fileno())
                self._loop = None
            self._reader.close()
            self._reader = None

    def _event(self, raw: bytes) -> schemas.DropEvent | None:
        try:
            ev = self.classifier.parse_drop_event(raw)
        except DropEventError as e:
            log.warning("drop event skipped: %s", e)
            return None
        # The enums' values index schemas' tables: the classifier checked them when it loaded.
        if ev.reason >= len(schemas.DROP_REASONS) or ev.stage >= len(schemas.STAGES):
            log.warning("drop event skipped: reason %d / stage %d unknown", ev.reason, ev.stage)
            return None
        reason, stage = schemas.DROP_REASONS[ev.reason], schemas.STAGES[ev.stage]
        mid, link = self.owner(ev.vni)
        wall = ev.time_ns + self._wall_offset
        return schemas.DropEvent(time_ns=wall, vni=ev.vni, reason=reason, stage=stage,
                                 len=ev.len, segs=ev.segs, link=link, materialization=mid)

    def _on_readable(self) -> None:
        """The loop's reader: one batch, every record available now, under one clock reading."""
        if self._reader is None:
            return
        self._wall_offset = time.time_ns() - time.monotonic_ns()
        self._reader.consume()

    def _on_record(self, raw: bytes) -> None:
        # Runs inside RingBuffer.consume(), called by the loop: never let an error escape into
        # the loop's reader (it would be logged per record and the rest of the batch lost).
        ev = self._event(raw)
        if ev is None:
            return
        for cb in list(self._callbacks):
            try:
                cb(ev)
            except Exception:
                log.exception("drop event callback failed")
