"""Datapath: the one interface the bus calls. Hides pyroute2 and ctypes.

The datapath holds no desired state. It is handed the desired state of one materialization
(`apply`) or of the whole box (`reconcile`), reads what the kernel holds, and converges the
kernel to it; whatever it needs to undo a failed plan it read from the kernel just before the
plan ran. Who owns the desired state, and how a restart converges: docs/architecture.md,
"Desired state".

`KernelDatapath` is the real one: a netlink worker thread in the box's network namespace, the
classifier (pinned maps, attached to the uplink) and the pair program (pinned maps, attached to
VTEPs). Pinned maps and attached programs outlive the service: `close()` leaves them, so traffic
stays shaped while the service restarts. `teardown()` removes everything moa made (tests,
uninstall).
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import schemas
from datapath import faults
from datapath.classifier import Classifier, ClassifierConfig, CounterTable, StageCounters
from datapath.drops import DropEventReader, OwnerLookup
from datapath.emulation import queue_ns
from datapath.netlink.model import VXLAN_OVERHEAD, FqSizing, FqUnavailable
from datapath.netlink.worker import NetlinkWorker
from datapath.pair import PairMode, PairProgram
from datapath.plan.operation import Env, Operation
from datapath.plan.params import SetLinkParams
from datapath.plan.planner import Current, PlanConfig, PlanConflict, Stages, link_stages, plan
from datapath.plan.runner import PlanError, run_plan
from datapath.plan.uplink import EnsureUplink, ReleaseUplink

log = logging.getLogger("datapath.api")

__all__ = ["ApplyResult", "Datapath", "DatapathConfig", "KernelDatapath", "PlanError",
           "PlanConflict", "FqUnavailable", "ReconcileReport", "StageCounters", "CounterTable",
           "MapUsage", "fq_memory_bytes"]


@dataclass(frozen=True)
class ApplyResult:
    changed: bool
    operations: int  # how many operations ran (parameter writes count one per VNI)


@dataclass
class ReconcileReport:
    """What `reconcile` did: the operations it applied (described, in order), the
    materializations it could not converge (id -> why), the orphans it purged."""

    operations: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    purged: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatapathConfig:
    uplink: str
    local: str  # the box's VTEP source address on the uplink
    netns: str | None = None  # the box's network namespace (None: the current one)
    pin_root: str = "/sys/fs/bpf/moa"
    fq: FqSizing = field(default_factory=FqSizing)
    allow_loss_only: bool = False
    vtep_mtu: int | None = None  # None: uplink MTU - 50 (VXLAN over IPv4)
    pair_mode: PairMode = PairMode.TC
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    host: str = field(default_factory=socket.gethostname)


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

    async def apply(self, m: schemas.Materialize, *, params_only: bool = False) -> ApplyResult:
        """Converge the kernel to `m` for materialization m.id (no links: remove it all).
        `params_only`: m differs from what was applied only in emulation (an Update). Raises
        InvalidMessage (a setting this box cannot honour), PlanConflict, or PlanError (the box
        was rolled back to what the kernel held before; `rollback_errors` when not all of it)."""
        ...

    async def plan(self, m: schemas.Materialize) -> list[str]:
        """The operations `apply(m)` would run, described (`--dry-run`)."""
        ...

    async def reconcile(self, desired: Sequence[schemas.Materialize]) -> ReconcileReport:
        """Converge the whole box to `desired`: materializations not in it are removed, every
        one in it is repaired, parameters and pair entries nobody owns are purged."""
        ...

    async def counters(self, vnis: Iterable[int]) -> dict[int, dict[str, StageCounters]]:
        """Each VNI's stage counters ("egress", "ingress"), for the VNIs the kernel holds."""
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


def fq_memory_bytes(stages: Iterable[schemas.Emulation | None]) -> int:
    """Worst case that fq holds for these stages: rate x (latency + queue time). An egress
    stage's frames wait in the uplink's fq, a LAN port stage's in its receivers' VTEP fq."""
    total = 0
    for e in stages:
        if e is None or not e.capacity:
            continue
        total += e.capacity * (e.latency + e.jitter + queue_ns(e)) // 8_000_000_000
    return total


_SHAPING = ("latency", "jitter", "capacity", "queue")


class KernelDatapath:
    """The Datapath of a real box (module doc)."""

    def __init__(self, config: DatapathConfig, worker: NetlinkWorker, classifier: Classifier,
                 pair: PairProgram, env: Env, loss_only: bool) -> None:
        self.config = config
        self.worker = worker
        self.classifier = classifier
        self.pair = pair
        self.loss_only = loss_only
        self._drops = DropEventReader(classifier)
        self._fq_bytes: dict[str, int] = {}  # materialization -> worst-case fq memory it holds
        self.env = env
        self.uplink_index = worker.run(worker.nl.require_ifindex, config.uplink)
        mtu = worker.run(worker.nl.mtu, config.uplink)
        self.plan_config = PlanConfig(uplink=config.uplink, local=config.local,
                                      vtep_mtu=config.vtep_mtu or mtu - VXLAN_OVERHEAD,
                                      port_hold=None if loss_only else config.fq)

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    async def start(cls, config: DatapathConfig) -> "KernelDatapath":
        """Load (or find pinned) BPF objects and ensure the uplink. What the kernel holds of
        links is left as it is until `reconcile` is given the desired state."""
        worker = NetlinkWorker(config.netns)
        classifier = pair = None
        try:
            os.makedirs(config.pin_root, exist_ok=True)
            classifier = Classifier.load(config.classifier, pin_root=config.pin_root)
            pair = PairProgram(config.pin_root, max_vteps=2 * config.classifier.max_links)
            env = Env(nl=worker.nl, links=classifier, pair=pair, pair_mode=config.pair_mode,
                      egress_program=classifier.egress_program,
                      ingress_program=classifier.ingress_program,
                      port_hold_program=classifier.port_hold_program)
            loss_only = False
            try:
                await worker.call(EnsureUplink(config.uplink, config.fq).apply, env)
            except FqUnavailable:
                if not config.allow_loss_only:
                    raise
                log.warning("no sch_fq: loss-only mode (latency and capacity refused per link)")
                loss_only = True
                await worker.call(EnsureUplink(config.uplink, None).apply, env)
            return cls(config, worker, classifier, pair, env, loss_only)
        except BaseException:
            if pair is not None:
                pair.close()
            if classifier is not None:
                classifier.close()
            worker.close()
            raise

    async def close(self) -> None:
        """Stop using the kernel objects; pins, devices and attached programs stay."""
        self._drops.close()  # detaches from the loop; before the map it reads goes
        self.pair.close()
        self.classifier.close()
        self.worker.close()

    async def teardown(self) -> None:
        """Remove everything moa made: every materialization, the uplink set-up, the pins."""
        await self.reconcile([])
        fq = None if self.loss_only else self.config.fq
        await self.worker.call(ReleaseUplink(self.config.uplink, fq).apply, self.env)
        for m in (self.classifier.obj.map_names() + self.pair.obj.map_names()):
            path = os.path.join(self.config.pin_root, m)
            if m.startswith("moa_") and os.path.exists(path):
                os.unlink(path)
        try:
            os.rmdir(self.config.pin_root)
        except OSError:
            pass
        await self.close()

    # -- reading the kernel ---------------------------------------------------------------------

    def _read_current(self, m: schemas.Materialize) -> Current:
        """On the worker thread: devices (with their root qdiscs where port holds exist), pair
        entries, and the map entries of m's VNIs and of the VNIs of m.id's devices."""
        nl = self.worker.nl
        devices = {d.name: d for d in nl.list_moa_devices(qdiscs=not self.loss_only)}
        wanted = {ep.vni for link in m.links for ep in link.endpoints}
        wanted |= {d.vni for d in devices.values()
                   if d.materialization == m.id and d.vni is not None}
        links = self.classifier.raw_links(wanted)
        params = {vni: self.classifier.stages_of(raw) for vni, raw in links.items()}
        return Current(devices=devices, pairs=self.pair.entries(), params=params, links=links)

    def _encode(self, stages: Stages) -> bytes:
        return self.classifier.encode_stages(*stages)

    def _purge_orphans(self, keep_vnis: set[int]) -> list[str]:
        """Parameters of VNIs no desired link has, and pair entries of devices that are gone
        (what a crash between two operations leaves behind)."""
        devices = self.worker.nl.list_moa_devices()
        indexes = {d.index for d in devices}
        purged = []
        for vni in self.classifier.vnis():
            if vni not in keep_vnis:
                self.classifier.delete_link(vni)
                purged.append(f"parameters of VNI {vni}")
        stale = [i for i in self.pair.entries() if i not in indexes]
        if stale:
            self.pair.disconnect(*stale)
            purged += [f"pair entry of ifindex {i}" for i in stale]
        return purged

    # -- converging ---------------------------------------------------------------------------------

    def _check_loss_only(self, m: schemas.Materialize) -> None:
        if not self.loss_only:
            return
        for i, link in enumerate(m.links):
            for name in _SHAPING:
                value = getattr(link.emulation, name)
                if value:
                    raise schemas.InvalidMessage(
                        f"links[{i}].emulation.{name}",
                        "this box runs loss-only (no sch_fq in its kernel): only loss can be "
                        "emulated", code="unsupported")

    def _plan(self, m: schemas.Materialize) -> list[Operation]:
        return plan(m, self._read_current(m), self.plan_config, self._encode, self.uplink_index)

    def _apply_plan(self, m: schemas.Materialize) -> list[Operation]:
        ops = self._plan(m)
        run_plan(ops, self.env, label=m.id)
        return ops

    def _apply_params(self, m: schemas.Materialize) -> int | None:
        """Only the parameters of m's VNIs, in one batch write, against what the map holds now;
        None when a VNI of m has no entry in the map (the box drifted: plan instead). All or
        nothing: a failed write is undone by writing back the entries read before."""
        stages: dict[int, tuple[Stages, bytes, str]] = {}
        for link in m.links:
            s = link_stages(link, self.plan_config)
            enc = self._encode(s)
            for ep in link.endpoints:
                stages[ep.vni] = (s, enc, link.id)
        before = self.classifier.raw_links(stages)
        if len(before) != len(stages):
            return None
        changes = {vni: enc for vni, (_, enc, _) in stages.items()
                   if self.classifier.stages_of(before[vni]) != enc}
        if not changes:
            return 0
        try:
            faults.hit("params.before-write", m.id)
            self.classifier.update_links(changes)
            faults.hit("params.after-write", m.id)
        except Exception as e:
            vni = next(iter(changes))
            (egress, ingress), _, link = stages[vni]
            op = SetLinkParams(vni, egress, ingress, changes[vni], before[vni], m.id,
                               f"{link} and {len(changes) - 1} more")
            try:
                self.classifier.update_links(
                    {v: self.classifier.stages_of(before[v]) for v in changes})
            except Exception as re:
                raise PlanError(op, e, 0, [(op, re)]) from e
            raise PlanError(op, e, 0) from e
        return len(changes)

    async def apply(self, m: schemas.Materialize, *, params_only: bool = False) -> ApplyResult:
        self._check_loss_only(m)
        if params_only:
            n = await self.worker.call(self._apply_params, m)
            if n is not None:
                self._applied(m)
                return ApplyResult(changed=n > 0, operations=n)
            log.warning("%s: parameters of VNIs the map does not hold: planning in full", m.id)
        ops = await self.worker.call(self._apply_plan, m)
        self._applied(m)
        return ApplyResult(changed=bool(ops), operations=len(ops))

    async def plan(self, m: schemas.Materialize) -> list[str]:
        self._check_loss_only(m)
        ops = await self.worker.call(self._plan, m)
        return [op.describe() for op in ops]

    async def reconcile(self, desired: Sequence[schemas.Materialize]) -> ReconcileReport:
        report = ReconcileReport()
        devices = await self.worker.call(self.worker.nl.list_moa_devices)
        wanted = {m.id for m in desired}
        for mid in sorted({d.materialization for d in devices} - wanted):
            await self._converge(schemas.Materialize(id=mid, links=[]), report)
        for m in desired:
            await self._converge(m, report)
        keep = {ep.vni for m in desired for link in m.links for ep in link.endpoints}
        report.purged = await self.worker.call(self._purge_orphans, keep)
        return report

    async def _converge(self, m: schemas.Materialize, report: ReconcileReport) -> None:
        try:
            self._check_loss_only(m)
            ops = await self.worker.call(self._apply_plan, m)
        except (PlanError, PlanConflict, schemas.InvalidMessage) as e:
            report.failed[m.id] = str(e)
            log.error("could not converge %s: %s", m.id, e)
            return
        self._applied(m)
        report.operations += [op.describe() for op in ops]

    # -- reading counters ---------------------------------------------------------------------------

    async def counters(self, vnis: Iterable[int]) -> dict[int, dict[str, StageCounters]]:
        out = {}
        for vni in vnis:
            if self.classifier.slot(vni) is not None:
                out[vni] = self.classifier.link_counters(vni)
        return out

    def box_counters(self) -> dict[str, int]:
        return self.classifier.global_counters()

    def fq_memory_bytes(self) -> int:
        return sum(self._fq_bytes.values())

    def _applied(self, m: schemas.Materialize) -> None:
        """What the kernel now holds of m.id is m: its worst-case fq memory (module doc of
        fq_memory_bytes), figured once per change rather than on every status."""
        if self.loss_only or not m.links:
            self._fq_bytes.pop(m.id, None)
            return
        self._fq_bytes[m.id] = sum(
            fq_memory_bytes(link_stages(link, self.plan_config)) * len(link.endpoints)
            for link in m.links)

    def pair_counters(self) -> dict[str, int]:
        return self.pair.counters()

    # -- the generation floor -----------------------------------------------------------------------

    def generation_floor(self) -> int:
        return self.classifier.box_generation()

    def record_generation(self, generation: int) -> None:
        if generation > self.classifier.box_generation():
            self.classifier.set_box_generation(generation)

    # -- drop telemetry -----------------------------------------------------------------------------

    def drop_events(self, callback: DropCallback, owner: OwnerLookup) -> None:
        """Call `callback(schemas.DropEvent)` in the running event loop for every drop event,
        with the link and materialization `owner(vni)` names (datapath.drops.DropEventReader)."""
        self._drops.owner = owner
        self._drops.subscribe(callback)

    def drop_event_losses(self) -> tuple[int, int]:
        return self._drops.losses()

    # -- bulk reads for the metrics endpoint (any thread) -------------------------------------

    def counter_table(self) -> CounterTable:
        return self.classifier.counter_table()

    def map_usage(self) -> list[MapUsage]:
        """moa_links from the classifier's slot table (its mirror, kept under its lock: one
        entry per VNI held); moa_pair_peers counted in the kernel (batch lookups)."""
        links = self.classifier.links_map
        peers = self.pair.peers
        _, _, held = peers.lookup_batch()
        return [MapUsage(links.name, self.classifier.link_count(), links.max_entries),
                MapUsage(peers.name, held, peers.max_entries)]
