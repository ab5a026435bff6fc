"""Operations on the box: small, idempotent, each with its inverse; and what they act on (Env).

An operation's `apply(env)` brings one thing to a state (doing nothing when it is already there)
and `revert(env)` undoes exactly that (also idempotent). Both run on the netlink worker thread
(`env.nl`), which sits in the box's network namespace: that is also where the pair's DEVMAP
must be written. The operations themselves, by what they act on: datapath/plan/uplink.py,
params.py, devices.py, pair.py; running a list of them: datapath/plan/runner.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from datapath.netlink.devices import Netlink
from datapath.pair import PairMode, PairProgram


class LinkTable(Protocol):
    """Where link parameters live: the classifier's moa_links map (datapath.classifier), and
    the VXLAN ports it takes (moa_vxlan_ports)."""

    def set_link_stages(self, vni: int, stages: bytes) -> Any: ...
    def update_links(self, links: Any) -> Any: ...  # {vni: stages}, in batch writes

    def restore_link(self, vni: int, raw_link: bytes) -> Any: ...

    def delete_link(self, vni: int) -> Any: ...

    def set_vxlan_ports(self, ports: frozenset[int]) -> Any: ...

    def saved_qdiscs(self, device: str) -> bytes | None: ...

    def save_qdiscs(self, device: str, tree: bytes) -> Any: ...

    def forget_qdiscs(self, device: str) -> Any: ...


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
    flows: Any = None  # datapath.flow.FlowTable in flow mode (datapath/plan/flows.py), else None


class Operation:
    """Base: subclasses are frozen dataclasses with apply/revert and a one-line description.

    Bulk application: `run_plan` hands consecutive operations of one class that has `bulk`
    set to `apply_bulk(ops, env)`, which applies what it can in a few round trips (pipelined
    rtnetlink, datapath/netlink/raw.py) and returns the operations it did not complete,
    untouched or in a state their own idempotent `apply` finishes; run_plan applies those one by
    one, so a failure is still reported against the operation it belongs to.
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
