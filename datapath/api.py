"""Datapath: the one interface the bus calls. Hides pyroute2 and ctypes.

The datapath holds no desired state. It is handed the desired state of one materialization
(`apply`) or of the whole box (`reconcile`), reads what the kernel holds, and converges the
kernel to it; whatever it needs to undo a failed plan it read from the kernel just before the
plan ran. Who owns the desired state, and how a restart converges: docs/architecture.md,
"Desired state".

`KernelDatapath` is the real one of the contract in datapath.contract (`Datapath`, re-exported
here): a netlink worker thread in the box's network namespace, the classifier (pinned maps,
attached to the uplink) and the pair program (pinned maps, attached to VTEPs). Pinned maps and
attached programs outlive the service: `close()` leaves them, so traffic stays shaped while the
service restarts. `teardown()` removes everything moa made (tests, uninstall).

It is one module past 450 lines because it is one class, the contract's one implementation:
each method is a short delegation to the planner, flow_mode, next_hops, limits or the
classifier, run on the netlink worker; splitting it would split that class.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

import schemas
from datapath.classifier import Classifier, ClassifierConfig, CounterTable, StageCounters
from datapath.counter_table import CounterRows
from datapath.contract import (ApplyResult, Datapath, DropCallback, LinkChange, MapUsage,
                               ReconcileReport)
from datapath.drops import DropEventReader, OwnerLookup
from datapath import flow_mode, limits, remotes, scheduled
from datapath.flow import FlowTable
from datapath.netlink.model import VXLAN_OVERHEAD, FqSizing, FqUnavailable, owner_key
from datapath.held import HeldCheck
from datapath.next_hops import NextHops
from datapath.netlink.worker import NetlinkWorker
from datapath.pair import PairMode, PairProgram
from datapath.plan.operation import Env, Operation
from datapath.plan.params import write_params
from datapath.plan.planner import (Current, FlowContext, PlanConfig, PlanConflict, Stages,
                                   link_stages, plan, stage_groups)
from datapath.plan.runner import PlanError, run_plan
from datapath.plan.uplink import EnsureUplink, ReleaseUplink, ResizeFq
from datapath.step_writer import StepWriter

log = logging.getLogger("datapath.api")

__all__ = ["ApplyResult", "Datapath", "DatapathConfig", "KernelDatapath", "LinkChange", "PlanError",
           "PlanConflict", "FqUnavailable", "ReconcileReport", "StageCounters", "CounterTable",
           "CounterRows", "MapUsage"]


@dataclass(frozen=True)
class DatapathConfig:
    uplink: str
    local: str  # the box's VTEP source address on the uplink
    netns: str | None = None  # the box's network namespace (None: the current one)
    pin_root: str = "/sys/fs/bpf/moa"
    fq: FqSizing = field(default_factory=FqSizing)  # the LAN members' VTEPs (port holds)
    # Every departure stays within it (datapath/limits.py); raised at start to what the desired
    # state holds. The classifier's and every sch_fq's horizon.
    horizon_ns: int = limits.DEFAULT_HORIZON_NS
    fq_memory_max: int | None = None  # bytes; a change past it is refused (None: no bound)
    line_rate_bps: int | None = None  # None: the uplink's speed as the kernel reports it
    allow_loss_only: bool = False
    vtep_mtu: int | None = None  # None: uplink MTU - 50 (VXLAN over IPv4)
    pair_mode: PairMode = PairMode.TC
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    host: str = field(default_factory=socket.gethostname)
    # "flow": point-to-point links as moa_flow entries, no VTEPs (datapath/flow_mode.py)
    p2p_mode: str = "flow"


class KernelDatapath:
    """The Datapath of a real box (module doc)."""

    def __init__(self, config: DatapathConfig, worker: NetlinkWorker, classifier: Classifier,
                 pair: PairProgram, env: Env, loss_only: bool, uplink_fq: FqSizing,
                 line_rate_bps: int) -> None:
        self.config = config  # as started: horizon_ns is the box's (start may raise it)
        self.worker = worker
        self.classifier = classifier
        self.pair = pair
        self.loss_only = loss_only
        self._drops = DropEventReader(classifier)
        self.uplink_fq = uplink_fq  # the sizing the uplink's sch_fq has now (moa set it)
        self.env = env
        self.uplink_index = worker.run(worker.nl.require_ifindex, config.uplink)
        self.uplink_mtu = worker.run(worker.nl.mtu, config.uplink)
        self.flows: FlowTable | None = env.flows
        self.next_hops = NextHops()  # flow mode: the MAC each remote's entries carry
        if self.flows is not None:  # a restart: the entries outlive the service
            self.next_hops.seed(worker.run(self.flows.entries).values())
        self.plan_config = PlanConfig(uplink=config.uplink, local=config.local,
                                      vtep_mtu=config.vtep_mtu or self.uplink_mtu - VXLAN_OVERHEAD,
                                      port_hold=None if loss_only else config.fq,
                                      vxlan_port=config.classifier.vxlan_port,
                                      flow=self.flows is not None)
        frame = limits.frame_bytes(self.plan_config.vtep_mtu)
        self.budget = limits.Budget(config.horizon_ns, frame, line_rate_bps, config.fq_memory_max)
        self._held = HeldCheck(worker, classifier, self.plan_config, self._encode, self.flows)
        self._writer = StepWriter(os.path.join(config.pin_root, "moa_links"))  # schedules

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    async def start(cls, config: DatapathConfig,
                    desired: Sequence[schemas.Materialize] = ()) -> "KernelDatapath":
        """Load (or find pinned) BPF objects and ensure the uplink. What the kernel holds of
        links is left as it is until `reconcile` is given the desired state; `desired` (the
        same) sizes the box first: the horizon is raised to the longest hold it has and the
        uplink's sch_fq is sized for its links (datapath/limits.py)."""
        if config.p2p_mode not in flow_mode.P2P_MODES:
            raise ValueError(f"p2p_mode: {config.p2p_mode!r} is not one of {flow_mode.P2P_MODES}")
        config = dataclasses.replace(config, classifier=dataclasses.replace(
            config.classifier, flow_mode=config.p2p_mode == "flow"))
        worker = NetlinkWorker(config.netns)
        classifier = pair = None
        try:
            config, uplink_fq, line = await cls._sized(config, desired, worker)
            os.makedirs(config.pin_root, exist_ok=True)
            flow_mode.fit_pins(config.pin_root, config.classifier)
            classifier = Classifier.load(config.classifier, pin_root=config.pin_root)
            pair = PairProgram(config.pin_root, max_vteps=2 * config.classifier.max_links)
            env = Env(nl=worker.nl, links=classifier, pair=pair, pair_mode=config.pair_mode,
                      egress_program=classifier.egress_program,
                      ingress_program=classifier.ingress_program,
                      port_hold_program=classifier.port_hold_program,
                      flows=FlowTable(classifier) if config.classifier.flow_mode else None)
            loss_only = False
            try:
                await worker.call(EnsureUplink(config.uplink, uplink_fq).apply, env)
            except FqUnavailable:
                if not config.allow_loss_only:
                    raise
                log.warning("no sch_fq: loss-only mode (latency and capacity refused per link)")
                loss_only = True
                await worker.call(EnsureUplink(config.uplink, None).apply, env)
            return cls(config, worker, classifier, pair, env, loss_only, uplink_fq, line)
        except BaseException:
            if pair is not None:
                pair.close()
            if classifier is not None:
                classifier.close()
            worker.close()
            raise

    @staticmethod
    async def _sized(config: DatapathConfig, desired: Sequence[schemas.Materialize],
                     worker: NetlinkWorker) -> tuple[DatapathConfig, FqSizing, int]:
        """`config` with the box's horizon (at least the longest hold `desired` has), the
        uplink's sch_fq for `desired`'s links, and the line rate (datapath/limits.py)."""
        mtu = await worker.call(worker.nl.mtu, config.uplink)
        line = config.line_rate_bps or await worker.call(worker.nl.link_speed_bps, config.uplink)
        line = line or limits.DEFAULT_LINE_RATE_BPS
        pc = PlanConfig(uplink=config.uplink, local=config.local,
                        vtep_mtu=config.vtep_mtu or mtu - VXLAN_OVERHEAD, port_hold=config.fq)
        stages = [(st, n) for m in desired for st, n, _ in stage_groups(m, pc)]
        held = [st for m in desired for state in scheduled.contents(m)  # with every step's
                for st, _, _ in stage_groups(state, pc)]
        budget = limits.Budget(config.horizon_ns, limits.frame_bytes(pc.vtep_mtu), line)
        need = limits.required_horizon((e for s in held for e in s), budget.frame)
        horizon = min(max(config.horizon_ns, need), limits.MAX_HORIZON_NS)
        if horizon > config.horizon_ns:
            log.warning("horizon raised from %s to %s: the desired state holds a link that needs "
                        "it", schemas.format_duration(config.horizon_ns),
                        schemas.format_duration(horizon))
        uplink_fq = budget.box({"": budget.figures_of(stages)}).fq_sizing(mtu, horizon)
        config = dataclasses.replace(
            config, horizon_ns=horizon, fq=dataclasses.replace(config.fq, horizon_ns=horizon),
            classifier=dataclasses.replace(config.classifier, horizon_ns=horizon))
        return config, uplink_fq, line

    async def close(self) -> None:
        """Stop using the kernel objects; pins, devices and attached programs stay."""
        self._drops.close()  # detaches from the loop; before the map it reads goes
        self._writer.close()
        self._held.close()
        self.pair.close()
        self.classifier.close()
        self.worker.close()

    async def teardown(self) -> None:
        """Remove everything moa made: every materialization, the uplink set-up (the uplink's
        previous root qdisc comes back), the pins."""
        await self.reconcile([])
        fq = None if self.loss_only else self.uplink_fq
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
        key = owner_key(m.id)
        wanted |= {d.vni for d in devices.values()
                   if d.materialization == key and d.vni is not None}
        current = flow_mode.read_flows(self.flows, Current(devices=devices))
        wanted |= flow_mode.owned(current, m.id)
        links = self.classifier.raw_links(wanted)
        current.params = {vni: self.classifier.stages_of(raw) for vni, raw in links.items()}
        current.links, current.pairs = links, self.pair.entries()
        current.vxlan_ports = self.classifier.vxlan_ports()
        return current

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
        flow_ports, gone = flow_mode.purge_unwanted(self.flows, keep_vnis)
        purged += gone
        ports = self.classifier.vxlan_ports()
        unused = ports - {d.port for d in devices if d.kind == "vxlan"} - flow_ports
        if unused:
            self.classifier.set_vxlan_ports(ports - unused)
            purged += [f"VXLAN port {p}" for p in sorted(unused)]
        return purged

    # -- converging -------------------------------------------------------------------------------

    def _link_stages(self, link: schemas.Link) -> list[Stages]:
        return link_stages(link, self.plan_config)

    def _stages(self, m: schemas.Materialize) -> list[tuple[Stages, int, str]]:
        """Every direction's stages of m, grouped (planner.stage_groups)."""
        return stage_groups(m, self.plan_config)

    def _figures(self, m: schemas.Materialize) -> limits.Figures:
        """m's figures; with a schedule, the largest over its states (datapath/scheduled.py)."""
        return scheduled.envelope(m, self._figures_of)

    def _figures_of(self, m: schemas.Materialize) -> limits.Figures:
        return self.budget.figures_of((st, n) for st, n, _ in self._stages(m))

    def _admit(self, m: schemas.Materialize) -> limits.Figures:
        """m's figures, once m passed what refuses a setting this box cannot apply
        (`unsupported`, naming the field): shaping on a loss-only box, a hold beyond the
        horizon, sch_fq memory beyond --fq-memory-max (datapath/limits.py); with a schedule,
        every state it goes through, and the memory of their envelope."""
        if m.schedule is not msgspec.UNSET:
            figures = scheduled.envelope(m, self._figures_of, self._admit_one)
            refusal = limits.fq_memory_refusal(self.budget.box({m.id: figures}),
                                               self.budget.box(), self.budget.fq_memory_max)
            if refusal is not None:
                raise schemas.InvalidMessage("schedule", refusal.message, refusal.code)
            return figures
        return self._admit_one(m)

    def _admit_one(self, m: schemas.Materialize) -> limits.Figures:
        limits.refuse_shaping(m, self.loss_only)
        return self.budget.admit(m.id, self._stages(m))

    def _admit_change(self, m: schemas.Materialize, change: LinkChange) -> limits.Figures | None:
        """As _admit, judging only the links `change` names, and adjusting the figures m.id
        holds by their difference; None when that cannot be (a schedule: admit the whole)."""
        if m.schedule is not msgspec.UNSET:
            return None
        limits.refuse_shaping(m, self.loss_only, change.positions)
        before = stage_groups(schemas.Materialize(id=m.id, links=list(change.before)),
                              self.plan_config)
        return self.budget.admit_change(m.id, before,
                                        stage_groups(m, self.plan_config, change.positions))

    def schedule_writes(self, m: schemas.Materialize) -> scheduled.ScheduleWrites:
        """The map values each step of m's schedule writes, encoded now (m: the links in force
        now, with the schedule; admitted by `apply`)."""
        return scheduled.writes(m, self._link_stages, self._encode)

    def steps(self) -> StepWriter:
        """The step writer (datapath/step_writer.py): `add` a step's values at a time (the
        ScheduleWrites' {vni: stages}, turned into entries here by `step_entries`), `cancel`
        a group, `written` told of each write."""
        return self._writer

    def step_entries(self, values: dict[int, bytes]) -> tuple[bytes, bytes]:
        return self.classifier.link_entries(values)

    def _resize_ops(self, mid: str, figures: limits.Figures,
                    ) -> tuple[list[Operation], list[Operation], FqSizing]:
        """The uplink's sch_fq resized for the box with `figures` for `mid`: the operations
        before and after the plan's own (growing first, shrinking last) and the sizing then."""
        if self.loss_only:
            return [], [], self.uplink_fq
        after = self.budget.box({mid: figures}).fq_sizing(self.uplink_mtu, self.config.horizon_ns)
        first, last = limits.fq_resize(self.uplink_fq, after)
        ops_first: list[Operation] = (
            [ResizeFq(self.config.uplink, first, self.uplink_fq)] if first else [])
        ops_last: list[Operation] = (
            [ResizeFq(self.config.uplink, last, first or self.uplink_fq)] if last else [])
        return ops_first, ops_last, after

    def _plan(self, m: schemas.Materialize, figures: limits.Figures | None = None,
              ) -> tuple[list[Operation], FlowContext | None]:
        """The plan for m, between sch_fq growing and shrinking for it; its flow context."""
        if figures is None:
            figures = self._figures(m)
        first, last, _ = self._resize_ops(m.id, figures)
        flow = flow_mode.flow_context(self.worker.nl, self.flows, m, self.plan_config,
                                      self.config.uplink, self.uplink_index, self.next_hops)
        ops = plan(m, self._read_current(m), self.plan_config, self._encode, self.uplink_index,
                   flow)
        return first + ops + last, flow

    def _apply_plan(self, m: schemas.Materialize, figures: limits.Figures) -> list[Operation]:
        ops, flow = self._plan(m, figures)
        run_plan(ops, self.env, label=m.id)
        self.uplink_fq = self._resize_ops(m.id, figures)[2]
        if flow is not None:
            self.next_hops.learned(flow.hops)
        return ops

    def _apply_params_sized(self, m: schemas.Materialize, figures: limits.Figures) -> int | None:
        """write_params between the uplink's sch_fq growing and shrinking for the new values."""
        first, last, after = self._resize_ops(m.id, figures)
        run_plan(first, self.env, label=m.id)
        n = None
        try:
            n = write_params(self.classifier, m, self._link_stages, self._encode)
        finally:
            if n is None:  # failed, or the map lacks a VNI (planned in full instead)
                for op in reversed(first):
                    op.revert(self.env)
        if n is None:
            return None
        try:
            run_plan(last, self.env, label=m.id)
        except PlanError as e:  # the parameters are in; sch_fq only stays larger
            log.warning("%s: sch_fq not shrunk: %s", m.id, e)
            after = first[0].fq if first else self.uplink_fq  # type: ignore[attr-defined]
        self.uplink_fq = after
        return n + len(first) + len(last)

    async def apply(self, m: schemas.Materialize, *, params_only: bool = False,
                    change: LinkChange | None = None) -> ApplyResult:
        figures = self._admit_change(m, change) if params_only and change is not None else None
        if figures is not None:
            # Only the changed links' parameters are written (one link of 100,000 costs one
            # link's work: docs/architecture.md, "Updates").
            changed = schemas.Materialize(id=m.id, links=[m.links[i] for i in change.positions])
            n = await self.worker.call(self._apply_params_sized, changed, figures)
            if n is not None:
                self._applied(m, figures)
                return ApplyResult(changed=n > 0, operations=n)
        figures = self._admit(m)
        if params_only:
            n = await self.worker.call(self._apply_params_sized, m, figures)
            if n is not None:
                self._applied(m, figures)
                return ApplyResult(changed=n > 0, operations=n)
            log.warning("%s: parameters of VNIs the map does not hold: planning in full", m.id)
        await self.worker.call(self._refuse_unrouted, m)
        ops = await self.worker.call(self._apply_plan, m, figures)
        self._applied(m, figures)
        return ApplyResult(changed=bool(ops), operations=len(ops))

    def _refuse_unrouted(self, m: schemas.Materialize) -> None:
        remotes.refuse_unrouted(self.env.nl, m, self.uplink_index, self.config.uplink)

    async def plan(self, m: schemas.Materialize) -> list[str]:
        figures = self._admit(m)
        await self.worker.call(self._refuse_unrouted, m)
        ops, _ = await self.worker.call(self._plan, m, figures)
        return [op.describe() for op in ops]

    async def follow_next_hops(self) -> list[str]:
        if self.flows is None or not (self.next_hops.macs or self.next_hops.pending):
            return []
        return await self.worker.call(self.next_hops.follow, self.worker.nl.ipr, self.flows,
                                      self.uplink_index)

    async def holds(self, m: schemas.Materialize) -> bool:
        return await self._held.holds(m)

    async def reconcile(self, desired: Sequence[schemas.Materialize]) -> ReconcileReport:
        report = ReconcileReport()
        # The box as it will be: sch_fq is sized for all of it, not grown one by one.
        self.budget.figures = {m.id: self._figures(m) for m in desired if m.links}
        memory, maximum = self.budget.box().memory, self.config.fq_memory_max
        if maximum is not None and memory > maximum:
            log.warning("the desired state's worst-case sch_fq memory %s is above "
                        "--fq-memory-max %s: held, but no change that adds to it is taken",
                        schemas.format_size(memory), schemas.format_size(maximum))
        report.purged = await self.worker.call(flow_mode.purge_foreign, self.flows, desired)
        devices = await self.worker.call(self.worker.nl.list_moa_devices)
        wanted = {owner_key(m.id) for m in desired}  # devices carry keys (make_alias)
        for mid in sorted({d.materialization for d in devices} - wanted):
            await self._converge(schemas.Materialize(id=mid, links=[]), report)
        for m in desired:
            await self._converge(m, report)
        keep = {ep.vni for m in desired for link in m.links for ep in link.endpoints}
        report.purged += await self.worker.call(self._purge_orphans, keep)
        return report

    async def _converge(self, m: schemas.Materialize, report: ReconcileReport) -> None:
        figures = self.budget.figures.get(m.id, limits.Figures())
        try:
            limits.refuse_shaping(m, self.loss_only)
            ops = await self.worker.call(self._apply_plan, m, figures)
        except (PlanError, PlanConflict, schemas.InvalidMessage) as e:
            report.failed[m.id] = str(e)
            log.error("could not converge %s: %s", m.id, e)
            return
        self._applied(m, figures)
        report.operations += [op.describe() for op in ops]

    # -- reading counters -------------------------------------------------------------------------

    async def counters(self, vnis: Iterable[int]) -> dict[int, dict[str, StageCounters]]:
        return self.classifier.counters_of(vnis)

    async def counter_rows(self, vnis: Iterable[int]) -> CounterRows:
        return self.classifier.counter_rows(vnis)

    def box_counters(self) -> dict[str, int]:
        flows = self.flows.counters() if self.flows is not None else {}
        return {**self.classifier.global_counters(), **{f"flow_{k}": v for k, v in flows.items()}}

    def fq_memory_bytes(self) -> int:
        return self.budget.box().memory

    def _applied(self, m: schemas.Materialize, figures: limits.Figures) -> None:
        """What the kernel now holds of m.id is m: what it asks of sch_fq (datapath/limits.py),
        figured once per change rather than on every status."""
        self.budget.held(m.id, figures if m.links else None)

    def pair_counters(self) -> dict[str, int]:
        return self.pair.counters()

    # -- the generation floor ---------------------------------------------------------------------

    def generation_floor(self) -> int:
        return self.classifier.box_generation()

    def record_generation(self, generation: int) -> None:
        if generation > self.classifier.box_generation():
            self.classifier.set_box_generation(generation)

    # -- drop telemetry ---------------------------------------------------------------------------

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
                MapUsage(peers.name, held, peers.max_entries), *flow_mode.usage(self.flows)]
