"""The box's desired state on disk: a file per materialization, and a journal of its Updates.

`StateStore` keeps, in one directory, `mat.<id>.json` per materialization (its whole content and
generation) and `generation` (the highest generation handed out, and the last removals). A
whole write goes to a temporary file, fsynced, renamed over the old one, the directory fsynced:
a file is the old content or the new, never half.

An Update that changed a few links (the applier knows which: docs/architecture.md, "Updates")
is not worth rewriting 100,000 links for: `append` adds one line to `upd.<id>.jsonl`, the
journal beside the file (the new generation, and each changed link with its position), and
fsyncs it. A line is whole or, after a crash in its write, a torn last line that was never
fsynced and so never acked: loading ignores that one and refuses any other damage. Once the
journal holds half the bytes of the file, the next change rewrites the file whole and removes
the journal; loading replays it and does the same, so a started box holds no journal. A file
and a journal that a crash left between those two steps are read right: lines at or below the
file's generation are already in it.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

import msgspec

import schemas
from schemas import InvalidMessage

FORMAT = 1
_PREFIX, _SUFFIX = "mat.", ".json"
_JOURNAL_PREFIX, _JOURNAL_SUFFIX = "upd.", ".jsonl"
_FLOOR = "generation"
_NAME_MAX = 255 - len(_PREFIX) - len(_SUFFIX) - len(".tmp")  # a file name's 255 bytes


class StateError(RuntimeError):
    """The state directory cannot be read or written (names the file and why)."""


class _Floor(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The `generation` file: the highest generation handed out when a file was last removed,
    and the generation at which each of the last removed materializations went."""
    format: int
    generation: int
    removed: dict[str, int] = {}


class _Stored(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One file of the store: a materialization's whole content and its generation."""
    format: int
    generation: int
    materialize: msgspec.Raw


class _Changed(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One line of a journal: the generation an Update took, and the links it changed, each
    at its position in the materialization's links (an Update changes links in place)."""
    generation: int
    positions: list[int]
    links: list[schemas.Link]


@dataclass
class Held:
    materialize: schemas.Materialize
    generation: int
    # of the canonical JSON of `materialize`: recognises a resend; made when first asked for
    # (an Update of one link of 100,000 does not encode them all)
    known_digest: bytes = b""
    _by_id: list[schemas.Link] | None = field(default=None, repr=False, compare=False)
    # with a schedule: the links as its steps made them now (status shows these); None: as held
    in_force: list[schemas.Link] | None = field(default=None, repr=False, compare=False)
    # link id -> its position in materialize.links; an Update's Held takes its predecessor's
    # (same links, same places), so 100,000 links are indexed once, not once per Update
    index: dict[str, int] | None = field(default=None, repr=False, compare=False)

    @property
    def digest(self) -> bytes:
        if not self.known_digest:
            self.known_digest = content_digest(self.materialize)
        return self.known_digest

    def link_index(self) -> dict[str, int]:
        if self.index is None:
            self.index = {link.id: j for j, link in enumerate(self.materialize.links)}
        return self.index

    def links_by_id(self) -> list[schemas.Link]:
        """Its links in force, in id order (as status and telemetry list them), sorted once."""
        if self._by_id is None:
            links = self.materialize.links if self.in_force is None else self.in_force
            self._by_id = sorted(links, key=lambda link: link.id)
        return self._by_id


def content_digest(m: schemas.Materialize) -> bytes:
    return hashlib.blake2b(msgspec.json.encode(m, order="sorted"), digest_size=16).digest()


class StateStore:
    """Files in one directory (module docstring): `mat.<id>.json` per materialization (the id
    percent-encoded; one whose name would pass a file name's 255 bytes keeps 160 of them and
    32 hex digits of the id's SHA-256 after a `#`: the file holds the whole id), its journal
    `upd.<id>.jsonl` while it has one, and `generation`: the highest generation handed out
    and the last removals, rewritten before a file is removed."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.removed: dict[str, int] = {}
        self._sizes: dict[str, list[int]] = {}  # id -> [its file's bytes, its journal's bytes]

    def _name(self, mid: str) -> str:
        name = quote(mid, safe="")
        if len(name) > _NAME_MAX:  # a 128-character id of ':' is 384 once encoded
            name = name[:160] + "#" + hashlib.sha256(mid.encode()).hexdigest()[:32]
        return name

    def _path(self, mid: str) -> Path:
        return self.dir / f"{_PREFIX}{self._name(mid)}{_SUFFIX}"

    def _journal(self, mid: str) -> Path:
        return self.dir / f"{_JOURNAL_PREFIX}{self._name(mid)}{_JOURNAL_SUFFIX}"

    def load(self) -> tuple[dict[str, Held], int]:
        """Every materialization stored (its journal replayed, then folded into its file) and
        the highest generation recorded (0: none); the last removals in `self.removed`."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            names = sorted(os.listdir(self.dir))
        except OSError as e:
            raise StateError(f"state directory {self.dir}: {e.strerror}") from None
        held: dict[str, Held] = {}
        floor = 0
        self.removed = {}
        journals = {n for n in names
                    if n.startswith(_JOURNAL_PREFIX) and n.endswith(_JOURNAL_SUFFIX)}
        for name in names:
            path = self.dir / name
            if name.endswith(".tmp"):  # a write that a crash interrupted: never renamed
                path.unlink(missing_ok=True)
                continue
            if name == _FLOOR:
                recorded = self._read_floor(path)
                floor = max(floor, recorded.generation)
                self.removed = dict(recorded.removed)
                continue
            if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
                continue
            h = self._read(path)
            mid = h.materialize.id
            if self._path(mid).name != name:
                raise StateError(f"{path}: holds materialization {mid!r}, not "
                                 f"{unquote(name[len(_PREFIX):-len(_SUFFIX)])!r}")
            self._sizes[mid] = [path.stat().st_size, 0]
            journal = self._journal(mid)
            if journal.name in journals:
                journals.discard(journal.name)
                h = self._replay(h, journal)
            held[mid] = h
            floor = max(floor, h.generation)
        for name in journals:  # a removal unlinks the file first: what is left is dropped
            (self.dir / name).unlink(missing_ok=True)
        return held, floor

    def _replay(self, h: Held, journal: Path) -> Held:
        """h with its journal's changes above its generation, then written whole (the journal
        removed): a started box holds none."""
        try:
            data = journal.read_bytes()
        except OSError as e:
            raise StateError(f"{journal}: {e.strerror}") from None
        links = list(h.materialize.links)
        generation = h.generation
        # what follows the last newline is b"", or a line a crash cut: never fsynced, never
        # acked, dropped
        lines = data.split(b"\n")[:-1]
        for k, line in enumerate(lines):
            try:
                c = schemas.decode(_Changed, line)
                if len(c.positions) != len(c.links) or any(
                        not 0 <= p < len(links) or links[p].id != link.id
                        for p, link in zip(c.positions, c.links)):
                    raise ValueError("its links are not the materialization's")
            except (InvalidMessage, ValueError) as e:
                raise StateError(f"{journal} is damaged at line {k + 1} ({e}): remove it to "
                                 "start from its materialization's file") from None
            if c.generation <= generation:
                continue  # already in the file (a crash between writing it and this removal)
            for p, link in zip(c.positions, c.links):
                links[p] = link
            generation = c.generation
        out = h
        if generation != h.generation:
            out = Held(msgspec.structs.replace(h.materialize, links=links), generation)
            self.put(out)
        self._unlink(journal)
        return out

    def _read(self, path: Path) -> Held:
        try:
            stored = msgspec.json.decode(path.read_bytes(), type=_Stored)
            if stored.format != FORMAT:
                raise StateError(f"{path}: format {stored.format}, this moa reads {FORMAT}")
            m = schemas.decode(schemas.Materialize, bytes(stored.materialize))
        except OSError as e:
            raise StateError(f"{path}: {e.strerror}") from None
        except (msgspec.DecodeError, InvalidMessage) as e:
            raise StateError(f"{path} is damaged ({e}): restore it from a backup or remove it "
                             "(the box then drops that materialization at start)") from None
        return Held(m, stored.generation)

    def _read_floor(self, path: Path) -> _Floor:
        try:
            return msgspec.json.decode(path.read_bytes(), type=_Floor)
        except OSError as e:
            raise StateError(f"{path}: {e.strerror}") from None
        except msgspec.DecodeError as e:
            raise StateError(f"{path} is damaged ({e}): remove it (the kernel keeps a copy of "
                             "the generation)") from None

    def put(self, held: Held) -> None:
        """held's whole content as its materialization's file; its journal, if any, removed."""
        mid = held.materialize.id
        data = msgspec.json.encode(_Stored(format=FORMAT, generation=held.generation,
                                           materialize=msgspec.Raw(
                                               schemas.encode(held.materialize))))
        self._write(self._path(mid), data)
        sizes = self._sizes.setdefault(mid, [0, 0])
        sizes[0] = len(data)
        if sizes[1]:
            self._unlink(self._journal(mid))
            sizes[1] = 0

    def append(self, held: Held, positions: Sequence[int]) -> None:
        """held differs from what the store holds for its materialization only in the links at
        `positions` (an Update): one journal line, fsynced; the whole file instead when the
        journal would pass half of it (or there is no file to add to)."""
        mid = held.materialize.id
        sizes = self._sizes.get(mid)
        line = msgspec.json.encode(_Changed(
            generation=held.generation, positions=list(positions),
            links=[held.materialize.links[p] for p in positions])) + b"\n"
        if sizes is None or 2 * (sizes[1] + len(line)) > sizes[0]:
            self.put(held)
            return
        path = self._journal(mid)
        try:
            _write_synced(path, line, os.O_APPEND)
            if not sizes[1]:
                self._sync_dir()  # the journal's name, new, durable too
        except OSError as e:
            raise StateError(f"writing {path}: {e.strerror}") from None
        sizes[1] += len(line)

    def remove(self, mid: str, generation: int, removed: dict[str, int]) -> None:
        """Forget `mid`; `generation` (of the removal) and `removed` (the last removals, this
        one included) are recorded first, so the highest generation handed out survives the
        file that carried it. The file goes before its journal: a journal left alone is
        dropped at load, a file left alone would come back without its Updates."""
        self._write(self.dir / _FLOOR, msgspec.json.encode(
            _Floor(format=FORMAT, generation=generation, removed=removed)))
        try:
            self._path(mid).unlink(missing_ok=True)
            self._journal(mid).unlink(missing_ok=True)
            self._sync_dir()
        except OSError as e:
            raise StateError(f"removing {self._path(mid)}: {e.strerror}") from None
        self._sizes.pop(mid, None)

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
            self._sync_dir()
        except OSError as e:
            raise StateError(f"removing {path}: {e.strerror}") from None

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            _write_synced(tmp, data, os.O_TRUNC)
            os.replace(tmp, path)
            self._sync_dir()
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StateError(f"writing {path}: {e.strerror}") from None

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    """data written to path (created if missing; `mode`: O_TRUNC or O_APPEND), then fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
