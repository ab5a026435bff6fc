"""BPF maps by fd: lookup, update, delete, keys, batches, per-CPU values, pins.

``Map``
    ``fd, name, type, key_size, value_size, max_entries``, ``is_percpu``;
    ``lookup(key, value_type=None)`` -> bytes | None (per-CPU maps: a list with one value per
    possible CPU); ``lookup_batch(limit)`` -> (keys, values, n): many entries in few syscalls;
    ``update(key, value, flags=BPF_ANY)`` (per-CPU maps take a list, or one value
    written to every CPU); ``delete(key) -> bool``; ``keys(key_type=None)``; ``items()``;
    ``pin(path)``, ``unpin()``; ``Map.from_pin(path)`` (after a restart; ``close()`` it).
    Keys and values are bytes, ctypes objects or ints (little-endian, of the key/value size);
    with ``value_type``/``key_type`` results come back as that ctypes type.
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import sys
from collections.abc import Iterator
from typing import Any

from datapath.libbpf.checks import require_bpffs
from datapath.libbpf.lib import BpfError, check, errno_error, libbpf, possible_cpus

BPF_ANY, BPF_NOEXIST, BPF_EXIST, BPF_F_LOCK = 0, 1, 2, 4

_c = ctypes
_u32, _u64, _sz = _c.c_uint32, _c.c_uint64, _c.c_size_t


class MapType:
    """The BPF map types moa uses (uapi enum bpf_map_type)."""
    HASH = 1
    ARRAY = 2
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    PERCPU_CGROUP_STORAGE = 21
    RINGBUF = 27


_PERCPU_TYPES = {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH,
                 MapType.PERCPU_CGROUP_STORAGE}


def to_bytes(x: Any, size: int, what: str) -> bytes:
    if isinstance(x, int):
        return x.to_bytes(size, "little", signed=x < 0)
    if isinstance(x, (bytes, bytearray, memoryview)):
        b = bytes(x)
    elif isinstance(x, (ctypes.Structure, ctypes.Union, ctypes.Array, ctypes._SimpleCData)):
        b = ctypes.string_at(ctypes.addressof(x), ctypes.sizeof(x))
    else:
        raise TypeError(f"{what}: expected bytes, a ctypes object or an int, "
                        f"not {type(x).__name__}")
    if len(b) != size:
        raise ValueError(f"{what}: {len(b)} bytes given, the map's size is {size}")
    return b


def from_bytes(b: bytes, ctype: Any) -> Any:
    return b if ctype is None else ctype.from_buffer_copy(b[:ctypes.sizeof(ctype)])


class _MapInfo(ctypes.Structure):
    """uapi struct bpf_map_info (linux/bpf.h)."""
    _fields_ = [
        ("type", _u32), ("id", _u32), ("key_size", _u32), ("value_size", _u32),
        ("max_entries", _u32), ("map_flags", _u32), ("name", _c.c_char * 16),
        ("ifindex", _u32), ("btf_vmlinux_value_type_id", _u32), ("netns_dev", _u64),
        ("netns_ino", _u64), ("btf_id", _u32), ("btf_key_type_id", _u32),
        ("btf_value_type_id", _u32), ("_pad", _u32), ("map_extra", _u64),
    ]


class _BatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts of libbpf (bpf/bpf.h): sz, elem_flags, flags."""
    _fields_ = [("sz", _sz), ("elem_flags", _u64), ("flags", _u64)]


class Pinnable:
    """pin()/unpin() of a BPF map or program by its fd."""

    kind: str  # "map" or "program", for messages
    fd: int
    name: str
    pin_path: str | None

    def pin(self, path: str) -> None:
        require_bpffs(os.path.dirname(path) or ".")
        check(libbpf().bpf_obj_pin(self.fd, path.encode()),
               f"pin of {self.kind} {self.name} at {path}")
        self.pin_path = path

    def unpin(self) -> None:
        """Remove the pin (the object itself lives on while fds or programs reference it)."""
        if self.pin_path:
            try:
                os.unlink(self.pin_path)
            except FileNotFoundError:
                pass
            self.pin_path = None


class Map(Pinnable):
    """A BPF map by fd. Object maps live as long as their BpfObject; from_pin() maps own the fd."""

    kind = "map"

    def __init__(self, fd: int, name: str, type: int, key_size: int, value_size: int,
                 max_entries: int, *, owner: Any = None, owns_fd: bool = False,
                 pin_path: str | None = None) -> None:
        self.fd = fd
        self.name = name
        self.type = type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.pin_path = pin_path
        self._owner = owner  # keeps the BpfObject (and so the fd) alive
        self._owns_fd = owns_fd
        self._ncpu = possible_cpus() if type in _PERCPU_TYPES else 1

    def __repr__(self) -> str:
        return (f"Map({self.name!r}, fd={self.fd}, type={self.type}, key={self.key_size}, "
                f"value={self.value_size}, max_entries={self.max_entries})")

    @classmethod
    def from_pin(cls, path: str) -> "Map":
        """Open a pinned map (bpf_obj_get) and read its shape from the kernel."""
        lib = libbpf()
        fd = lib.bpf_obj_get(path.encode())
        if fd < 0:
            raise errno_error(f"bpf_obj_get({path})", -fd)
        try:
            info = _MapInfo()
            n = _u32(ctypes.sizeof(info))
            check(lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n)),
                   f"bpf_obj_get_info_by_fd({path})")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, info.name.decode(), info.type, info.key_size, info.value_size,
                   info.max_entries, owns_fd=True, pin_path=path)

    @property
    def is_percpu(self) -> bool:
        return self.type in _PERCPU_TYPES

    @property
    def ncpu(self) -> int:
        """Values per key: the possible CPUs for per-CPU maps, else 1."""
        return self._ncpu

    @property
    def _slot(self) -> int:
        # Per-CPU values are laid out at 8-byte strides (kernel: round_up(value_size, 8)).
        return (self.value_size + 7) & ~7

    def _key(self, key: Any) -> ctypes.Array:
        return ctypes.create_string_buffer(to_bytes(key, self.key_size, f"{self.name} key"),
                                           self.key_size)

    def lookup(self, key: Any, value_type: Any = None) -> Any:
        """The value at `key` (a list of per-CPU values for per-CPU maps), or None if absent."""
        k = self._key(key)
        buf = ctypes.create_string_buffer(self._slot * self._ncpu if self.is_percpu
                                          else self.value_size)
        ret = libbpf().bpf_map_lookup_elem(self.fd, k, buf)
        if ret == -errno_mod.ENOENT:
            return None
        check(ret, f"lookup in map {self.name}")
        raw = buf.raw
        if not self.is_percpu:
            return from_bytes(raw, value_type)
        return [from_bytes(raw[i * self._slot: i * self._slot + self.value_size], value_type)
                for i in range(self._ncpu)]

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        """Write `value` at `key`. Per-CPU maps: a list of ncpu values, or one value for all."""
        k = self._key(key)
        if self.is_percpu:
            vals = list(value) if isinstance(value, (list, tuple)) else [value] * self._ncpu
            if len(vals) != self._ncpu:
                raise ValueError(f"{self.name}: {len(vals)} per-CPU values, {self._ncpu} CPUs")
            data = b"".join(
                to_bytes(v, self.value_size, f"{self.name} value").ljust(self._slot, b"\0")
                for v in vals)
        else:
            data = to_bytes(value, self.value_size, f"{self.name} value")
        buf = ctypes.create_string_buffer(data, len(data))
        check(libbpf().bpf_map_update_elem(self.fd, k, buf, flags), f"update of map {self.name}")

    def update_batch(self, keys: bytes, values: bytes, flags: int = BPF_ANY) -> None:
        """Write many entries in one syscall (BPF_MAP_UPDATE_BATCH): `keys` and `values` are the
        packed keys and values, back to back; a per-CPU map's value is one per possible CPU at
        8-byte strides, as lookup returns it. On an error the entries before the failing one
        are written (the exception says how many)."""
        n, rem = divmod(len(keys), self.key_size)
        value_size = self._slot * self.ncpu if self.is_percpu else self.value_size
        if rem or len(values) != n * value_size:
            raise ValueError(f"{self.name}: {len(keys)} key bytes and {len(values)} value bytes "
                             f"are not whole entries of {self.key_size}+{value_size}")
        if n == 0:
            return
        count = _u32(n)
        kb, vb = (ctypes.create_string_buffer(keys, len(keys)),
                  ctypes.create_string_buffer(values, len(values)))
        opts = _BatchOpts(ctypes.sizeof(_BatchOpts), flags, 0)
        ret = libbpf().bpf_map_update_batch(self.fd, kb, vb, ctypes.byref(count),
                                            ctypes.byref(opts))
        if ret < 0:
            raise errno_error(f"batch update of map {self.name} "
                              f"({count.value} of {n} written)", -ret)

    def delete_batch(self, keys: bytes) -> int:
        """Delete many keys in one syscall; every key must exist (ENOENT otherwise, after the
        ones before it are deleted: the error's `deleted` says how many). Returns how many were
        deleted."""
        n, rem = divmod(len(keys), self.key_size)
        if rem:
            raise ValueError(f"{self.name}: {len(keys)} key bytes are not whole keys")
        if n == 0:
            return 0
        count = _u32(n)
        kb = ctypes.create_string_buffer(keys, len(keys))
        ret = libbpf().bpf_map_delete_batch(self.fd, kb, ctypes.byref(count), None)
        if ret < 0:
            err = errno_error(f"batch delete from map {self.name} ({count.value} of {n} deleted)",
                              -ret)
            err.deleted = count.value  # type: ignore[attr-defined]
            raise err
        return count.value

    def delete_held(self, keys: bytes) -> int:
        """Delete those of many keys the map holds; how many it held. One batch delete, which
        stops at the first key the map lacks (ENOENT): from there one delete each. Another
        error is raised with its `deleted`, the keys deleted before it."""
        try:
            return self.delete_batch(keys)
        except BpfError as e:
            if e.errno != errno_mod.ENOENT:
                raise
            done = e.deleted  # type: ignore[attr-defined]
            size = self.key_size
            return done + sum(1 for i in range(done * size, len(keys), size)
                              if self.delete(keys[i:i + size]))

    def lookup_batch(self, limit: int | None = None, chunk: int = 4096,
                     start: int = 0) -> tuple[bytes, bytes, int]:
        """Up to `limit` entries (None: all) in one BPF_MAP_LOOKUP_BATCH per `chunk` of them:
        (keys, values, n), packed back to back into buffers allocated once. An array is read
        from index `start` on (0 unless given; a hash always from its start), so `limit`
        reads indexes start..start+limit-1. Per-CPU values come as ncpu
        values of round_up(value_size, 8) bytes each per key, in CPU order (the kernel's layout).

        Nothing is locked and nothing is written: the kernel copies each value as it holds it
        while programs may be updating it (each aligned 8-byte word is read whole)."""
        if start and self.type not in (MapType.ARRAY, MapType.PERCPU_ARRAY):
            raise ValueError(f"{self.name}: start is for arrays (the batch token is an index)")
        room = self.max_entries - start
        total = room if limit is None else min(limit, room)
        vsize = self._slot * self._ncpu if self.is_percpu else self.value_size
        kb = ctypes.create_string_buffer(max(total, 1) * self.key_size)
        vb = ctypes.create_string_buffer(max(total, 1) * vsize)
        n = 0
        lib = libbpf()
        opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
        # The batch token: for arrays the next index, for hashes a bucket (u32); key-sized at least.
        token_size = max(self.key_size, 8)
        # the token is the last key read (the kernel goes on after it): index start - 1
        in_batch = (ctypes.create_string_buffer((start - 1).to_bytes(token_size, sys.byteorder),
                                                token_size) if start else None)
        out_batch = ctypes.create_string_buffer(token_size)
        while n < total:
            count = _u32(min(chunk, total - n))
            ret = lib.bpf_map_lookup_batch(self.fd, in_batch, out_batch,
                                           ctypes.byref(kb, n * self.key_size),
                                           ctypes.byref(vb, n * vsize),
                                           ctypes.byref(count), ctypes.byref(opts))
            if ret == -errno_mod.ENOSPC and n > 0:
                # A hash map hands out whole buckets: the next one does not fit in what is left
                # of `limit` (the map grew past it while being read). Up to `limit` it is.
                break
            if ret < 0 and ret != -errno_mod.ENOENT:
                raise errno_error(f"batch lookup in map {self.name}", -ret)
            n += count.value
            if ret == -errno_mod.ENOENT or count.value == 0:  # the end of the map
                break
            in_batch = ctypes.create_string_buffer(out_batch.raw, token_size)
        return (ctypes.string_at(kb, n * self.key_size), ctypes.string_at(vb, n * vsize), n)

    def delete(self, key: Any) -> bool:
        """Delete `key`; False if it was not there."""
        ret = libbpf().bpf_map_delete_elem(self.fd, self._key(key))
        if ret == -errno_mod.ENOENT:
            return False
        check(ret, f"delete from map {self.name}")
        return True

    def keys(self, key_type: Any = None) -> Iterator[Any]:
        """All keys (bpf_map_get_next_key). Deleting the current key while iterating is safe for
        arrays; for hashes a deleted key restarts the walk (kernel behaviour)."""
        lib = libbpf()
        cur: Any = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ret = lib.bpf_map_get_next_key(self.fd, cur, nxt)
            if ret == -errno_mod.ENOENT:
                return
            check(ret, f"next key of map {self.name}")
            yield from_bytes(nxt.raw, key_type)
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def items(self, key_type: Any = None, value_type: Any = None) -> Iterator[tuple[Any, Any]]:
        for k in self.keys():
            v = self.lookup(k, value_type)
            if v is not None:
                yield from_bytes(k, key_type), v

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "Map":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

