"""Test support for the bus: RecordingFakeDatapath and a service running against a real nats-server.

RecordingFakeDatapath stands in for datapath.api.Datapath ONLY in tests of pure ordering, acks and
redelivery (issue 4): it records every call and models the declarative semantics (same content ->
nothing changes, generation kept), but touches no kernel. Paths that reach the kernel are tested
with the real Datapath.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec

import schemas
from moa_bus.connection import NatsOptions, connect
from moa_bus.natsserver import NatsServer
from moa_bus.ports import PlanError
from moa_bus.service import MoaService, ServiceConfig


@dataclass
class _FakeOp:
    name: str

    def describe(self) -> str:
        return self.name


@dataclass
class FakeResult:
    generation: int
    changed: bool
    operations: list[str] = field(default_factory=list)


class RecordingFakeDatapath:
    """Records calls in `calls` [(op, id, message)] and changes in `changes` [(op, id, generation)]."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, object]] = []
        self.changes: list[tuple[str, str, int]] = []
        self.held: dict[str, tuple[schemas.Materialize, int]] = {}
        self.gate: asyncio.Event | None = None  # when set to an unset Event, materialize waits on it
        self.entered = asyncio.Event()  # set when an apply call has started
        self.fail_next: str | None = None  # name of an operation to fail with PlanError, once
        self.drop_cb = None
        self.losses = (0, 0)
        self.closed = False
        self._generation = 0

    def _next_gen(self) -> int:
        self._generation += 1
        return self._generation

    async def _enter(self) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next is not None:
            op, self.fail_next = self.fail_next, None
            raise PlanError(_FakeOp(op), RuntimeError("injected failure (rolled back)"), 0)

    async def materialize(self, m: schemas.Materialize) -> FakeResult:
        self.calls.append(("materialize", m.id, m))
        await self._enter()
        old = self.held.get(m.id)
        if old is not None and msgspec.json.encode(old[0]) == msgspec.json.encode(m):
            return FakeResult(old[1], False)
        gen = self._next_gen()
        self.held[m.id] = (m, gen)
        self.changes.append(("materialize", m.id, gen))
        return FakeResult(gen, True, [f"set {link.id}" for link in m.links])

    async def plan_for(self, m: schemas.Materialize) -> list[str]:
        self.calls.append(("plan", m.id, m))
        return [f"set params of vni {ep.vni}" for link in m.links for ep in link.endpoints]

    async def dematerialize(self, id: str) -> FakeResult:
        self.calls.append(("dematerialize", id, None))
        await self._enter()
        if id not in self.held:
            raise PlanError(_FakeOp(f"dematerialize {id}"), KeyError(id), 0)
        del self.held[id]
        gen = self._next_gen()
        self.changes.append(("dematerialize", id, gen))
        return FakeResult(gen, True)

    async def update(self, u: schemas.Update) -> FakeResult:
        self.calls.append(("update", u.id, u))
        await self._enter()
        m, _ = self.held[u.id]
        for lu in u.links:
            for link in m.links:
                if lu.link == link.id or (lu.tag is not None and lu.tag in link.tags):
                    link.emulation = lu.emulation.apply(link.emulation)
        gen = self._next_gen()
        self.held[u.id] = (m, gen)
        self.changes.append(("update", u.id, gen))
        return FakeResult(gen, True)

    async def status(self, id: str | None = None) -> schemas.StatusReply:
        self.calls.append(("status", id, None))
        mats = [
            schemas.MaterializationStatus(id=mid, generation=gen, links=[
                schemas.LinkStatus(id=link.id, kind=link.kind, vnis=[e.vni for e in link.endpoints],
                                   emulation=link.emulation, counters=[])
                for link in m.links])
            for mid, (m, gen) in self.held.items() if id is None or mid == id]
        return schemas.StatusReply(host="fake", materializations=mats, fq_memory_bytes=0)

    async def link_stats(self) -> list[schemas.LinkStats]:
        return [schemas.LinkStats(materialization=mid, link=link.id, vni=ep.vni, stage="egress",
                                  packets=10, bytes=1000, drops={"loss": 1})
                for mid, (m, _) in self.held.items() for link in m.links for ep in link.endpoints]

    def drop_events(self, callback) -> None:
        self.drop_cb = callback

    def drop_event_losses(self) -> tuple[int, int]:
        return self.losses

    async def close(self) -> None:
        self.closed = True

    @property
    def applied_ops(self) -> list[tuple[str, str | None]]:
        return [(op, ident) for op, ident, _ in self.calls if op not in ("status", "plan")]


def materialize_doc(id: str, vni0: int, n_links: int = 1, latency: str = "1ms",
                    tags: list[str] | None = None) -> dict:
    return {"id": id, "links": [
        {"id": f"l{i}", "tags": tags or [],
         "endpoints": [{"vni": vni0 + 2 * i, "remote": "10.0.0.1"},
                       {"vni": vni0 + 2 * i + 1, "remote": "10.0.0.2"}],
         "emulation": {"latency": latency, "loss": 0.01}}
        for i in range(n_links)]}


@contextlib.asynccontextmanager
async def running_service(server: NatsServer, datapath, host: str, **cfg) -> AsyncIterator[MoaService]:
    nc = await connect(NatsOptions(url=server.url, connect_timeout=5))
    svc = MoaService(nc, datapath, ServiceConfig(host=host, **cfg))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
        await nc.close()


def test_fake_models_declarative_semantics() -> None:
    async def go() -> None:
        dp = RecordingFakeDatapath()
        m = schemas.decode(schemas.Materialize, msgspec.json.encode(materialize_doc("a", 10)))
        r1 = await dp.materialize(m)
        r2 = await dp.materialize(m)
        assert (r1.changed, r2.changed, r1.generation == r2.generation) == (True, False, True)
        assert dp.changes == [("materialize", "a", 1)]
    asyncio.run(go())
