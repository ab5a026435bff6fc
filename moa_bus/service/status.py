"""What `status` and `telemetry.links` report: the desired state (which the kernel was converged
to: docs/architecture.md, "Desired state") with the kernel's counters of each VNI, cut so that
no message exceeds the connected server's max_payload (its INFO's, as nats-py reads it).

A status reply is a page: as many links as fit, and `next`, the cursor of the page after it
(null on the last). The pages of one walk come from one snapshot of the desired state taken at
its first page: every materialization as committed then, with its generation and error (the
desired state changes only in a commit, which awaits nothing, so a snapshot is consistent). A
snapshot is kept SNAPSHOT_TTL seconds after its last page was asked for, at most SNAPSHOTS_KEPT
of them. Counters are read when each page is made. A trace is reported by its summary
(schemas.TraceSummary), never its content: a page's size is the links', whatever traces they
run. A link too large for one page (a LAN of
thousands of members) is cut by endpoint: its pieces carry the link's id, kind and emulation,
each with its own VNIs, their counters and the directions of theirs that have parameters of
their own; a materialization that spans pages comes again with
its id on the next. telemetry.links is cut into numbered parts (`part` of `parts`) that share
the interval's `time_ns`. How a client puts pages or parts together: docs/contract.md, "Status".
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec

import schemas
from datapath.api import CounterRows, Datapath, StageCounters
from moa_bus.service.desired import DesiredState, Held
from schemas import InvalidMessage

HEADROOM = 1024  # bytes of a message left for its headers (the error headers are < 200 B)
SNAPSHOT_TTL = 60.0  # s a snapshot outlives the last page asked of it
SNAPSHOTS_KEPT = 32
COUNTER_CHUNK = 512  # links whose counters are read at once while a page fills
LOOP_SLICE_S = 0.01  # the longest telemetry.links holds the event loop between two yields
WALK_GAP_S = 0.05  # a status page answered this recently: its walk's next page may be coming
STATUS_FIRST_S = 5.0  # the longest one interval of telemetry.links gives way to status walks
SMALL_BOX = 64  # links up to which a status is first made whole (one page, if it fits)
_CURSOR_ROOM = 64  # schemas.Cursor's max_length: the `next` a page's size is figured with

Counters = dict[int, dict[str, StageCounters]]


def room(max_payload: int) -> int:
    """The bytes a reply or telemetry message may take on a server with this max_payload."""
    return max_payload - HEADROOM


def trim(hist: list[int]) -> list[int]:
    """A histogram without its trailing empty buckets (LinkStats.sojourn)."""
    if not any(hist[1:]):  # the usual histogram: every frame in bucket 0 (an unshaped stage)
        return list(hist[:1]) if hist and hist[0] else []
    n = len(hist)
    while n and not hist[n - 1]:
        n -= 1
    return list(hist[:n])


def _stats(mid: str, link: str, vnis: list[int], counters: Counters) -> list[schemas.LinkStats]:
    return [schemas.LinkStats(materialization=mid, link=link, vni=vni, stage=stage,
                              packets=c.packets, bytes=c.bytes, drops=dict(c.drops),
                              marks=c.marks, corrupted=c.corrupted,
                              duplicated=c.duplicated, sojourn=trim(c.sojourn),
                              backlog_ns=c.backlog_ns, backlog_bytes=c.backlog_bytes)
            for vni in vnis for stage, c in counters.get(vni, {}).items()]


def directions(link: schemas.Link, vnis: list[int] | None = None) -> list[schemas.DirectionStatus]:
    """The effective emulation of each endpoint of `link` (of `vnis`, when given) that has
    parameters of its own (docs/semantics.md, "Each direction")."""
    keep = None if vnis is None else set(vnis)
    return [schemas.DirectionStatus(vni=ep.vni, emulation=schemas.status_emulation(
                                        schemas.direction(link.emulation, ep.emulation)))
            for ep in link.endpoints
            if ep.emulation is not msgspec.UNSET and (keep is None or ep.vni in keep)]


def _sorted_links(h: Held) -> list[schemas.Link]:
    return h.links_by_id()


# ------------------------------------------------------------------------------ status pages

@dataclass
class Snapshot:
    """The desired state as one walk of pages sees it: its rows are the links of every
    materialization in `held` (in id order), or a materialization's own row when it holds no
    link; `starts[i]` is the first row of held[i]."""
    held: list[tuple[str, Held]]
    starts: list[int]
    unconverged: dict[str, str]
    used: float

    @property
    def rows(self) -> int:
        return self.starts[-1] if self.starts else 0

    def row(self, i: int) -> tuple[int, schemas.Link | None]:
        """(index into `held`, the link of row i, or None)."""
        mi = bisect.bisect_right(self.starts, i) - 1
        links = self.held[mi][1].links_by_id()
        return mi, (links[i - self.starts[mi]] if links else None)


class StatusPages:
    """The status endpoint: pages of one snapshot, made without waiting for the apply queue."""

    def __init__(self, desired: DesiredState, datapath: Datapath, host: str,
                 unconverged: dict[str, str]) -> None:
        self.desired = desired
        self.datapath = datapath
        self.host = host
        self.unconverged = unconverged  # the applier's: copied into each snapshot
        self._snapshots: OrderedDict[str, Snapshot] = OrderedDict()
        self._prefix = secrets.token_hex(4)  # cursors of another run of the service are unknown
        self._keys = itertools.count(1)
        self._answered = -WALK_GAP_S  # time.monotonic() of the last page made

    def walking(self) -> float:
        """The seconds until a walk of pages is taken to be over (0: none): telemetry.links
        waits that long before it goes on (link_rows), so that a walk's next page does not
        queue behind a whole box's counters."""
        return max(0.0, self._answered + WALK_GAP_S - time.monotonic())

    def snapshot(self, mid: str | None) -> Snapshot:
        """The desired state now (one materialization, or all); awaits nothing."""
        if mid is None:
            held = sorted(self.desired.held.items())
        else:
            h = self.desired.get(mid)
            if h is None:
                raise InvalidMessage("id", f"no materialization {mid!r} on this box", "not_found")
            held = [(mid, h)]
        starts = [0]
        for _, h in held:
            starts.append(starts[-1] + max(1, len(h.materialize.links)))
        return Snapshot(held, starts, dict(self.unconverged), time.monotonic())

    def _resume(self, cursor: str) -> tuple[str, Snapshot, int, int]:
        key, row, offset = (cursor.split(".") + ["", ""])[:3]
        snap = self._snapshots.get(key)
        if snap is None:
            raise InvalidMessage("cursor", "no such page: its snapshot expired (kept "
                                 f"{SNAPSHOT_TTL:g} s after its last page was asked for) or the "
                                 "service restarted; start again without a cursor", "not_found")
        try:
            at, off = int(row), int(offset)
        except ValueError:
            raise InvalidMessage("cursor", f"{cursor!r} is no cursor of this service") from None
        if not 0 <= at < snap.rows:
            raise InvalidMessage("cursor", f"{cursor!r} is no cursor of this service")
        return key, snap, at, off

    def _keep(self, key: str, snap: Snapshot) -> None:
        now = time.monotonic()
        snap.used = now
        self._snapshots[key] = snap
        self._snapshots.move_to_end(key)
        while self._snapshots and (len(self._snapshots) > SNAPSHOTS_KEPT or
                                   now - next(iter(self._snapshots.values())).used > SNAPSHOT_TTL):
            self._snapshots.popitem(last=False)

    async def page(self, req: schemas.StatusRequest, max_payload: int) -> bytes:
        """The reply to `req`: one page of at most room(max_payload) bytes. Raises
        InvalidMessage (not_found: no such id, or the cursor's snapshot is gone)."""
        try:
            return await self._page(req, max_payload)
        finally:
            self._answered = time.monotonic()

    async def _page(self, req: schemas.StatusRequest, max_payload: int) -> bytes:
        limit = room(max_payload)
        if req.cursor is None:
            snap, start, offset = self.snapshot(req.id), 0, 0
            if snap.rows <= SMALL_BOX:  # likely one page: made whole, cut only if too large
                whole = await self._whole(snap)
                if len(whole) <= limit:
                    return whole
            key = f"{self._prefix}{next(self._keys)}"
        else:
            key, snap, start, offset = self._resume(req.cursor)
        reply = schemas.StatusReply(host=self.host, materializations=[],
                                    fq_memory_bytes=self.datapath.fq_memory_bytes(),
                                    datapath=self.datapath.box_counters(),
                                    next="x" * _CURSOR_ROOM)
        empty = len(schemas.encode(reply))
        used = empty
        mats = reply.materializations
        envelopes: dict[int, tuple[schemas.MaterializationStatus, int]] = {}
        nxt: tuple[int, int] | None = None  # where the next page starts
        at = start
        while at < snap.rows and nxt is None:
            chunk = [snap.row(i) for i in range(at, min(at + COUNTER_CHUNK, snap.rows))]
            counters = await self.datapath.counters(
                [ep.vni for _, link in chunk if link is not None for ep in link.endpoints])
            for mi, link in chunk:
                if mi not in envelopes:
                    mid, h = snap.held[mi]
                    m = schemas.MaterializationStatus(id=mid, generation=h.generation, links=[],
                                                      error=snap.unconverged.get(mid))
                    envelopes[mi] = (m, len(schemas.encode(m)) + 1)
                m, size = envelopes[mi]
                first = at == start
                need = size if not mats or mats[-1] is not m else 0
                if link is None:
                    encoded, end = None, 0
                    if used + need > limit and not first:
                        nxt = (at, 0)
                        break
                else:
                    encoded, end = _fit(m.id, link, offset if first else 0, counters,
                                        limit - used - need - 1, limit - empty - size - 1,
                                        may_defer=not first)
                    if encoded is None:  # whole on the next page
                        nxt = (at, 0)
                        break
                if need:
                    mats.append(m)
                    used += need
                if encoded is not None:
                    m.links.append(msgspec.Raw(encoded))  # type: ignore[arg-type]
                    used += len(encoded) + 1
                    if end < len(link.endpoints):  # cut: the rest of the link next
                        nxt = (at, end)
                        break
                at += 1
        if nxt is not None:
            reply.next = f"{key}.{nxt[0]}.{nxt[1]}"
            self._keep(key, snap)
        else:
            reply.next = None
            self._snapshots.pop(key, None)
        return schemas.encode(reply)


    async def _whole(self, snap: Snapshot) -> bytes:
        """The reply of every row of `snap` in one message, however large."""
        links = [link for i in range(snap.rows) if (link := snap.row(i)[1]) is not None]
        counters = await self.datapath.counters([ep.vni for link in links
                                                 for ep in link.endpoints])
        mats = []
        for mid, h in snap.held:
            mats.append(schemas.MaterializationStatus(
                id=mid, generation=h.generation, error=snap.unconverged.get(mid), links=[
                    schemas.LinkStatus(id=link.id, kind=link.kind, vnis=vnis,
                                       emulation=schemas.status_emulation(link.emulation),
                                       counters=_stats(mid, link.id, vnis, counters),
                                       directions=directions(link))
                    for link in h.links_by_id()
                    for vnis in [[ep.vni for ep in link.endpoints]]]))
        return schemas.encode(schemas.StatusReply(
            host=self.host, materializations=mats,
            fq_memory_bytes=self.datapath.fq_memory_bytes(),
            datapath=self.datapath.box_counters(), next=None))


def _fit(mid: str, link: schemas.Link, offset: int, counters: Counters, room_left: int,
         fresh_room: int, may_defer: bool) -> tuple[bytes | None, int]:
    """The encoded LinkStatus of `link` from endpoint `offset` on, and the endpoint it ends
    before: whole when it fits in `room_left`. Else, `may_defer`: None when it would fit whole
    on a page of its own (`fresh_room`) or when not one endpoint fits; otherwise cut to the
    endpoints that fit (InvalidMessage `internal` when not even one would fit on a page)."""
    vnis = [ep.vni for ep in link.endpoints]

    def piece(b: int) -> bytes:
        part = vnis[offset:b]
        return schemas.encode(schemas.LinkStatus(
            id=link.id, kind=link.kind, vnis=part,
            emulation=schemas.status_emulation(link.emulation),
            counters=_stats(mid, link.id, part, counters), directions=directions(link, part)))

    whole = piece(len(vnis))
    if len(whole) <= room_left:
        return whole, len(vnis)
    if may_defer and offset == 0 and len(whole) <= fresh_room:
        return None, 0
    # as many endpoints as fit: an estimate from the whole, halved until it fits
    n = max(1, int((len(vnis) - offset) * room_left / len(whole) * 0.95))
    while True:
        p = piece(offset + n)
        if len(p) <= room_left:
            return p, offset + n
        if n == 1:
            if may_defer:
                return None, 0
            raise InvalidMessage("", f"a message of {room_left} B cannot carry one endpoint "
                                 f"of link {link.id!r}: the server's max_payload is too small",
                                 "internal")
        n = max(1, n // 2)


# ------------------------------------------------------------------------------ telemetry

@dataclass
class Work:
    """CPU seconds the event loop's thread spent on one interval of telemetry.links (counted
    between its yields, so not the other work the loop did meanwhile)."""
    seconds: float = 0.0


async def link_rows(desired: DesiredState, datapath: Datapath, chunk: int = COUNTER_CHUNK // 2,
                    work: Work | None = None,
                    give_way: Callable[[], float] | None = None) -> list[bytes]:
    """The encoded LinkStats of every stage of every VNI of every materialization the box
    holds (as committed when called), `chunk` links at a time, the event loop let go
    (yield_to_loop) whenever the chunks since the last time took LOOP_SLICE_S: 200,000 VNIs
    take seconds of CPU, which a status page must not wait behind. `work` gets the CPU time.
    `give_way() -> s` (StatusPages.walking): while a walk of status pages goes on, the
    reading waits for it, STATUS_FIRST_S at most in all."""
    held = sorted(desired.held.items())  # a snapshot: a commit may come while we read
    # (mid, link) of each in turn, `chunk` at a time: made as read, not 100,000 at the start
    # (a Held is replaced, never changed, so its links are those of the snapshot)
    links = itertools.chain.from_iterable(zip(itertools.repeat(mid), _sorted_links(h))
                                          for mid, h in held)
    rows: list[bytes] = []
    waited = 0.0
    since, cpu = time.perf_counter(), time.thread_time()
    while part := list(itertools.islice(links, chunk)):
        got = await datapath.counter_rows([ep.vni for _, link in part for ep in link.endpoints])
        rows += _encoded_stats(part, got)
        if time.perf_counter() - since >= LOOP_SLICE_S:
            if work is not None:
                work.seconds += time.thread_time() - cpu
            await yield_to_loop()
            while give_way is not None and waited < STATUS_FIRST_S and (wait := give_way()):
                wait = min(wait, STATUS_FIRST_S - waited)
                await asyncio.sleep(wait)
                waited += wait
            since, cpu = time.perf_counter(), time.thread_time()
    if work is not None:
        work.seconds += time.thread_time() - cpu
    return rows


def _encoded_stats(part: list[tuple[str, schemas.Link]], got: CounterRows) -> list[bytes]:
    """The encoded LinkStats of `part`'s links (materialization id, link), each endpoint's
    stages in turn, as _stats makes them from Datapath.counters: built from `got`'s arrays, a
    column at a time made Python ints and every histogram's length (`trim`) found in bulk, no
    StageCounters in between (telemetry.links makes 400,000 of them an interval on a box of
    200,000 VNIs: docs/benchmarks.md, "Flow mode at scale"). A row makes only its message's
    own objects, gone once encoded: objects that outlive many allocations are what sends
    Python's collector on full passes over the box's links (the same section)."""
    import numpy as np

    fields, nst, reasons = got.fields, len(schemas.STAGES), schemas.DROP_REASONS
    values = got.values.reshape(len(got.vnis) * nst, len(fields))  # row k * nst + stage
    packets, nbytes, marks = values[:, [fields.index(f) for f in ("packets", "bytes", "marks")]
                                    ].T.tolist()
    drops = values[:, [fields.index(f"drops_{r}") for r in reasons]]
    dropped, dflat, nd = drops.any(axis=1).tolist(), drops.ravel().tolist(), len(reasons)
    nodrops = dict.fromkeys(reasons, 0)  # only read: every row without a drop shares it
    so = [i for i, f in enumerate(fields) if f.startswith("sojourn_")]
    ends = firsts = [0] * len(values)
    longer: dict[int, list[int]] = {}  # row -> its buckets, where trim keeps more than one
    if so:  # trim's length: up to the last bucket not empty (0 or 1 for an unshaped stage)
        hist = values[:, so[0]:so[-1] + 1]  # consecutive: counter_fields lists them in place
        seen = hist != 0
        last = np.where(seen.any(axis=1), hist.shape[1] - seen[:, ::-1].argmax(axis=1), 0)
        ends, firsts = last.tolist(), hist[:, 0].tolist()
        shaped = np.flatnonzero(last > 1)
        longer = dict(zip(shaped.tolist(), hist[shaped].tolist()))
    index = {vni: k for k, vni in enumerate(got.vnis)}
    backlog, shared, none, no = got.backlog, got.shared, (0, 0), {}
    encode, stats = schemas.encode, schemas.LinkStats
    out: list[bytes] = []
    for mid, link in part:
        for ep in link.endpoints:
            if (k := index.get(vni := ep.vni)) is None:  # the kernel does not hold it
                continue
            for st, stage in enumerate(schemas.STAGES):
                r = k * nst + st
                c = shared.get((vni, st), no) if shared else no
                b_ns, b_bytes = backlog.get((vni, st), none) if backlog else none
                e = ends[r]
                out.append(encode(stats(
                    materialization=mid, link=link.id, vni=vni, stage=stage,
                    packets=packets[r], bytes=nbytes[r], marks=marks[r],
                    drops=dict(zip(reasons, dflat[r * nd:r * nd + nd])) if dropped[r]
                    else nodrops,
                    corrupted=c.get("corrupted", 0), duplicated=c.get("duplicated", 0),
                    sojourn=[] if not e else [firsts[r]] if e == 1 else longer[r][:e],
                    backlog_ns=b_ns, backlog_bytes=b_bytes)))
    return out


def link_parts(host: str, time_ns: int, rows: list[bytes], max_payload: int) -> Iterator[bytes]:
    """telemetry.links of one interval from its encoded entries (link_rows): LinkStatsBatch
    messages, `part` of `parts`, each at most room(max_payload) bytes."""
    limit = room(max_payload)
    envelope = len(schemas.encode(schemas.LinkStatsBatch(
        host=host, time_ns=time_ns, links=[], part=1 << 31, parts=1 << 31)))
    # ends[i]: the bytes of rows[:i], a comma each; a part takes rows while they fit, one at least
    ends = list(itertools.accumulate(map((1).__add__, map(len, rows)), initial=0))
    cuts: list[tuple[int, int]] = []
    start = 0
    while start < len(rows) or not cuts:
        stop = bisect.bisect_right(ends, ends[start] + limit - envelope, start + 2) - 1
        cuts.append((start, min(stop, len(rows))))
        start = cuts[-1][1]
    for k, (a, b) in enumerate(cuts, 1):
        yield schemas.encode(schemas.LinkStatsBatch(
            host=host, time_ns=time_ns,
            links=[msgspec.Raw(r) for r in rows[a:b]],  # type: ignore[misc]
            part=k, parts=len(cuts)))


async def yield_to_loop() -> None:
    """Let other work of the event loop (a status request) run between two parts."""
    await asyncio.sleep(0)
