"""What a schedule makes of a materialization's links, step by step, checked as a whole.

A step's patch is applied to the links it names as an Update's would be (EmulationPatch.apply:
the fields it sets replace the link's, every rule across fields checked on the result, each
endpoint's own parameters checked over it), and steps add up: the links after step k are the
links after step k-1 with step k's patch. With `repeat`, the second period starts from the
links after the last step of the first, so its states can differ from the first period's
(a field only a later step sets stays set); from the third period on they are the second's
again (a patch sets fields, so applying the same steps twice changes nothing more). Hence two
lists of states, each checked in full when the schedule is accepted: a step that would break a
rule in any period is refused there, naming `schedule.steps[k].set.<field>`
(docs/semantics.md, "Scheduled changes").

Where a schedule stands at a time (`position`) is pure arithmetic on the offsets, so the
service, a restarted service and status agree on it.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import msgspec

from schemas.messages import InvalidMessage, Link, Materialize, Schedule
from schemas.validate import check_direction


@dataclass(frozen=True)
class Expanded:
    """first[k]: the links after step k in the first period; later[k]: in every later period
    (None without repeat); touched[k]: the indexes (into the links) step k changes."""
    first: list[list[Link]]
    later: list[list[Link]] | None
    touched: list[list[int]]


def _targets(m: Materialize, s: Schedule, path: str) -> list[list[int]]:
    out = []
    for k, step in enumerate(s.steps):
        if step.link is not None:
            hits = [j for j, link in enumerate(m.links) if link.id == step.link]
            what, field = f"link {step.link!r}", "link"
        else:
            hits = [j for j, link in enumerate(m.links) if step.tag in link.tags]
            what, field = f"link tagged {step.tag!r}", "tag"
        if not hits:
            raise InvalidMessage(f"{path}.steps[{k}].{field}",
                                 f"materialization {m.id!r} has no {what}", "not_found")
        out.append(hits)
    return out


def _period(links: list[Link], s: Schedule, touched: list[list[int]], path: str,
            later: bool) -> list[list[Link]]:
    states = []
    for k, step in enumerate(s.steps):
        links = list(links)
        field = f"{path}.steps[{k}].set"
        patched: dict[bytes, object] = {}  # a tag step patches each distinct emulation once
        try:
            for j in touched[k]:
                link = links[j]
                key = msgspec.json.encode(link.emulation)
                emu = patched.get(key)
                if emu is None:
                    emu = patched[key] = step.set.apply(link.emulation, field)
                for ep in link.endpoints:
                    if ep.emulation is not msgspec.UNSET:
                        check_direction(emu, ep.emulation, field,  # type: ignore[arg-type]
                                        f"endpoint VNI {ep.vni} of link {link.id!r}")
                links[j] = msgspec.structs.replace(link, emulation=emu)
        except InvalidMessage as e:
            if not later:
                raise
            raise InvalidMessage(e.field, f"{e.message} (from the second period on: the "
                                          "period starts from the last step's links)",
                                 e.code) from None
        states.append(links)
    return states


def expand(m: Materialize, s: Schedule, path: str = "schedule") -> Expanded:
    """Every state `s` takes m's links through (module doc); InvalidMessage naming the step's
    field when one breaks a rule, `not_found` for a link or tag m does not have."""
    touched = _targets(m, s, path)
    first = _period(list(m.links), s, touched, path, later=False)
    later = _period(first[-1], s, touched, path, later=True) if s.repeat is not None else None
    return Expanded(first, later, touched)


def position(s: Schedule, start_ns: int, now_ns: int) -> tuple[int, int]:
    """(cycle, k): the last step that took effect at `now_ns` (CLOCK_REALTIME) for a schedule
    started at `start_ns`, and the period it belongs to; k = -1 (cycle 0) before the first
    step. Without repeat the cycle is always 0."""
    offsets = [step.at for step in s.steps]
    elapsed = now_ns - start_ns
    if elapsed < offsets[0]:
        return 0, -1
    cycle = 0
    if s.repeat is not None:
        cycle, elapsed = divmod(elapsed, s.repeat)
    k = bisect.bisect_right(offsets, elapsed) - 1
    if k < 0:  # before the first step of a later period: the last step of the one before
        return cycle - 1, len(offsets) - 1
    return cycle, k


def links_at(m: Materialize, e: Expanded, cycle: int, k: int) -> list[Link]:
    """The links in force at (cycle, k) (`position`)."""
    if k < 0:
        return m.links
    states = e.first if cycle == 0 or e.later is None else e.later
    return states[k]


def next_step(s: Schedule, start_ns: int, cycle: int, k: int) -> tuple[int, int, int] | None:
    """(cycle, k, due_ns) of the step after (cycle, k); None when the schedule is over."""
    if k + 1 < len(s.steps):
        k += 1
    elif s.repeat is None:
        return None
    else:
        cycle, k = cycle + 1, 0
    return cycle, k, start_ns + cycle * (s.repeat or 0) + s.steps[k].at
