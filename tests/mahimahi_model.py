"""A reference of mm-link's accounting, written from Mahimahi's behaviour (its link queue, as
docs/semantics.md "Trace-driven capacity" describes it): the model the classifier's trace
links (datapath/bpf/trace.h) are held to by tests/test_classifier_trace.py.

It is mm-link's structure, not the classifier's: a clock in whole ms from the trace's start, a
FIFO of packets, and a link that, whenever the clock is told a new time, first burns every
delivery opportunity whose time has come. An opportunity carries OPP bytes from the head of the
queue - the rest of a packet already partly sent, then whole packets, then the start of the next
one - and is wasted (what it could still carry is lost) when no bytes wait. A packet leaves at
the opportunity that carries its last byte. The schedule repeats: after its last opportunity the
next period starts at base + the last time. A packet arriving at ms t is queued after the
opportunities at t were burnt, so the earliest that can carry it is after t.

One choice that is moa's, not mm-link's (mm-link's default queue has no limit): with `limit`,
a packet is dropped when the bytes not yet delivered (the rest of the packet in transit and the
queued ones) plus its own would exceed it.
"""
from __future__ import annotations

from collections import deque

OPP = 1500


class MmLink:
    def __init__(self, schedule: list[int], limit: int = 0) -> None:
        assert schedule and schedule[-1] > 0
        self.schedule = schedule
        self.limit = limit
        self.base = 0
        self.next = 0
        self.queue: deque[tuple[int, int]] = deque()   # (id, bytes)
        self.transit: tuple[int, int] | None = None    # (id, bytes left)
        self.departures: dict[int, int] = {}            # id -> ms
        self.opportunities = 0                          # burnt so far

    def next_time(self) -> int:
        return self.base + self.schedule[self.next]

    def _use(self) -> None:
        self.opportunities += 1
        self.next = (self.next + 1) % len(self.schedule)
        if self.next == 0:
            self.base += self.schedule[-1]

    def rationalize(self, now: int) -> None:
        while self.next_time() <= now:
            t = self.next_time()
            left = OPP
            self._use()
            while left > 0:
                if self.transit is None:
                    if not self.queue:
                        break
                    self.transit = self.queue.popleft()
                pid, rest = self.transit
                n = min(left, rest)
                left -= n
                rest -= n
                self.transit = (pid, rest) if rest else None
                if not rest:
                    self.departures[pid] = t

    def drain(self) -> None:
        """Run the link until every queued packet has left."""
        while self.queue or self.transit:
            self.rationalize(self.next_time())

    def backlog(self) -> int:
        return (self.transit[1] if self.transit else 0) + sum(b for _, b in self.queue)

    def arrive(self, now: int, pid: int, size: int) -> bool:
        """A packet of `size` bytes at ms `now`; False: dropped (the limit)."""
        self.rationalize(now)
        if self.limit and self.backlog() + size > self.limit:
            return False
        self.queue.append((pid, size))
        return True
