"""Operations on the point-to-point pair: two VTEPs joined as a wire (datapath/pair.py)."""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Sequence

from datapath.netlink import raw
from datapath.netlink.raw import TC_INGRESS
from datapath.netlink.tc import MOA_TC_HANDLE, MOA_TC_PRIO
from datapath.pair import PAIR_TC_FILTER, PairMode, PairProgram
from datapath.plan.operation import Env, Inverse, Operation


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
        for n, r in zip(names, nl.rtnl.run([raw.get_link(n) for n in names])):
            if not r.error and r.payload is not None:
                found[n] = raw.link_index_mtu(r.payload)
        ready = [op for op in todo if op.a in found and op.b in found
                 and found[op.a][1] is not None and found[op.b][1] is not None]
        devs = [n for op in ready for n in (op.a, op.b)]
        bad: set[str] = set()
        for n, r in zip(devs, nl.rtnl.run([raw.add_clsact(found[n][0]) for n in devs])):
            if r.error and r.error != errno.EEXIST:
                bad.add(n)
        devs = [n for n in devs if n not in bad]
        replies = nl.rtnl.run([raw.add_bpf_filter(found[n][0], TC_INGRESS, MOA_TC_PRIO,
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

