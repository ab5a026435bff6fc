"""The uplink's operations: sch_fq, clsact and the classifier's two programs on it."""
from __future__ import annotations

from dataclasses import dataclass

from datapath.netlink.devices import Netlink
from datapath.netlink.model import FqSizing
from datapath.plan.operation import Env, Inverse, Operation

UPLINK_EGRESS_FILTER = "moa_egress"
UPLINK_INGRESS_FILTER = "moa_ingress"


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
