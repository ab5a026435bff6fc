"""Operations on moa's devices: VTEPs, LAN bridges, bridge ports and the port hold; bulk paths.

Bulk application (`Operation.apply_bulk`, run by datapath/plan/runner.py) goes through
pipelined rtnetlink (datapath/netlink/raw.py): thousands of VTEPs in a few round trips.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Sequence

from datapath.netlink import raw
from datapath.netlink.devices import ipv6_off
from datapath.netlink.model import DatapathNetlinkError, FqSizing, NotOurs, VtepSpec, make_alias
from datapath.plan.operation import Env, Inverse, Operation

PORT_HOLD_FILTER = "moa_port_hold"


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
        taken = {raw.link_name(p) for p in nl.rtnl.dump_links()}
        todo = [op for op in ops_in if op.spec.name not in taken]
        requests = []
        for op in todo:
            s = op.spec
            requests.append(raw.new_vxlan(s.name, s.vni, s.local, s.remote, s.port, s.mtu))
            requests.append(raw.mark(s.name, make_alias(op.materialization, op.link)))
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
            nl.rtnl.run([raw.delete_name(op.spec.name) for op in unmarked])
        for op in marked:  # before up: see ipv6_off
            try:
                ipv6_off(op.spec.name)
            except (OSError, DatapathNetlinkError):
                left.add(id(op))  # the single path retries it and names the cause
        marked = [op for op in marked if id(op) not in left]
        for op, r in zip(marked, nl.rtnl.run([raw.set_up(op.spec.name) for op in marked])):
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
                f"via {s.underlay} mtu {s.mtu} ({self.materialization}/{self.link})")


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
        replies = env.nl.rtnl.run([raw.set_master(op.vtep, masters[op.bridge])  # type: ignore[arg-type]
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


# -- deleting many devices at once ----------------------------------------------------------------

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
    groups = raw.link_groups(nl.rtnl.dump_links())
    used = set(groups.values())
    group = next(g for g in (MOA_GROUP_BASE | secrets.randbelow(0x10000) for _ in range(64))
                 if g not in used)
    present = [i for i in indexes if i in groups]
    replies = nl.rtnl.run([raw.set_group(i, group) for i in present])
    members = {i for i, r in zip(present, replies) if not r.error}
    in_group = {i for i, g in raw.link_groups(nl.rtnl.dump_links()).items() if g == group}
    if in_group != members or not members:
        nl.rtnl.run([raw.set_group(i, 0) for i in members & in_group])
        return list(ops)
    if nl.rtnl.run([raw.delete_group(group)])[0].error:
        nl.rtnl.run([raw.set_group(i, 0) for i in members])
        return list(ops)
    return [op for op in ops if getattr(op, "index", None) not in members]

