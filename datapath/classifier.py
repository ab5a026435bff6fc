"""Classifier: load (and pin) tc_classifier.bpf.o, manage links, read counters and drop events.

One object holds the programs (moa_egress, moa_ingress, moa_port_hold) and the maps of
docs/architecture.md. A link (VNI) owns a slot: its state and counters live at index
slot * 2 + stage of moa_state and moa_counters. set_link() hands out the lowest free slot the
first time a VNI is set and zeroes that slot's state and counters before the link becomes
visible to the datapath; later calls only replace the parameters (one atomic hash update), so
the timeline is not reset. With pinned maps the slot table is rebuilt from moa_links on load, so
a restarted service keeps every link's slot (and its timeline and counters).

It is one module because the slot table it keeps is what every reader and writer of those maps
indexes by: parameters, state, counters, backlogs, drop events and the custom distribution tables
stay consistent only if one object hands out and takes back slots.
"""
from __future__ import annotations

import ctypes
import heapq
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import schemas
from datapath.bpf import object_path
from datapath.counter_table import CounterRows, CounterTable
from datapath.counter_table import read as read_counter_table
from datapath.counter_table import read_rows as read_counter_rows
from datapath.counter_table import read_runs, runs
from datapath.distributions import DIST_IDS, DIST_SIZE, cdf_table, custom_table, table_key
from datapath.distributions import table as dist_table
from datapath.emulation import stage_bytes
from datapath.traces import TraceStore
from datapath.libbpf import BpfError, BpfObject, Map, Program, RingBuffer
from datapath.libbpf import abi as _abi_mod

__all__ = ["ClassifierConfig", "Classifier", "StageCounters", "CounterTable", "MAX_VNI",
           "DropEventError"]

MAX_VNI = (1 << 24) - 1
OBJECT = "tc_classifier"
PAGE = 4096


class DropEventError(ValueError):
    """A ring buffer record this reader does not understand (size or version)."""


def _contiguous(mask: int) -> bool:
    low = mask & -mask
    return mask == 0 or (mask + low) & mask == 0


# Counts of a stage kept in its moa_stage_state (shared words added to atomically by the few
# packets concerned) rather than in the per-CPU counters: StageCounters fields of the same name.
SHARED_COUNTS = ("corrupted", "duplicated")


@dataclass(frozen=True)
class ClassifierConfig:
    """Load-time settings (.rodata and map sizes); fixed for the life of the loaded object."""
    vxlan_port: int = 4789
    max_links: int = 65536
    ringbuf_bytes: int = 256 * 1024
    mark_mask: int = 0xFFFF0000          # contiguous bits of skb->mark; 0 = no handover
    dup_mark: int = 0x00008000           # one bit outside mark_mask: a copy (duplicate.h)
    horizon_ns: int = 10_000_000_000
    event_budget: int = 64               # drop events per link stage per window
    event_window_ns: int = 100_000_000
    flow_mode: bool = False              # point-to-point links without VTEPs (datapath/flow.py)

    def __post_init__(self) -> None:
        if not 1 <= self.vxlan_port <= 0xFFFF:
            raise ValueError(f"vxlan_port: {self.vxlan_port} outside 1..65535")
        if not 1 <= self.max_links <= 1 << 24:
            raise ValueError(f"max_links: {self.max_links} outside 1..2^24")
        rb = self.ringbuf_bytes
        if rb < PAGE or rb & (rb - 1):
            raise ValueError(f"ringbuf_bytes: {rb} must be a power of two >= {PAGE}")
        if not 0 <= self.mark_mask <= 0xFFFFFFFF or not _contiguous(self.mark_mask):
            raise ValueError(f"mark_mask: {self.mark_mask:#x} must be contiguous 32-bit bits")
        d = self.dup_mark
        if not 0 <= d <= 0xFFFFFFFF or d & (d - 1) or d & self.mark_mask:
            raise ValueError(f"dup_mark: {d:#x} must be one bit of skb->mark outside mark_mask "
                             f"{self.mark_mask:#x} (or 0: no duplication)")
        if not 0 < self.horizon_ns < 1 << 63:
            raise ValueError(f"horizon_ns: {self.horizon_ns} outside 1..2^63")
        if not 0 <= self.event_budget < 1 << 32:
            raise ValueError(f"event_budget: {self.event_budget} outside 0..2^32")
        if not 0 <= self.event_window_ns < 1 << 64:
            raise ValueError(f"event_window_ns: {self.event_window_ns} outside 0..2^64")

    def rodata(self) -> dict[str, int]:
        return {"vxlan_port": self.vxlan_port, "mark_mask": self.mark_mask,
                "dup_mark": self.dup_mark,
                "horizon_ns": self.horizon_ns, "event_budget": self.event_budget,
                "event_window_ns": self.event_window_ns, "flow_mode": int(self.flow_mode)}

    def max_entries(self) -> dict[str, int]:
        arrays = self.max_links * len(schemas.STAGES)  # MOA_NR_STAGES: checked on load (abi.py)
        return {"moa_links": self.max_links, "moa_state": arrays, "moa_counters": arrays,
                "moa_events": self.ringbuf_bytes,
                # a preallocated hash (8 MiB at 65,536): one entry when flow mode is off
                "moa_flow": self.max_links if self.flow_mode else 1,
                "moa_flow_owner": self.max_links if self.flow_mode else 1}


@dataclass
class StageCounters:
    """One stage of one link, summed over CPUs (frames count every GSO segment)."""
    packets: int = 0
    bytes: int = 0
    drops: dict[str, int] = field(default_factory=dict)   # by name: schemas.DROP_REASONS
    events_suppressed: int = 0
    handover: int = 0    # egress: packets that carried an ingress-stage handover in skb->mark
    marks: int = 0       # ECN: packets the AQM marked CE instead of dropping
    corrupted: int = 0   # egress: packets with one bit of their payload flipped (corrupt.h)
    duplicated: int = 0  # egress: frames of the copies sent (duplicate.h), beside `packets`
    # Passed frames by sojourn, one count per bucket of schemas.SOJOURN_BOUNDS_NS (abi.h).
    sojourn: list[int] = field(default_factory=list)
    # The backlog at the read: the timeline's tail (t_last) minus now, and that time at the
    # stage's rate as bytes (L1 overhead included, as charged); 0 without a rate.
    backlog_ns: int = 0
    backlog_bytes: int = 0


class Classifier:
    """A loaded classifier object (see the module docstring). Thread-safe for link updates."""

    def __init__(self, obj: BpfObject, config: ClassifierConfig) -> None:
        self.obj = obj
        self.config = config
        self.abi = _abi_mod.load(obj.path)  # checks schemas.STAGES and DROP_REASONS (AbiError)
        self.egress_program: Program = obj.program("moa_egress")
        self.ingress_program: Program = obj.program("moa_ingress")
        self.port_hold_program: Program = obj.program("moa_port_hold")
        self.links_map: Map = obj.map("moa_links")
        self.state_map: Map = obj.map("moa_state")
        self.counters_map: Map = obj.map("moa_counters")
        self.global_map: Map = obj.map("moa_global")
        self.events_map: Map = obj.map("moa_events")
        self.box_map: Map = obj.map("moa_box")
        self.ports_map: Map = obj.map("moa_vxlan_ports")
        self.saved_qdiscs_map: Map = obj.map("moa_saved_qdiscs")
        self.dist_map: Map = obj.map("moa_dist")
        self.dist_cdf_map: Map = obj.map("moa_dist_cdf")
        self.dist_custom_map: Map = obj.map("moa_dist_custom")
        # Custom tables (distribution "custom"): what each key holds (every table this process
        # encoded or found in the map: a rollback may need one back) and the keys in the map.
        self._tables: dict[int, tuple[int, ...]] = {}
        self._tables_present: set[int] = set()
        self.traces = TraceStore(obj.map("moa_trace"), self.abi)   # trace links' traces
        self.event_version = self.abi.DROP_EVENT_VERSION
        self._lock = threading.Lock()
        self._slots: dict[int, int] = {}
        self._restore_slots()
        self._write_distributions()

    @classmethod
    def load(cls, config: ClassifierConfig | None = None,
             pin_root: str | None = None) -> "Classifier":
        """Open and load the classifier; with pin_root, maps are pinned there (or reused)."""
        config = config or ClassifierConfig()
        obj = BpfObject.open(object_path(OBJECT), rodata=config.rodata(),
                             max_entries=config.max_entries(), pin_root=pin_root)
        try:
            return cls(obj, config)
        except BaseException:
            obj.close()
            raise

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- slots ------------------------------------------------------------------------------------

    def _restore_slots(self) -> None:
        used = set()
        for vni, link in self.links_map.items(ctypes.c_uint32, self.abi.Link):
            vni = int(vni.value) if hasattr(vni, "value") else int(vni)
            self._slots[vni] = link.slot
            used.add(link.slot)
        self._free = [s for s in range(self.config.max_links) if s not in used]
        heapq.heapify(self._free)

    def _write_distributions(self) -> None:
        """The jitter's tables and the normal CDF (datapath/distributions.py), before any link
        can use them; the same content every time, so a reused pinned map is rewritten as is."""
        for name, dist_id in DIST_IDS.items():
            if dist_id and name != "custom":  # custom tables: moa_dist_custom, per content
                self.dist_map.update(dist_id, self.abi.DistTable(v=(ctypes.c_int16 * DIST_SIZE)(
                    *dist_table(name))))
        self.dist_cdf_map.update(0, self.abi.DistCdf(u=(ctypes.c_uint16 * len(cdf_table()))(
            *cdf_table())))
        for key, table in self.dist_custom_map.items(ctypes.c_uint32, self.abi.DistTable):
            key = int(key.value) if hasattr(key, "value") else int(key)
            self._tables[key] = tuple(table.v)
            self._tables_present.add(key)

    # -- custom distribution tables ---------------------------------------------------------------

    def _remember_tables(self, *stages: schemas.Emulation | None) -> None:
        """Keep the custom tables of these stages by key, for the writes that will need them.
        Two different tables with one key (a 32-bit hash) cannot be held apart: refused."""
        for e in stages:
            if e is None or e.distribution != "custom" or not e.distribution_table:
                continue
            key, held = table_key(e.distribution_table), custom_table(e.distribution_table)
            if self._tables.setdefault(key, held) != held:
                raise schemas.InvalidMessage(
                    "distribution_table", "this table's key collides with another table's on "
                    "this box; change one value of it by one", code="unsupported")

    def _table_keys(self, stages: bytes) -> set[int]:
        """The custom tables' keys an encoded `stage` array refers to."""
        size = ctypes.sizeof(self.abi.StageParams)
        doff, koff = self.abi.StageParams.dist.offset, self.abi.StageParams.dist_key.offset
        custom = int(self.abi.Dist.CUSTOM)
        out = set()
        for st in range(self.abi.NR_STAGES):
            if stages[st * size + doff] == custom:
                out.add(int.from_bytes(stages[st * size + koff:st * size + koff + 4],
                                       sys.byteorder))
        return out

    def _ensure_tables(self, stages: Iterable[bytes]) -> None:
        """Under the lock, before links referring to them are written: every custom table of
        `stages` is in moa_dist_custom. When the map would overflow, the tables no link in
        moa_links refers to any more (and none of these stages does) are removed first."""
        need = set().union(*(self._table_keys(s) for s in stages))
        missing = need - self._tables_present
        if not missing:
            return
        unknown = [k for k in missing if k not in self._tables]
        if unknown:  # never encoded here nor found in the map: nothing to write
            raise RuntimeError(f"custom distribution table {unknown[0]:#x} is not known")
        if len(self._tables_present) + len(missing) > self.abi.DIST_CUSTOM_MAX:
            used = set(need)
            lsize, soff = self.links_map.value_size, self.abi.Link.stage.offset
            for _, raw in self.links_map.items():
                used |= self._table_keys(bytes(raw)[soff:lsize])
            for key in self._tables_present - used:
                self.dist_custom_map.delete(key)
                self._tables_present.discard(key)
        for key in missing:
            self.dist_custom_map.update(key, self.abi.DistTable(
                v=(ctypes.c_int16 * DIST_SIZE)(*self._tables[key])))
            self._tables_present.add(key)

    def _ensure_traces(self, stages: list[bytes]) -> None:
        """Under the lock: the traces `stages` refer to are in moa_trace (datapath/traces.py)."""
        lsize, soff = self.links_map.value_size, self.abi.Link.stage.offset
        self.traces.ensure(stages, (bytes(raw)[soff:lsize] for _, raw in self.links_map.items()))

    def slot(self, vni: int) -> int | None:
        return self._slots.get(vni)

    def vnis(self) -> list[int]:
        return sorted(self._slots)

    def link_count(self) -> int:
        """How many VNIs hold a slot (= entries of moa_links)."""
        return len(self._slots)

    # -- links ------------------------------------------------------------------------------------

    def encode_stages(self, egress: schemas.Emulation | None,
                      ingress: schemas.Emulation | None) -> bytes:
        """The `stage` array of a struct moa_link for these stages (None = that stage does
        nothing): what the planner compares with the kernel's and what the writes below take.
        Each distinct emulation is converted once (datapath.emulation.stage_bytes)."""
        self._remember_tables(egress, ingress)
        self.traces.remember(egress, ingress)
        return stage_bytes(egress, self.abi) + stage_bytes(ingress, self.abi)

    def stages_of(self, raw_link: bytes) -> bytes:
        """The `stage` array of a raw struct moa_link (its slot left out)."""
        off = self.abi.Link.stage.offset
        return raw_link[off:off + self.abi.Link.stage.size]

    def _link(self, slot: int, stages: bytes) -> Any:
        link = self.abi.Link()
        link.slot = slot
        ctypes.memmove(ctypes.addressof(link) + self.abi.Link.stage.offset, stages,
                       self.abi.Link.stage.size)
        return link

    def _take_slot(self, vni: int, want: int | None = None) -> tuple[int, bool]:
        """(slot, fresh) for `vni`, under the lock: its own if it has one; else `want` when that
        slot is free (a link restored into the slot it had: its timeline and counters are still
        there), else the lowest free slot, zeroed before the link becomes visible."""
        slot = self._slots.get(vni)
        if slot is not None:
            return slot, False
        if want is not None and want in self._free_set():
            self._free.remove(want)
            heapq.heapify(self._free)
            self._slots[vni] = want
            return want, False
        if not self._free:
            raise RuntimeError(f"no free link slot (max_links={self.config.max_links})")
        slot = heapq.heappop(self._free)
        try:
            for stage in range(self.abi.NR_STAGES):
                idx = slot * self.abi.NR_STAGES + stage
                self.state_map.update(idx, self.abi.StageState())
                self.counters_map.update(idx, self.abi.LinkCounters())
        except BaseException:
            heapq.heappush(self._free, slot)
            raise
        self._slots[vni] = slot
        return slot, True

    def _free_set(self) -> set[int]:
        return set(self._free)

    def _write(self, vni: int, stages: bytes, want_slot: int | None = None) -> int:
        with self._lock:
            self._ensure_tables([stages])
            self._ensure_traces([stages])
            had = vni in self._slots
            slot, _ = self._take_slot(vni, want_slot)
            try:
                self.links_map.update(vni, self._link(slot, stages))
            except BaseException:
                if not had and self.links_map.lookup(vni) is None:
                    del self._slots[vni]
                    heapq.heappush(self._free, slot)
                raise
        return slot

    def set_link(self, vni: int, egress: schemas.Emulation | None = None,
                 ingress: schemas.Emulation | None = None) -> int:
        """Create or update a link; None = that stage does nothing. Returns the slot."""
        _check_vni(vni)
        return self._write(vni, self.encode_stages(egress, ingress))

    def set_link_stages(self, vni: int, stages: bytes) -> int:
        """set_link with the stages already encoded (encode_stages)."""
        _check_vni(vni)
        return self._write(vni, stages)

    def restore_link(self, vni: int, raw_link: bytes) -> int:
        """Put back a struct moa_link read from the map earlier (a rollback): into the slot it
        had when that slot is still free, so the link keeps its timeline and counters."""
        _check_vni(vni)
        want = self.abi.Link.from_buffer_copy(raw_link).slot
        return self._write(vni, self.stages_of(raw_link), want)

    def update_links(self, links: Mapping[int, bytes]) -> int:
        """Set many links at once: {vni: encoded stages}. Links that exist get their new
        parameters in one BPF_MAP_UPDATE_BATCH (each element is still replaced whole under RCU:
        a packet sees the old or the new parameters, never a mix; slots, timelines and counters
        stay); new ones are created one by one. Returns how many were written."""
        fresh = {v: links[v] for v in links if v not in self._slots}
        if fresh:
            self._add_links(fresh)
        with self._lock:
            existing = [v for v in links if v in self._slots and v not in fresh]
            self._ensure_tables([links[v] for v in existing])
            self._ensure_traces([links[v] for v in existing])
            values = b"".join(bytes(self._link(self._slots[v], links[v])) for v in existing)
            keys = b"".join(int(v).to_bytes(4, sys.byteorder) for v in existing)
            self.links_map.update_batch(keys, values)
        return len(fresh) + len(existing)

    def link_entries(self, links: Mapping[int, bytes]) -> tuple[bytes, bytes]:
        """{vni: encoded stages} of links that hold a slot as packed keys and struct moa_link
        values, each in its slot, for a write elsewhere (datapath/step_writer.py); KeyError
        for a VNI without a slot."""
        with self._lock:
            self._ensure_tables(links.values())
            values = b"".join(bytes(self._link(self._slots[v], links[v])) for v in links)
        return b"".join(int(v).to_bytes(4, sys.byteorder) for v in links), values

    def _add_links(self, links: Mapping[int, bytes]) -> None:
        """New links in three batch writes: their slots' state and counters zeroed, then their
        parameters (a link becomes visible to packets only with the last). What a failure
        leaves out gets its slot back; the links written stay, as set_link's would."""
        for vni in links:
            _check_vni(vni)
        with self._lock:
            if len(links) > len(self._free):
                raise RuntimeError(f"no free link slot (max_links={self.config.max_links})")
            self._ensure_tables(links.values())
            slots = {vni: heapq.heappop(self._free) for vni in links}
            try:
                nr = self.abi.NR_STAGES
                idx = b"".join(int(s * nr + st).to_bytes(4, sys.byteorder)
                               for s in slots.values() for st in range(nr))
                n = len(idx) // 4
                self.state_map.update_batch(idx, bytes(ctypes.sizeof(self.abi.StageState)) * n)
                self.counters_map.update_batch(idx, bytes(self.counters_map._slot *
                                                          self.counters_map.ncpu * n))
                self._slots.update(slots)
                self.links_map.update_batch(
                    b"".join(int(v).to_bytes(4, sys.byteorder) for v in slots),
                    b"".join(bytes(self._link(slots[v], links[v])) for v in slots))
            except BaseException:
                written = self.raw_links(slots)
                for vni, slot in slots.items():
                    if vni not in written:
                        self._slots.pop(vni, None)
                        heapq.heappush(self._free, slot)
                raise

    def raw_links(self, vnis: Iterable[int]) -> dict[int, bytes]:
        """The raw struct moa_link of each of `vnis` the map holds (read from the kernel): one
        lookup each when they are few beside the links held, else the whole map in batch reads
        (a plan of 20,000 new VNIs on a box holding few links: two syscalls rather than 20,000
        lookups that find nothing)."""
        vnis = list(vnis)
        out = {}
        if len(vnis) >= 64 and len(vnis) * 8 >= len(self._slots):
            # room for 1,024 more than held: a read that comes near filling it may have stopped
            # short of a bucket (a hash map is read a bucket at a time), so it is not trusted
            limit = len(self._slots) + 1024
            keys, values, n = self.links_map.lookup_batch(limit)
            if n <= limit - 512:
                want = set(vnis)
                size = self.links_map.value_size
                for j in range(n):
                    vni = int.from_bytes(keys[4 * j:4 * j + 4], sys.byteorder)
                    if vni in want:
                        out[vni] = values[j * size:(j + 1) * size]
                return out
        for vni in vnis:
            raw = self.links_map.lookup(vni)
            if raw is not None:
                out[vni] = bytes(raw)
        return out

    def delete_links(self, vnis: Iterable[int]) -> int:
        """Remove many links (delete_link's, in one batch delete of moa_links, which stops at
        the first VNI the map lacks: from there one delete each); how many the map held."""
        vnis = list(vnis)
        for vni in vnis:
            _check_vni(vni)
        with self._lock:
            try:
                done = self.links_map.delete_held(
                    b"".join(int(v).to_bytes(4, sys.byteorder) for v in vnis))
            except BpfError as e:
                self._free_slots(vnis[:getattr(e, "deleted", 0)])
                raise
            self._free_slots(vnis)
        return done

    def _free_slots(self, vnis: Iterable[int]) -> None:
        for vni in vnis:
            slot = self._slots.pop(vni, None)
            if slot is not None:
                heapq.heappush(self._free, slot)

    def delete_link(self, vni: int) -> bool:
        """Remove a link; its slot is free again (zeroed when handed out). False if unknown."""
        _check_vni(vni)
        with self._lock:
            existed = self.links_map.delete(vni)
            slot = self._slots.pop(vni, None)
            if slot is not None:
                heapq.heappush(self._free, slot)
        return existed

    # -- the box record -----------------------------------------------------------------------

    def box_generation(self) -> int:
        """The highest generation recorded in the kernel (moa_box; 0 on a new box)."""
        box = self.box_map.lookup(0, self.abi.Box)
        return int(box.generation) if box is not None else 0

    def set_box_generation(self, generation: int) -> None:
        self.box_map.update(0, self.abi.Box(generation=generation))

    # -- VXLAN ports and the uplink's saved qdiscs ------------------------------------------------

    def vxlan_ports(self) -> frozenset[int]:
        """The ports of moa_vxlan_ports: VXLAN besides the load-time vxlan_port (parse.h)."""
        raw = self.ports_map.lookup(0)
        if raw is None:
            return frozenset()
        words = memoryview(bytes(raw)).cast("Q")
        return frozenset(64 * i + b for i, w in enumerate(words) if w for b in range(64)
                         if w >> b & 1)

    def set_vxlan_ports(self, ports: Iterable[int]) -> None:
        """moa_vxlan_ports holds exactly `ports` (one write of the whole set: a packet sees
        each port's bit before or after, the others unchanged)."""
        words = [0] * (self.ports_map.value_size // 8)
        for p in ports:
            if not 1 <= p <= 0xFFFF:
                raise ValueError(f"port {p} outside 1..65535")
            words[p >> 6] |= 1 << (p & 63)
        self.ports_map.update(0, _pack_words(words))

    def saved_qdiscs(self, device: str) -> bytes | None:
        """The root qdisc tree saved for `device` before moa's sch_fq replaced it, or None."""
        raw = self.saved_qdiscs_map.lookup(_ifname(device))
        if raw is None:
            return None
        raw = bytes(raw)
        n = int.from_bytes(raw[:4], sys.byteorder)
        return raw[8:8 + n]

    def save_qdiscs(self, device: str, tree: bytes) -> None:
        room = self.saved_qdiscs_map.value_size - 8
        if len(tree) > room:
            raise ValueError(f"the root qdisc tree of {device} takes {len(tree)} bytes of "
                             f"rtnetlink messages, more than the {room} moa can keep")
        self.saved_qdiscs_map.update(_ifname(device), len(tree).to_bytes(4, sys.byteorder)
                                     + bytes(4) + tree.ljust(room, b"\0"))

    def forget_qdiscs(self, device: str) -> None:
        self.saved_qdiscs_map.delete(_ifname(device))

    def link(self, vni: int) -> Any:
        """The raw struct moa_link of a VNI, or None."""
        return self.links_map.lookup(vni, self.abi.Link)

    def stage_state(self, vni: int, stage: int) -> Any:
        """The raw struct moa_stage_state of one stage of a link (lock field included)."""
        slot = self._require_slot(vni)
        return self.state_map.lookup(slot * 2 + int(stage), self.abi.StageState)

    def set_stage_state(self, vni: int, stage: int, state: Any) -> None:
        """Overwrite a stage's state (tests, and resetting a timeline by hand)."""
        slot = self._require_slot(vni)
        self.state_map.update(slot * 2 + int(stage), state)

    def _require_slot(self, vni: int) -> int:
        slot = self._slots.get(vni)
        if slot is None:
            raise KeyError(f"VNI {vni} is not configured")
        return slot

    # -- counters ---------------------------------------------------------------------------------

    def link_counters(self, vni: int) -> dict[str, StageCounters]:
        """{"egress": ..., "ingress": ...} (schemas.STAGES), each summed over CPUs, drops by
        schemas.DROP_REASONS (the enums' order, checked on load)."""
        self._require_slot(vni)
        return self.counters_of([vni])[vni]

    def counter_table(self) -> CounterTable:
        """Every link's counters at once, summed over CPUs, in a few batch lookups of
        moa_counters (and of moa_state, for SHARED_COUNTS); takes no lock the datapath takes
        (datapath.counter_table.read). Safe from any thread."""
        with self._lock:
            slots = dict(self._slots)
        shared = {name: getattr(self.abi.StageState, name).offset for name in SHARED_COUNTS}
        return read_counter_table(self.counters_map, self.abi.LinkCounters, slots,
                                  self.state_map, shared)

    def counter_rows(self, vnis: Iterable[int]) -> CounterRows:
        """The counters of many VNIs (those of `vnis` the classifier holds, in the order asked)
        as arrays (datapath.counter_table.CounterRows), read with the counter table's batch
        lookups, moa_counters and moa_state by the same runs of slots: what counters_of gives
        as objects, for a reader that builds its own (telemetry.links of 100,000 links)."""
        import numpy as np

        with self._lock:
            slots = {v: s for v in vnis if (s := self._slots.get(v)) is not None}
        held = list(slots.values())
        windows = runs(held)
        fields, values = read_counter_rows(self.counters_map, self.abi.LinkCounters, held,
                                           windows)
        so = [i for i, f in enumerate(fields) if f.startswith("sojourn_")]
        if so:  # bucket 0, which the datapath leaves implicit (_histogram), figured in bulk
            rest = values[:, :, so[1:]].sum(axis=2, dtype=np.uint64)
            packets = values[:, :, fields.index("packets")]
            values = values.copy()
            values[:, :, so[0]] = np.where(packets > rest, packets - rest, 0)
        shared: dict[tuple[int, int], dict[str, int]] = {}
        backlog = self.backlogs(slots, shared, windows)
        return CounterRows(vnis=list(slots), fields=fields, values=values, backlog=backlog,
                           shared=shared)

    def counters_of(self, vnis: Iterable[int]) -> dict[int, dict[str, StageCounters]]:
        """link_counters of many VNIs (those the classifier holds), read in bulk with the
        counter table's batch lookups (counter_rows, as objects: status pages)."""
        got = self.counter_rows(vnis)
        fields = got.fields
        reasons = schemas.DROP_REASONS
        dr = [fields.index(f"drops_{r}") for r in reasons]
        pk, by = fields.index("packets"), fields.index("bytes")
        sup, ho = fields.index("events_suppressed"), fields.index("handover")
        mk = fields.index("marks")
        so = [i for i, f in enumerate(fields) if f.startswith("sojourn_")]
        # drops and buckets are arrays of struct moa_link_counters: consecutive in `fields`
        # (counter_fields lists them in place), so each is one slice of a row
        d0, d1 = dr[0], dr[-1] + 1
        s0, s1 = (so[0], so[-1] + 1) if so else (0, 0)
        assert dr == list(range(d0, d1)) and so == list(range(s0, s1)), fields
        rows = got.values.tolist()  # [k][stage][field] of the k-th of got.vnis, python ints
        backlog, shared = got.backlog, got.shared
        none = (0, 0)
        out: dict[int, dict[str, StageCounters]] = {}
        for vni, stages in zip(got.vnis, rows):
            out[vni] = per = {}
            for st, (name, row) in enumerate(zip(schemas.STAGES, stages)):
                b_ns, b_bytes = backlog.get((vni, st), none) if backlog else none
                per[name] = StageCounters(
                    packets=row[pk], bytes=row[by],
                    drops=dict(zip(reasons, row[d0:d1])),
                    events_suppressed=row[sup], handover=row[ho], marks=row[mk],
                    **(shared.get((vni, st), {}) if shared else {}),
                    sojourn=row[s0:s1],
                    backlog_ns=b_ns, backlog_bytes=b_bytes)
        return out

    def backlogs(self, slots: Mapping[int, int],
                 shared: dict[tuple[int, int], dict[str, int]] | None = None,
                 windows: list[tuple[int, int]] | None = None,
                 ) -> dict[tuple[int, int], tuple[int, int]]:
        """{(vni, stage): (backlog_ns, backlog_bytes)} of the stages of `slots` (VNI -> slot)
        that have a rate and a backlog now: the timeline's tail t_last minus the monotonic clock
        (bpf_ktime_get_ns's), and that time at the stage's rate as bytes (rounded down, L1
        overhead included as the timeline charges it). Computed from the state and the
        parameters - of moa_state the rows of `slots` (datapath.counter_table.read_runs), of
        moa_links only the links with a stage whose tail is ahead of now (the others have no
        backlog whatever their rate): one lookup each, or one batch read of the map when they
        are an eighth of the links held or more - no cost on the datapath. A stage whose
        timeline a locked step owns at that instant (t_last = MOA_OWNED) reads as empty.
        `shared`, when given, gets the stages' counts kept in the same state (SHARED_COUNTS:
        corrupted, duplicated) where they are not 0, by name. `windows`: runs of the slots'
        values, when the caller has them."""
        import numpy as np

        if not slots:
            return {}
        nst = self.abi.NR_STAGES
        vnis = list(slots)  # row k * nst + stage of `state`: the k-th of `slots`
        sraw, rows = read_runs(self.state_map, list(slots.values()), nst, windows)
        ssize = self.state_map.value_size
        state = np.frombuffer(sraw, dtype=np.uint8).reshape(-1, nst, ssize)[
            np.array(rows, dtype=np.intp)].reshape(len(vnis) * nst, ssize)

        def word(offset: int) -> Any:  # one u64 field of every row
            return state[:, offset:offset + 8].copy().view(np.uint64).reshape(-1)

        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if shared is not None:
            for name in SHARED_COUNTS:
                col = word(getattr(self.abi.StageState, name).offset)
                for idx in np.flatnonzero(col).tolist():
                    shared.setdefault((vnis[idx // nst], idx % nst), {})[name] = int(col[idx])
        t_last = word(self.abi.StageState.t_last.offset)
        owned = (1 << 64) - 1
        ahead = np.flatnonzero((t_last != np.uint64(owned)) & (t_last > np.uint64(now))).tolist()
        if not ahead:
            return {}
        want = {vnis[idx // nst] for idx in ahead}
        lsize = self.links_map.value_size
        if len(want) * 8 < len(self._slots):
            links = {vni: raw for vni in want if (raw := self.links_map.lookup(vni)) is not None}
        else:
            kraw, lraw, lgot = self.links_map.lookup_batch(len(self._slots) + 64)
            links = {vni: lraw[j * lsize:(j + 1) * lsize] for j in range(lgot)
                     if (vni := int.from_bytes(kraw[4 * j:4 * j + 4], sys.byteorder)) in want}
        soff = self.abi.Link.stage.offset
        psize = ctypes.sizeof(self.abi.StageParams)
        roff = self.abi.StageParams.rate_bps.offset
        out: dict[tuple[int, int], tuple[int, int]] = {}
        for idx in ahead:
            vni, st = vnis[idx // nst], idx % nst
            link = links.get(vni)
            if link is None:
                continue
            o = soff + st * psize + roff
            rate = int.from_bytes(link[o:o + 8], sys.byteorder)
            if not rate:
                continue
            ns = int(t_last[idx]) - now
            out[(vni, st)] = (ns, ns * rate // 8_000_000_000)
        return out

    def global_counters(self) -> dict[str, int]:
        """Every field of struct moa_global_counters (non_vxlan, unknown_vni, ringbuf_fail,
        handover, events_suppressed, port_held, ...), summed over CPUs."""
        names = [n for n, *_ in self.abi.GlobalCounters._fields_
                 if not n.startswith(("reserved", "_pad"))]
        totals = dict.fromkeys(names, 0)
        for c in self.global_map.lookup(0, self.abi.GlobalCounters):
            for n in names:
                totals[n] += getattr(c, n)
        return totals

    # -- drop events ------------------------------------------------------------------------------

    def parse_drop_event(self, record: bytes) -> Any:
        """One ring buffer record as an abi.DropEvent (struct moa_drop_event, from BTF). Its
        reserved words give it room to grow; any change bumps MOA_DROP_EVENT_VERSION, and a
        record of another version is refused (DropEventError) rather than misread."""
        size = ctypes.sizeof(self.abi.DropEvent)
        if len(record) < size:
            raise DropEventError(f"drop event of {len(record)} bytes, expected {size}")
        ev = self.abi.DropEvent.from_buffer_copy(record[:size])
        if ev.version != self.event_version:
            raise DropEventError(f"drop event version {ev.version}, reader knows "
                                 f"{self.event_version}")
        return ev

    def drop_event_reader(self, callback: Callable[[Any], None]) -> RingBuffer:
        """A RingBuffer over moa_events calling callback(abi.DropEvent) per event; attach() it
        to an asyncio loop or poll()/consume() it. Close it before the classifier."""
        return RingBuffer(self.events_map, lambda rec: callback(self.parse_drop_event(rec)))


def _histogram(packets: int, buckets: list[int]) -> list[int]:
    """The sojourn histogram from the map's buckets, whose bucket 0 the datapath leaves
    implicit (abi.h): it is the passed frames the other buckets do not count. The per-CPU words
    are copied one after another while the datapath counts, so a frame counted in its bucket
    after `packets` was copied could make it -1 for that read: 0 then."""
    return [max(packets - sum(buckets[1:]), 0)] + buckets[1:]


def _pack_words(words: list[int]) -> bytes:
    return b"".join(w.to_bytes(8, sys.byteorder) for w in words)


def _ifname(device: str) -> bytes:
    name = device.encode()
    if not 0 < len(name) < 16:
        raise ValueError(f"device name {device!r} is not 1..15 bytes")
    return name.ljust(16, b"\0")


def _check_vni(vni: int) -> None:
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= MAX_VNI:
        raise ValueError(f"vni: {vni!r} outside 0..{MAX_VNI}")
