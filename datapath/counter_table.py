"""Every link's counters in a few syscalls: the bulk read behind Classifier.counter_table.

A scrape of the metrics endpoint reads moa_counters (per-CPU) this way rather than with one
lookup per link and stage (docs/metrics.md, "How a scrape reads the counters").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import schemas


@dataclass(frozen=True)
class CounterTable:
    """Every link's counters at one moment, read in a few syscalls (Classifier.counter_table):
    `slots` maps each VNI the classifier held then to its slot; `values[slot, stage, field]`
    is that stage's (schemas.STAGES order) counter `fields[field]` (struct moa_link_counters'
    words: packets, bytes, drops_<reason> for each of schemas.DROP_REASONS, events_suppressed,
    handover, marks, sojourn_<k> for each histogram bucket k - sojourn_0 as the map holds it,
    always 0: the datapath leaves bucket 0 implicit, packets minus the others), summed over CPUs,
    then the counts kept in the stage's state when asked for (corrupted, duplicated): a numpy
    uint64 array."""
    slots: dict[int, int]
    fields: tuple[str, ...]
    values: Any  # numpy.ndarray, shape (slots read, len(schemas.STAGES), len(fields))

    def field(self, name: str) -> int:
        return self.fields.index(name)


@dataclass(frozen=True)
class CounterRows:
    """The counters of some links at one read (Classifier.counter_rows), left as arrays so that
    a reader of thousands of links (telemetry.links) makes no object per link and stage it
    does not publish: `values[k, stage, field]` the counters `fields` of `vnis[k]` (summed over
    CPUs as `read` sums them, sojourn_0 the histogram's bucket 0 as the datapath leaves it
    implicit: packets minus the other buckets, 0 when those are ahead), `backlog` and `shared`
    the (vni, stage index) entries Classifier.backlogs gives (absent: none, every count 0)."""
    vnis: list[int]
    fields: tuple[str, ...]
    values: Any  # numpy.ndarray, shape (len(vnis), len(schemas.STAGES), len(fields))
    backlog: dict[tuple[int, int], tuple[int, int]]
    shared: dict[tuple[int, int], dict[str, int]]


def counter_fields(counters_type: Any) -> tuple[tuple[str, int], ...]:
    """(name, 8-byte word index) of each counter of struct moa_link_counters (`counters_type`,
    its ctypes structure from BTF; drops[] as drops_<reason>, reserved words left out)."""
    out: list[tuple[str, int]] = []
    for name, *_ in counters_type._fields_:
        if name.startswith(("reserved", "_pad")):
            continue
        word = getattr(counters_type, name).offset // 8
        if name == "drops":
            out += [(f"drops_{r}", word + i) for i, r in enumerate(schemas.DROP_REASONS)]
        elif name == "sojourn":  # the histogram (abi.h, MOA_SOJOURN_*): sojourn_<bucket>
            n = getattr(counters_type, name).size // 8
            out += [(f"sojourn_{i}", word + i) for i in range(n)]
        else:
            out.append((name, word))
    return tuple(out)


def read(counters_map: Any, counters_type: Any, slots: dict[int, int],
         state_map: Any = None, shared: dict[str, int] | None = None) -> CounterTable:
    """The counters of `slots` (VNI -> slot), summed over CPUs, in ceil(2 x slots / 4096) batch
    lookups of moa_counters (BPF_MAP_LOOKUP_BATCH) rather than one lookup per link and stage:
    slots are handed out lowest first, so the slots in use are the array's first indexes and
    only those are read. The read takes no lock the datapath takes and writes nothing: a
    program keeps incrementing its own CPU's copy while the kernel copies every CPU's.
    `shared` (name -> byte offset in a moa_state entry, with `state_map`): counts a stage keeps
    in its state rather than per CPU (corrupted, duplicated), read from moa_state the same way
    and added as fields of those names."""
    import numpy as np  # only the metrics endpoint and the benchmarks read in bulk

    fields = counter_fields(counters_type)
    nst = len(schemas.STAGES)
    n = (max(slots.values()) + 1) if slots else 0
    _, raw, got = counters_map.lookup_batch(n * nst)
    words = counters_map._slot // 8  # per-CPU stride in 8-byte words
    per_cpu = np.frombuffer(raw, dtype=np.uint64).reshape(got, counters_map.ncpu, words)
    wanted = np.array([w for _, w in fields], dtype=np.intp)
    summed = per_cpu[:, :, wanted].sum(axis=1, dtype=np.uint64)
    names = tuple(name for name, _ in fields)
    if shared:
        _, sraw, sgot = state_map.lookup_batch(got)
        if sgot != got:
            raise OSError(f"{state_map.name}: {sgot} of {got} entries read")
        state = np.frombuffer(sraw, dtype=np.uint8).reshape(got, state_map.value_size)
        cols = [state[:, o:o + 8].copy().view(np.uint64) for o in shared.values()]
        summed = np.concatenate([summed, *cols], axis=1)
        names += tuple(shared)
    return CounterTable(slots=slots, fields=names,
                        values=summed.reshape(got // nst, nst, len(names)))


RUN_GAP = 8  # unasked slots a run may span rather than begin another read (read_runs)


def runs(slots: list[int], gap: int = RUN_GAP) -> list[tuple[int, int]]:
    """The windows [lo, hi) that cover `slots` with one read each: the slots sorted, a window
    going on past a slot when the next asked one is at most `gap` slots further, so that no
    window reads more than `gap` unasked slots in a row."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(slots)):
        if out and s - out[-1][1] <= gap:
            out[-1] = (out[-1][0], s + 1)
        else:
            out.append((s, s + 1))
    return out


def read_runs(array_map: Any, slots: list[int], per: int,
              windows: list[tuple[int, int]] | None = None) -> tuple[bytes, list[int]]:
    """(raw, rows): the `per` consecutive entries from index slot x per of each of `slots` (an
    array map: moa_counters, moa_state) read with one batch read per run of near slots (`runs`),
    and where each of `slots` begins in `raw`, in units of `per` entries. A status page's few
    hundred links lie anywhere among a box's 200,000 slots (pages go in link id order), but
    links made together hold consecutive slots, so a page's slots come in runs: reading the
    window from a page's lowest slot to its highest made a status walk quadratic, one read per
    slot made a page cost a syscall per link (docs/benchmarks.md, "Flow mode at scale").
    `windows`: runs(slots) when the caller has them (the same slots of moa_counters and
    moa_state are read one after the other)."""
    if not slots:
        return b"", []
    at: dict[int, int] = {}  # slot -> its row in `raw`
    reads: list[bytes] = []
    row = 0
    for lo, hi in (runs(slots) if windows is None else windows):
        _, raw, got = array_map.lookup_batch((hi - lo) * per, start=lo * per)
        if got != (hi - lo) * per:
            raise OSError(f"{array_map.name}: {got} of {(hi - lo) * per} entries read from "
                          f"index {lo * per}")
        reads.append(raw)
        at.update(zip(range(lo, hi), range(row, row + hi - lo)))
        row += hi - lo
    return (reads[0] if len(reads) == 1 else b"".join(reads)), [at[s] for s in slots]


def read_rows(counters_map: Any, counters_type: Any, slots: list[int],
              windows: list[tuple[int, int]] | None = None) -> tuple[tuple[str, ...], Any]:
    """(fields, values): `values[k, stage, field]` the counters of `slots[k]`, summed over CPUs
    as `read` sums them, read with `read_runs` (Classifier.counter_rows: status and telemetry)."""
    import numpy as np

    fields = counter_fields(counters_type)
    nst = len(schemas.STAGES)
    raw, rows = read_runs(counters_map, slots, nst, windows)
    words = counters_map._slot // 8
    per_cpu = np.frombuffer(raw, dtype=np.uint64).reshape(-1, nst, counters_map.ncpu, words)
    wanted = np.array([w for _, w in fields], dtype=np.intp)
    summed = per_cpu.sum(axis=2, dtype=np.uint64)[:, :, wanted]  # every row read, then ours
    if rows != list(range(len(summed))):
        summed = summed[np.array(rows, dtype=np.intp)]
    return tuple(name for name, _ in fields), summed.reshape(len(slots), nst, len(fields))
