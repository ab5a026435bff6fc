"""The datapath's contract with the bus: the `Datapath` protocol and what its calls return.

datapath.api holds the real implementation (KernelDatapath) and re-exports these names; the
bus imports them from there (docs/architecture.md).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import schemas
from datapath.classifier import CounterTable, StageCounters
from datapath.counter_table import CounterRows
from datapath.drops import OwnerLookup
from datapath.scheduled import ScheduleWrites
from datapath.step_writer import StepWriter


@dataclass(frozen=True)
class ApplyResult:
    changed: bool
    operations: int  # how many operations ran (parameter writes count one per VNI)


@dataclass(frozen=True)
class LinkChange:
    """A change of a few links of what the box holds for a materialization (an Update): the
    positions in the new content of the links it changed, and those links as they were held
    before, in the same order (an Update changes links in place)."""
    positions: tuple[int, ...]
    before: tuple[schemas.Link, ...]


@dataclass
class ReconcileReport:
    """What `reconcile` did: the operations it applied (described, in order), the
    materializations it could not converge (id -> why), the orphans it purged."""

    operations: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    purged: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MapUsage:
    """How full one BPF map is: entries held against max_entries (its size, set at load)."""
    name: str
    entries: int
    max_entries: int


DropCallback = Callable[[schemas.DropEvent], None]


class Datapath(Protocol):
    """What the bus needs from the box (docs/architecture.md): every method is required."""

    loss_only: bool

    async def apply(self, m: schemas.Materialize, *, params_only: bool = False,
                    change: LinkChange | None = None) -> ApplyResult:
        """Converge the kernel to `m` for materialization m.id (no links: remove it all).
        `params_only`: m differs from what was applied only in emulation (an Update);
        `change` (with params_only): only in the emulation of the links it names, so only
        those are judged and written. Raises InvalidMessage (a setting this box cannot
        honour), PlanConflict, or PlanError (the box was rolled back to what the kernel held
        before; `rollback_errors` when not all of it)."""
        ...

    def schedule_writes(self, m: schemas.Materialize) -> ScheduleWrites:
        """The map values of each step of m's schedule (m: the links in force, with the
        schedule, as `apply` admitted them: every state it goes through), encoded once."""
        ...

    def steps(self) -> StepWriter:
        """The process that writes scheduled steps at their times (datapath/step_writer.py):
        `add(group, tag, due CLOCK_MONOTONIC ns, keys, values)`, `cancel(group)` (blocks until
        none of the group's writes can happen any more), `written(group, tag, ok, done_ns)`
        called for each write, from its own thread."""
        ...

    def step_entries(self, values: dict[int, bytes]) -> tuple[bytes, bytes]:
        """A step's {vni: stages} (ScheduleWrites) as packed keys and map values, each in its
        VNI's slot now (any thread)."""
        ...

    async def plan(self, m: schemas.Materialize) -> list[str]:
        """The operations `apply(m)` would run, described (`--dry-run`)."""
        ...

    async def holds(self, m: schemas.Materialize) -> bool:
        """A cheap check, not a plan, that the kernel still holds `m` as applied: each of its
        VNIs' parameters in the classifier's map and each of its VTEPs (by name), read now."""
        ...

    async def follow_next_hops(self) -> list[str]:
        """Flow mode: rewrite the entries toward each remote whose next hop's MAC moved in the
        box's neighbour table since they were written (datapath/next_hops.py); what was
        rewritten, one line a remote. Nothing in VTEP mode (a VTEP asks the table itself)."""
        ...

    async def reconcile(self, desired: Sequence[schemas.Materialize]) -> ReconcileReport:
        """Converge the whole box to `desired`: materializations not in it are removed, every
        one in it is repaired, parameters and pair entries nobody owns are purged."""
        ...

    async def counters(self, vnis: Iterable[int]) -> dict[int, dict[str, StageCounters]]:
        """Each VNI's stage counters ("egress", "ingress"), for the VNIs the kernel holds."""
        ...

    async def counter_rows(self, vnis: Iterable[int]) -> CounterRows:
        """What `counters` reads, as arrays (datapath.counter_table.CounterRows): telemetry.links
        builds its messages from them without an object per link and stage in between."""
        ...

    def box_counters(self) -> dict[str, int]: ...

    def fq_memory_bytes(self) -> int:
        """The worst-case sch_fq memory of what the kernel holds (rate x time queued, summed)."""
        ...

    def generation_floor(self) -> int:
        """The highest generation recorded in the kernel (0 on a new box)."""
        ...

    def record_generation(self, generation: int) -> None: ...

    def drop_events(self, callback: DropCallback, owner: OwnerLookup) -> None:
        """Call `callback` in the running loop for every drop event, labelled by `owner`."""
        ...

    def drop_event_losses(self) -> tuple[int, int]:
        """(suppressed, lost): drops not reported as events, totals since start."""
        ...

    def counter_table(self) -> CounterTable:
        """Every link's counters at once, summed over CPUs, in a few syscalls; callable from
        any thread, takes nothing the datapath or the apply path waits for (the metrics
        endpoint's read: docs/metrics.md)."""
        ...

    def map_usage(self) -> list[MapUsage]:
        """The occupancy of the maps that fill up with links; callable from any thread."""
        ...

    async def close(self) -> None:
        """Release handles; the kernel state stays in place."""
        ...
