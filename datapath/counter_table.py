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
    always 0: the datapath leaves bucket 0 implicit, packets minus the others), summed over CPUs: a numpy uint64 array."""
    slots: dict[int, int]
    fields: tuple[str, ...]
    values: Any  # numpy.ndarray, shape (slots read, len(schemas.STAGES), len(fields))

    def field(self, name: str) -> int:
        return self.fields.index(name)


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


def read(counters_map: Any, counters_type: Any, slots: dict[int, int]) -> CounterTable:
    """The counters of `slots` (VNI -> slot), summed over CPUs, in ceil(2 x slots / 4096) batch
    lookups of moa_counters (BPF_MAP_LOOKUP_BATCH) rather than one lookup per link and stage:
    slots are handed out lowest first, so the slots in use are the array's first indexes and
    only those are read. The read takes no lock the datapath takes and writes nothing: a
    program keeps incrementing its own CPU's copy while the kernel copies every CPU's."""
    import numpy as np  # only the metrics endpoint and the benchmarks read in bulk

    fields = counter_fields(counters_type)
    nst = len(schemas.STAGES)
    n = (max(slots.values()) + 1) if slots else 0
    _, raw, got = counters_map.lookup_batch(n * nst)
    words = counters_map._slot // 8  # per-CPU stride in 8-byte words
    per_cpu = np.frombuffer(raw, dtype=np.uint64).reshape(got, counters_map.ncpu, words)
    wanted = np.array([w for _, w in fields], dtype=np.intp)
    summed = per_cpu[:, :, wanted].sum(axis=1, dtype=np.uint64)
    return CounterTable(slots=slots, fields=tuple(name for name, _ in fields),
                        values=summed.reshape(got // nst, nst, len(fields)))


def rows_of(array_map: Any, slots: list[int], per: int) -> bytes:
    """The `per` consecutive entries from index slot x per of each of `slots` (an array map:
    moa_counters, moa_state), their values back to back in the order of `slots`. One batch read
    of the window from the lowest slot to the highest when it is dense, else one per slot: a
    status page's few hundred links lie anywhere among a box's 200,000 slots (pages go in link id
    order), and reading the whole window for each page made a status walk quadratic."""
    if not slots:
        return b""
    size = array_map._slot * array_map.ncpu if array_map.is_percpu else array_map.value_size
    stride = per * size
    lo, hi = min(slots), max(slots) + 1
    if hi - lo <= 8 * len(slots):
        _, raw, _ = array_map.lookup_batch((hi - lo) * per, start=lo * per)
        return b"".join(raw[(s - lo) * stride:(s - lo + 1) * stride] for s in slots)
    return b"".join(array_map.lookup_batch(per, chunk=per, start=s * per)[1] for s in slots)


def read_rows(counters_map: Any, counters_type: Any,
              slots: list[int]) -> tuple[tuple[str, ...], Any]:
    """(fields, values): `values[k, stage, field]` the counters of `slots[k]`, summed over CPUs
    as `read` sums them, read with `rows_of` (Classifier.counters_of: status and telemetry)."""
    import numpy as np

    fields = counter_fields(counters_type)
    nst = len(schemas.STAGES)
    raw = rows_of(counters_map, slots, nst)
    words = counters_map._slot // 8
    per_cpu = np.frombuffer(raw, dtype=np.uint64).reshape(len(slots) * nst, counters_map.ncpu,
                                                          words)
    wanted = np.array([w for _, w in fields], dtype=np.intp)
    summed = per_cpu[:, :, wanted].sum(axis=1, dtype=np.uint64)
    return tuple(name for name, _ in fields), summed.reshape(len(slots), nst, len(fields))
