"""A materialization's schedule as the datapath sees it: what every state it will go through
asks of the box, and the map values each step writes (docs/semantics.md, "Scheduled changes").

The bus runs the schedule (its timer, its reports: moa_bus/service/schedule.py); the datapath
only makes sure, when the schedule is accepted, that every state the links will be in is one
this box can apply, and encodes each step's values then, so that a step is one batch write of
`moa_links` entries (each replaced whole under RCU: a packet sees a link's old parameters or
its new ones), nothing planned and no netlink at the step's time.

Admission: every future state passes what refuses a single content (a shaping field on a
loss-only box, a hold beyond the horizon), each refusal naming the step's field
(`schedule.steps[k].set.<field>`); the box's sch_fq is sized, and its worst-case memory
bounded, for the envelope of the states (each figure's largest value over them), so a step
never needs sch_fq to change.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

import schemas
from datapath import limits
from schemas.schedule import expand

_FIELD = re.compile(r"^links\[\d+\](\.endpoints\[\d+\])?\.emulation")


@dataclass(frozen=True)
class ScheduleWrites:
    """The `moa_links` values each step writes ({vni: encoded stages}): first[k] in the first
    period, later[k] in every later one (None without repeat)."""
    first: list[dict[int, bytes]]
    later: list[dict[int, bytes]] | None


def _states(m: schemas.Materialize) -> list[tuple[int, schemas.Materialize]]:
    """(step, content) for every state m's schedule takes its links through (m itself: -1)."""
    assert m.schedule is not msgspec.UNSET
    e = expand(m, m.schedule)
    out = [(-1, m)]
    for states in (e.first, e.later or []):
        out += [(k, msgspec.structs.replace(m, links=links)) for k, links in enumerate(states)]
    return out


def contents(m: schemas.Materialize) -> list[schemas.Materialize]:
    """m, and with a schedule every state it takes m's links through (the box's horizon and
    sch_fq are sized for all of them at start)."""
    return [m] if m.schedule is msgspec.UNSET else [state for _, state in _states(m)]


def _at_step(e: schemas.InvalidMessage, k: int) -> schemas.InvalidMessage:
    if k < 0:
        return e
    field = _FIELD.sub(f"schedule.steps[{k}].set", e.field)
    return schemas.InvalidMessage(field, f"{e.message} (at step {k} of the schedule)", e.code)


def envelope(m: schemas.Materialize, figures_of: Callable[[schemas.Materialize], limits.Figures],
             admit: Callable[[schemas.Materialize], None] | None = None) -> limits.Figures:
    """The largest of each figure over every state of m's schedule (m's own figures without
    one); `admit(state)` first refuses a state the box cannot apply."""
    if m.schedule is msgspec.UNSET:
        if admit is not None:
            admit(m)
        return figures_of(m)
    out = limits.Figures()
    for k, state in _states(m):
        if admit is not None:
            try:
                admit(state)
            except schemas.InvalidMessage as e:
                raise _at_step(e, k) from None
        f = figures_of(state)
        out = limits.Figures(*(max(a, b) for a, b in zip(
            (out.egress_bytes, out.port_bytes, out.largest, out.egress_hold_ns, out.port_hold_ns),
            (f.egress_bytes, f.port_bytes, f.largest, f.egress_hold_ns, f.port_hold_ns))))
    return out


def writes(m: schemas.Materialize, stages_of: Callable[[schemas.Link], list],
           encode: Callable[[object], bytes]) -> ScheduleWrites:
    """Each step's values: the stages of every endpoint of the links the step changes."""
    assert m.schedule is not msgspec.UNSET
    e = expand(m, m.schedule)

    def values(states: list[list[schemas.Link]]) -> list[dict[int, bytes]]:
        out = []
        for k, links in enumerate(states):
            step: dict[int, bytes] = {}
            for j in e.touched[k]:
                for ep, st in zip(links[j].endpoints, stages_of(links[j])):
                    step[ep.vni] = encode(st)
            out.append(step)
        return out

    return ScheduleWrites(values(e.first), values(e.later) if e.later is not None else None)
