"""What the box holds, as the service knows it: the checks that need more than one message.

schemas.validate judges a message alone; this index judges it against everything else the box
holds: a VNI used by another materialization ("conflict"), a dematerialize or update naming an id,
link or tag that is not there ("not_found"), an update whose result breaks a cross-field rule.
It is seeded from datapath.status() at start and changed only after the datapath succeeded.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgspec

import schemas
from schemas import InvalidMessage


@dataclass
class HeldLink:
    id: str
    vnis: list[int]
    emulation: schemas.Emulation
    tags: list[str] | None  # None: unknown (seeded from status, which does not carry tags)


@dataclass
class Held:
    id: str
    generation: int
    links: dict[str, HeldLink] = field(default_factory=dict)
    content: bytes | None = None  # content_hash of the Materialize applied (None: seeded)


class Holdings:
    def __init__(self) -> None:
        self.by_id: dict[str, Held] = {}

    # ------------------------------------------------------------------ seeding and recording

    def seed(self, status: schemas.StatusReply) -> None:
        self.by_id.clear()
        for ms in status.materializations:
            self.by_id[ms.id] = Held(ms.id, ms.generation, {
                ls.id: HeldLink(ls.id, list(ls.vnis), ls.emulation, None) for ls in ms.links})

    def record_materialize(self, m: schemas.Materialize, generation: int) -> None:
        self.by_id[m.id] = Held(m.id, generation, {
            link.id: HeldLink(link.id, [ep.vni for ep in link.endpoints], link.emulation,
                              list(link.tags))
            for link in m.links}, content_hash(m))

    def record_update(self, u: schemas.Update, generation: int) -> None:
        held = self.by_id[u.id]
        for i, link in self._targets(u):
            link.emulation = u.links[i].emulation.apply(link.emulation, f"links[{i}].emulation")
        held.generation = generation
        held.content = None  # no longer the content of any Materialize

    def knows_tags(self, id: str) -> bool:
        held = self.by_id.get(id)
        return held is not None and all(link.tags is not None for link in held.links.values())

    def same_content(self, m: schemas.Materialize) -> bool:
        held = self.by_id.get(m.id)
        return held is not None and held.content is not None and held.content == content_hash(m)

    def record_dematerialize(self, id: str) -> None:
        self.by_id.pop(id, None)

    # ------------------------------------------------------------------ checks (raise InvalidMessage)

    def check_materialize(self, m: schemas.Materialize) -> None:
        """VNIs must not be held by another materialization (the same id may keep or move its own)."""
        owner: dict[int, str] = {}
        for held in self.by_id.values():
            if held.id == m.id:
                continue
            for link in held.links.values():
                for vni in link.vnis:
                    owner[vni] = f"{held.id}/{link.id}"
        for i, link in enumerate(m.links):
            for j, ep in enumerate(link.endpoints):
                if ep.vni in owner:
                    raise InvalidMessage(f"links[{i}].endpoints[{j}].vni",
                                         f"VNI {ep.vni} is held by {owner[ep.vni]}", "conflict")

    def check_dematerialize(self, id: str) -> None:
        if id not in self.by_id:
            raise InvalidMessage("id", f"no materialization {id!r} on this box", "not_found")

    def check_update(self, u: schemas.Update) -> None:
        held = self.by_id.get(u.id)
        if held is None:
            raise InvalidMessage("id", f"no materialization {u.id!r} on this box", "not_found")
        # Every link update names something held, and its result is a valid emulation.
        current = {lid: link.emulation for lid, link in held.links.items()}
        for i, lu in enumerate(u.links):
            targets = self._match(held, lu, i)
            for link in targets:
                current[link.id] = lu.emulation.apply(current[link.id], f"links[{i}].emulation")

    def _match(self, held: Held, lu: schemas.LinkUpdate, i: int) -> list[HeldLink]:
        if lu.link is not None:
            if lu.link not in held.links:
                raise InvalidMessage(f"links[{i}].link",
                                     f"materialization {held.id!r} has no link {lu.link!r}", "not_found")
            return [held.links[lu.link]]
        if any(link.tags is None for link in held.links.values()):
            # Tags unknown (held before this service started): the datapath resolves them.
            return [link for link in held.links.values() if link.tags is None or lu.tag in link.tags]
        found = [link for link in held.links.values() if lu.tag in (link.tags or [])]
        if not found:
            raise InvalidMessage(f"links[{i}].tag",
                                 f"materialization {held.id!r} has no link tagged {lu.tag!r}", "not_found")
        return found

    def _targets(self, u: schemas.Update) -> list[tuple[int, HeldLink]]:
        held = self.by_id[u.id]
        out: list[tuple[int, HeldLink]] = []
        for i, lu in enumerate(u.links):
            out.extend((i, link) for link in self._match(held, lu, i))
        return out

    def generation(self, id: str) -> int | None:
        held = self.by_id.get(id)
        return held.generation if held else None


def content_hash(m: schemas.Materialize) -> bytes:
    """A digest of a Materialize's content (canonical JSON), to recognize a resend."""
    return hashlib.blake2b(msgspec.json.encode(m, order="sorted"), digest_size=16).digest()
