"""What a box can hold: the horizon every delay stays under, sch_fq's sizing, its worst-case memory.

Pure functions of emulations and the box's settings (no kernel): the datapath refuses with them
what it could not apply (`unsupported`, naming the field, docs/contract.md) and sizes sch_fq
with them; the tests check them directly.

The longest a stage holds a packet (`hold_ns`): its latency plus its largest jitter (the jitter,
or the jitter times its distribution's largest value) plus the longer of its
queue and one full frame, both as time at the link's rate (the frame as the link charges it: its
overhead and cells, `charged_frame`; the queue is already time at the rate of what it charges).
The queue is the backlog a packet may find ahead of it plus its own serialisation
(edt.h: backlog + itself <= queue), and a packet that finds the queue empty is always taken,
however long its own serialisation. So a departure is at most `hold_ns` ahead of now for frames
up to the VTEP MTU (a GSO packet of many frames can go further, and is dropped `horizon` like any
departure beyond it).

The horizon is the box's bound on how far ahead a departure may be: the classifier drops beyond
it (MOA_DROP_HORIZON, config.h) and sch_fq's own horizon is the same or a hair longer (fq counts
in µs, so it is rounded up), so fq never drops a packet the classifier let through. It is a
load-time setting (`--horizon`, default 30 s), raised at start to the longest hold of what the
box already holds; a stage whose hold exceeds it is refused. Why not a run-time value:
docs/semantics.md, "The horizon".

What sch_fq holds for a stage (`stage_bytes`): the rate at which packets reach it times the hold.
The rate is the link's capacity (in frame bytes: more than the capacity when a negative overhead
charges a frame less than its bytes, `frame_ratio`), or for an unlimited link the uplink's line
rate; nothing reaches
the box faster than its uplink, so the box's total is also at most line rate x the longest hold
(`BoxFigures.memory`). sch_fq's limit and flow_limit come from these figures (fq_sizing_for):
one link's packets may share one of fq's flows (forwarded packets have no socket), so flow_limit
covers the largest stage, limit the total.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from dataclasses import dataclass, field

import msgspec

import schemas
from datapath.distributions import max_offset
from datapath.emulation import DEFAULT_OVERHEAD, MIN_FRAME, frame_wire, queue_bytes, queue_ns
from datapath.netlink.model import FqSizing, fq_sizing_for

# A VTEP's (egress, ingress) stages, as datapath.plan.planner.Stages.
Stages = tuple["schemas.Emulation | None", "schemas.Emulation | None"]

NSEC = 1_000_000_000
DEFAULT_HORIZON_NS = 30 * NSEC
# sch_fq's TCA_FQ_HORIZON is a u32 of µs: about 71.6 minutes.
MAX_HORIZON_NS = 0xFFFFFFFF * 1000
DEFAULT_LINE_RATE_BPS = 10 * 10**9  # an uplink whose speed the kernel does not report
ETH_HEADER = 14


def frame_bytes(vtep_mtu: int) -> int:
    """What one full frame is charged on a link with the default charge: the inner MTU, its
    Ethernet header, L1 overhead. A link with its own overhead or cells charges it
    `charged_frame` instead."""
    return vtep_mtu + ETH_HEADER + DEFAULT_OVERHEAD


def charged_frame(e: schemas.Emulation, frame: int) -> int:
    """The full frame `frame` (frame_bytes: with the default charge) as e's link charges it: its
    own overhead and, with cells, the cells' inflation (datapath/bpf/charge.h)."""
    return frame_wire(e, frame - DEFAULT_OVERHEAD)


def frame_ns(capacity: int, frame: int) -> int:
    """One frame's serialisation at `capacity` (0 for an unlimited link), rounded up."""
    return -(-frame * 8 * NSEC // capacity) if capacity else 0


def hold_ns(e: schemas.Emulation | None, frame: int) -> int:
    """The longest a stage holds a frame of up to `frame` bytes (module doc)."""
    if e is None:
        return 0
    return (max_delay_ns(e) + slot_ns(e)
            + max(queue_ns(e), frame_ns(e.capacity, charged_frame(e, frame))))


def max_delay_ns(e: schemas.Emulation) -> int:
    """The longest delay the stage's jitter can draw: latency + jitter, or + jitter times the
    largest value of its distribution (pareto: 4 jitters)."""
    return e.latency + math.ceil(e.jitter * max_offset(e.distribution, e.distribution_table))


def slot_ns(e: schemas.Emulation) -> int:
    """The longest gap between two slot openings (0 without slots): a packet that just missed
    a slot waits it on top of its delay (datapath/bpf/slot.h). A backlog of several slots'
    worth waits several; those beyond the horizon are dropped `horizon` as any departure."""
    if e.slot is None:
        return 0
    gap, span = e.slot.gaps()
    if e.slot.distribution == "uniform":
        return gap + span
    return gap + math.ceil(span * max_offset(e.slot.distribution, None))


def fq_horizon_us(horizon_ns: int) -> int:
    """sch_fq's horizon for the classifier's: the same, rounded up to fq's µs."""
    return -(-horizon_ns // 1000)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def horizon_refusal(e: schemas.Emulation, path: str, horizon_ns: int, frame: int,
                    port: schemas.Emulation | None = None) -> schemas.InvalidMessage | None:
    """Why a link with emulation `e` (a LAN's also with its `port` stage) cannot be held under
    `horizon_ns`, as an `unsupported` error naming the field; None when it can.

    The field: capacity when one full frame alone exceeds the horizon; latency or jitter when
    they do; else the queue (given, or the default the capacity implies)."""
    fmt = schemas.format_duration

    def refuse(field: str, what: str) -> schemas.InvalidMessage:
        h = fmt(horizon_ns)  # only for a refusal: admit asks this of every link
        return schemas.InvalidMessage(
            _join(path, field), f"{what} is beyond this box's horizon {h} (moa serve --horizon): "
            "no departure may be further ahead than that", code="unsupported")

    charged = charged_frame(e, frame)
    one = frame_ns(e.capacity, charged)
    if one > horizon_ns:
        rate = schemas.format_rate(e.capacity)
        return refuse("capacity", f"one full frame ({charged} B) at {rate} takes {fmt(one)}, which")
    if e.latency > horizon_ns:
        return refuse("latency", f"latency {fmt(e.latency)}")
    if max_delay_ns(e) > horizon_ns:
        what = ("jitter" if e.distribution == "uniform"
                else f"{e.distribution} jitter at its largest")
        return refuse("jitter", f"latency + {what} = {fmt(max_delay_ns(e))}")
    if max_delay_ns(e) + slot_ns(e) > horizon_ns:
        return refuse("slot", f"the delay and the longest gap between slots "
                              f"({fmt(slot_ns(e))}) = {fmt(max_delay_ns(e) + slot_ns(e))}")
    for stage in (e, port):
        held = hold_ns(stage, frame)
        if held > horizon_ns:
            assert stage is not None
            given = "queue" if e.queue is not None else "default queue"
            where = "" if stage is e else " at the sender's LAN port"
            return refuse("queue", f"latency + jitter + {given}{where} "
                                   f"({fmt(max(queue_ns(stage), one))} at "
                                   f"{schemas.format_rate(stage.capacity)}) = {fmt(held)}")
    return None


def required_horizon(stages: Iterable[schemas.Emulation | None], frame: int) -> int:
    """The shortest horizon under which every one of `stages` is held: the longest hold."""
    return max((hold_ns(e, frame) for e in stages), default=0)


def stage_bytes(e: schemas.Emulation | None, frame: int, line_rate_bps: int) -> int:
    """The most sch_fq holds for one stage: its rate (capacity, else the line rate) x its hold."""
    if e is None:
        return 0
    held = hold_ns(e, frame)
    if not held:
        return 0
    if e.trace is not None:
        # A trace link's backlog is at most its queue in bytes (trace.h's tail drop counts
        # bytes, not time at a rate: the line rate times its queue as time at the trace's mean
        # rate counted the trace's rate up to the line's); behind the backlog a frame waits
        # its delay at most, arriving at most at the line rate.
        return queue_bytes(e) + line_rate_bps * max_delay_ns(e) // (8 * NSEC)
    rate = line_rate_bps
    if e.capacity:
        ratio = frame_ratio(e.overhead, e.cell_size, e.cell_overhead, frame - DEFAULT_OVERHEAD)
        if ratio is not None:
            rate = min(rate, math.ceil(e.capacity * ratio))
    return rate * held // (8 * NSEC)


@lru_cache(maxsize=1024)
def frame_ratio(overhead: int, cell_size: int, cell_overhead: int, largest: int) -> float | None:
    """The most frame bytes a link charging this way passes per byte it charges, over frames
    of 60 to `largest` bytes: at least 1 (the default charge is more than the frame; only a
    negative overhead or cell overhead makes it less). None when some frame is charged
    nothing (overhead -60 and a minimum frame): such frames are not bounded by the rate."""
    e = schemas.Emulation(overhead=overhead, cell_size=cell_size, cell_overhead=cell_overhead)
    worst = 1.0
    for n in range(MIN_FRAME, max(MIN_FRAME, largest) + 1):
        w = frame_wire(e, n)
        if w == 0:
            return None
        worst = max(worst, n / w)
    return worst


@dataclass(frozen=True)
class Figures:
    """What one materialization asks of sch_fq: on the uplink (egress stages) and in the LAN
    members' VTEPs (port stages). `largest`: the largest single egress stage (one fq flow).
    `tally`: the same figures counted (Tally), so that a change of a few links adjusts them
    exactly; None for a schedule's envelope, which a change of links cannot adjust."""

    egress_bytes: int = 0
    port_bytes: int = 0
    largest: int = 0
    egress_hold_ns: int = 0
    port_hold_ns: int = 0
    tally: "Tally | None" = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, stages: Iterable[tuple[schemas.Emulation | None, schemas.Emulation | None, int]],
           frame: int, line_rate_bps: int) -> "Figures":
        """From (egress, port, endpoints) per link: every endpoint has both stages."""
        tally = Tally(frame, line_rate_bps)
        for egress, port, endpoints in stages:
            tally.add(egress, port, endpoints)
        return tally.figures()


@dataclass
class Tally:
    """Figures as counts: the sums, and for each maximum how many endpoints have each value
    (few distinct values: links share emulations). Taking links out is then as exact as
    putting them in, which a maximum alone cannot be: lowering the one link that held it."""

    frame: int
    line_rate_bps: int
    egress_bytes: int = 0
    port_bytes: int = 0
    largest: Counter[int] = field(default_factory=Counter)
    egress_hold: Counter[int] = field(default_factory=Counter)
    port_hold: Counter[int] = field(default_factory=Counter)

    def add(self, egress: schemas.Emulation | None, port: schemas.Emulation | None,
            endpoints: int, sign: int = 1) -> None:
        """`endpoints` endpoints with these stages (sign -1: taken out)."""
        one = stage_bytes(egress, self.frame, self.line_rate_bps)
        self.egress_bytes += sign * one * endpoints
        self.port_bytes += sign * stage_bytes(port, self.frame, self.line_rate_bps) * endpoints
        for counts, value in ((self.largest, one), (self.egress_hold, hold_ns(egress, self.frame)),
                              (self.port_hold, hold_ns(port, self.frame))):
            counts[value] += sign * endpoints
            if counts[value] <= 0:
                del counts[value]

    def copy(self) -> "Tally":
        return Tally(self.frame, self.line_rate_bps, self.egress_bytes, self.port_bytes,
                     Counter(self.largest), Counter(self.egress_hold), Counter(self.port_hold))

    def figures(self) -> Figures:
        return Figures(self.egress_bytes, self.port_bytes, max(self.largest, default=0),
                       max(self.egress_hold, default=0), max(self.port_hold, default=0),
                       tally=self)


@dataclass(frozen=True)
class BoxFigures:
    """The sum of the materializations' Figures, bounded by what the uplink can bring in."""

    figures: tuple[Figures, ...]
    line_rate_bps: int

    def _bound(self, hold: int) -> int:
        return self.line_rate_bps * hold // (8 * NSEC)

    @property
    def uplink_bytes(self) -> int:
        """The most the uplink's sch_fq holds."""
        total = sum(f.egress_bytes for f in self.figures)
        return min(total, self._bound(max((f.egress_hold_ns for f in self.figures), default=0)))

    @property
    def memory(self) -> int:
        """Worst-case bytes in every sch_fq of the box (uplink and LAN members' VTEPs)."""
        total = sum(f.egress_bytes + f.port_bytes for f in self.figures)
        hold = (max((f.egress_hold_ns for f in self.figures), default=0)
                + max((f.port_hold_ns for f in self.figures), default=0))
        return min(total, self._bound(hold))

    def fq_sizing(self, mtu: int, horizon_ns: int) -> FqSizing:
        """sch_fq on the uplink for these links (fq_sizing_for: a 2x margin, with floors)."""
        largest = max((f.largest for f in self.figures), default=0)
        return fq_sizing_for(min(largest, self.uplink_bytes), self.uplink_bytes, mtu=mtu,
                             horizon_ns=horizon_ns)


def fq_memory_refusal(box_after: BoxFigures, box_before: BoxFigures, maximum: int | None,
                      ) -> schemas.InvalidMessage | None:
    """`unsupported` when the box's worst-case fq memory would pass `maximum` (None: no bound)
    and grow: a change that lowers it is always taken, even above the bound."""
    after, before = box_after.memory, box_before.memory
    if maximum is None or after <= maximum or after <= before:
        return None
    size = schemas.format_size
    return schemas.InvalidMessage(
        "links", f"the box's worst-case sch_fq memory would be {size(after)} ({after} B), above "
        f"moa serve --fq-memory-max {size(maximum)} ({maximum} B); it holds {size(before)} now",
        code="unsupported")


def fq_resize(before: FqSizing, after: FqSizing) -> tuple[FqSizing | None, FqSizing | None]:
    """(first, last): sch_fq sizes to set before a plan's other operations (room for what comes)
    and after them (the room that went), None where nothing changes. Growing goes first,
    shrinking last; a change that does both goes first to the larger of each, then to `after`."""
    if before == after:
        return None, None
    grown = FqSizing(limit=max(before.limit, after.limit),
                     flow_limit=max(before.flow_limit, after.flow_limit),
                     buckets=after.buckets, horizon_ns=after.horizon_ns,
                     orphan_mask=after.orphan_mask)
    first = grown if grown != before else None
    last = after if after != grown else None
    return first, last


@dataclass
class Budget:
    """A box's limits and what its materializations ask of them (KernelDatapath keeps one):
    the horizon, the frame and line rate the figures are made with, --fq-memory-max."""

    horizon_ns: int
    frame: int
    line_rate_bps: int
    fq_memory_max: int | None = None
    figures: dict[str, Figures] = field(default_factory=dict)  # materialization -> its figures

    def figures_of(self, stages: Iterable[tuple[Stages, int]]) -> Figures:
        """From ((egress, port), endpoints) per link."""
        return Figures.of(((eg, port, n) for (eg, port), n in stages), self.frame,
                          self.line_rate_bps)

    def box(self, change: dict[str, Figures] | None = None) -> BoxFigures:
        """The box's figures, with `change` in place of what those materializations hold."""
        return BoxFigures(tuple({**self.figures, **(change or {})}.values()), self.line_rate_bps)

    def admit(self, mid: str, stages: list[tuple[Stages, int, str]]) -> Figures:
        """The figures of materialization `mid` with these stages (each with how many endpoints
        have it and the path of the emulation that sets it: planner.stage_groups, every
        direction counted), once they passed the horizon and the fq memory bound; else
        InvalidMessage `unsupported` naming the field."""
        tally = Tally(self.frame, self.line_rate_bps)
        for (egress, port), n in self._judged(stages):
            tally.add(egress, port, n)
        return self._bounded(mid, tally.figures())

    def admit_change(self, mid: str, before: list[tuple[Stages, int, str]],
                     after: list[tuple[Stages, int, str]]) -> Figures | None:
        """As `admit`, for a change of a few of mid's links: their stages `before` taken out of
        the figures mid holds, their stages `after` judged and put in. None when what mid
        holds is not counted (a schedule's envelope, or nothing held): admit the whole."""
        held = self.figures.get(mid)
        if held is None or held.tally is None:
            return None
        tally = held.tally.copy()
        for (egress, port), n, _ in before:
            tally.add(egress, port, n, sign=-1)
        for (egress, port), n in self._judged(after):
            tally.add(egress, port, n)
        return self._bounded(mid, tally.figures())

    def _judged(self, stages: list[tuple[Stages, int, str]]) -> list[tuple[Stages, int]]:
        """The stages grouped, each group once past the horizon (InvalidMessage naming the
        first field that passes it)."""
        # Links with the same stages are judged once, their endpoints counted together (the
        # figures are sums and maxima): 10,000 links of one emulation are one judgement.
        groups: dict[object, list] = {}
        for (egress, port), n, path in stages:
            key = _stages_key(egress, port)
            held = groups.get(key) if key is not None else None
            if held is not None:
                held[1] += n
                continue
            if egress is not None:
                refusal = horizon_refusal(egress, path, self.horizon_ns, self.frame, port)
                if refusal is not None:
                    raise refusal
            groups[key if key is not None else object()] = [(egress, port), n]
        return [(st, n) for st, n in groups.values()]

    def _bounded(self, mid: str, figures: Figures) -> Figures:
        refusal = fq_memory_refusal(self.box({mid: figures}), self.box(), self.fq_memory_max)
        if refusal is not None:
            raise refusal
        return figures

    def held(self, mid: str, figures: Figures | None) -> None:
        """The box now holds `figures` for `mid` (None: nothing)."""
        if figures is None:
            self.figures.pop(mid, None)
        else:
            self.figures[mid] = figures


def _stages_key(egress: schemas.Emulation | None, port: schemas.Emulation | None) -> bytes | None:
    """Equal stages, equal keys (their JSON); None for a stage with a trace or a distribution
    table of its own (large: such links are judged one by one)."""
    if any(e is not None and (e.trace is not None or e.distribution_table is not None)
           for e in (egress, port)):
        return None
    return b"|".join(b"-" if e is None else schemas.encode(e) for e in (egress, port))


_SHAPING = ("latency", "jitter", "capacity", "queue", "slot", "trace")


def refuse_shaping(m: schemas.Materialize, loss_only: bool,
                   positions: Iterable[int] | None = None) -> None:
    """On a loss-only box (no sch_fq in its kernel), any latency, jitter, capacity, queue or
    slot is refused `unsupported`, naming the field (a link's, or one direction's own); of
    the links at `positions` only, when given (a change of a few)."""
    if not loss_only:
        return
    for i in range(len(m.links)) if positions is None else positions:
        link = m.links[i]
        emulations = [(link.emulation, f"links[{i}].emulation")]
        emulations += [(ep.emulation, f"links[{i}].endpoints[{j}].emulation")
                       for j, ep in enumerate(link.endpoints) if ep.emulation is not msgspec.UNSET]
        for e, path in emulations:
            for name in _SHAPING:
                if getattr(e, name) not in (msgspec.UNSET, None, 0):
                    raise schemas.InvalidMessage(
                        f"{path}.{name}",
                        "this box runs loss-only (no sch_fq in its kernel): only loss can be "
                        "emulated", code="unsupported")
