"""ctypes over Debian's libbpf.so.1 (1.1.x): open/load objects, maps, programs, ring buffers.

Public API
----------
Errors
    ``BpfError(msg, errno=None)``: any libbpf/BPF failure (``.errno`` when the kernel gave one).
    ``BpfLoadError(BpfError)``: open/load failed; ``str(e)`` and ``e.log`` hold libbpf's output,
    which includes the verifier log.
    ``LibbpfMissing(BpfError)``: something BPF needs is absent; the message names it (the library
    or one of its symbols, bpffs, the privilege, a program/map type or helper of the kernel).

``BpfObject.open(path, *, rodata=None, max_entries=None, pin_root=None) -> BpfObject``
    Opens the object, writes ``const volatile`` globals (``rodata={"name": int | bytes}``, offsets
    and sizes from the BTF DATASEC ".rodata"), overrides map sizes (``max_entries={"map": n}``),
    and with ``pin_root`` gives every map whose name starts with ``moa_`` the pin path
    ``pin_root/name``: an existing pin there is reused (maps outlive the process), a new map is
    pinned at load. Then loads. Unknown names raise ``KeyError`` naming them.
    ``.program(name) -> Program``, ``.map(name) -> Map``, ``.btf -> datapath.btf.Btf``,
    ``.map_names()``, ``.program_names()``, ``.close()``; a context manager.

``Map``
    ``fd, name, type, key_size, value_size, max_entries``, ``is_percpu``;
    ``lookup(key, value_type=None)`` -> bytes | None (per-CPU maps: a list with one value per
    possible CPU); ``update(key, value, flags=BPF_ANY)`` (per-CPU maps take a list, or one value
    written to every CPU); ``delete(key) -> bool``; ``keys(key_type=None)``; ``items()``;
    ``pin(path)``, ``unpin()``; ``Map.from_pin(path)`` (after a restart; ``close()`` it).
    Keys and values are bytes, ctypes objects or ints (little-endian, of the key/value size);
    with ``value_type``/``key_type`` results come back as that ctypes type.

``Program``
    ``fd, name, type``; ``test_run(data, ctx=None, repeat=1, data_out_size=None) -> TestRun``
    (BPF_PROG_TEST_RUN; ``ctx`` a ctypes structure such as ``struct __sk_buff``, returned filled
    in ``TestRun.ctx``; ``retval`` as a signed 32-bit int); ``pin(path)``, ``unpin()``.

``RingBuffer(map, callback)``
    ``callback(bytes)`` per record; ``fileno()`` (epoll fd), ``consume()``, ``poll(timeout_ms)``,
    ``attach(loop=None)`` (``loop.add_reader(fileno, consume)``), ``detach()``, ``close()``.
    An exception raised by the callback is re-raised from ``consume``/``poll``.

``check_environment(pin_root="/sys/fs/bpf", prog_types=("sched_cls",), map_types=(), helpers=())``
    Raises ``LibbpfMissing`` naming the first absent thing; ``load_libbpf(path=None)`` loads the
    library (path: argument, else ``$MOA_LIBBPF``, else ``libbpf.so.1``; alias ``load_library``);
    ``version() -> (major, minor)``; ``possible_cpus()``.

Threads: libbpf's print hook is process-wide; output is routed to the capture of the thread that
called libbpf (thread-local), and everything is also logged to the ``datapath.libbpf`` logger.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno as errno_mod
import logging
import os
import platform
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from datapath.btf import Btf

__all__ = [
    "BpfError", "BpfLoadError", "LibbpfMissing", "BpfObject", "Map", "Program", "TestRun",
    "RingBuffer", "load_libbpf", "load_library", "version", "check_environment", "open_btf_raw", "possible_cpus",
    "BPF_ANY", "BPF_NOEXIST", "BPF_EXIST", "BPF_F_LOCK", "MapType",
]

log = logging.getLogger("datapath.libbpf")

LIBBPF_ENV = "MOA_LIBBPF"
LIBBPF_DEFAULT = "libbpf.so.1"

BPF_ANY, BPF_NOEXIST, BPF_EXIST, BPF_F_LOCK = 0, 1, 2, 4
BPF_FS_MAGIC = 0xCAFE4A11


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

# Names for check_environment() and error messages (uapi enum values).
PROG_TYPES = {"sched_cls": 3, "sched_act": 4, "xdp": 6}
MAP_TYPES = {"hash": 1, "array": 2, "percpu_hash": 5, "percpu_array": 6, "ringbuf": 27}
HELPERS = {"ringbuf_reserve": 131, "ktime_get_ns": 5, "skb_set_tstamp": 192, "spin_lock": 93,
           "redirect": 23, "get_prandom_u32": 7}


class BpfError(Exception):
    """A libbpf or BPF syscall failure."""

    def __init__(self, msg: str, errno: int | None = None) -> None:
        super().__init__(msg)
        self.errno = errno


class BpfLoadError(BpfError):
    """Opening or loading an object failed; `log` is libbpf's output (with the verifier log)."""

    def __init__(self, msg: str, log: str = "", errno: int | None = None) -> None:
        super().__init__(f"{msg}\n--- libbpf log ---\n{log}" if log else msg, errno)
        self.log = log


class LibbpfMissing(BpfError):
    """Something BPF needs is absent: libbpf, a libbpf symbol, bpffs, privilege, a kernel feature."""

    def __init__(self, msg: str, log: str = "", errno: int | None = None) -> None:
        super().__init__(f"{msg}\n--- libbpf log ---\n{log}" if log else msg, errno)
        self.log = log


def _err(what: str, err: int) -> BpfError:
    return BpfError(f"{what}: {os.strerror(err)} (errno {err})", err)


# ---------------------------------------------------------------------------------------------
# The library and its prototypes
# ---------------------------------------------------------------------------------------------

_c = ctypes
_vp, _int, _u32, _u64, _sz, _str = _c.c_void_p, _c.c_int, _c.c_uint32, _c.c_uint64, _c.c_size_t, _c.c_char_p

_PROTOS: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_set_print": (_vp, [_vp]),
    "libbpf_version_string": (_str, []),
    "libbpf_major_version": (_u32, []),
    "libbpf_minor_version": (_u32, []),
    "libbpf_num_possible_cpus": (_int, []),
    "libbpf_strerror": (_int, [_int, _c.c_char_p, _sz]),
    "libbpf_probe_bpf_prog_type": (_int, [_int, _vp]),
    "libbpf_probe_bpf_map_type": (_int, [_int, _vp]),
    "libbpf_probe_bpf_helper": (_int, [_int, _int, _vp]),
    "bpf_object__open_file": (_vp, [_str, _vp]),
    "bpf_object__load": (_int, [_vp]),
    "bpf_object__close": (None, [_vp]),
    "bpf_object__btf": (_vp, [_vp]),
    "bpf_object__next_map": (_vp, [_vp, _vp]),
    "bpf_object__next_program": (_vp, [_vp, _vp]),
    "bpf_object__find_map_by_name": (_vp, [_vp, _str]),
    "bpf_object__find_program_by_name": (_vp, [_vp, _str]),
    "btf__raw_data": (_vp, [_vp, _c.POINTER(_u32)]),
    "bpf_map__name": (_str, [_vp]),
    "bpf_map__fd": (_int, [_vp]),
    "bpf_map__type": (_int, [_vp]),
    "bpf_map__key_size": (_u32, [_vp]),
    "bpf_map__value_size": (_u32, [_vp]),
    "bpf_map__max_entries": (_u32, [_vp]),
    "bpf_map__set_max_entries": (_int, [_vp, _u32]),
    "bpf_map__initial_value": (_vp, [_vp, _c.POINTER(_sz)]),
    "bpf_map__set_pin_path": (_int, [_vp, _str]),
    "bpf_map__pin_path": (_str, [_vp]),
    "bpf_program__name": (_str, [_vp]),
    "bpf_program__fd": (_int, [_vp]),
    "bpf_program__type": (_int, [_vp]),
    "bpf_map_lookup_elem": (_int, [_int, _vp, _vp]),
    "bpf_map_update_elem": (_int, [_int, _vp, _vp, _u64]),
    "bpf_map_delete_elem": (_int, [_int, _vp]),
    "bpf_map_update_batch": (_int, [_int, _vp, _vp, _c.POINTER(_u32), _vp]),
    "bpf_map_delete_batch": (_int, [_int, _vp, _c.POINTER(_u32), _vp]),
    "bpf_map_get_next_key": (_int, [_int, _vp, _vp]),
    "bpf_obj_pin": (_int, [_int, _str]),
    "bpf_obj_get": (_int, [_str]),
    "bpf_obj_get_info_by_fd": (_int, [_int, _vp, _c.POINTER(_u32)]),
    "bpf_prog_test_run_opts": (_int, [_int, _vp]),
    "ring_buffer__new": (_vp, [_int, _vp, _vp, _vp]),
    "ring_buffer__poll": (_int, [_vp, _int]),
    "ring_buffer__consume": (_int, [_vp]),
    "ring_buffer__epoll_fd": (_int, [_vp]),
    "ring_buffer__free": (None, [_vp]),
}

# int (*libbpf_print_fn_t)(enum libbpf_print_level, const char *fmt, va_list ap)
_PRINT_FN = _c.CFUNCTYPE(_c.c_int, _c.c_int, _c.c_char_p, _c.c_void_p)
# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
_SAMPLE_FN = _c.CFUNCTYPE(_c.c_int, _c.c_void_p, _c.c_void_p, _c.c_size_t)

# va_list is an array of one struct on these ABIs, so the callback receives a pointer to it and
# copying the struct is what va_copy does. That lets us size the text first, then format it.
_VA_LIST_SIZE = {"x86_64": 24, "aarch64": 32}.get(platform.machine())

_LIBBPF_WARN, _LIBBPF_INFO, _LIBBPF_DEBUG = 0, 1, 2

_lib_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL] = {}
_capture = threading.local()
_print_cb: Any = None  # the installed callback: must stay referenced for as long as libbpf lives
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.vsnprintf.restype = _c.c_int
_libc.vsnprintf.argtypes = [_c.c_void_p, _c.c_size_t, _c.c_char_p, _c.c_void_p]


def _format(fmt: bytes, ap: int) -> str:
    if _VA_LIST_SIZE:
        copy = (_c.c_char * _VA_LIST_SIZE).from_buffer_copy(_c.string_at(ap, _VA_LIST_SIZE))
        n = _libc.vsnprintf(None, 0, fmt, _c.addressof(copy))
        buf = _c.create_string_buffer(max(n, 0) + 1)
    else:  # unknown ABI: no va_copy, so a fixed buffer (a long verifier log may be truncated)
        buf = _c.create_string_buffer(1 << 20)
    _libc.vsnprintf(buf, len(buf), fmt, ap)
    return buf.value.decode(errors="replace")


def _on_print(level: int, fmt: bytes, ap: int) -> int:
    try:
        text = _format(fmt, ap)
        sink = getattr(_capture, "lines", None)
        if sink is not None and level <= _LIBBPF_INFO:
            sink.append(text)
        log.log(logging.DEBUG if level == _LIBBPF_DEBUG else logging.INFO, "%s", text.rstrip())
    except Exception:  # never let an exception unwind into C
        log.exception("libbpf print callback failed")
    return 0


def load_libbpf(path: str | None = None) -> ctypes.CDLL:
    """The libbpf CDLL with prototypes declared; LibbpfMissing names the file or symbol absent."""
    global _print_cb
    path = path or os.environ.get(LIBBPF_ENV) or LIBBPF_DEFAULT
    with _lib_lock:
        if path in _libs:
            return _libs[path]
        try:
            lib = ctypes.CDLL(path, use_errno=True)
        except OSError as e:
            raise LibbpfMissing(
                f"libbpf is missing: cannot load {path!r} ({e}); install Debian's libbpf1 "
                f"(apt-get install libbpf1) or point ${LIBBPF_ENV} at libbpf.so.1") from e
        for name, (restype, argtypes) in _PROTOS.items():
            try:
                fn = getattr(lib, name)
            except AttributeError as e:
                raise LibbpfMissing(
                    f"libbpf at {path!r} lacks the symbol {name}: libbpf >= 1.1 is needed") from e
            fn.restype, fn.argtypes = restype, argtypes
        if _print_cb is None:
            _print_cb = _PRINT_FN(_on_print)
        lib.libbpf_set_print(_c.cast(_print_cb, _c.c_void_p))
        _libs[path] = lib
        return lib


load_library = load_libbpf  # the name `moa doctor` uses


def version() -> tuple[int, int]:
    """libbpf's (major, minor)."""
    lib = _lib()
    return lib.libbpf_major_version(), lib.libbpf_minor_version()


def _lib() -> ctypes.CDLL:
    return load_libbpf()


@contextmanager
def _captured() -> Iterator[list[str]]:
    """Collect libbpf's warnings and info lines printed by this thread inside the block."""
    outer = getattr(_capture, "lines", None)
    lines: list[str] = []
    _capture.lines = lines
    try:
        yield lines
    finally:
        _capture.lines = outer
        if outer is not None:
            outer.extend(lines)


def _check(ret: int, what: str) -> int:
    """libbpf 1.x returns -errno on failure (and sets errno)."""
    if ret < 0:
        raise _err(what, -ret)
    return ret


def possible_cpus() -> int:
    n = _lib().libbpf_num_possible_cpus()
    return _check(n, "libbpf_num_possible_cpus")


# ---------------------------------------------------------------------------------------------
# Environment checks
# ---------------------------------------------------------------------------------------------

def _bpffs_mounts() -> list[str]:
    mounts = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "bpf":
                mounts.append(parts[1].replace("\\040", " "))
    return mounts


def _require_bpffs(path: str) -> None:
    path = os.path.abspath(path)
    mounts = _bpffs_mounts()
    if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
        raise LibbpfMissing(
            f"bpffs is not mounted under {path} (bpf mounts: {mounts or 'none'}); "
            "mount it with `mount -t bpf bpf /sys/fs/bpf`")


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _require_privilege() -> None:
    caps = _cap_eff()
    cap_sys_admin, cap_bpf, cap_net_admin = 21, 39, 12
    if not (caps >> cap_sys_admin & 1 or (caps >> cap_bpf & 1 and caps >> cap_net_admin & 1)):
        raise LibbpfMissing(
            f"BPF privilege is missing: loading tc programs needs root, or CAP_BPF + CAP_NET_ADMIN "
            f"(effective capabilities {caps:#x}, uid {os.geteuid()})")


def check_environment(pin_root: str | None = "/sys/fs/bpf",
                      prog_types: Sequence[str] = ("sched_cls",),
                      map_types: Sequence[str] = (),
                      helpers: Sequence[str] = ()) -> None:
    """Raise LibbpfMissing naming the first thing BPF needs here that is absent.

    `helpers` are probed for the first of `prog_types` (e.g. ("skb_set_tstamp",) for sched_cls).
    """
    lib = _lib()
    _require_privilege()
    if pin_root is not None:
        _require_bpffs(pin_root)
    for name in prog_types:
        if lib.libbpf_probe_bpf_prog_type(PROG_TYPES[name], None) != 1:
            raise LibbpfMissing(f"kernel feature missing: BPF program type {name}")
    for name in map_types:
        if lib.libbpf_probe_bpf_map_type(MAP_TYPES[name], None) != 1:
            raise LibbpfMissing(f"kernel feature missing: BPF map type {name}")
    for name in helpers:
        ptype = PROG_TYPES[prog_types[0]] if prog_types else PROG_TYPES["sched_cls"]
        if lib.libbpf_probe_bpf_helper(ptype, HELPERS[name], None) != 1:
            raise LibbpfMissing(f"kernel feature missing: BPF helper bpf_{name}")


# ---------------------------------------------------------------------------------------------
# Buffers
# ---------------------------------------------------------------------------------------------

def _to_bytes(x: Any, size: int, what: str) -> bytes:
    if isinstance(x, int):
        return x.to_bytes(size, "little", signed=x < 0)
    if isinstance(x, (bytes, bytearray, memoryview)):
        b = bytes(x)
    elif isinstance(x, (ctypes.Structure, ctypes.Union, ctypes.Array, ctypes._SimpleCData)):
        b = ctypes.string_at(ctypes.addressof(x), ctypes.sizeof(x))
    else:
        raise TypeError(f"{what}: expected bytes, a ctypes object or an int, not {type(x).__name__}")
    if len(b) != size:
        raise ValueError(f"{what}: {len(b)} bytes given, the map's size is {size}")
    return b


def _from_bytes(b: bytes, ctype: Any) -> Any:
    return b if ctype is None else ctype.from_buffer_copy(b[:ctypes.sizeof(ctype)])


# ---------------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------------

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


class _Pinnable:
    """pin()/unpin() of a BPF map or program by its fd."""

    kind: str  # "map" or "program", for messages
    fd: int
    name: str
    pin_path: str | None

    def pin(self, path: str) -> None:
        _require_bpffs(os.path.dirname(path) or ".")
        _check(_lib().bpf_obj_pin(self.fd, path.encode()),
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


class Map(_Pinnable):
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
        lib = _lib()
        fd = lib.bpf_obj_get(path.encode())
        if fd < 0:
            raise _err(f"bpf_obj_get({path})", -fd)
        try:
            info = _MapInfo()
            n = _u32(ctypes.sizeof(info))
            _check(lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n)),
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
        return ctypes.create_string_buffer(_to_bytes(key, self.key_size, f"{self.name} key"),
                                           self.key_size)

    def lookup(self, key: Any, value_type: Any = None) -> Any:
        """The value at `key` (a list of per-CPU values for per-CPU maps), or None if absent."""
        k = self._key(key)
        buf = ctypes.create_string_buffer(self._slot * self._ncpu if self.is_percpu else self.value_size)
        ret = _lib().bpf_map_lookup_elem(self.fd, k, buf)
        if ret == -errno_mod.ENOENT:
            return None
        _check(ret, f"lookup in map {self.name}")
        raw = buf.raw
        if not self.is_percpu:
            return _from_bytes(raw, value_type)
        return [_from_bytes(raw[i * self._slot: i * self._slot + self.value_size], value_type)
                for i in range(self._ncpu)]

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        """Write `value` at `key`. Per-CPU maps: a list of ncpu values, or one value for all."""
        k = self._key(key)
        if self.is_percpu:
            vals = list(value) if isinstance(value, (list, tuple)) else [value] * self._ncpu
            if len(vals) != self._ncpu:
                raise ValueError(f"{self.name}: {len(vals)} per-CPU values, {self._ncpu} CPUs")
            data = b"".join(_to_bytes(v, self.value_size, f"{self.name} value").ljust(self._slot, b"\0")
                            for v in vals)
        else:
            data = _to_bytes(value, self.value_size, f"{self.name} value")
        buf = ctypes.create_string_buffer(data, len(data))
        _check(_lib().bpf_map_update_elem(self.fd, k, buf, flags), f"update of map {self.name}")

    def update_batch(self, keys: bytes, values: bytes, flags: int = BPF_ANY) -> None:
        """Write many entries in one syscall (BPF_MAP_UPDATE_BATCH): `keys` and `values` are the
        packed keys and values, back to back. Not for per-CPU maps. On an error the entries
        before the failing one are written (the exception says how many)."""
        if self.is_percpu:
            raise BpfError(f"{self.name}: update_batch of a per-CPU map is not supported here")
        n, rem = divmod(len(keys), self.key_size)
        if rem or len(values) != n * self.value_size:
            raise ValueError(f"{self.name}: {len(keys)} key bytes and {len(values)} value bytes "
                             f"are not whole entries of {self.key_size}+{self.value_size}")
        if n == 0:
            return
        count = _u32(n)
        kb, vb = ctypes.create_string_buffer(keys, len(keys)), ctypes.create_string_buffer(values, len(values))
        opts = _BatchOpts(ctypes.sizeof(_BatchOpts), flags, 0)
        ret = _lib().bpf_map_update_batch(self.fd, kb, vb, ctypes.byref(count), ctypes.byref(opts))
        if ret < 0:
            raise _err(f"batch update of map {self.name} ({count.value} of {n} written)", -ret)

    def delete_batch(self, keys: bytes) -> int:
        """Delete many keys in one syscall; every key must exist (ENOENT otherwise, after the
        ones before it are deleted). Returns how many were deleted."""
        n, rem = divmod(len(keys), self.key_size)
        if rem:
            raise ValueError(f"{self.name}: {len(keys)} key bytes are not whole keys")
        if n == 0:
            return 0
        count = _u32(n)
        kb = ctypes.create_string_buffer(keys, len(keys))
        ret = _lib().bpf_map_delete_batch(self.fd, kb, ctypes.byref(count), None)
        if ret < 0:
            raise _err(f"batch delete from map {self.name} ({count.value} of {n} deleted)", -ret)
        return count.value

    def delete(self, key: Any) -> bool:
        """Delete `key`; False if it was not there."""
        ret = _lib().bpf_map_delete_elem(self.fd, self._key(key))
        if ret == -errno_mod.ENOENT:
            return False
        _check(ret, f"delete from map {self.name}")
        return True

    def keys(self, key_type: Any = None) -> Iterator[Any]:
        """All keys (bpf_map_get_next_key). Deleting the current key while iterating is safe for
        arrays; for hashes a deleted key restarts the walk (kernel behaviour)."""
        lib = _lib()
        cur: Any = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ret = lib.bpf_map_get_next_key(self.fd, cur, nxt)
            if ret == -errno_mod.ENOENT:
                return
            _check(ret, f"next key of map {self.name}")
            yield _from_bytes(nxt.raw, key_type)
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def items(self, key_type: Any = None, value_type: Any = None) -> Iterator[tuple[Any, Any]]:
        for k in self.keys():
            v = self.lookup(k, value_type)
            if v is not None:
                yield _from_bytes(k, key_type), v

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "Map":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Programs
# ---------------------------------------------------------------------------------------------

class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts of libbpf 1.1 (bpf/bpf.h); `sz` first, set to our size."""
    _fields_ = [
        ("sz", _sz), ("data_in", _vp), ("data_out", _vp), ("data_size_in", _u32),
        ("data_size_out", _u32), ("ctx_in", _vp), ("ctx_out", _vp), ("ctx_size_in", _u32),
        ("ctx_size_out", _u32), ("retval", _u32), ("repeat", _c.c_int), ("duration", _u32),
        ("flags", _u32), ("cpu", _u32), ("batch_size", _u32),
    ]


class TestRun(NamedTuple):
    retval: int           # the program's return value, as a signed 32-bit int (TC_ACT_UNSPEC = -1)
    data: bytes           # the packet after the program
    ctx: Any              # the context after the program (same ctypes type as ctx in), or None
    duration_ns: int      # average per repetition, from the kernel


TestRun.__test__ = False  # type: ignore[attr-defined]  # not a pytest class despite the name


class Program(_Pinnable):
    """A loaded BPF program (lives as long as its BpfObject)."""

    kind = "program"

    def __init__(self, fd: int, name: str, type: int = 0, *, owner: Any = None) -> None:
        self.fd = fd
        self.name = name
        self.type = type
        self.pin_path: str | None = None
        self._owner = owner

    def __repr__(self) -> str:
        return f"Program({self.name!r}, fd={self.fd}, type={self.type})"

    def test_run(self, data: bytes, ctx: Any = None, repeat: int = 1,
                 data_out_size: int | None = None) -> TestRun:
        """BPF_PROG_TEST_RUN. data_out_size defaults to len(data) + 512 (room for pushed headers):
        the kernel fails with ENOSPC when the output packet does not fit."""
        data = bytes(data)
        din = ctypes.create_string_buffer(data, len(data))
        out_size = data_out_size if data_out_size is not None else len(data) + 512
        dout = ctypes.create_string_buffer(max(out_size, 1))
        opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
        opts.data_in = ctypes.addressof(din)
        opts.data_size_in = len(data)
        opts.data_out = ctypes.addressof(dout)
        opts.data_size_out = out_size
        opts.repeat = repeat
        ctx_out = None
        if ctx is not None:
            ctx_in = type(ctx).from_buffer_copy(ctx)
            ctx_out = type(ctx)()
            opts.ctx_in = ctypes.addressof(ctx_in)
            opts.ctx_size_in = ctypes.sizeof(ctx)
            opts.ctx_out = ctypes.addressof(ctx_out)
            opts.ctx_size_out = ctypes.sizeof(ctx)
        ret = _lib().bpf_prog_test_run_opts(self.fd, ctypes.byref(opts))
        _check(ret, f"BPF_PROG_TEST_RUN of {self.name}")
        retval = opts.retval - (1 << 32) if opts.retval >= 1 << 31 else opts.retval
        return TestRun(retval, dout.raw[:opts.data_size_out], ctx_out, opts.duration)


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------

# The verifier's words for a helper call this kernel lacks, or lacks for this program type.
_UNKNOWN_FUNC = re.compile(r"(?:unknown|invalid) func (\w+)#(\d+)")


def _open(path: str) -> int:
    try:
        os.stat(path)  # not os.path.exists: a permission error must not read as "missing"
    except FileNotFoundError:
        raise FileNotFoundError(f"BPF object {path} does not exist (build it with `make bpf`)") from None
    lib = _lib()
    with _captured() as lines:
        obj = lib.bpf_object__open_file(os.fsencode(path), None)
    if not obj:
        err = _c.get_errno()
        raise BpfLoadError(f"cannot open BPF object {path}: {os.strerror(err)}", "".join(lines), err)
    return obj


def _raw_btf(obj: int, path: str) -> bytes:
    lib = _lib()
    btf = lib.bpf_object__btf(obj)
    if not btf:
        raise BpfError(f"{path} has no BTF (compile with clang -g)")
    size = _u32()
    data = lib.btf__raw_data(btf, ctypes.byref(size))
    if not data:
        raise BpfError(f"btf__raw_data failed for {path}")
    return ctypes.string_at(data, size.value)


def open_btf_raw(path: str) -> bytes:
    """The BTF of the object at `path` after libbpf's open-time fix-ups; nothing is loaded."""
    obj = _open(path)
    try:
        return _raw_btf(obj, path)
    finally:
        _lib().bpf_object__close(obj)


class BpfObject:
    """An opened and loaded BPF object (see the module docstring)."""

    def __init__(self, obj: int, path: str) -> None:
        self._obj: int | None = obj
        self.path = path
        self._btf: Btf | None = None
        self._maps: dict[str, Map] = {}
        self._progs: dict[str, Program] = {}

    @classmethod
    def open(cls, path: str, *, rodata: dict[str, int] | None = None,
             max_entries: dict[str, int] | None = None,
             pin_root: str | None = None) -> "BpfObject":
        path = os.fspath(path)
        self = cls(_open(path), path)
        try:
            if rodata:
                self._set_rodata(rodata)
            for name, n in (max_entries or {}).items():
                m = self._find_map(name)
                _check(_lib().bpf_map__set_max_entries(m, n), f"set max_entries of map {name}")
            if pin_root is not None:
                self._set_pins(pin_root)
            self._load()
        except BaseException:
            self.close()
            raise
        return self

    # -- before load ------------------------------------------------------------------------------

    def _iter_maps(self) -> Iterator[int]:
        lib = _lib()
        m = lib.bpf_object__next_map(self._obj, None)
        while m:
            yield m
            m = lib.bpf_object__next_map(self._obj, m)

    def _iter_programs(self) -> Iterator[int]:
        lib = _lib()
        p = lib.bpf_object__next_program(self._obj, None)
        while p:
            yield p
            p = lib.bpf_object__next_program(self._obj, p)

    def _find_map(self, name: str) -> int:
        m = _lib().bpf_object__find_map_by_name(self._require_open(), name.encode())
        if not m:
            raise KeyError(f"{self.path} has no map {name!r} (maps: {', '.join(self.map_names())})")
        return m

    def _set_rodata(self, values: dict[str, Any]) -> None:
        lib = _lib()
        # libbpf names the internal map "<obj prefix>.rodata"; ".rodata.str1.1" etc. are strings.
        rmap = next((m for m in self._iter_maps() if lib.bpf_map__name(m).endswith(b".rodata")), None)
        layout = self.btf.datasec(".rodata") if rmap else {}
        unknown = [k for k in values if k not in layout]
        if unknown:
            raise KeyError(f"{self.path}: {', '.join(map(repr, unknown))} not a const volatile "
                           f"global in .rodata (have: {', '.join(sorted(layout)) or 'none'})")
        size = _sz()
        base = lib.bpf_map__initial_value(rmap, ctypes.byref(size))
        if not base:
            raise BpfError(f"{self.path}: bpf_map__initial_value(.rodata) failed")
        for name, value in values.items():
            off, vsize = layout[name]
            if off + vsize > size.value:
                raise BpfError(f"{self.path}: .rodata var {name} at {off}+{vsize} beyond {size.value}")
            try:
                b = _to_bytes(value, vsize, f".rodata {name}")
            except OverflowError as e:
                raise ValueError(f".rodata {name}: {value} does not fit in {vsize} bytes") from e
            ctypes.memmove(base + off, b, vsize)

    def _set_pins(self, pin_root: str) -> None:
        _require_bpffs(pin_root)
        os.makedirs(pin_root, exist_ok=True)
        lib = _lib()
        for m in self._iter_maps():
            name = lib.bpf_map__name(m).decode()
            if name.startswith("moa_"):
                path = os.path.join(pin_root, name)
                _check(lib.bpf_map__set_pin_path(m, path.encode()), f"set pin path of {name}")

    def _load(self) -> None:
        with _captured() as lines:
            ret = _lib().bpf_object__load(self._obj)
        if ret >= 0:
            return
        err = -ret
        text = "".join(lines)
        if err in (errno_mod.EPERM, errno_mod.EACCES) and "-- BEGIN PROG LOAD LOG --" not in text:
            try:
                _require_privilege()
            except LibbpfMissing as e:
                raise LibbpfMissing(f"{e} (loading {self.path})", text, err) from None
        m = _UNKNOWN_FUNC.search(text)
        if m:
            raise LibbpfMissing(f"kernel feature missing: BPF helper #{m.group(2)} ({m.group(1)}) "
                                f"is not available to this program type on this kernel "
                                f"(loading {self.path})", text, err)
        raise BpfLoadError(f"loading {self.path} failed: {os.strerror(err)} (errno {err})", text, err)

    # -- after load ---------------------------------------------------------------------------------

    def _require_open(self) -> int:
        if self._obj is None:
            raise BpfError(f"BPF object {self.path} is closed")
        return self._obj

    @property
    def btf(self) -> Btf:
        if self._btf is None:
            self._btf = Btf(_raw_btf(self._require_open(), self.path))
        return self._btf

    def map_names(self) -> list[str]:
        lib = _lib()
        return [lib.bpf_map__name(m).decode() for m in self._iter_maps()]

    def program_names(self) -> list[str]:
        lib = _lib()
        return [lib.bpf_program__name(p).decode() for p in self._iter_programs()]

    def map(self, name: str) -> Map:
        if name not in self._maps:
            lib = _lib()
            m = self._find_map(name)
            pin = lib.bpf_map__pin_path(m)
            self._maps[name] = Map(lib.bpf_map__fd(m), name, lib.bpf_map__type(m),
                                   lib.bpf_map__key_size(m), lib.bpf_map__value_size(m),
                                   lib.bpf_map__max_entries(m), owner=self,
                                   pin_path=pin.decode() if pin else None)
        return self._maps[name]

    def program(self, name: str) -> Program:
        if name not in self._progs:
            lib = _lib()
            p = lib.bpf_object__find_program_by_name(self._require_open(), name.encode())
            if not p:
                raise KeyError(f"{self.path} has no program {name!r} "
                               f"(programs: {', '.join(self.program_names())})")
            self._progs[name] = Program(lib.bpf_program__fd(p), name, lib.bpf_program__type(p),
                                        owner=self)
        return self._progs[name]

    def close(self) -> None:
        """Close the object: its fds go; pinned maps and programs stay in bpffs."""
        if self._obj is not None:
            _lib().bpf_object__close(self._obj)
            self._obj = None
            for m in self._maps.values():
                m.fd = -1
            for p in self._progs.values():
                p.fd = -1

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------
# Ring buffers
# ---------------------------------------------------------------------------------------------

class RingBuffer:
    """libbpf ring_buffer over one BPF_MAP_TYPE_RINGBUF map (see the module docstring)."""

    def __init__(self, map: Map, callback: Callable[[bytes], None]) -> None:
        if map.type != MapType.RINGBUF:
            raise BpfError(f"map {map.name} is not a ring buffer (type {map.type})")
        self._map = map  # keeps the map (and its object) alive while the ring buffer is
        self._callback = callback
        self._errors: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sample_cb = _SAMPLE_FN(self._on_sample)  # referenced for the lifetime of rb
        rb = _lib().ring_buffer__new(map.fd, ctypes.cast(self._sample_cb, _vp), None, None)
        if not rb:
            raise _err(f"ring_buffer__new({map.name})", _c.get_errno() or errno_mod.EINVAL)
        self._rb: int | None = rb

    def _on_sample(self, _ctx: int, data: int, size: int) -> int:
        try:
            self._callback(ctypes.string_at(data, size))
        except BaseException as e:  # raised again by consume()/poll(), never into C
            self._errors.append(e)
        return 0

    def _raise_pending(self) -> None:
        if self._errors:
            first, self._errors = self._errors[0], []
            raise first

    def _require(self) -> int:
        if self._rb is None:
            raise BpfError("ring buffer is closed")
        return self._rb

    def fileno(self) -> int:
        return _lib().ring_buffer__epoll_fd(self._require())

    def consume(self) -> int:
        """Read every available record now; returns how many were read."""
        n = _lib().ring_buffer__consume(self._require())
        self._raise_pending()
        return _check(n, "ring_buffer__consume")

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for records and read them (blocks: not for the event loop)."""
        n = _lib().ring_buffer__poll(self._require(), timeout_ms)
        self._raise_pending()
        if n == -errno_mod.EINTR:
            return 0
        return _check(n, "ring_buffer__poll")

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Consume whenever the epoll fd is readable, inside `loop` (default: the running one)."""
        if self._loop is not None:
            raise BpfError("ring buffer is already attached to a loop")
        loop = loop or asyncio.get_running_loop()
        loop.add_reader(self.fileno(), self.consume)
        self._loop = loop

    def detach(self) -> None:
        if self._loop is not None and self._rb is not None:
            self._loop.remove_reader(self.fileno())
        self._loop = None

    def close(self) -> None:
        self.detach()
        if self._rb is not None:
            _lib().ring_buffer__free(self._rb)
            self._rb = None

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
