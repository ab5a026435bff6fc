"""Flow mode's operations: a point-to-point endpoint's moa_flow entry (datapath/flow.py) written
or removed, with its owner (moa_flow_owner: which materialization and link hold it, as a VTEP's
ifalias says in VTEP mode; docs/architecture.md, "Flow mode in the planner").

An owner is 32 bytes: the first 16 of the SHA-256 of the materialization's key (owner_key), the
first 16 of the link's. Reverts put back what the kernel held when the plan was made.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from datapath.flow import FlowEntry
from datapath.netlink.model import owner_key
from datapath.plan.operation import Env, Operation


def key_tag(ident: str) -> bytes:
    """16 bytes naming a materialization or link id (by its key)."""
    return hashlib.sha256(owner_key(ident).encode()).digest()[:16]


@functools.lru_cache(maxsize=64)
def _materialization_tag(materialization: str) -> bytes:
    return key_tag(materialization)


def owner_tag(materialization: str, link: str) -> bytes:
    """(the materialization's tag computed once for all its links)"""
    return _materialization_tag(materialization) + key_tag(link)


def _table(env: Env):  # type: ignore[no-untyped-def]
    if env.flows is None:
        raise RuntimeError("the classifier was loaded without flow mode: no flow table")
    return env.flows


@dataclass(frozen=True)
class SetFlow(Operation):
    """Write the flow entry of one endpoint (its VNI's frames rewritten toward its peer)."""

    entry: FlowEntry
    owner: bytes
    previous: bytes | None = None  # the entry the kernel held (raw), None: none
    previous_owner: bytes | None = None
    materialization: str = ""
    link: str = ""
    bulk = True

    @classmethod
    def apply_bulk(cls, ops: Sequence[Operation], env: Env) -> list[Operation]:
        _table(env).set_owned((op.entry, op.owner) for op in ops  # type: ignore[attr-defined]
                              )
        return []

    def apply(self, env: Env) -> None:
        _table(env).set_owned([(self.entry, self.owner)])

    def revert(self, env: Env) -> None:
        if env.flows is not None:
            env.flows.restore(self.entry.vni, self.previous, self.previous_owner)

    def describe(self) -> str:
        e = self.entry
        via = e.peer_mac or "a next hop not resolved yet (pending)"
        return (f"set flow VNI {e.vni} ({self.materialization}/{self.link}) -> VNI {e.peer_vni} "
                f"at {e.peer_ip}:{e.peer_port} via {via}")


@dataclass(frozen=True)
class DeleteFlow(Operation):
    """Remove one endpoint's flow entry and its owner."""

    vni: int
    previous: bytes | None = None
    previous_owner: bytes | None = None
    bulk = True

    @classmethod
    def apply_bulk(cls, ops: Sequence[Operation], env: Env) -> list[Operation]:
        _table(env).remove_owned(op.vni for op in ops)  # type: ignore[attr-defined]
        return []

    def apply(self, env: Env) -> None:
        _table(env).remove_owned([self.vni])

    def revert(self, env: Env) -> None:
        if env.flows is not None:
            env.flows.restore(self.vni, self.previous, self.previous_owner)

    def describe(self) -> str:
        return f"delete flow VNI {self.vni}"
