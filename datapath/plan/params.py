"""Link parameters: a VNI's stages written to (or removed from) the classifier's moa_links map."""
from __future__ import annotations

from dataclasses import dataclass

import schemas
from datapath.emulation import queue_bytes
from datapath.plan.operation import Env, Operation


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
