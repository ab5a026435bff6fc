"""The UDP ports the classifier takes as VXLAN besides its own: the ports of moa's VTEPs.

An endpoint's `port` (docs/contract.md) is its VTEP's UDP port, which both directions of its
traffic use as destination. The classifier parses VXLAN to its load-time `vxlan_port` (4789)
and to every port whose bit is set in moa_vxlan_ports (datapath/bpf/parse.h), so a port is set
before the first VTEP on it is created and cleared after the last one is deleted; the kernel's
VTEPs say which ports are in use (datapath/plan/planner.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from datapath.plan.operation import Env, Operation


@dataclass(frozen=True)
class SetVxlanPorts(Operation):
    """moa_vxlan_ports holds `ports`; revert puts back `before` (read from the kernel)."""

    ports: frozenset[int]
    before: frozenset[int]

    def _write(self, env: Env, ports: frozenset[int]) -> None:
        if env.links is None:
            raise RuntimeError("no classifier loaded: cannot set the VXLAN ports")
        env.links.set_vxlan_ports(ports)

    def apply(self, env: Env) -> None:
        self._write(env, self.ports)

    def revert(self, env: Env) -> None:
        self._write(env, self.before)

    def describe(self) -> str:
        added, gone = sorted(self.ports - self.before), sorted(self.before - self.ports)
        parts = ([f"take UDP port(s) {', '.join(map(str, added))} as VXLAN"] if added else []) + (
            [f"stop taking UDP port(s) {', '.join(map(str, gone))} as VXLAN"] if gone else [])
        return "classifier: " + "; ".join(parts or ["VXLAN ports unchanged"])


def port_changes(held: frozenset[int], mine: set[int], others: set[int], wanted: set[int],
                 ) -> tuple[SetVxlanPorts | None, SetVxlanPorts | None]:
    """(after the teardown, before the build): the ports that `held` (the map) loses, those
    only this materialization's VTEPs used (`mine`) and no one wants any more, and gains, those
    its wanted VTEPs use (`wanted`, the classifier's own port left out) that it lacks."""
    going = (held & mine) - wanted - others
    stay = held - going
    coming = wanted - stay
    return (SetVxlanPorts(stay, held) if going else None,
            SetVxlanPorts(stay | coming, stay) if coming else None)
