"""A reference CoDel, written from RFC 8289's pseudocode (section 5), run on a simulated FIFO in
front of a link of a given rate: the model the classifier's CoDel (datapath/bpf/aqm.h) is held
to by tests/test_classifier_aqm.py.

It is the RFC's structure, not the classifier's: packets wait in a queue, the link calls
dequeue() whenever it is free, dequeue() may drop several packets in one call (its while loop)
and, on entering the dropping state, returns the next packet without judging it. Two choices
the RFC leaves open or that deciding at enqueue forces, made as docs/semantics.md ("Queue
management") states them, and nowhere else:
- MAXPACKET: "queue.bytes() <= MAXPACKET" is read as the backlog the packet found ahead of it,
  as time at the rate: sojourn <= the serialisation time of a full frame.
- control_law(t, count) = t + floor(interval / sqrt(count)) in whole ns:
  isqrt(interval^2 // count).
- ECN (as Linux's codel, which the RFC defers to for marking): a packet CoDel would drop is
  marked CE instead when ECN is on and it is ECN-capable; in the loop, a mark counts, schedules
  the next drop and ends the dequeue; on entering, a mark replaces the drop and the next packet
  is left for the next dequeue.
Ties: a packet that arrives at the very time the link frees is queued before that dequeue.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

NSEC = 10**9
MAXPACKET = 1514          # a full Ethernet frame
U32 = (1 << 32) - 1


def ser_ns(wire_bytes: int, rate_bps: int) -> int:
    """charge.h's moa_ser_ns: floor(bytes * 8e9 / rate)."""
    return wire_bytes * 8 * NSEC // rate_bps


@dataclass
class Packet:
    arrival: int              # ns, when the packet reaches the queue
    ser: int                  # its serialisation time at the link rate
    target: int               # CoDel's target in effect when this packet is judged
    ect: bool = False         # ECN-capable (ECT(0), ECT(1) or CE)
    verdict: str = ""         # "pass" | "drop" | "mark"
    start: int = -1           # pass / mark: when its serialisation starts (dequeue time)


class CoDel:
    """RFC 8289's state variables and routines (names as in the RFC)."""

    def __init__(self, interval: int, maxpacket_ns: int, ecn: bool = False) -> None:
        self.interval = interval
        self.maxpacket_ns = maxpacket_ns
        self.ecn = ecn
        self.first_above_time = 0
        self.drop_next = 0
        self.count = 0
        self.lastcount = 0
        self.dropping = False
        self.queue: deque[Packet] = deque()

    def control_law(self, t: int, count: int) -> int:
        return t + math.isqrt(self.interval * self.interval // max(count, 1))

    def dodequeue(self, now: int) -> tuple[Packet | None, bool]:
        if not self.queue:
            self.first_above_time = 0     # queue is empty - we can't be above TARGET
            return None, False
        p = self.queue.popleft()
        sojourn = now - p.arrival
        ok_to_drop = False
        if sojourn < p.target or sojourn <= self.maxpacket_ns:
            self.first_above_time = 0     # went below - stay below for at least INTERVAL
        elif self.first_above_time == 0:
            self.first_above_time = now + self.interval
        elif now >= self.first_above_time:
            ok_to_drop = True
        return p, ok_to_drop

    def _can_mark(self, p: Packet) -> bool:
        return self.ecn and p.ect

    def dequeue(self, now: int) -> Packet | None:
        p, ok = self.dodequeue(now)
        if self.dropping:
            if not ok:
                self.dropping = False     # sojourn time below TARGET - leave drop state
            while self.dropping and now >= self.drop_next:
                assert p is not None
                self.count += 1
                if self._can_mark(p):
                    p.verdict = "mark"
                    self.drop_next = self.control_law(self.drop_next, self.count)
                    return p
                p.verdict = "drop"
                p, ok = self.dodequeue(now)
                if not ok:
                    self.dropping = False
                else:
                    self.drop_next = self.control_law(self.drop_next, self.count)
        elif ok:
            assert p is not None
            if self._can_mark(p):
                p.verdict = "mark"
            else:
                p.verdict = "drop"
                p, ok = self.dodequeue(now)
            self.dropping = True
            delta = (self.count - self.lastcount) & U32
            self.count = 1
            if delta > 1 and now - self.drop_next < 16 * self.interval:
                self.count = delta
            self.drop_next = self.control_law(now, self.count)
            self.lastcount = self.count
        return p


def run(packets: list[Packet], link_free: int, codel: CoDel) -> list[Packet]:
    """The link: free at `link_free`; packets (arrival order) queue and are dequeued whenever the
    link frees. Fills in each packet's verdict (and start, for those sent)."""
    i, n, free = 0, len(packets), link_free
    while i < n or codel.queue:
        if not codel.queue:
            codel.queue.append(packets[i])
            i += 1
        now = max(free, codel.queue[0].arrival)
        while i < n and packets[i].arrival <= now:
            codel.queue.append(packets[i])
            i += 1
        p = codel.dequeue(now)
        if p is None:
            free = now
            continue
        if not p.verdict:
            p.verdict = "pass"
        p.start = now
        free = now + p.ser
    return packets
