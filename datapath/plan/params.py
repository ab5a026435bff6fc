"""Link parameters: a VNI's stages written to (or removed from) the classifier's moa_links map."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import schemas
from datapath import faults
from datapath.emulation import queue_bytes
from datapath.plan.operation import Env, Operation
from datapath.plan.runner import PlanError

# A VNI's (egress, ingress) stages (datapath.plan.planner.Stages; planner imports this module).
Stages = tuple[schemas.Emulation | None, schemas.Emulation | None]


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
    bulk = True

    @classmethod
    def apply_bulk(cls, ops: Sequence[Operation], env: Env) -> list[Operation]:
        """Many VNIs in a few batch writes (Classifier.update_links: new links' state, counters
        and parameters, existing links' parameters), not several map writes each."""
        if env.links is None:
            return list(ops)
        env.links.update_links({op.vni: op.stages for op in ops})  # type: ignore[attr-defined]
        return []

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
    bulk = True

    @classmethod
    def apply_bulk(cls, ops: Sequence[Operation], env: Env) -> list[Operation]:
        """Many VNIs in one batch delete (Classifier.delete_links)."""
        if env.links is None:
            return []
        env.links.delete_links(op.vni for op in ops)  # type: ignore[attr-defined]
        return []

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
        if e.distribution != "uniform":
            parts.append(f"distribution {e.distribution}")
        if e.delay_correlation:
            parts.append(f"delay correlation {e.delay_correlation:g}")
    if e.state == "down":
        parts.append("down")
    if e.loss:
        parts.append(f"loss {e.loss:g}")
        if e.loss_correlation:
            parts.append(f"loss correlation {e.loss_correlation:g}")
    if e.burst:
        parts.append(f"burst {e.burst}")
    if e.capacity:
        parts.append(f"capacity {e.capacity}bit/s queue {queue_bytes(e)}B")
        if e.overhead != schemas.messages.DEFAULT_OVERHEAD:
            parts.append(f"overhead {e.overhead}B")
        if e.cell_size:
            parts.append(f"cells {e.cell_size}{e.cell_overhead:+d}B")
        if e.aqm.kind != "taildrop":
            parts.append(f"aqm {e.aqm.kind}{' ecn' if e.aqm.ecn else ''}")
    return ", ".join(parts) or "pass"


def write_params(classifier: Any, m: schemas.Materialize,
                 stages_of: Callable[[schemas.Link], list[Stages]],
                 encode: Callable[[Stages], bytes]) -> int | None:
    """An Update's path: only the parameters of m's VNIs (each its own direction's: stages_of
    gives a link's stages per endpoint), in one batch write against what the
    classifier's map holds now (`classifier`: datapath.classifier.Classifier); how many changed.
    None when a VNI of m has no entry in the map (the box drifted: plan instead). All or
    nothing: a failed write is undone by writing back the entries read before (PlanError)."""
    stages: dict[int, tuple[Stages, bytes, str]] = {}
    for link in m.links:
        encoded: dict[int, bytes] = {}  # endpoints without their own parameters share a Stages
        for ep, s in zip(link.endpoints, stages_of(link)):
            enc = encoded.get(id(s))
            if enc is None:
                enc = encoded[id(s)] = encode(s)
            stages[ep.vni] = (s, enc, link.id)
    before = classifier.raw_links(stages)
    if len(before) != len(stages):
        return None
    changes = {vni: enc for vni, (_, enc, _) in stages.items()
               if classifier.stages_of(before[vni]) != enc}
    if not changes:
        return 0
    try:
        faults.hit("params.before-write", m.id)
        classifier.update_links(changes)
        faults.hit("params.after-write", m.id)
    except Exception as e:
        vni = next(iter(changes))
        (egress, ingress), _, link = stages[vni]
        op = SetLinkParams(vni, egress, ingress, changes[vni], before[vni], m.id,
                           f"{link} and {len(changes) - 1} more")
        try:
            classifier.update_links({v: classifier.stages_of(before[v]) for v in changes})
        except Exception as re:
            raise PlanError(op, e, 0, [(op, re)]) from e
        raise PlanError(op, e, 0) from e
    return len(changes)
