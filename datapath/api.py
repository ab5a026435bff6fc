"""Datapath: the one interface the bus calls. Hides pyroute2 and ctypes.

`KernelDatapath` is the real one: a netlink worker thread in the box's network namespace, the
classifier (pinned maps, attached to the uplink) and the pair program (pinned maps, attached to
VTEPs). Pinned maps and attached programs outlive the service: `close()` leaves them, so traffic
stays shaped while the service restarts; `start()` reads back what the kernel holds (devices
marked as moa's through their ifalias, the pinned maps) and, given the desired state, converges.
`teardown()` removes everything moa made (tests, uninstall).
"""
from __future__ import annotations

import abc
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Iterable

import msgspec

import schemas
from datapath.classifier import Classifier, ClassifierConfig
from datapath.drops import DropEventReader
from datapath.emulation import LinkEmulation
from datapath.netlink import VXLAN_OVERHEAD, FqSizing, FqUnavailable, NetlinkWorker
from datapath.ops import (
    DeleteLinkParams, EnsureUplink, Env, Operation, OpHook, PlanError, ReleaseUplink,
    SetLinkParams, run_plan,
)
from datapath.pair import PairMode, PairProgram
from datapath.planner import (
    Current, PlanConfig, PlanConflict, Stages, link_stages, plan,
)

log = logging.getLogger("datapath.api")

__all__ = ["ApplyResult", "Datapath", "DatapathConfig", "KernelDatapath", "PlanError",
           "PlanConflict", "FqUnavailable", "fq_memory_bytes"]


@dataclass(frozen=True)
class ApplyResult:
    generation: int
    changed: bool
    operations: int


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


class Datapath(abc.ABC):
    """What the bus needs from the box (docs/architecture.md)."""

    @abc.abstractmethod
    async def materialize(self, m: schemas.Materialize) -> ApplyResult: ...

    @abc.abstractmethod
    async def dematerialize(self, id: str) -> ApplyResult: ...

    @abc.abstractmethod
    async def update(self, u: schemas.Update) -> ApplyResult: ...

    @abc.abstractmethod
    async def status(self, id: str | None = None) -> schemas.StatusReply: ...

    @abc.abstractmethod
    async def link_stats(self) -> list[schemas.LinkStats]: ...

    @abc.abstractmethod
    async def plan_for(self, m: schemas.Materialize) -> list[str]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


@dataclass
class _Record:
    """One materialization as this process knows it."""

    desired: schemas.Materialize | None  # None: recovered from the kernel, content unknown
    generation: int = 0
    links: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # id -> kind, vnis


def fq_memory_bytes(stages: Iterable[LinkEmulation | None]) -> int:
    """Worst case that fq holds for these stages: rate x (latency + queue time). An egress
    stage's frames wait in the uplink's fq, a LAN port stage's in its receivers' VTEP fq."""
    total = 0
    for e in stages:
        if e is None or not e.capacity_bps:
            continue
        total += e.capacity_bps * (e.latency_ns + e.jitter_ns + e.queue_ns) // 8_000_000_000
    return total


_SHAPING = ("latency", "jitter", "capacity", "queue")


class KernelDatapath(Datapath):
    def __init__(self, config: DatapathConfig, worker: NetlinkWorker, classifier: Classifier,
                 pair: PairProgram, env: Env, loss_only: bool, op_hook: OpHook | None) -> None:
        self.config = config
        self.worker = worker
        self.classifier = classifier
        self.pair = pair
        self.loss_only = loss_only
        self._op_hook = op_hook
        self._records: dict[str, _Record] = {}
        self._known: dict[int, Stages] = {}
        self._owners: dict[int, str] = {}
        self._where: dict[int, tuple[str, str]] | None = None  # vni -> (materialization, link)
        self._drops = DropEventReader(classifier, self._vni_owner)
        self.env = env  # built by start(), which needs it first for the uplink
        self.uplink_index = worker.run(worker.nl.require_ifindex, config.uplink)
        mtu = worker.run(worker.nl.mtu, config.uplink)
        self.plan_config = PlanConfig(uplink=config.uplink, local=config.local,
                                      vtep_mtu=config.vtep_mtu or mtu - VXLAN_OVERHEAD,
                                      port_hold=None if loss_only else config.fq)

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    async def start(cls, config: DatapathConfig,
                    desired: Iterable[schemas.Materialize] | None = None,
                    op_hook: OpHook | None = None) -> "KernelDatapath":
        """Load (or find pinned) BPF objects, ensure the uplink, read back what the kernel holds;
        with `desired`, converge to it (materializations not in it are removed).

        `op_hook(index, op)` runs before every operation of every plan (tests inject failures).
        """
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
            self = cls(config, worker, classifier, pair, env, loss_only, op_hook)
        except BaseException:
            if pair is not None:
                pair.close()
            if classifier is not None:
                classifier.close()
            worker.close()
            raise
        await self.reconcile(desired)
        return self

    async def close(self) -> None:
        """Stop using the kernel objects; pins, devices and attached programs stay."""
        self._drops.close()  # detaches from the loop; before the map it reads goes
        self.pair.close()
        self.classifier.close()
        self.worker.close()

    async def teardown(self) -> None:
        """Remove everything moa made: every materialization, the uplink set-up, the pins."""
        for mid in list(self._records):
            await self.dematerialize(mid)
        await self.worker.call(self._purge_orphans, set())
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

    def _read_current(self, vnis: Iterable[int] = ()) -> Current:
        """On the worker thread: devices, pair entries, and the raw params of `vnis` + moa's."""
        nl = self.worker.nl
        devices = {d.name: d for d in nl.list_moa_devices()}
        wanted = set(vnis) | {d.vni for d in devices.values() if d.vni is not None}
        wanted |= set(self._owners)
        params = {}
        for vni in wanted:
            raw = self.classifier.link(vni) if self.classifier.slot(vni) is not None else None
            if raw is not None:
                params[vni] = bytes(raw.stage[0]) + bytes(raw.stage[1])
        return Current(devices=devices, pairs=self.pair.entries(), params=params,
                       known=dict(self._known), owners=dict(self._owners))

    def _encode(self, stages: Stages) -> bytes:
        abi = self.classifier.abi
        return b"".join(bytes(e.to_params(abi) if e is not None else abi.StageParams())
                        for e in stages)

    def _recover(self) -> None:
        """Records for the materializations the kernel holds (content unknown until sent)."""
        devices = self.worker.nl.list_moa_devices()
        links: dict[str, dict[str, tuple[str, list[int]]]] = defaultdict(dict)
        bridges = {(d.materialization, d.link) for d in devices if d.kind == "bridge"}
        for d in devices:
            kind, vnis = links[d.materialization].get(d.link, ("p2p", []))
            if (d.materialization, d.link) in bridges:
                kind = "lan"
            if d.vni is not None:
                vnis = sorted(vnis + [d.vni])
                self._owners[d.vni] = d.materialization
            links[d.materialization][d.link] = (kind, vnis)
        for mid, ls in links.items():
            self._records.setdefault(mid, _Record(desired=None, links=ls))
        self._where = None

    def _purge_orphans(self, keep_vnis: set[int]) -> int:
        """Parameters and pair entries that no moa device backs (a crash between operations)."""
        nl = self.worker.nl
        devices = nl.list_moa_devices()
        vnis = {d.vni for d in devices if d.vni is not None} | keep_vnis
        indexes = {d.index for d in devices}
        n = 0
        for vni in self.classifier.vnis():
            if vni not in vnis:
                self.classifier.delete_link(vni)
                self._known.pop(vni, None)
                self._owners.pop(vni, None)
                n += 1
        stale = [i for i in self.pair.entries() if i not in indexes]
        if stale:
            self.pair.disconnect(*stale)
            n += len(stale)
        return n

    async def reconcile(self, desired: Iterable[schemas.Materialize] | None) -> None:
        await self.worker.call(self._recover)
        if desired is None:
            return
        desired = list(desired)
        want_ids = {m.id for m in desired}
        for mid in list(self._records):
            if mid not in want_ids:
                await self.dematerialize(mid)
        for m in desired:
            await self.materialize(m)
        keep = {ep.vni for m in desired for link in m.links for ep in link.endpoints}
        await self.worker.call(self._purge_orphans, keep)

    # -- planning and applying --------------------------------------------------------------------

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
        vnis = [ep.vni for link in m.links for ep in link.endpoints]
        current = self._read_current(vnis)
        return plan(m, current, self.plan_config, self._encode, self.uplink_index)

    def _apply(self, m: schemas.Materialize) -> int:
        ops = self._plan(m)
        run_plan(ops, self.env, self._op_hook)
        # Remember what the kernel holds now (for reverts and status): no parameters for the
        # VNIs the plan deleted, exactly m's for m's VNIs (written or found right).
        for op in ops:
            if isinstance(op, DeleteLinkParams):
                self._known.pop(op.vni, None)
                self._owners.pop(op.vni, None)
        for vni, stages in self._stages_of(m).items():
            self._known[vni] = stages
            self._owners[vni] = m.id
        return len(ops)

    def _record(self, m: schemas.Materialize, changed: bool) -> int:
        rec = self._records.setdefault(m.id, _Record(desired=m))
        rec.desired = m
        rec.links = {link.id: ("p2p" if len(link.endpoints) == 2 else "lan",
                               [ep.vni for ep in link.endpoints]) for link in m.links}
        if changed or rec.generation == 0:
            rec.generation += 1
        self._where = None
        return rec.generation

    async def materialize(self, m: schemas.Materialize) -> ApplyResult:
        self._check_loss_only(m)
        n = await self.worker.call(self._apply, m)
        return ApplyResult(generation=self._record(m, n > 0), changed=n > 0, operations=n)

    async def plan_for(self, m: schemas.Materialize) -> list[str]:
        """The operations `materialize(m)` would apply, described (`--dry-run`)."""
        self._check_loss_only(m)
        ops = await self.worker.call(self._plan, m)
        return [op.describe() for op in ops]

    async def dematerialize(self, id: str) -> ApplyResult:
        empty = schemas.Materialize(id=id, links=[])
        n = await self.worker.call(self._apply, empty)
        rec = self._records.pop(id, None)
        self._where = None
        for vni in [v for v, o in self._owners.items() if o == id]:
            self._owners.pop(vni, None)
            self._known.pop(vni, None)
        generation = (rec.generation + 1) if rec is not None else 0
        return ApplyResult(generation=generation, changed=n > 0, operations=n)

    async def update(self, u: schemas.Update) -> ApplyResult:
        """New emulation for links chosen by id or tag: parameters only, so it goes straight to
        the classifier map in one batch write (no netlink, no plan: an Update cannot change
        endpoints). Only VNIs whose parameters change are written; `operations` counts them."""
        rec = self._records.get(u.id)
        if rec is None or rec.desired is None:
            raise schemas.InvalidMessage("id", f"{u.id!r} is not materialized on this box "
                                               "(or not since this service started)",
                                         code="unknown")
        links = list(rec.desired.links)
        for i, lu in enumerate(u.links):
            hit = False
            # A tag update gives thousands of links the same change: apply (and validate) it
            # once per distinct starting emulation.
            applied: dict[bytes, schemas.Emulation] = {}
            for j, link in enumerate(links):
                if (lu.link is not None and link.id == lu.link) or (
                        lu.tag is not None and lu.tag in link.tags):
                    key = msgspec.json.encode(link.emulation)
                    emu = applied.get(key)
                    if emu is None:
                        emu = applied[key] = lu.emulation.apply(link.emulation,
                                                                f"links[{i}].emulation")
                    links[j] = msgspec.structs.replace(link, emulation=emu)
                    hit = True
            if not hit:
                what = f"link {lu.link!r}" if lu.link is not None else f"tag {lu.tag!r}"
                raise schemas.InvalidMessage(f"links[{i}]", f"{what} matches no link of {u.id!r}",
                                             code="unknown")
        m = schemas.Materialize(id=u.id, links=links)
        self._check_loss_only(m)
        n = await self.worker.call(self._apply_params, m)
        return ApplyResult(generation=self._record(m, n > 0), changed=n > 0, operations=n)

    def _stages_of(self, m: schemas.Materialize) -> dict[int, Stages]:
        """vni -> the stages `m` gives it (what planner.desired_state writes)."""
        out: dict[int, Stages] = {}
        seen: dict[tuple[bool, bytes], Stages] = {}
        for link in m.links:
            p2p = len(link.endpoints) == 2
            key = (p2p, msgspec.json.encode(link.emulation))
            stages = seen.get(key)
            if stages is None:
                stages = seen[key] = link_stages(link, self.plan_config)
            for ep in link.endpoints:
                out[ep.vni] = stages
        return out

    def _apply_params(self, m: schemas.Materialize) -> int:
        """The parameter writes of `m` whose VNIs hold other parameters now; all or nothing."""
        same: dict[tuple[int, int], bool] = {}  # stages tuples are shared by many links

        def unchanged(old: Stages | None, new: Stages) -> bool:
            k = (id(old), id(new))
            r = same.get(k)
            if r is None:
                r = same[k] = old == new
            return r

        changes = {vni: stages for vni, stages in self._stages_of(m).items()
                   if not unchanged(self._known.get(vni), stages)}
        if not changes:
            return 0
        previous = {vni: self._known.get(vni, (None, None)) for vni in changes}
        try:
            self.classifier.update_links(changes)
        except Exception as e:
            vni = next(iter(changes))
            op = SetLinkParams(vni, *changes[vni], previous=previous[vni],
                               materialization=m.id, link="(parameter update)")
            try:
                self.classifier.update_links(previous)
            except Exception as re:
                raise PlanError(op, e, 0, [(op, re)]) from e
            raise PlanError(op, e, 0) from e
        for vni, stages in changes.items():
            self._known[vni] = stages
            self._owners[vni] = m.id
        return len(changes)

    # -- status -----------------------------------------------------------------------------------

    def _stats(self, mid: str, link: str, vnis: list[int]) -> list[schemas.LinkStats]:
        out = []
        for vni in vnis:
            if self.classifier.slot(vni) is None:
                continue
            for stage, c in self.classifier.link_counters(vni).items():
                out.append(schemas.LinkStats(materialization=mid, link=link, vni=vni, stage=stage,
                                             packets=c.packets, bytes=c.bytes, drops=dict(c.drops)))
        return out

    async def status(self, id: str | None = None) -> schemas.StatusReply:
        mats = []
        for mid, rec in sorted(self._records.items()):
            if id is not None and mid != id:
                continue
            emus = {link.id: link.emulation for link in rec.desired.links} if rec.desired else {}
            links = [schemas.LinkStatus(id=lid, kind=kind, vnis=vnis,
                                        emulation=emus.get(lid, schemas.Emulation()),
                                        counters=self._stats(mid, lid, vnis))
                     for lid, (kind, vnis) in sorted(rec.links.items())]
            mats.append(schemas.MaterializationStatus(id=mid, generation=rec.generation,
                                                      links=links))
        fq = fq_memory_bytes(s for stages in self._known.values() for s in stages)
        return schemas.StatusReply(host=self.config.host, materializations=mats,
                                   fq_memory_bytes=0 if self.loss_only else fq,
                                   datapath=self.classifier.global_counters())

    async def link_stats(self) -> list[schemas.LinkStats]:
        out = []
        for mid, rec in sorted(self._records.items()):
            for lid, (_, vnis) in sorted(rec.links.items()):
                out.extend(self._stats(mid, lid, vnis))
        return out

    def pair_counters(self) -> dict[str, int]:
        return self.pair.counters()


    # -- drop telemetry ---------------------------------------------------------------------------

    def drop_events(self, callback: Callable[[schemas.DropEvent], None]) -> None:
        """Call `callback(schemas.DropEvent)` in the running event loop for every drop event,
        with the link and materialization that own the VNI (datapath.drops.DropEventReader)."""
        self._drops.subscribe(callback)

    def drop_event_losses(self) -> tuple[int, int]:
        """(suppressed, lost): drops not reported as events (DropEventReader.losses)."""
        return self._drops.losses()

    def _vni_owner(self, vni: int) -> tuple[str | None, str | None]:
        if self._where is None:
            self._where = {v: (mid, lid) for mid, rec in self._records.items()
                           for lid, (_, vnis) in rec.links.items() for v in vnis}
        return self._where.get(vni, (None, None))
