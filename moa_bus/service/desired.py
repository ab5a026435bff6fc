"""The box's desired state: what each materialization must hold and the generation it is at.

This is its only owner (docs/architecture.md, "Desired state"). The applier asks it to judge a
message against everything else the box holds (a VNI another materialization uses: "conflict";
an id, link or tag that is not there: "not_found"), turns an Update into the new content of
its materialization here, once, and commits a change only after the datapath applied it.
A commit is durable before it returns: the state store (moa_bus/service/state_store.py) writes
the materialization's whole content and generation to a file (write, fsync, rename, fsync the
directory), or for an Update of a few links one fsynced line of its journal, so the ack that
follows never promises more than a restart would restore.

Generations are box-wide: every change (a new content, a removal) takes the next number, so a
generation never repeats and never goes back, also across a dematerialize and a new
materialize of the same id. The highest one handed out is kept twice: in the state directory
and in the kernel (the classifier's moa_box map, through `on_generation`), and a restart takes
the larger of the two, so losing either one alone does not make it go back.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

import schemas
from datapath import faults
from moa_bus.service.state_store import Held, StateError, StateStore, content_digest
from schemas import InvalidMessage
from schemas.validate import check_direction

__all__ = ["DesiredState", "Held", "StateError", "StateStore", "REMOVALS_KEPT"]

log = logging.getLogger("moa.bus")

REMOVALS_KEPT = 1024  # the last removals remembered (a redelivered dematerialize's generation)


def _direction_updated(link: schemas.Link, lu: schemas.LinkUpdate, path: str) -> schemas.Link:
    """`link` with the direction towards lu.endpoint changed: the fields `inherit` names follow
    the link's again, then the patch's fields are that direction's own (docs/contract.md,
    "Each direction"). New Structs: the held ones are shared with status snapshots."""
    found = [j for j, ep in enumerate(link.endpoints) if ep.vni == lu.endpoint]
    if not found:
        raise InvalidMessage(f"{path}.endpoint", f"link {link.id!r} has no endpoint with VNI "
                                                 f"{lu.endpoint}", "not_found")
    j = found[0]
    ep = link.endpoints[j]
    own = {} if ep.emulation is msgspec.UNSET else ep.emulation.changes()
    for name in lu.inherit:
        own.pop(name, None)
    own.update(lu.emulation.changes())
    patch = schemas.EmulationPatch(**own) if own else msgspec.UNSET
    if patch is not msgspec.UNSET:
        check_direction(link.emulation, patch, f"{path}.emulation", f"endpoint VNI {ep.vni}")
    endpoints = list(link.endpoints)
    endpoints[j] = msgspec.structs.replace(ep, emulation=patch)
    return msgspec.structs.replace(link, endpoints=endpoints)


@dataclass
class DesiredState:
    """What every materialization must hold (module doc). `store` None: kept in memory only
    (tools that own no box); `on_generation(n)` is told each generation handed out."""

    store: StateStore | None = None
    held: dict[str, Held] = field(default_factory=dict)
    generation: int = 0  # the highest generation handed out
    removed: dict[str, int] = field(default_factory=dict)  # the last removals: id -> generation
    on_generation: Callable[[int], None] | None = None
    _owners: dict[int, tuple[str, str]] | None = None  # vni -> (materialization, link)
    # moves whenever who owns a VNI may have changed (not on an Update): readers that label
    # VNIs with their owners (the metrics endpoint) rebuild their labels when it moves
    layout: int = 0

    @classmethod
    def open(cls, store: StateStore, floor: int = 0,
             on_generation: Callable[[int], None] | None = None) -> "DesiredState":
        """The state `store` holds; generations continue above max(stored, `floor`)."""
        held, stored = store.load()
        return cls(store=store, held=held, generation=max(stored, floor),
                   removed=store.removed, on_generation=on_generation)

    # -- reading --------------------------------------------------------------------------------

    def get(self, mid: str) -> Held | None:
        return self.held.get(mid)

    def materializations(self) -> list[schemas.Materialize]:
        return [h.materialize for _, h in sorted(self.held.items())]

    def owner(self, vni: int) -> tuple[str | None, str | None]:
        """(materialization, link) holding `vni`, (None, None) for nobody."""
        if self._owners is None:
            self._owners = {ep.vni: (mid, link.id) for mid, h in self.held.items()
                            for link in h.materialize.links for ep in link.endpoints}
        return self._owners.get(vni, (None, None))

    def same_content(self, m: schemas.Materialize) -> bool:
        h = self.held.get(m.id)
        return h is not None and h.digest == content_digest(m)

    # -- judging messages (raise InvalidMessage) --------------------------------------------------

    def check_materialize(self, m: schemas.Materialize) -> None:
        """VNIs must not be held by another materialization (the same id may keep or move its
        own)."""
        for i, link in enumerate(m.links):
            for j, ep in enumerate(link.endpoints):
                mid, lid = self.owner(ep.vni)
                if mid is not None and mid != m.id:
                    raise InvalidMessage(f"links[{i}].endpoints[{j}].vni",
                                         f"VNI {ep.vni} is held by {mid}/{lid}", "conflict")

    def check_dematerialize(self, mid: str) -> Held:
        h = self.held.get(mid)
        if h is None:
            raise InvalidMessage("id", f"no materialization {mid!r} on this box", "not_found")
        return h

    def resolve_update(self, u: schemas.Update) -> tuple[schemas.Materialize, dict[str, int]]:
        """The content u.id has once `u` is applied: every link it names (by id or tag) with
        its emulation patched and validated as a whole; and, for each link it changed, the
        index of the last of u's entries that named it (to name u's field in an error about
        that link). A patch is applied once per distinct starting emulation (a tag update gives
        thousands of links the same change)."""
        h = self.held.get(u.id)
        if h is None:
            raise InvalidMessage("id", f"no materialization {u.id!r} on this box", "not_found")
        links = list(h.materialize.links)
        origin: dict[str, int] = {}
        for i, lu in enumerate(u.links):
            if lu.link is not None:
                index = h.link_index()
                hits = [index[lu.link]] if lu.link in index else []
                if not hits:
                    raise InvalidMessage(f"links[{i}].link", f"materialization {u.id!r} has no "
                                                             f"link {lu.link!r}", "not_found")
            else:
                hits = [j for j, link in enumerate(links) if lu.tag in link.tags]
                if not hits:
                    raise InvalidMessage(f"links[{i}].tag", f"materialization {u.id!r} has no "
                                                            f"link tagged {lu.tag!r}", "not_found")
            if lu.endpoint is not None:
                j = hits[0]
                links[j] = _direction_updated(links[j], lu, f"links[{i}]")
                origin[links[j].id] = i
                continue
            patched: dict[bytes, schemas.Emulation] = {}
            for j in hits:
                key = msgspec.json.encode(links[j].emulation)
                emu = patched.get(key)
                if emu is None:
                    emu = patched[key] = lu.emulation.apply(links[j].emulation,
                                                            f"links[{i}].emulation")
                for ep in links[j].endpoints:  # each direction's own fields stay its own
                    if ep.emulation is not msgspec.UNSET:
                        check_direction(emu, ep.emulation, f"links[{i}].emulation",
                                        f"endpoint VNI {ep.vni} of link {links[j].id!r}")
                links[j] = msgspec.structs.replace(links[j], emulation=emu)
                origin[links[j].id] = i
        # The schedule: left out of u, the one held keeps running over the new links; null
        # cancels it; a new one replaces it (docs/semantics.md, "Scheduled changes").
        schedule = h.materialize.schedule if u.schedule is msgspec.UNSET else (
            msgspec.UNSET if u.schedule is None else u.schedule)
        return schemas.Materialize(id=u.id, links=links, schedule=schedule), origin

    # -- changing (durable before returning) ------------------------------------------------------

    def _next(self) -> int:
        return self.generation + 1

    def _handed_out(self, generation: int, same_vnis: bool = False) -> None:
        self.generation = generation
        if not same_vnis:
            self._owners = None
            self.layout += 1
        if self.on_generation is not None:
            try:
                self.on_generation(generation)
            except Exception as e:  # the file already holds it; the kernel copy is a floor
                log.warning("could not record generation %d in the kernel: %s", generation, e)

    async def commit(self, m: schemas.Materialize, same_vnis: bool = False,
                     positions: Sequence[int] | None = None) -> int:
        """m is now what m.id must hold: durable, then its new generation returned. The file is
        written on a thread; until it is, readers see the state before (nothing else changes
        the desired state meanwhile: the applier makes one change at a time). `same_vnis`:
        m holds the links and VNIs held before (an Update), so who owns a VNI is unchanged;
        `positions`: m differs from what is held only in the links there (an Update's
        LinkChange), so the store journals those."""
        h = await asyncio.to_thread(self._write, m, positions)
        before = self.held.get(m.id)
        if same_vnis and before is not None:
            h.index = before.index  # the same links in the same places
        self.held[m.id] = h
        self.removed.pop(m.id, None)
        self._handed_out(h.generation, same_vnis)
        return h.generation

    def _write(self, m: schemas.Materialize, positions: Sequence[int] | None = None) -> Held:
        h = Held(m, self._next())
        faults.hit("state.before-write", m.id)
        if self.store is not None:
            if positions is not None and m.id in self.held:
                self.store.append(h, positions)
            else:
                self.store.put(h)
        faults.hit("state.after-write", m.id)
        return h

    async def remove(self, mid: str) -> int:
        """mid holds nothing any more: durable, then the generation of the removal returned."""
        generation = self._next()
        removed = {k: v for k, v in self.removed.items() if k != mid}
        removed[mid] = generation
        while len(removed) > REMOVALS_KEPT:
            del removed[next(iter(removed))]  # the oldest
        await asyncio.to_thread(self._write_removal, mid, generation, removed)
        self.held.pop(mid, None)
        self.removed = removed
        self._handed_out(generation)
        return generation

    def _write_removal(self, mid: str, generation: int, removed: dict[str, int]) -> None:
        faults.hit("state.before-write", mid)
        if self.store is not None:
            self.store.remove(mid, generation, removed)
        faults.hit("state.after-write", mid)

    def show(self, mid: str, links: list[schemas.Link], generation: int | None = None) -> None:
        """mid's schedule put these links in force (not durable: the schedule is, and says
        the same after a restart); with `generation`, only if mid is still at it (a step of a
        schedule since replaced is reported, not shown). A new Held, so a status snapshot
        keeps the one it took."""
        h = self.held.get(mid)
        if h is not None and generation in (None, h.generation):
            self.held[mid] = Held(h.materialize, h.generation, h.known_digest, in_force=links,
                                  index=h.index)

    def vnis(self, mids: Iterable[str] | None = None) -> list[int]:
        return [ep.vni for mid, h in self.held.items() if mids is None or mid in mids
                for link in h.materialize.links for ep in link.endpoints]
