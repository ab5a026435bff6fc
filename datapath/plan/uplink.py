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

    The root qdisc tree sch_fq replaces is kept first (in the kernel: the classifier's
    moa_saved_qdiscs, so a restarted service still has it) and put back by revert, which
    ReleaseUplink runs when moa releases the uplink (datapath/netlink/qdisc_tree.py).
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
                kept = self.keep_root(env, dev)
                try:
                    env.nl.ensure_fq(dev, self.fq)
                except Exception:  # not replaced (no sch_fq in this kernel ...): nothing to keep
                    if kept:
                        env.links.forget_qdiscs(dev)  # type: ignore[union-attr]
                    raise
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
                self.restore_root(env, dev)

    @staticmethod
    def keep_root(env: Env, dev: str) -> bool:
        """Before sch_fq replaces `dev`'s root qdisc: its tree, kept in the kernel (the
        classifier's moa_saved_qdiscs) unless kept already or it is moa's own sch_fq. True
        when it kept it now."""
        if env.links is None or env.links.saved_qdiscs(dev) is not None:
            return False
        tree = env.nl.root_tree(dev)
        if tree is None:
            return False
        env.links.save_qdiscs(dev, tree)
        return True

    @staticmethod
    def restore_root(env: Env, dev: str) -> None:
        """After sch_fq left `dev`: the root tree it replaced comes back, then is forgotten."""
        saved = env.links.saved_qdiscs(dev) if env.links is not None else None
        if saved is None:
            return
        env.nl.restore_root_tree(dev, saved)
        env.links.forget_qdiscs(dev)  # type: ignore[union-attr]

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


@dataclass(frozen=True)
class ResizeFq(Operation):
    """sch_fq on the uplink (or each slave of a bond) changed in place to `fq`: its limit and
    flow_limit follow the links the box holds (datapath/limits.py). `tc qdisc replace` of the
    same kind changes the qdisc without dropping what it holds (`qdisc_change`); revert puts
    back `before`."""

    uplink: str
    fq: FqSizing
    before: FqSizing

    def _set(self, env: Env, sizing: FqSizing) -> None:
        for dev in EnsureUplink(self.uplink, sizing).fq_devices(env.nl):
            env.nl.ensure_fq(dev, sizing)

    def apply(self, env: Env) -> None:
        self._set(env, self.fq)

    def revert(self, env: Env) -> None:
        self._set(env, self.before)

    def describe(self) -> str:
        return (f"resize sch_fq on {self.uplink}: limit {self.before.limit} -> {self.fq.limit}, "
                f"flow_limit {self.before.flow_limit} -> {self.fq.flow_limit}")
