"""The per-link families of the metrics endpoint: packets, bytes and drops of every stage of
every VNI the box holds, labelled by materialization, link, VNI and direction.

A box may hold tens of thousands of links, so these families are made for that size:

- the counters come from `Datapath.counter_table()`: the whole moa_counters array (the slots in
  use) in a few BPF_MAP_LOOKUP_BATCH syscalls, summed over CPUs by numpy; no lock the datapath
  or the apply path takes, nothing written;
- the label sets come from a snapshot of the desired state (one dict copy, atomic under the GIL)
  and are rendered once per change of who owns the VNIs (`DesiredState.layout`: not on an
  Update, which changes emulations only), not once per scrape;
- each sample line is then one string concatenation, where prometheus_client's exposition
  builds, escapes and sorts every sample's labels again on every scrape (about 20 times
  slower at 30,000 VNIs: docs/benchmarks.md).

`LinkFamilies.collect()` gives the same samples as prometheus_client metric families, for
anything that wants them that way (tests compare the two renderings).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, Metric

import schemas
from datapath.api import Datapath
from moa_bus.service.desired import DesiredState

LABELS = ("materialization", "link", "vni", "direction")
CHUNK = 4096  # lines per encoded piece of a rendering

# (family, HELP, counter field of datapath.classifier.CounterTable)
FAMILIES = (
    ("moa_link_packets", "Frames that passed a link stage (every GSO segment counts).", "packets"),
    ("moa_link_bytes", "Inner frame bytes that passed a link stage, as charged (without the "
                       "per-frame overhead).", "bytes"),
    ("moa_link_marks", "Frames a link stage's AQM marked CE instead of dropping them (ECN); "
                       "they passed, and count in moa_link_packets too.", "marks"),
    ("moa_link_corrupted", "Frames a link stage corrupted (one bit of the inner payload "
                           "flipped); they passed, and count in moa_link_packets too.",
     "corrupted"),
    ("moa_link_duplicated", "Frames of the copies a link stage sent (duplication), beside "
                            "moa_link_packets.", "duplicated"),
)
DROPS = ("moa_link_drops", "Frames a link stage dropped, by reason (loss, queue, horizon, "
                           "link_down, aqm).")
DIRECTION_HELP = ("direction: egress = leaving the box toward that VNI's node (where the link's "
                  "emulation applies); ingress = entering from that VNI's node (a LAN member's "
                  "port stage; on point-to-point links it only counts).")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


@dataclass(frozen=True)
class _Rows:
    """The label sets of one version of the box: per exported (VNI, stage), in order."""
    key: tuple[int, tuple[int, ...]]  # (desired layout, the VNIs present in the kernel)
    vnis: tuple[int, ...]
    labels: tuple[tuple[str, str, str, str], ...]  # per (vni, stage): LABELS' values
    # per (vni, stage): 'materialization="..",link="..",vni="..",direction=".."'
    text: tuple[str, ...]


class LinkFamilies:
    """The per-link families of one box (module docstring). Thread-safe."""

    def __init__(self, datapath: Datapath, desired: DesiredState) -> None:
        self.datapath = datapath
        self.desired = desired
        self._rows: _Rows | None = None
        self._owners: tuple[int, dict[int, tuple[str, str]]] | None = None
        self._lock = threading.Lock()

    def _owner_map(self) -> dict[int, tuple[str, str]]:
        """vni -> (materialization, link) of the desired state, rebuilt when its layout
        moves. The layout is read before the dict is copied: a change in between is seen
        again at the next read."""
        layout = self.desired.layout
        if self._owners is not None and self._owners[0] == layout:
            return self._owners[1]
        held = dict(self.desired.held)  # one C-level copy: atomic under the GIL
        owners = {ep.vni: (mid, link.id) for mid, h in held.items()
                  for link in h.materialize.links for ep in link.endpoints}
        self._owners = (layout, owners)
        return owners

    def _rows_for(self, slots: dict[int, int]) -> _Rows:
        owners = self._owner_map()
        layout = self._owners[0] if self._owners else 0
        vnis = tuple(sorted(v for v in owners if v in slots))
        key = (layout, vnis)
        if self._rows is not None and self._rows.key == key:
            return self._rows
        labels, text = [], []
        for vni in vnis:
            mid, link = owners[vni]
            for stage in schemas.STAGES:
                values = (mid, link, str(vni), stage)
                labels.append(values)
                text.append(",".join(f'{k}="{_escape(v)}"' for k, v in zip(LABELS, values)))
        self._rows = _Rows(key, vnis, tuple(labels), tuple(text))
        return self._rows

    def _read(self) -> tuple[_Rows, dict[str, list[int]]]:
        """The rows and, per counter field, the values in the rows' order."""
        import numpy as np

        table = self.datapath.counter_table()
        with self._lock:
            rows = self._rows_for(table.slots)
        idx = np.array([table.slots[v] for v in rows.vnis], dtype=np.intp)
        picked = table.values[idx] if len(idx) else table.values[:0]
        # (vnis, stages, fields) -> per field, the values in (vni, stage) order
        per_field = {name: picked[:, :, i].reshape(-1).tolist()
                     for i, name in enumerate(table.fields)}
        return rows, per_field

    def render(self) -> str:
        """The families in Prometheus's text format (version 0.0.4)."""
        return b"".join(self.render_chunks()).decode()

    def render_chunks(self, rows_per_chunk: int = CHUNK) -> list[bytes]:
        """render(), as encoded pieces of at most `rows_per_chunk` lines: no single step of
        joining, encoding or sending holds the GIL for long on a large box."""
        rows, values = self._read()
        out: list[bytes] = []

        def family(name: str, help_text: str, lines: list[str]) -> None:
            out.append(f"# HELP {name}_total {help_text} {DIRECTION_HELP}\n"
                       f"# TYPE {name}_total counter\n".encode())
            for i in range(0, len(lines), rows_per_chunk):
                out.append("".join(lines[i:i + rows_per_chunk]).encode())

        for name, help_text, field in FAMILIES:
            prefix = f"{name}_total{{"
            family(name, help_text,
                   [f"{prefix}{t}}} {v}\n" for t, v in zip(rows.text, values[field])])
        name, help_text = DROPS
        prefix = f"{name}_total{{"
        lines: list[str] = []
        for reason in schemas.DROP_REASONS:
            tail = f',reason="{reason}"}} '
            lines += [f"{prefix}{t}{tail}{v}\n"
                      for t, v in zip(rows.text, values[f"drops_{reason}"])]
        family(name, help_text, lines)
        return out

    def collect(self) -> Iterator[Metric]:
        """The same samples as prometheus_client metric families (slower: see the module)."""
        rows, values = self._read()
        for name, help_text, field in FAMILIES:
            fam = CounterMetricFamily(name, f"{help_text} {DIRECTION_HELP}", labels=LABELS)
            for labels, v in zip(rows.labels, values[field]):
                fam.add_metric(labels, v)
            yield fam
        name, help_text = DROPS
        fam = CounterMetricFamily(name, f"{help_text} {DIRECTION_HELP}",
                                  labels=(*LABELS, "reason"))
        for reason in schemas.DROP_REASONS:
            for labels, v in zip(rows.labels, values[f"drops_{reason}"]):
                fam.add_metric((*labels, reason), v)
        yield fam
