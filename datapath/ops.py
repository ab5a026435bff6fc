"""Operations on the box: small, idempotent, each with its inverse.

An operation's `apply(env)` brings one thing to a state (doing nothing when it is already there)
and `revert(env)` undoes exactly that (also idempotent). Both run on the netlink worker thread
(`env.nl`), which sits in the box's network namespace: that is also where the pair's DEVMAP
must be written. `run_plan` applies a list in order and, when one fails, reverts what it applied
in reverse and raises `PlanError` naming the operation and the cause (pyroute2's
ndb/transaction.py does the same).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from datapath.emulation import LinkEmulation
from datapath.netlink import FqSizing, FqUnavailable, Netlink, VtepSpec, make_alias
from datapath.pair import PAIR_TC_FILTER, PairMode, PairProgram

log = logging.getLogger("datapath.ops")

UPLINK_EGRESS_FILTER = "moa_egress"
UPLINK_INGRESS_FILTER = "moa_ingress"


class LinkTable(Protocol):
    """Where link parameters live: the classifier's moa_links map (datapath.classifier)."""

    def set_link(self, vni: int, egress: LinkEmulation | None,
                 ingress: LinkEmulation | None) -> Any: ...

    def delete_link(self, vni: int) -> Any: ...


class ProgramFd(Protocol):
    fd: int


@dataclass
class Env:
    """What operations act on."""

    nl: Netlink
    links: LinkTable | None = None
    pair: PairProgram | None = None
    pair_mode: PairMode = PairMode.TC
    egress_program: ProgramFd | None = None
    ingress_program: ProgramFd | None = None


class Operation:
    """Base: subclasses are frozen dataclasses with apply/revert and a one-line description."""

    def apply(self, env: Env) -> None:
        raise NotImplementedError

    def revert(self, env: Env) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return repr(self)

    def __str__(self) -> str:
        return self.describe()


# -- the uplink ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnsureUplink(Operation):
    """sch_fq (on the uplink, or on each slave of a bond) + clsact + both classifiers.

    fq=None is the loss-only mode: no fq is installed (the operator allowed it explicitly).
    The classifier stays on the bond itself: tstamp survives the bond's transmit path and fq on
    each slave then sees it (kernel-facts.md, Bonds).
    """

    uplink: str
    fq: FqSizing | None

    def fq_devices(self, nl: Netlink) -> list[str]:
        slaves = nl.bond_slaves(self.uplink)
        return slaves if slaves is not None else [self.uplink]

    def apply(self, env: Env) -> None:
        if self.fq is not None:
            for dev in self.fq_devices(env.nl):
                env.nl.ensure_fq(dev, self.fq)
        env.nl.ensure_clsact(self.uplink)
        if env.egress_program is not None:
            env.nl.attach_bpf(self.uplink, "egress", env.egress_program.fd, UPLINK_EGRESS_FILTER)
        if env.ingress_program is not None:
            env.nl.attach_bpf(self.uplink, "ingress", env.ingress_program.fd, UPLINK_INGRESS_FILTER)

    def revert(self, env: Env) -> None:
        env.nl.detach_bpf(self.uplink, "egress")
        env.nl.detach_bpf(self.uplink, "ingress")
        env.nl.remove_clsact(self.uplink)
        if self.fq is not None:
            for dev in self.fq_devices(env.nl):
                env.nl.remove_fq(dev)

    def describe(self) -> str:
        fq = "loss-only (no sch_fq)" if self.fq is None else (
            f"sch_fq limit={self.fq.limit} flow_limit={self.fq.flow_limit} "
            f"buckets={self.fq.buckets} horizon={self.fq.horizon_ns}ns")
        return f"ensure uplink {self.uplink}: clsact + classifiers, {fq}"


@dataclass(frozen=True)
class ReleaseUplink(Operation):
    uplink: str
    fq: FqSizing | None

    def apply(self, env: Env) -> None:
        EnsureUplink(self.uplink, self.fq).revert(env)

    def revert(self, env: Env) -> None:
        EnsureUplink(self.uplink, self.fq).apply(env)

    def describe(self) -> str:
        return f"release uplink {self.uplink}"


# -- link parameters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SetLinkParams(Operation):
    """Write one VNI's stages into the classifier map; revert restores what was there."""

    vni: int
    egress: LinkEmulation | None
    ingress: LinkEmulation | None
    previous: tuple[LinkEmulation | None, LinkEmulation | None] | None = None
    materialization: str = ""
    link: str = ""

    def apply(self, env: Env) -> None:
        if env.links is None:
            raise RuntimeError("no classifier loaded: cannot write link parameters")
        env.links.set_link(self.vni, self.egress, self.ingress)

    def revert(self, env: Env) -> None:
        if env.links is None:
            return
        if self.previous is None:
            env.links.delete_link(self.vni)
        else:
            env.links.set_link(self.vni, *self.previous)

    def describe(self) -> str:
        return (f"set params VNI {self.vni} ({self.materialization}/{self.link}): "
                f"egress {_emu(self.egress)}; ingress {_emu(self.ingress)}")


@dataclass(frozen=True)
class DeleteLinkParams(Operation):
    vni: int
    previous: tuple[LinkEmulation | None, LinkEmulation | None] | None = None

    def apply(self, env: Env) -> None:
        if env.links is not None:
            env.links.delete_link(self.vni)

    def revert(self, env: Env) -> None:
        if env.links is not None and self.previous is not None:
            env.links.set_link(self.vni, *self.previous)

    def describe(self) -> str:
        return f"delete params VNI {self.vni}"


def _emu(e: LinkEmulation | None) -> str:
    if e is None:
        return "none"
    parts = []
    if e.latency_ns:
        parts.append(f"latency {e.latency_ns}ns")
    if e.jitter_ns:
        parts.append(f"jitter {e.jitter_ns}ns")
    if e.loss:
        parts.append(f"loss {e.loss:g}")
    if e.gilbert_elliott:
        parts.append(f"burst {e.gilbert_elliott}")
    if e.capacity_bps:
        parts.append(f"capacity {e.capacity_bps}bit/s queue {e.effective_queue_bytes}B")
    return ", ".join(parts) or "pass"


# -- VTEPs and bridges ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateVtep(Operation):
    """The VXLAN device, marked as moa's, up (its parameters are already in the map)."""

    spec: VtepSpec
    materialization: str
    link: str

    def apply(self, env: Env) -> None:
        env.nl.create_vtep(self.spec, make_alias(self.materialization, self.link), up=True)

    def revert(self, env: Env) -> None:
        env.nl.delete_vtep(self.spec.name, make_alias(self.materialization, self.link))

    def describe(self) -> str:
        s = self.spec
        return (f"create VTEP {s.name} VNI {s.vni} {s.local} -> {s.remote}:{s.port} "
                f"dev {s.underlay} mtu {s.mtu} ({self.materialization}/{self.link})")


@dataclass(frozen=True)
class DeleteVtep(Operation):
    """Delete the device (which also leaves its bridge and drops its XDP/tc programs).

    `master` is the bridge it was in, so that revert puts it back."""

    spec: VtepSpec
    materialization: str
    link: str
    master: str | None = None

    def apply(self, env: Env) -> None:
        env.nl.delete_vtep(self.spec.name, make_alias(self.materialization, self.link))

    def revert(self, env: Env) -> None:
        CreateVtep(self.spec, self.materialization, self.link).apply(env)
        if self.master:
            env.nl.set_master(self.spec.name, self.master)

    def describe(self) -> str:
        return f"delete VTEP {self.spec.name} VNI {self.spec.vni}"


@dataclass(frozen=True)
class CreateBridge(Operation):
    name: str
    materialization: str
    link: str
    mtu: int | None = None

    def apply(self, env: Env) -> None:
        env.nl.create_bridge(self.name, make_alias(self.materialization, self.link), self.mtu)

    def revert(self, env: Env) -> None:
        env.nl.delete_bridge(self.name, make_alias(self.materialization, self.link))

    def describe(self) -> str:
        return f"create bridge {self.name} ({self.materialization}/{self.link})"


@dataclass(frozen=True)
class DeleteBridge(Operation):
    name: str
    materialization: str
    link: str
    mtu: int | None = None

    def apply(self, env: Env) -> None:
        env.nl.delete_bridge(self.name, make_alias(self.materialization, self.link))

    def revert(self, env: Env) -> None:
        env.nl.create_bridge(self.name, make_alias(self.materialization, self.link), self.mtu)

    def describe(self) -> str:
        return f"delete bridge {self.name}"


@dataclass(frozen=True)
class AttachToBridge(Operation):
    vtep: str
    bridge: str

    def apply(self, env: Env) -> None:
        env.nl.set_master(self.vtep, self.bridge)

    def revert(self, env: Env) -> None:
        if env.nl.ifindex(self.vtep) is not None:
            env.nl.set_master(self.vtep, None)

    def describe(self) -> str:
        return f"attach {self.vtep} to bridge {self.bridge}"


@dataclass(frozen=True)
class DetachFromBridge(Operation):
    vtep: str
    bridge: str

    def apply(self, env: Env) -> None:
        AttachToBridge(self.vtep, self.bridge).revert(env)

    def revert(self, env: Env) -> None:
        AttachToBridge(self.vtep, self.bridge).apply(env)

    def describe(self) -> str:
        return f"detach {self.vtep} from bridge {self.bridge}"


# -- the point-to-point pair ------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatePair(Operation):
    """Join two VTEPs as a wire: programs attached first, map entries last, so that the entries
    existing means the pair is complete (what the planner checks)."""

    a: str
    b: str

    def _pair(self, env: Env) -> PairProgram:
        if env.pair is None:
            raise RuntimeError("pair program not loaded")
        return env.pair

    def apply(self, env: Env) -> None:
        pair = self._pair(env)
        for dev in (self.a, self.b):
            if env.pair_mode.uses_tc:
                env.nl.attach_bpf(dev, "ingress", pair.tc.fd, PAIR_TC_FILTER)
            if env.pair_mode.uses_xdp:
                env.nl.attach_xdp(dev, pair.xdp.fd)
        ia, ib = env.nl.require_ifindex(self.a), env.nl.require_ifindex(self.b)
        pair.connect(ia, ib, env.nl.mtu(self.a), env.nl.mtu(self.b))

    def revert(self, env: Env) -> None:
        pair = self._pair(env)
        present = [i for i in (env.nl.ifindex(self.a), env.nl.ifindex(self.b)) if i is not None]
        pair.disconnect(*present)
        for dev in (self.a, self.b):
            if env.nl.ifindex(dev) is None:
                continue
            env.nl.detach_xdp(dev)
            env.nl.detach_bpf(dev, "ingress")

    def describe(self) -> str:
        return f"create pair {self.a} <-> {self.b}"


@dataclass(frozen=True)
class DeletePair(Operation):
    a: str
    b: str
    stale: tuple[int, ...] = ()  # map keys of ifindexes whose devices are gone

    def apply(self, env: Env) -> None:
        if self.stale and env.pair is not None:
            env.pair.disconnect(*self.stale)
        CreatePair(self.a, self.b).revert(env)

    def revert(self, env: Env) -> None:
        CreatePair(self.a, self.b).apply(env)

    def describe(self) -> str:
        return f"delete pair {self.a} <-> {self.b}"


# -- running a plan -------------------------------------------------------------------------------


class PlanError(Exception):
    """An operation of a plan failed; what the plan had applied was reverted (in reverse).

    `operation` is the failed operation, `cause` the exception, `rollback_errors` whatever
    failed while reverting (empty when the box is back where it was)."""

    def __init__(self, operation: Operation, cause: BaseException, index: int,
                 rollback_errors: Sequence[tuple[Operation, BaseException]] = ()) -> None:
        self.operation = operation
        self.cause = cause
        self.index = index
        self.rollback_errors = list(rollback_errors)
        msg = f"operation {index + 1} ({operation.describe()}) failed: {cause}"
        if self.rollback_errors:
            msg += "; rollback incomplete: " + "; ".join(
                f"{op.describe()}: {e}" for op, e in self.rollback_errors)
        super().__init__(msg)


OpHook = Callable[[int, Operation], None]


@dataclass
class PlanResult:
    applied: int = 0
    operations: list[Operation] = field(default_factory=list)


def run_plan(ops: Sequence[Operation], env: Env, before_apply: OpHook | None = None) -> PlanResult:
    """Apply `ops` in order; on a failure revert the applied ones in reverse, raise PlanError.

    `before_apply(index, op)` is called before each operation (tests inject failures with it).
    """
    done: list[Operation] = []
    for i, op in enumerate(ops):
        try:
            if before_apply is not None:
                before_apply(i, op)
            op.apply(env)
        except Exception as e:
            errors: list[tuple[Operation, BaseException]] = []
            # The failed operation may have half-applied: its revert is idempotent, run it too.
            for undo in [op, *reversed(done)]:
                try:
                    undo.revert(env)
                except Exception as re:  # keep going: revert as much as possible
                    log.error("rollback of %s failed: %s", undo.describe(), re)
                    errors.append((undo, re))
            raise PlanError(op, e, i, errors) from e
        done.append(op)
    return PlanResult(applied=len(done), operations=list(done))


__all__ = [
    "AttachToBridge", "CreateBridge", "CreatePair", "CreateVtep", "DeleteBridge",
    "DeleteLinkParams", "DeletePair", "DeleteVtep", "DetachFromBridge", "EnsureUplink", "Env",
    "FqUnavailable", "LinkTable", "Operation", "OpHook", "PlanError", "PlanResult",
    "ReleaseUplink", "SetLinkParams", "run_plan",
]
