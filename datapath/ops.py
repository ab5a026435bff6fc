"""Operations on the box: small, idempotent, each with its inverse.

An operation's `apply(env)` brings one thing to a state (doing nothing when it is already there)
and `revert(env)` undoes exactly that (also idempotent). Both run on the netlink worker thread
(`env.nl`), which sits in the box's network namespace: that is also where the pair's DEVMAP
must be written. `run_plan` applies a list in order and, when one fails, reverts what it applied
in reverse and raises `PlanError` naming the operation and the cause (pyroute2's
ndb/transaction.py does the same).
"""
from __future__ import annotations

import errno
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import schemas
from datapath import faults, rtnl
from datapath.emulation import queue_bytes
from datapath.netlink import (
    MOA_TC_HANDLE, MOA_TC_PRIO, TC_INGRESS, FqSizing, FqUnavailable, Netlink, NotOurs, VtepSpec,
    make_alias,
)
from datapath.pair import PAIR_TC_FILTER, PairMode, PairProgram

log = logging.getLogger("datapath.ops")

UPLINK_EGRESS_FILTER = "moa_egress"
UPLINK_INGRESS_FILTER = "moa_ingress"
PORT_HOLD_FILTER = "moa_port_hold"


class LinkTable(Protocol):
    """Where link parameters live: the classifier's moa_links map (datapath.classifier)."""

    def set_link_stages(self, vni: int, stages: bytes) -> Any: ...

    def restore_link(self, vni: int, raw_link: bytes) -> Any: ...

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
    port_hold_program: ProgramFd | None = None


class Operation:
    """Base: subclasses are frozen dataclasses with apply/revert and a one-line description.

    Bulk application: `run_plan` hands consecutive operations of one class that has `bulk`
    set to `apply_bulk(ops, env)`, which applies what it can in a few round trips (pipelined
    rtnetlink, datapath/rtnl.py) and returns the operations it did not complete, untouched or
    in a state their own idempotent `apply` finishes; run_plan applies those one by one, so a
    failure is still reported against the operation it belongs to.
    """

    bulk = False

    @classmethod
    def apply_bulk(cls, ops: Sequence["Operation"], env: Env) -> list["Operation"]:
        return list(ops)

    def apply(self, env: Env) -> None:
        raise NotImplementedError

    def revert(self, env: Env) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return repr(self)

    def __str__(self) -> str:
        return self.describe()


class Inverse(Operation):
    """An operation that is another one run backwards: apply reverts it, revert applies it."""

    def forward(self) -> Operation:
        raise NotImplementedError

    def apply(self, env: Env) -> None:
        self.forward().revert(env)

    def revert(self, env: Env) -> None:
        self.forward().apply(env)


# -- the uplink ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnsureUplink(Operation):
    """sch_fq (on the uplink, or on each slave of a bond) + clsact + both classifiers.

    fq=None is the loss-only mode: no fq is installed (the operator allowed it explicitly).
    The classifier stays on the bond itself: tstamp survives the bond's transmit path and fq on
    each slave then sees it (docs/kernel-facts.md, Bonds).
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
class ReleaseUplink(Inverse):
    uplink: str
    fq: FqSizing | None

    def forward(self) -> Operation:
        return EnsureUplink(self.uplink, self.fq)

    def describe(self) -> str:
        return f"release uplink {self.uplink}"


# -- link parameters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SetLinkParams(Operation):
    """Write one VNI's stages into the classifier map; revert puts back what the kernel held
    before the plan (`previous`: the raw struct moa_link read from the map when the plan was
    made, None when there was no entry), never what a process remembers."""

    vni: int
    egress: schemas.Emulation | None
    ingress: schemas.Emulation | None
    stages: bytes  # the map's encoding of (egress, ingress): Classifier.encode_stages
    previous: bytes | None = None
    materialization: str = ""
    link: str = ""

    def apply(self, env: Env) -> None:
        if env.links is None:
            raise RuntimeError("no classifier loaded: cannot write link parameters")
        env.links.set_link_stages(self.vni, self.stages)

    def revert(self, env: Env) -> None:
        if env.links is None:
            return
        if self.previous is None:
            env.links.delete_link(self.vni)
        else:
            env.links.restore_link(self.vni, self.previous)

    def describe(self) -> str:
        return (f"set params VNI {self.vni} ({self.materialization}/{self.link}): "
                f"egress {_emu(self.egress)}; ingress {_emu(self.ingress)}")


@dataclass(frozen=True)
class DeleteLinkParams(Operation):
    """Remove one VNI's parameters; revert restores the entry the kernel held (`previous`,
    read when the plan was made), in its old slot when that is still free."""

    vni: int
    previous: bytes | None = None

    def apply(self, env: Env) -> None:
        if env.links is not None:
            env.links.delete_link(self.vni)

    def revert(self, env: Env) -> None:
        if env.links is not None and self.previous is not None:
            env.links.restore_link(self.vni, self.previous)

    def describe(self) -> str:
        return f"delete params VNI {self.vni}"


def _emu(e: schemas.Emulation | None) -> str:
    if e is None:
        return "none"
    parts = []
    if e.latency:
        parts.append(f"latency {e.latency}ns")
    if e.jitter:
        parts.append(f"jitter {e.jitter}ns")
    if e.loss:
        parts.append(f"loss {e.loss:g}")
    if e.burst:
        parts.append(f"burst {e.burst}")
    if e.capacity:
        parts.append(f"capacity {e.capacity}bit/s queue {queue_bytes(e)}B")
    return ", ".join(parts) or "pass"


# -- VTEPs and bridges ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateVtep(Operation):
    """The VXLAN device, marked as moa's, up (its parameters are already in the map)."""

    spec: VtepSpec
    materialization: str
    link: str

    bulk = True

    @classmethod
    def apply_bulk(cls, ops: Sequence[Operation], env: Env) -> list[Operation]:
        """Create and mark, then bring up, all of them in two pipelined rounds. Each device's
        RTM_NEWLINK and its marking RTM_SETLINK travel in the same send (the kernel runs a send's
        messages back to back), so a crash never leaves a window of created devices without
        moa's alias, which nobody could claim. The marking is by name, so a name already taken
        (moa's from an earlier run, or someone else's) must not get one: such names, seen in a
        dump just before, go to the checked single path; a device appearing under one of our
        names in the microseconds between the dump and the send would be marked (and
        reported as a failed creation)."""
        nl = env.nl
        ops_in: list[CreateVtep] = list(ops)  # type: ignore[arg-type]
        taken = {rtnl.link_name(p) for p in nl.rtnl.dump_links()}
        todo = [op for op in ops_in if op.spec.name not in taken]
        underlay = {n: nl.require_ifindex(n) for n in {op.spec.underlay for op in todo}}
        requests = []
        for op in todo:
            s = op.spec
            requests.append(rtnl.new_vxlan(s.name, s.vni, s.local, s.remote, underlay[s.underlay],
                                           s.port, s.mtu))
            requests.append(rtnl.mark(s.name, make_alias(op.materialization, op.link)))
        replies = nl.rtnl.run(requests)  # windows of an even size: a pair is never split
        left: set[int] = set()
        marked: list[CreateVtep] = []
        unmarked: list[CreateVtep] = []
        for k, op in enumerate(todo):
            created, mark = replies[2 * k], replies[2 * k + 1]
            if created.error:
                left.add(id(op))
            elif mark.error:
                left.add(id(op))
                unmarked.append(op)
            else:
                marked.append(op)
        if unmarked:  # created here, not recognisable as moa's: removed, the single path retries
            nl.rtnl.run([rtnl.delete_name(op.spec.name) for op in unmarked])
        for op, r in zip(marked, nl.rtnl.run([rtnl.set_up(op.spec.name) for op in marked])):
            if r.error:
                left.add(id(op))
        return [op for op in ops_in if id(op) in left or op.spec.name in taken]

    def apply(self, env: Env) -> None:
        env.nl.create_vtep(self.spec, make_alias(self.materialization, self.link), up=True)

    def revert(self, env: Env) -> None:
        try:
            env.nl.delete_vtep(self.spec.name, make_alias(self.materialization, self.link))
        except NotOurs:
            pass  # someone else's device under this name: apply never touched it, nor do we

    def describe(self) -> str:
        s = self.spec
        return (f"create VTEP {s.name} VNI {s.vni} {s.local} -> {s.remote}:{s.port} "
                f"dev {s.underlay} mtu {s.mtu} ({self.materialization}/{self.link})")


@dataclass(frozen=True)
class DeleteVtep(Operation):
    """Delete the device (which also leaves its bridge and drops its XDP/tc programs, and
    its qdisc).

    What revert rebuilds was read from the kernel when the plan was made: `master`, the bridge
    it was in, and `hold`, the sch_fq sizing of its port hold when it had one (a LAN member's
    VTEP on a box with sch_fq: HoldAtPort)."""

    spec: VtepSpec
    materialization: str
    link: str
    master: str | None = None
    index: int | None = None  # from the plan's dump (its alias checked there): the bulk path
    hold: FqSizing | None = None

    bulk = True

    @classmethod
    def apply_bulk(cls, ops: Sequence[Operation], env: Env) -> list[Operation]:
        return delete_devices_bulk(ops, env)

    def apply(self, env: Env) -> None:
        env.nl.delete_vtep(self.spec.name, make_alias(self.materialization, self.link))

    def revert(self, env: Env) -> None:
        CreateVtep(self.spec, self.materialization, self.link).apply(env)
        if self.hold is not None:
            HoldAtPort(self.spec.name, self.hold).apply(env)
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
        try:
            env.nl.delete_bridge(self.name, make_alias(self.materialization, self.link))
        except NotOurs:
            pass  # someone else's device under this name: apply never touched it, nor do we

    def describe(self) -> str:
        return f"create bridge {self.name} ({self.materialization}/{self.link})"


@dataclass(frozen=True)
class DeleteBridge(Operation):
    name: str
    materialization: str
    link: str
    mtu: int | None = None
    index: int | None = None  # from the plan's dump: the bulk path

    bulk = True

    @classmethod
    def apply_bulk(cls, ops: Sequence[Operation], env: Env) -> list[Operation]:
        return delete_devices_bulk(ops, env)

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

    bulk = True

    @classmethod
    def apply_bulk(cls, ops: Sequence[Operation], env: Env) -> list[Operation]:
        todo: list[AttachToBridge] = list(ops)  # type: ignore[arg-type]
        masters = {b: env.nl.ifindex(b) for b in {op.bridge for op in todo}}
        ready = [op for op in todo if masters[op.bridge] is not None]
        replies = env.nl.rtnl.run([rtnl.set_master(op.vtep, masters[op.bridge])  # type: ignore[arg-type]
                                   for op in ready])
        done = {id(op) for op, r in zip(ready, replies) if not r.error}
        return [op for op in todo if id(op) not in done]

    def apply(self, env: Env) -> None:
        env.nl.set_master(self.vtep, self.bridge)

    def revert(self, env: Env) -> None:
        if env.nl.ifindex(self.vtep) is not None:
            env.nl.set_master(self.vtep, None)

    def describe(self) -> str:
        return f"attach {self.vtep} to bridge {self.bridge}"


@dataclass(frozen=True)
class HoldAtPort(Operation):
    """A LAN member's VTEP holds frames until they leave the sending member's port.

    sch_fq as its root qdisc and moa_port_hold on its tc egress (datapath/bpf/port.h): the
    uplink's ingress stage hands the frame's wait at the sender's port over in skb->mark, this
    VTEP makes it the frame's departure, so the receiver's stage on the uplink judges the frame
    when it would reach the switch. Deleting the VTEP takes both with it.
    """

    vtep: str
    fq: FqSizing

    bulk = True

    @classmethod
    def apply_bulk(cls, ops: Sequence[Operation], env: Env) -> list[Operation]:
        todo: list[HoldAtPort] = list(ops)  # type: ignore[arg-type]
        env.nl.ensure_fq_many([(op.vtep, op.fq) for op in todo])  # one tc process for all
        for op in todo:
            op.attach(env)
        return []

    def attach(self, env: Env) -> None:
        if env.port_hold_program is None:
            raise RuntimeError("the classifier's moa_port_hold program is not loaded")
        env.nl.attach_bpf(self.vtep, "egress", env.port_hold_program.fd, PORT_HOLD_FILTER)

    def apply(self, env: Env) -> None:
        env.nl.ensure_fq(self.vtep, self.fq)
        self.attach(env)

    def revert(self, env: Env) -> None:
        if env.nl.ifindex(self.vtep) is None:
            return
        env.nl.detach_bpf(self.vtep, "egress")
        env.nl.remove_clsact(self.vtep)
        env.nl.remove_fq(self.vtep)

    def describe(self) -> str:
        return (f"hold frames on {self.vtep} until they leave the sender's port: sch_fq "
                f"limit={self.fq.limit} flow_limit={self.fq.flow_limit} + {PORT_HOLD_FILTER}")


@dataclass(frozen=True)
class DetachFromBridge(Inverse):
    vtep: str
    bridge: str

    def forward(self) -> Operation:
        return AttachToBridge(self.vtep, self.bridge)

    def describe(self) -> str:
        return f"detach {self.vtep} from bridge {self.bridge}"


# -- the point-to-point pair ------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatePair(Operation):
    """Join two VTEPs as a wire: programs attached first, map entries last, so that the entries
    existing means the pair is complete (what the planner checks)."""

    a: str
    b: str

    bulk = True

    @classmethod
    def apply_bulk(cls, ops: Sequence[Operation], env: Env) -> list[Operation]:
        """tc mode: look both VTEPs up, add clsact and the pair filter, all pipelined, then the
        map entries. A filter already at moa's slot (EEXIST) is left to the checked path."""
        todo: list[CreatePair] = list(ops)  # type: ignore[arg-type]
        if env.pair is None or env.pair_mode is not PairMode.TC:
            return todo
        nl = env.nl
        names = [n for op in todo for n in (op.a, op.b)]
        found: dict[str, tuple[int, int | None]] = {}
        for n, r in zip(names, nl.rtnl.run([rtnl.get_link(n) for n in names])):
            if not r.error and r.payload is not None:
                found[n] = rtnl.link_index_mtu(r.payload)
        ready = [op for op in todo if op.a in found and op.b in found
                 and found[op.a][1] is not None and found[op.b][1] is not None]
        devs = [n for op in ready for n in (op.a, op.b)]
        bad: set[str] = set()
        for n, r in zip(devs, nl.rtnl.run([rtnl.add_clsact(found[n][0]) for n in devs])):
            if r.error and r.error != errno.EEXIST:
                bad.add(n)
        devs = [n for n in devs if n not in bad]
        replies = nl.rtnl.run([rtnl.add_bpf_filter(found[n][0], TC_INGRESS, MOA_TC_PRIO,
                                                   MOA_TC_HANDLE, env.pair.tc.fd, PAIR_TC_FILTER)
                               for n in devs])
        bad |= {n for n, r in zip(devs, replies) if r.error}
        done = set()
        for op in ready:
            if op.a in bad or op.b in bad:
                continue
            (ia, ma), (ib, mb) = found[op.a], found[op.b]
            env.pair.connect(ia, ib, ma, mb)  # type: ignore[arg-type]
            done.add(id(op))
        return [op for op in todo if id(op) not in done]

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
class DeletePair(Inverse):
    """Unjoin two VTEPs. `devices_go`: the same plan deletes both devices, which takes their
    programs with them, so only the map entries (`indexes`, from the plan's dump) are removed:
    no per-device lookups and filter dumps for a teardown."""

    a: str
    b: str
    stale: tuple[int, ...] = ()  # map keys of ifindexes whose devices are gone
    devices_go: bool = False
    indexes: tuple[int, ...] = ()

    def forward(self) -> Operation:
        return CreatePair(self.a, self.b)

    def apply(self, env: Env) -> None:
        if self.stale and env.pair is not None:
            env.pair.disconnect(*self.stale)
        if self.devices_go and self.indexes and env.pair is not None:
            env.pair.disconnect(*self.indexes)
            return
        super().apply(env)

    def describe(self) -> str:
        return f"delete pair {self.a} <-> {self.b}"


# -- deleting many devices at once -------------------------------------------------------------------

# Device groups moa uses for a moment to delete many devices with one RTM_DELLINK (a range
# nothing else is expected to use; every member is checked before the delete anyway).
MOA_GROUP_BASE = 0x6D6F0000


def delete_devices_bulk(ops: Sequence[Operation], env: Env) -> list[Operation]:
    """Delete the devices of `ops` (DeleteVtep / DeleteBridge with the index of the plan's dump)
    in one unregister: put them in a fresh device group, check that the group holds exactly
    them, delete the group. Deleting one device waits for an RCU grace period (~20 ms here);
    a group waits once. Anything unexpected leaves the operations to the one-by-one path."""
    nl = env.nl
    todo = [op for op in ops if getattr(op, "index", None) is not None]
    if len(todo) < 2:
        return list(ops)
    indexes = {op.index: op for op in todo}  # type: ignore[attr-defined]
    groups = rtnl.link_groups(nl.rtnl.dump_links())
    used = set(groups.values())
    group = next(g for g in (MOA_GROUP_BASE | secrets.randbelow(0x10000) for _ in range(64))
                 if g not in used)
    present = [i for i in indexes if i in groups]
    replies = nl.rtnl.run([rtnl.set_group(i, group) for i in present])
    members = {i for i, r in zip(present, replies) if not r.error}
    in_group = {i for i, g in rtnl.link_groups(nl.rtnl.dump_links()).items() if g == group}
    if in_group != members or not members:
        nl.rtnl.run([rtnl.set_group(i, 0) for i in members & in_group])
        return list(ops)
    if nl.rtnl.run([rtnl.delete_group(group)])[0].error:
        nl.rtnl.run([rtnl.set_group(i, 0) for i in members])
        return list(ops)
    return [op for op in ops if getattr(op, "index", None) not in members]


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


@dataclass
class PlanResult:
    applied: int = 0
    operations: list[Operation] = field(default_factory=list)


def run_plan(ops: Sequence[Operation], env: Env, label: str = "") -> PlanResult:
    """Apply `ops` in order; on a failure revert the applied ones in reverse, raise PlanError.

    `label` names the plan (its materialization) for the failpoints `plan.before/<label>/<i>`,
    `plan.after/<label>/<i>` and `plan.revert/<label>/<i>` (datapath/faults.py), which tests
    arm to fail operation i, or its undoing.
    """
    done: list[Operation] = []
    index = {id(op): i for i, op in enumerate(ops)}

    def fail(i: int, op: Operation, e: Exception) -> PlanError:
        errors: list[tuple[Operation, BaseException]] = []
        # The failed operation may have half-applied: its revert is idempotent, run it too.
        undo_list = [*([] if any(op is d for d in done) else [op]), *reversed(done)]
        for undo in undo_list:
            try:
                faults.hit("plan.revert", label, index[id(undo)])
                undo.revert(env)
            except Exception as re:  # keep going: revert as much as possible
                log.error("rollback of %s failed: %s", undo.describe(), re)
                errors.append((undo, re))
        return PlanError(op, e, i, errors)

    i = 0
    while i < len(ops):
        # The run of operations of one bulk class starting here (see Operation).
        j = i + 1
        if type(ops[i]).bulk:
            while j < len(ops) and type(ops[j]) is type(ops[i]):
                j += 1
        group = list(range(i, j))
        stopped: tuple[int, Exception] | None = None
        for k in group:
            try:
                faults.hit("plan.before", label, k)
            except Exception as e:
                stopped = (k, e)
                group = list(range(i, k))
                break
        if len(group) > 1:
            try:
                left = {id(op) for op in type(ops[i]).apply_bulk([ops[k] for k in group], env)}
            except Exception as e:  # the bulk path itself broke: everything one by one
                log.warning("bulk %s failed (%s): one by one", type(ops[i]).__name__, e)
                left = {id(ops[k]) for k in group}
        else:
            left = {id(ops[k]) for k in group}
        applied = [ops[k] for k in group if id(ops[k]) not in left]
        for k in group:
            if id(ops[k]) in left:
                try:
                    ops[k].apply(env)
                except Exception as e:
                    done.extend(applied)
                    raise fail(k, ops[k], e) from e
                applied.append(ops[k])
        done.extend(applied)
        for k in group:
            try:
                faults.hit("plan.after", label, k)
            except Exception as e:
                raise fail(k, ops[k], e) from e
        if stopped is not None:
            k, e = stopped
            raise fail(k, ops[k], e) from e
        i = j
    return PlanResult(applied=len(done), operations=list(done))


__all__ = [
    "AttachToBridge", "CreateBridge", "CreatePair", "CreateVtep", "DeleteBridge",
    "DeleteLinkParams", "DeletePair", "DeleteVtep", "DetachFromBridge", "EnsureUplink", "Env",
    "FqUnavailable", "Inverse", "LinkTable", "Operation", "PlanError", "PlanResult",
    "ReleaseUplink", "SetLinkParams", "run_plan",
]
