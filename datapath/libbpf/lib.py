"""libbpf.so.1 itself: loading it with its prototypes declared, its log, its errors.

``load_libbpf(path=None)`` loads the library (path: argument, else ``$MOA_LIBBPF``, else
``libbpf.so.1``; alias ``load_library``) and raises ``LibbpfMissing`` naming the file or the
symbol that is absent; ``version() -> (major, minor)``; ``possible_cpus()``.

Errors
    ``BpfError(msg, errno=None)``: any libbpf/BPF failure (``.errno`` when the kernel gave one).
    ``BpfLoadError(BpfError)``: open/load failed; ``str(e)`` and ``e.log`` hold libbpf's output,
    which includes the verifier log.
    ``LibbpfMissing(BpfError)``: something BPF needs is absent; the message names it (the library
    or one of its symbols, bpffs, the privilege, a program/map type or helper of the kernel).

Threads: libbpf's print hook is process-wide; output is routed to the capture of the thread that
called libbpf (thread-local, ``captured()``), and everything is also logged to the
``datapath.libbpf`` logger.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("datapath.libbpf")

LIBBPF_ENV = "MOA_LIBBPF"
LIBBPF_DEFAULT = "libbpf.so.1"


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
    """Something BPF needs is absent: libbpf, a libbpf symbol, bpffs, privilege, a kernel
    feature."""

    def __init__(self, msg: str, log: str = "", errno: int | None = None) -> None:
        super().__init__(f"{msg}\n--- libbpf log ---\n{log}" if log else msg, errno)
        self.log = log


def errno_error(what: str, err: int) -> BpfError:
    return BpfError(f"{what}: {os.strerror(err)} (errno {err})", err)


# ---------------------------------------------------------------------------------------------
# The library and its prototypes
# ---------------------------------------------------------------------------------------------

_c = ctypes
_vp, _int, _u32, _u64, _sz, _str = (_c.c_void_p, _c.c_int, _c.c_uint32, _c.c_uint64, _c.c_size_t,
                                    _c.c_char_p)

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
    "bpf_map_lookup_batch": (_int, [_int, _vp, _vp, _vp, _vp, _c.POINTER(_u32), _vp]),
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
    lib = libbpf()
    return lib.libbpf_major_version(), lib.libbpf_minor_version()


def libbpf() -> ctypes.CDLL:
    """The library, loaded on first use (from $MOA_LIBBPF or libbpf.so.1). Called for every
    map access: the loaded one is returned without taking the lock."""
    lib = _libs.get(os.environ.get(LIBBPF_ENV) or LIBBPF_DEFAULT)
    return lib if lib is not None else load_libbpf()


@contextmanager
def captured() -> Iterator[list[str]]:
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


def check(ret: int, what: str) -> int:
    """libbpf 1.x returns -errno on failure (and sets errno)."""
    if ret < 0:
        raise errno_error(what, -ret)
    return ret


def possible_cpus() -> int:
    n = libbpf().libbpf_num_possible_cpus()
    return check(n, "libbpf_num_possible_cpus")
