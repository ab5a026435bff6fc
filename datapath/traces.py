"""Trace-driven capacity in userspace: Mahimahi trace files, the trace's key and mean rate, and
the traces held in moa_trace (datapath/bpf/trace.h; docs/semantics.md, "Trace-driven capacity").

A trace (schemas.Trace) is held once per distinct content, keyed by 32 bits of a hash of it, as
the custom distribution tables are: written before the first link that refers to it, removed
when the map would overflow and no link refers to it any more. Two different traces with one
key cannot be held apart: the second is refused (`unsupported`, naming the field).
"""
from __future__ import annotations

import ctypes
import hashlib
import struct
import sys
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import schemas

if TYPE_CHECKING:
    from datapath.libbpf import Map

__all__ = ["OPP_BYTES", "TraceStore", "mean_rate_bps", "read_mahimahi", "trace_key"]

OPP_BYTES = 1500          # MOA_TRACE_OPP: bytes of IP packets per delivery opportunity


def read_mahimahi(text: str) -> schemas.Trace:
    """An mm-link trace file: one integer (ms) per line. ValueError naming the line; the rules
    across lines (order, length) are schemas.check_emulation's."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            raise ValueError(f"line {lineno}: empty (mm-link refuses empty lines)")
        try:
            out.append(int(line.strip(), 10))
        except ValueError:
            raise ValueError(f"line {lineno}: {line.strip()!r} "
                             f"is not a whole number of ms") from None
    if not out:
        raise ValueError("no opportunities: the trace is empty")
    return schemas.Trace(opportunities_ms=tuple(out))


@lru_cache(maxsize=64)
def trace_key(ms: tuple[int, ...]) -> int:
    """The trace's key in moa_trace (stage_params.trace_key): 32 bits of a hash, never 0."""
    digest = hashlib.sha256(struct.pack(f"<{len(ms)}I", *ms)).digest()
    return int.from_bytes(digest[:4], "little") or 1


def mean_rate_bps(ms: tuple[int, ...]) -> int:
    """What the trace delivers over one period, in bit/s (at least 1): stage_params.rate_bps of
    a trace link, which the backlog telemetry and the default queue use."""
    return max(1, len(ms) * OPP_BYTES * 8 * 1000 // ms[-1])


class TraceStore:
    """The traces in moa_trace, for one Classifier (called under its lock)."""

    def __init__(self, trace_map: Map, abi: Any) -> None:
        self.map = trace_map
        self.abi = abi
        self.max = int(abi.TRACE_KEYS_MAX)
        self.size = int(abi.TRACE_MAX)
        self._known: dict[int, tuple[int, ...]] = {}   # every trace this process saw, by key
        self._present: set[int] = set()
        for key, raw in self.map.items():   # a restarted service: the traces links still use
            k = key if isinstance(key, int) else int.from_bytes(bytes(key), sys.byteorder)
            raw = bytes(raw)
            n = int.from_bytes(raw[:4], sys.byteorder)
            self._known[k] = struct.unpack_from(f"<{n}I", raw, 8)
            self._present.add(k)

    def remember(self, *stages: schemas.Emulation | None) -> None:
        """Keep the traces of these stages by key, for the writes that will need them."""
        for e in stages:
            if e is None or e.trace is None:
                continue
            ms = e.trace.opportunities_ms
            if self._known.setdefault(trace_key(ms), ms) != ms:
                raise schemas.InvalidMessage(
                    "trace", "this trace's key collides with another trace's on this box; "
                    "move one opportunity of it by 1 ms", code="unsupported")

    def keys(self, stages: bytes) -> set[int]:
        """The trace keys an encoded `stage` array refers to."""
        size = ctypes.sizeof(self.abi.StageParams)
        foff, koff = self.abi.StageParams.flags.offset, self.abi.StageParams.trace_key.offset
        flag = int(self.abi.StageFlags.TRACE)
        out = set()
        for st in range(self.abi.NR_STAGES):
            if stages[st * size + foff] & flag:
                out.add(int.from_bytes(stages[st * size + koff:st * size + koff + 4],
                                       sys.byteorder))
        return out

    def ensure(self, stages: Iterable[bytes], all_links: Iterable[bytes]) -> None:
        """Every trace `stages` refer to is in moa_trace; when the map would overflow, the traces
        no link (all_links: every link's stage array) refers to any more are removed first."""
        need = set().union(*(self.keys(s) for s in stages))
        missing = need - self._present
        if not missing:
            return
        unknown = [k for k in missing if k not in self._known]
        if unknown:
            raise RuntimeError(f"trace {unknown[0]:#x} is not known")
        if len(self._present) + len(missing) > self.max:
            used = set(need)
            for s in all_links:
                used |= self.keys(s)
            for key in self._present - used:
                self.map.delete(key)
                self._present.discard(key)
            if len(self._present) + len(missing) > self.max:
                raise schemas.InvalidMessage(
                    "trace", f"this box holds at most {self.max} distinct traces at once",
                    code="unsupported")
        for key in missing:
            ms = self._known[key]
            head = struct.pack(f"<II{len(ms)}I", len(ms), ms[-1], *ms)
            self.map.update(key, head.ljust(self.map.value_size, b"\0"))
            self._present.add(key)

