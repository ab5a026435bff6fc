"""A reference of slotting (docs/semantics.md, "Slots"), written from that rule and not from the
classifier's code: the model datapath/bpf/slot.h is held to by tests/test_classifier_slots.py.

A packet is (ready, frames, bytes): `ready` is its departure as capacity and delay give it.
The slot state is when the current slot opens, and what it released. Each packet, in order:
the slot cannot take it (it released something and would pass its frames or bytes) -> the next
slot opens one gap after it; the packet was not ready at the opening -> a slot opens one gap
after it is; it leaves at the opening, counted. Then the link's ordering: a departure is
strictly after the previous one (the slot's k-th packet leaves k ns after the opening).

Gaps come from `gap(kind, base)`: kind 0 is the gap after a slot that could not take the packet,
kind 1 the gap after the packet's readiness; base is the time the gap is added to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

UNLIMITED = 0xFFFFFFFF


@dataclass
class SlotState:
    next: int = 0          # when the current slot opens
    pkts: int = 0          # frames it released
    used: int = 0          # their bytes
    last: int = 0          # the link's last departure (t_depart)


def release(state: SlotState, packets: Iterable[tuple[int, int, int]], max_packets: int,
            max_bytes: int, gap: Callable[[int, int], int]) -> list[int]:
    """The departures of `packets` from `state` (changed in place)."""
    out = []
    for ready, frames, size in packets:
        if state.pkts and (state.pkts + frames > max_packets or state.used + size > max_bytes):
            state.next += gap(0, state.next)
            state.pkts = state.used = 0
        if ready > state.next:
            state.next = ready + gap(1, ready)
            state.pkts = state.used = 0
        dep = state.next
        state.pkts = min(UNLIMITED, state.pkts + frames)
        state.used = min(UNLIMITED, state.used + size)
        if dep <= state.last:
            dep = state.last + 1
        state.last = max(state.last, dep)
        out.append(dep)
    return out
