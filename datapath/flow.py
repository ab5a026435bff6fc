"""Flow mode's table: which point-to-point endpoint's frames the uplink's ingress rewrites toward
which peer (datapath/bpf/flow.h; docs/architecture.md, "Flow mode").

An entry is keyed by the sending endpoint's VNI and says where its frames go: the other
endpoint's VNI, its VTEP's address and UDP port (which the classifier must know as a VXLAN
port: Classifier.set_vxlan_ports), the MAC of the next hop toward it, and what the frame
leaves with as its source (the box's address and the uplink's MAC) and by which device (the
uplink's ifindex). A link is two entries, one per direction (`link_entries`). Both endpoints'
VNIs are also links of the classifier (moa_links): the egress stage shapes the rewritten frame
under the receiving endpoint's VNI, as in VTEP mode.

The table lives in the classifier's object (maps moa_flow and moa_flow_stats, pinned with the
others), so a FlowTable is built on a loaded Classifier; one loaded without
ClassifierConfig.flow_mode never runs flow.h, and a table on it is refused rather than written
to no effect. The entry's layout is abi.h's struct moa_flow, read from BTF (abi.Flow); entries
are packed with `struct` at its offsets (200,000 entries, a box's 100,000 links, are written in
under a second: one batch update).
"""
from __future__ import annotations

import ctypes
import functools
import ipaddress
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from datapath.classifier import MAX_VNI, Classifier

__all__ = ["FlowEntry", "FlowEnd", "Uplink", "FlowTable", "link_entries"]

FLOW_MAP = "moa_flow"
STATS_MAP = "moa_flow_stats"
OWNER_MAP = "moa_flow_owner"  # vni -> who holds the entry (32 bytes: datapath/plan/flows.py)


@dataclass(frozen=True)
class Uplink:
    """What a rewritten frame leaves with and by: the box's address, the uplink's MAC, ifindex."""
    ifindex: int
    ip: str
    mac: str


@dataclass(frozen=True)
class FlowEnd:
    """One endpoint of a flow-mode link: its VNI, its VTEP's address and UDP port, the MAC to
    send it to (None: not known yet)."""
    vni: int
    ip: str
    mac: str | None
    port: int = 4789


@dataclass(frozen=True)
class FlowEntry:
    """moa_flow[vni]: frames arriving with `vni` leave toward `peer_*`, from `src_*`.

    peer_mac None: the next hop toward peer_ip has not answered yet, the entry is pending
    (MOA_FLOW_F_PENDING: its frames are dropped and counted until it is written with a MAC)."""
    vni: int
    peer_vni: int
    peer_ip: str
    peer_mac: str | None
    src_ip: str
    src_mac: str
    ifindex: int
    peer_port: int = 4789


def link_entries(uplink: Uplink, a: FlowEnd, b: FlowEnd) -> tuple[FlowEntry, FlowEntry]:
    """The two entries of the link a-b: a's frames to b, b's to a."""
    def one(src: FlowEnd, dst: FlowEnd) -> FlowEntry:
        return FlowEntry(src.vni, dst.vni, dst.ip, dst.mac, uplink.ip, uplink.mac, uplink.ifindex,
                         dst.port)
    return one(a, b), one(b, a)


@functools.lru_cache(maxsize=65536)
def _mac(value: str, field: str) -> bytes:
    parts = value.split(":")
    try:
        raw = bytes(int(p, 16) for p in parts)
    except ValueError:
        raw = b""
    if len(parts) != 6 or len(raw) != 6 or any(len(p) != 2 for p in parts):
        raise ValueError(f"{field}: {value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return raw


@functools.lru_cache(maxsize=65536)
def _ip(value: str, field: str) -> tuple[int, bytes]:
    """(version, the address's bytes padded to 16)."""
    try:
        a = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not an IPv4 or IPv6 address") from None
    return a.version, a.packed.ljust(16, b"\0")


def _vni(value: int, field: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= MAX_VNI:
        raise ValueError(f"{field}: {value!r} outside 0..{MAX_VNI}")
    return value


@functools.lru_cache(maxsize=65536)  # an address per entry, the same few over 200,000
def _text(raw: bytes, family: int) -> str:
    return str(ipaddress.ip_address(raw[:4] if family == 4 else raw[:16]))


def _delete(m: Any, keys: list[int]) -> int:
    """Delete `keys` (u32) from hash map `m`, those it holds; how many (Map.delete_held)."""
    if len(keys) == 1:
        return int(m.delete(keys[0]))
    return m.delete_held(b"".join(k.to_bytes(4, sys.byteorder) for k in keys))


class FlowTable:
    """moa_flow and its counters on a classifier loaded with flow_mode (see the module doc)."""

    def __init__(self, classifier: Classifier) -> None:
        if not classifier.config.flow_mode:
            raise ValueError("flow_mode: the classifier was loaded without flow mode; its "
                             "ingress program would never read a flow entry")
        self.classifier = classifier
        self.Flow: Any = classifier.abi.Flow
        self.map = classifier.obj.map(FLOW_MAP)
        self.stats = classifier.obj.map(STATS_MAP)
        self.owner_map = classifier.obj.map(OWNER_MAP)
        self.counter_names = tuple(m.name.lower() for m in sorted(classifier.abi.FlowCounter))
        # struct moa_flow's fields at their offsets in BTF (abi.h), packed without ctypes.
        kinds = {"peer_vni": "I", "ifindex": "I", "family": "B", "flags": "B", "peer_mac": "6s",
                 "src_mac": "6s", "src_ip": "16s", "peer_ip": "16s", "peer_port": "H"}
        fmt, at = "=", 0
        self._order = tuple(sorted(kinds, key=lambda n: getattr(self.Flow, n).offset))
        for name in self._order:
            field = getattr(self.Flow, name)
            fmt += (f"{field.offset - at}x" if field.offset > at else "") + kinds[name]
            at = field.offset + field.size
        fmt += f"{ctypes.sizeof(self.Flow) - at}x"
        if struct.calcsize(fmt) != ctypes.sizeof(self.Flow):
            raise RuntimeError(f"struct moa_flow: {fmt} is not {ctypes.sizeof(self.Flow)} bytes")
        self._pack, self._unpack = struct.Struct(fmt).pack, struct.Struct(fmt).unpack
        self.PENDING = int(classifier.abi.FlowFlags.PENDING)
        self._flags_at = self.Flow.flags.offset

    def encode(self, e: FlowEntry) -> bytes:
        """The struct moa_flow of `e` (bytes), every field checked (ValueError naming it)."""
        _vni(e.vni, "vni")
        _vni(e.peer_vni, "peer_vni")
        if e.vni == e.peer_vni:
            raise ValueError(f"peer_vni: {e.peer_vni} is the entry's own VNI")
        if not isinstance(e.ifindex, int) or not 0 < e.ifindex < 1 << 31:
            raise ValueError(f"ifindex: {e.ifindex!r} is not an interface index")
        if not isinstance(e.peer_port, int) or not 0 < e.peer_port <= 0xFFFF:
            raise ValueError(f"peer_port: {e.peer_port!r} outside 1..65535")
        (family, src), (peer_family, peer) = _ip(e.src_ip, "src_ip"), _ip(e.peer_ip, "peer_ip")
        if family != peer_family:
            raise ValueError(f"peer_ip: {e.peer_ip} is IPv{peer_family} but src_ip {e.src_ip} "
                             f"is IPv{family}: a frame keeps its outer family")
        pending = e.peer_mac is None
        values = {"peer_vni": e.peer_vni, "ifindex": e.ifindex, "family": family,
                  "peer_port": e.peer_port, "flags": self.PENDING if pending else 0,
                  "peer_mac": bytes(6) if pending else _mac(e.peer_mac, "peer_mac"),
                  "src_mac": _mac(e.src_mac, "src_mac"),
                  "src_ip": src, "peer_ip": peer}
        return self._pack(*(values[n] for n in self._order))

    def set(self, entries: Iterable[FlowEntry]) -> int:
        """Write these entries (all checked before any is written); how many. Many at once go
        in one batch update."""
        encoded = [(e.vni, self.encode(e)) for e in entries]
        if len(encoded) == 1:
            self.map.update(*encoded[0])
        elif encoded:
            self.map.update_batch(b"".join(k.to_bytes(4, sys.byteorder) for k, _ in encoded),
                                  b"".join(v for _, v in encoded))
        return len(encoded)

    def remove(self, vnis: Iterable[int]) -> int:
        """Delete the entries of these VNIs; how many there were."""
        return _delete(self.map, [_vni(v, "vni") for v in vnis])

    def raw(self) -> dict[int, bytes]:
        """Every entry as the kernel holds it (struct moa_flow's bytes), in batch reads."""
        keys, values, n = self.map.lookup_batch()
        size = self.map.value_size
        return {int.from_bytes(keys[i * 4:i * 4 + 4], sys.byteorder):
                values[i * size:(i + 1) * size] for i in range(n)}

    def decode(self, vni: int, raw: bytes) -> FlowEntry:
        """The FlowEntry of one entry as raw() gives it."""
        f = dict(zip(self._order, self._unpack(raw)))
        mac = None if f["flags"] & self.PENDING else ":".join(f"{x:02x}" for x in f["peer_mac"])
        return FlowEntry(vni, f["peer_vni"], _text(f["peer_ip"], f["family"]), mac,
                         _text(f["src_ip"], f["family"]),
                         ":".join(f"{x:02x}" for x in f["src_mac"]), f["ifindex"], f["peer_port"])

    def entries(self) -> dict[int, FlowEntry]:
        return {vni: self.decode(vni, raw) for vni, raw in self.raw().items()}

    def sync(self, desired: Iterable[FlowEntry]) -> tuple[int, int]:
        """Make the table exactly `desired` (a restart's reconcile): write the entries that
        differ from the kernel's, then delete the ones not desired. (written, deleted)."""
        want = {e.vni: self.encode(e) for e in desired}
        have = self.raw()
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        if changed:
            self.map.update_batch(b"".join(k.to_bytes(4, sys.byteorder) for k in changed),
                                  b"".join(changed.values()))
        stale = [k for k in have if k not in want]
        if stale:
            self.map.delete_batch(b"".join(k.to_bytes(4, sys.byteorder) for k in stale))
        return len(changed), len(stale)

    def restore(self, vni: int, raw: bytes | None, owner: bytes | None) -> None:
        """Put back an entry and its owner as read from the kernel (None: absent): a rollback."""
        for m, value in ((self.map, raw), (self.owner_map, owner)):
            if value is None:
                m.delete(_vni(vni, "vni"))
            else:
                m.update(_vni(vni, "vni"), value)

    def set_owned(self, items: Iterable[tuple[FlowEntry, bytes]]) -> int:
        """Write entries with their owners (the owner first: an entry is never without one)."""
        items = list(items)
        if items:
            self.owner_map.update_batch(
                b"".join(e.vni.to_bytes(4, sys.byteorder) for e, _ in items),
                b"".join(o for _, o in items))
        return self.set(e for e, _ in items)

    def remove_owned(self, vnis: Iterable[int]) -> int:
        """Delete entries and then their owners; how many entries there were."""
        vnis = list(vnis)
        n = self.remove(vnis)
        _delete(self.owner_map, vnis)
        return n

    def owners(self) -> dict[int, bytes]:
        """Every entry's owner (32 bytes), in batch reads."""
        keys, values, n = self.owner_map.lookup_batch()
        size = self.owner_map.value_size
        return {int.from_bytes(keys[i * 4:i * 4 + 4], sys.byteorder):
                values[i * size:(i + 1) * size] for i in range(n)}

    def pending(self, raw: bytes) -> bool:
        """Whether an entry (as raw() gives it) waits for its next hop's MAC."""
        return bool(raw[self._flags_at] & self.PENDING)

    def peer_port(self, raw: bytes) -> int:
        return dict(zip(self._order, self._unpack(raw)))["peer_port"]

    def counters(self) -> dict[str, int]:
        """enum moa_flow_counter by name (lower case), summed over CPUs."""
        return {name: sum(int.from_bytes(v, sys.byteorder) for v in self.stats.lookup(i))
                for i, name in enumerate(self.counter_names)}
