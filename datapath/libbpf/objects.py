"""BPF objects and their programs: open, set .rodata and map sizes, pin, load; test_run.

``BpfObject.open(path, *, rodata=None, max_entries=None, pin_root=None) -> BpfObject``
    Opens the object, writes ``const volatile`` globals (``rodata={"name": int | bytes}``, offsets
    and sizes from the BTF DATASEC ".rodata"), overrides map sizes (``max_entries={"map": n}``),
    and with ``pin_root`` gives every map whose name starts with ``moa_`` the pin path
    ``pin_root/name``: an existing pin there is reused (maps outlive the process), a new map is
    pinned at load. Then loads. Unknown names raise ``KeyError`` naming them.
    ``.program(name) -> Program``, ``.map(name) -> Map``, ``.btf -> datapath.libbpf.btf.Btf``,
    ``.map_names()``, ``.program_names()``, ``.close()``; a context manager.

``Program``
    ``fd, name, type``; ``test_run(data, ctx=None, repeat=1, data_out_size=None) -> TestRun``
    (BPF_PROG_TEST_RUN; ``ctx`` a ctypes structure such as ``struct __sk_buff``, returned filled
    in ``TestRun.ctx``; ``retval`` as a signed 32-bit int); ``pin(path)``, ``unpin()``.

``read_btf(path) -> Btf``: the BTF of an object file as libbpf fixed it up while opening it
(nothing is loaded, no privilege needed); ``open_btf_raw(path)``: the same as bytes.
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from datapath.libbpf.btf import Btf
from datapath.libbpf.checks import require_bpffs, require_privilege
from datapath.libbpf.lib import BpfError, BpfLoadError, LibbpfMissing, captured, check, libbpf
from datapath.libbpf.maps import Map, Pinnable, to_bytes

_c = ctypes
_vp, _u32, _sz = _c.c_void_p, _c.c_uint32, _c.c_size_t


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


class Program(Pinnable):
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
        ret = libbpf().bpf_prog_test_run_opts(self.fd, ctypes.byref(opts))
        check(ret, f"BPF_PROG_TEST_RUN of {self.name}")
        retval = opts.retval - (1 << 32) if opts.retval >= 1 << 31 else opts.retval
        return TestRun(retval, dout.raw[:opts.data_size_out], ctx_out, opts.duration)


# The verifier's words for a helper call this kernel lacks, or lacks for this program type.
_UNKNOWN_FUNC = re.compile(r"(?:unknown|invalid) func (\w+)#(\d+)")


def _open(path: str) -> int:
    try:
        os.stat(path)  # not os.path.exists: a permission error must not read as "missing"
    except FileNotFoundError:
        raise FileNotFoundError(f"BPF object {path} does not exist "
                                f"(build it with `make bpf`)") from None
    lib = libbpf()
    with captured() as lines:
        obj = lib.bpf_object__open_file(os.fsencode(path), None)
    if not obj:
        err = _c.get_errno()
        raise BpfLoadError(f"cannot open BPF object {path}: {os.strerror(err)}", "".join(lines),
                           err)
    return obj


def _raw_btf(obj: int, path: str) -> bytes:
    lib = libbpf()
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
        libbpf().bpf_object__close(obj)


def read_btf(path: str) -> Btf:
    """The BTF of the object at `path`, as libbpf fixed it up while opening (nothing is loaded)."""
    return Btf(open_btf_raw(path))


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
                check(libbpf().bpf_map__set_max_entries(m, n), f"set max_entries of map {name}")
            if pin_root is not None:
                self._set_pins(pin_root)
            self._load()
        except BaseException:
            self.close()
            raise
        return self

    # -- before load ------------------------------------------------------------------------------

    def _iter_maps(self) -> Iterator[int]:
        lib = libbpf()
        m = lib.bpf_object__next_map(self._obj, None)
        while m:
            yield m
            m = lib.bpf_object__next_map(self._obj, m)

    def _iter_programs(self) -> Iterator[int]:
        lib = libbpf()
        p = lib.bpf_object__next_program(self._obj, None)
        while p:
            yield p
            p = lib.bpf_object__next_program(self._obj, p)

    def _find_map(self, name: str) -> int:
        m = libbpf().bpf_object__find_map_by_name(self._require_open(), name.encode())
        if not m:
            raise KeyError(f"{self.path} has no map {name!r} (maps: {', '.join(self.map_names())})")
        return m

    def _set_rodata(self, values: dict[str, Any]) -> None:
        lib = libbpf()
        # libbpf names the internal map "<obj prefix>.rodata"; ".rodata.str1.1" etc. are strings.
        rmap = next((m for m in self._iter_maps() if lib.bpf_map__name(m).endswith(b".rodata")),
                    None)
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
                raise BpfError(f"{self.path}: .rodata var {name} at {off}+{vsize} "
                               f"beyond {size.value}")
            try:
                b = to_bytes(value, vsize, f".rodata {name}")
            except OverflowError as e:
                raise ValueError(f".rodata {name}: {value} does not fit in {vsize} bytes") from e
            ctypes.memmove(base + off, b, vsize)

    def _set_pins(self, pin_root: str) -> None:
        require_bpffs(pin_root)
        os.makedirs(pin_root, exist_ok=True)
        lib = libbpf()
        for m in self._iter_maps():
            name = lib.bpf_map__name(m).decode()
            if name.startswith("moa_"):
                path = os.path.join(pin_root, name)
                check(lib.bpf_map__set_pin_path(m, path.encode()), f"set pin path of {name}")

    def _load(self) -> None:
        with captured() as lines:
            ret = libbpf().bpf_object__load(self._obj)
        if ret >= 0:
            return
        err = -ret
        text = "".join(lines)
        if err in (errno_mod.EPERM, errno_mod.EACCES) and "-- BEGIN PROG LOAD LOG --" not in text:
            try:
                require_privilege()
            except LibbpfMissing as e:
                raise LibbpfMissing(f"{e} (loading {self.path})", text, err) from None
        m = _UNKNOWN_FUNC.search(text)
        if m:
            raise LibbpfMissing(f"kernel feature missing: BPF helper #{m.group(2)} ({m.group(1)}) "
                                f"is not available to this program type on this kernel "
                                f"(loading {self.path})", text, err)
        raise BpfLoadError(f"loading {self.path} failed: {os.strerror(err)} (errno {err})", text,
                           err)

    # -- after load -------------------------------------------------------------------------------

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
        lib = libbpf()
        return [lib.bpf_map__name(m).decode() for m in self._iter_maps()]

    def program_names(self) -> list[str]:
        lib = libbpf()
        return [lib.bpf_program__name(p).decode() for p in self._iter_programs()]

    def map(self, name: str) -> Map:
        if name not in self._maps:
            lib = libbpf()
            m = self._find_map(name)
            pin = lib.bpf_map__pin_path(m)
            self._maps[name] = Map(lib.bpf_map__fd(m), name, lib.bpf_map__type(m),
                                   lib.bpf_map__key_size(m), lib.bpf_map__value_size(m),
                                   lib.bpf_map__max_entries(m), owner=self,
                                   pin_path=pin.decode() if pin else None)
        return self._maps[name]

    def program(self, name: str) -> Program:
        if name not in self._progs:
            lib = libbpf()
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
            libbpf().bpf_object__close(self._obj)
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

