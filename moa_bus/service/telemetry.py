"""Telemetry: drop events from the datapath's ring buffer published in batches with counts, and
per-link counters published every interval.

Drop events arrive one by one through the datapath's callback (in the event loop); they are
collected and published every `drop_interval` seconds as DropBatch messages of at most
`max_batch` events each (and never more bytes than the server's max_payload allows), so a burst
is split across messages rather than cut: no event the datapath handed over is left out of the
counts. Link counters go out as numbered parts (moa_bus/service/status.py, link_parts), each
within max_payload, the event loop free between two parts and every LOOP_SLICE_S while they are
read; on a box whose counters take longer than an interval to read, the intervals stretch so
that they take at most LINKS_SHARE of the loop.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from nats.aio.client import Client

import schemas
from datapath.api import Datapath
from moa_bus.service import status
from moa_bus.service.desired import DesiredState
from moa_bus.service.subjects import Subjects

log = logging.getLogger("moa.bus")

# The largest share of the event loop's time telemetry.links takes: an interval whose counters
# took W s of CPU to read, encode and publish is followed by at least W s without any
# (LINKS_SHARE 0.5), so that status and the apply queue keep half the loop on a box whose
# counters take more than half an interval (100,000 links: docs/benchmarks.md, "Flow mode at
# scale"); on a smaller box the intervals stay stats_interval apart.
LINKS_SHARE = 0.5


class Telemetry:
    def __init__(self, nc: Client, datapath: Datapath, desired: DesiredState,
                 subjects: Subjects, stats_interval: float = 1.0, drop_interval: float = 0.25,
                 max_batch: int = 2000, give_way: Callable[[], float] | None = None) -> None:
        self.nc = nc
        self.datapath = datapath
        self.desired = desired
        self.subjects = subjects
        self.stats_interval = stats_interval
        self.drop_interval = drop_interval
        self.max_batch = max_batch
        self.give_way = give_way  # status.StatusPages.walking: status.link_rows waits for it
        self._drops: list[schemas.DropEvent] = []
        self._losses = (0, 0)  # (suppressed, lost) totals already reported
        self._tasks: list[asyncio.Task[None]] = []
        self.events_published = 0

    def start(self) -> None:
        self._losses = self.datapath.drop_event_losses()
        self.datapath.drop_events(self._drops.append, self.desired.owner)
        self._tasks = [
            asyncio.create_task(self._every(self.drop_interval, self.flush_drops),
                                name="moa-drops"),
            asyncio.create_task(self._every(self.stats_interval, self.publish_links),
                                name="moa-links"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self.flush_drops()
        except Exception as e:
            log.warning("last drop batch not published: %s", e)

    async def _every(self, interval: float, job) -> None:
        """`job` every `interval` s at a fixed rate (a tick a job overran is skipped), so that
        a subscriber sees a whole interval's telemetry within two intervals. A job may return
        the seconds to rest after it ends: no tick comes sooner."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += interval
            now = loop.time()
            if due < now:  # the job took longer than an interval: the next tick from now
                due = now + interval - (now - due) % interval
            await asyncio.sleep(due - now)
            rest = None
            try:
                rest = await job()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a NATS outage must not end the loop: it reconnects
                log.warning("telemetry: %s", e)
            if rest and loop.time() + rest > due + interval:
                due = loop.time() + rest - interval

    async def flush_drops(self) -> None:
        suppressed_total, lost_total = self.datapath.drop_event_losses()
        suppressed = suppressed_total - self._losses[0]
        lost = lost_total - self._losses[1]
        events = self._drops[:]
        self._drops.clear()  # the same list: the datapath holds its append
        if not events and not suppressed and not lost:
            return
        self._losses = (suppressed_total, lost_total)
        for k, chunk in enumerate(self._batches(events)):
            counts = Counter(ev.reason for ev in chunk)
            batch = schemas.DropBatch(
                host=self.subjects.host, events=chunk, counts=dict(counts),
                # events the datapath could not hand over are counted once, in the first message
                suppressed=suppressed if k == 0 else 0, lost=lost if k == 0 else 0)
            await self.nc.publish(self.subjects.drops, schemas.encode(batch))
            self.events_published += len(chunk)

    def _batches(self, events: list[schemas.DropEvent]) -> list[list[schemas.DropEvent]]:
        """At most max_batch events each, and within the server's max_payload (with room for
        the counts: at most one entry per drop reason)."""
        room = status.room(self.nc.max_payload) - 512
        out: list[list[schemas.DropEvent]] = [[]]
        used = 0
        for ev in events:
            size = len(schemas.encode(ev)) + 1
            if out[-1] and (len(out[-1]) >= self.max_batch or used + size > room):
                out.append([])
                used = 0
            out[-1].append(ev)
            used += size
        return out

    async def publish_links(self) -> float:
        """One interval's counters, in parts (status.link_parts); the rest the next interval
        waits for after this one: as long as this one's CPU time (LINKS_SHARE)."""
        t = time.time_ns()
        work = status.Work()
        rows = await status.link_rows(self.desired, self.datapath, work=work,
                                      give_way=self.give_way)
        cpu = time.thread_time()
        for part in status.link_parts(self.subjects.host, t, rows, self.nc.max_payload):
            await self.nc.publish(self.subjects.links, part)
            work.seconds += time.thread_time() - cpu
            await status.yield_to_loop()
            cpu = time.thread_time()
        return work.seconds * (1 / LINKS_SHARE - 1)
