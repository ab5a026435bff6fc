"""A small BTF reader: ctypes types, enums and DATASEC layouts from a BPF object's BTF.

Public API
----------
``Btf(raw: bytes)``
    Parse raw BTF (the bytes of a ``.BTF`` blob, header included).
``btf.ctype(name) -> type``
    A ctypes type for the named struct, union, typedef, enum or int. Structs and unions become
    ``ctypes.Structure`` / ``ctypes.Union`` subclasses with the same field names, offsets and size
    as in BTF (explicit padding fields ``_padN`` fill holes; anonymous members get ``_anonN`` names
    and are flattened with ``_anonymous_``). Enums become their integer type. Every built type is
    checked: ``ctypes.sizeof`` equals the BTF size and every field offset equals the BTF offset, or
    ``BtfError`` is raised. Built types are cached per Btf.
``btf.enum(name) -> dict[str, int]``
    Enumerator names and values of ``enum name``.
``btf.datasec(name) -> dict[str, tuple[int, int]]``
    Variables of a DATASEC (".rodata", ".bss", ...) as ``{var: (offset, size)}``.
``btf.names(kind)``
    Names of all types of one kind (e.g. ``Kind.STRUCT``).

Where the bytes come from (and why)
-----------------------------------
From libbpf after ``bpf_object__open`` (``bpf_object__btf`` + ``btf__raw_data``; ``read_btf(path)``
and ``BpfObject.btf`` in datapath/libbpf/objects.py hand them to ``Btf``), not from the ELF
``.BTF`` section. clang writes DATASECs with size 0 and leaves variable offsets for the loader
to fix from the ELF symbol table; libbpf does that fix-up while opening the object. Reading the
section ourselves would mean re-implementing that with an ELF symbol-table parser, and the loader
already has the object open anyway.

Bitfields are not supported (abi.h has none; ``struct __sk_buff``'s only bitfield is unnamed and
so is not in BTF): a struct with one raises ``BtfError`` naming it.
"""
from __future__ import annotations

import ctypes
import enum
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["Btf", "BtfError", "Kind", "BtfType"]

BTF_MAGIC = 0xEB9F


class BtfError(Exception):
    """Malformed BTF, a missing type, or a type that has no faithful ctypes equivalent."""


class Kind(enum.IntEnum):
    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# Kinds that only qualify another type: ctype() looks through them.
_MODIFIERS = {Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG}

_INT_SIGNED = 1 << 0
_INT_BOOL = 1 << 2

_INTS = {
    (1, False): ctypes.c_uint8, (1, True): ctypes.c_int8,
    (2, False): ctypes.c_uint16, (2, True): ctypes.c_int16,
    (4, False): ctypes.c_uint32, (4, True): ctypes.c_int32,
    (8, False): ctypes.c_uint64, (8, True): ctypes.c_int64,
}


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0: not a bitfield


@dataclass(frozen=True)
class BtfType:
    """One parsed BTF type. `size_or_type` is a size for sized kinds, a type id otherwise."""
    id: int
    kind: Kind
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int
    # Kind-specific payload: INT -> (encoding, bit offset, bits); ARRAY -> (elem, index, n);
    # STRUCT/UNION -> tuple[Member]; ENUM/ENUM64 -> tuple[(name, value)];
    # DATASEC -> tuple[(var type id, offset, size)]; FUNC_PROTO -> tuple[(name, type)].
    extra: Any = None


class Btf:
    """Parsed BTF of one object (see the module docstring)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = bytes(raw)
        self.types: list[BtfType | None] = [None]  # id 0 is void
        self._by_name: dict[str, list[BtfType]] = {}
        self._ctypes: dict[int, Any] = {}
        self._parse()

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self) -> None:
        raw = self.raw
        if len(raw) < 24:
            raise BtfError(f"BTF too short ({len(raw)} bytes)")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", raw, 0)
        if magic != BTF_MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x} (only little-endian BTF is read)")
        if version != 1:
            raise BtfError(f"unsupported BTF version {version}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", raw, 8)
        self._strings = raw[hdr_len + str_off: hdr_len + str_off + str_len]
        data = raw[hdr_len + type_off: hdr_len + type_off + type_len]
        pos = vlen = 0

        def records(fmt: str) -> list[tuple]:
            """The current type's `vlen` trailing records of layout `fmt`, at `pos`."""
            nonlocal pos
            end = pos + struct.calcsize(fmt) * vlen
            out = list(struct.iter_unpack(fmt, data[pos:end]))
            pos = end
            return out

        while pos < len(data):
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            pos += 12
            vlen = info & 0xFFFF
            kind = Kind((info >> 24) & 0x1F)
            kind_flag = bool(info >> 31)
            extra: Any = None
            if kind == Kind.INT:
                (enc,) = struct.unpack_from("<I", data, pos)
                pos += 4
                extra = ((enc >> 24) & 0x0F, (enc >> 16) & 0xFF, enc & 0xFF)
            elif kind == Kind.ARRAY:
                extra = struct.unpack_from("<III", data, pos)
                pos += 12
            elif kind in (Kind.STRUCT, Kind.UNION):
                # kind_flag set: the offset's top 8 bits are the bitfield size.
                extra = tuple(Member(self._str(n), t, o & 0xFFFFFF, o >> 24) if kind_flag
                              else Member(self._str(n), t, o, 0)
                              for n, t, o in records("<III"))
            elif kind == Kind.ENUM:
                # kind_flag set: signed enum; otherwise the value is unsigned.
                extra = tuple((self._str(n), v if kind_flag else v & 0xFFFFFFFF)
                              for n, v in records("<Ii"))
            elif kind == Kind.ENUM64:
                vals = []
                for n, lo, hi in records("<III"):
                    v = (hi << 32) | lo
                    if kind_flag and v >= 1 << 63:
                        v -= 1 << 64
                    vals.append((self._str(n), v))
                extra = tuple(vals)
            elif kind == Kind.FUNC_PROTO:
                extra = tuple((self._str(n), t) for n, t in records("<II"))
            elif kind == Kind.VAR:
                (extra,) = struct.unpack_from("<I", data, pos)
                pos += 4
            elif kind == Kind.DATASEC:
                extra = tuple(records("<III"))
            elif kind == Kind.DECL_TAG:
                (extra,) = struct.unpack_from("<i", data, pos)
                pos += 4
            t = BtfType(len(self.types), kind, self._str(name_off), vlen, kind_flag, size_or_type,
                        extra)
            self.types.append(t)
            if t.name:
                self._by_name.setdefault(t.name, []).append(t)

    def _str(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off:end].decode()

    # -- lookup ---------------------------------------------------------------------------------

    def names(self, kind: Kind) -> list[str]:
        return [t.name for t in self.types[1:] if t is not None and t.kind == kind and t.name]

    def find(self, name: str, kinds: tuple[Kind, ...] | None = None) -> BtfType:
        """The type called `name` ("struct x", "enum y" or a bare name); struct/union win ties."""
        prefixes = {"struct ": (Kind.STRUCT,), "union ": (Kind.UNION,),
                    "enum ": (Kind.ENUM, Kind.ENUM64)}
        for prefix, pkinds in prefixes.items():
            if name.startswith(prefix):
                name, kinds = name[len(prefix):], pkinds
        candidates = [t for t in self._by_name.get(name, []) if kinds is None or t.kind in kinds]
        if not candidates:
            what = "/".join(k.name.lower() for k in kinds) if kinds else "type"
            raise BtfError(f"BTF has no {what} named {name!r} "
                           f"(BTF only holds types the object uses)")
        order = [Kind.STRUCT, Kind.UNION, Kind.TYPEDEF, Kind.ENUM, Kind.ENUM64, Kind.INT]
        candidates.sort(key=lambda t: order.index(t.kind) if t.kind in order else len(order))
        return candidates[0]

    def resolve(self, type_id: int) -> BtfType:
        """Follow typedefs and qualifiers to the underlying type."""
        t = self.types[type_id]
        while t is not None and t.kind in _MODIFIERS:
            t = self.types[t.size_or_type]
        if t is None:
            raise BtfError(f"type {type_id} resolves to void")
        return t

    def size_of(self, type_id: int) -> int:
        t = self.resolve(type_id)
        if t.kind in (Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FLOAT,
                      Kind.DATASEC):
            return t.size_or_type
        if t.kind == Kind.PTR:
            return 8
        if t.kind == Kind.ARRAY:
            elem, _, n = t.extra
            return self.size_of(elem) * n
        raise BtfError(f"type {t.id} ({t.kind.name} {t.name!r}) has no size")

    def enum(self, name: str) -> dict[str, int]:
        """`enum name` as {enumerator: value}."""
        t = self.find(name, (Kind.ENUM, Kind.ENUM64))
        return dict(t.extra)

    def datasec(self, name: str) -> dict[str, tuple[int, int]]:
        """Variables of DATASEC `name` as {var: (offset, size)}."""
        t = self.find(name, (Kind.DATASEC,))
        out = {}
        for var_id, offset, size in t.extra:
            out[self.types[var_id].name] = (offset, size)
        return out

    # -- ctypes -----------------------------------------------------------------------------------

    def ctype(self, name: str) -> Any:
        """A ctypes type with the layout of the named type (see the module docstring)."""
        return self.ctype_by_id(self.find(name).id)

    def ctype_by_id(self, type_id: int) -> Any:
        if type_id in self._ctypes:
            return self._ctypes[type_id]
        t = self.types[type_id]
        if t is None:
            raise BtfError("void has no ctypes type")
        if t.kind in _MODIFIERS:
            ct = self.ctype_by_id(t.size_or_type)
        elif t.kind == Kind.INT:
            ct = self._int(t)
        elif t.kind in (Kind.ENUM, Kind.ENUM64):
            # An enum is its integer: signed when kind_flag says so (newer BTF) or a value is < 0.
            signed = t.kind_flag or any(v < 0 for _, v in t.extra)
            ct = _INTS.get((t.size_or_type, signed))
            if ct is None:
                raise BtfError(f"enum {t.name!r} has unsupported size {t.size_or_type}")
        elif t.kind == Kind.PTR:
            ct = ctypes.c_uint64  # BPF pointers are 64-bit; userspace never dereferences them
        elif t.kind == Kind.FLOAT:
            ct = {4: ctypes.c_float, 8: ctypes.c_double}.get(t.size_or_type)
            if ct is None:
                raise BtfError(f"float {t.name!r} has unsupported size {t.size_or_type}")
        elif t.kind == Kind.ARRAY:
            elem, _, n = t.extra
            ct = self.ctype_by_id(elem) * n
        elif t.kind in (Kind.STRUCT, Kind.UNION):
            ct = self._record(t)
        else:
            raise BtfError(f"{t.kind.name} {t.name!r} (type {t.id}) has no ctypes equivalent")
        self._ctypes[type_id] = ct
        return ct

    def _int(self, t: BtfType) -> Any:
        encoding, bit_off, bits = t.extra
        if bit_off or bits != t.size_or_type * 8:
            raise BtfError(f"int {t.name!r} is a bitfield-like int ({bits} bits at {bit_off})")
        if encoding & _INT_BOOL:
            return ctypes.c_bool if t.size_or_type == 1 else _INTS[(t.size_or_type, False)]
        if t.size_or_type == 16:  # __int128: no ctypes type; keep the bytes
            return ctypes.c_uint8 * 16
        ct = _INTS.get((t.size_or_type, bool(encoding & _INT_SIGNED)))
        if ct is None:
            raise BtfError(f"int {t.name!r} has unsupported size {t.size_or_type}")
        return ct

    def _record(self, t: BtfType) -> Any:
        is_union = t.kind == Kind.UNION
        label = f"{'union' if is_union else 'struct'} {t.name or f'<anon {t.id}>'}"
        fields: list[tuple[str, Any, int]] = []  # (name, ctype, byte offset)
        anon: list[str] = []
        for i, m in enumerate(t.extra):
            if m.bitfield_size or m.bit_offset % 8:
                raise BtfError(f"{label}: member {m.name or i!r} is a bitfield (unsupported)")
            name = m.name
            if not name:
                name = f"_anon{i}"
                anon.append(name)
            fields.append((name, self.ctype_by_id(m.type_id), m.bit_offset // 8))
        base = ctypes.Union if is_union else ctypes.Structure
        cls_name = t.name or f"anon_{t.id}"
        ct = _layout(base, cls_name, fields, anon, t.size_or_type, packed=False)
        if ct is None:  # natural alignment cannot produce BTF's layout (packed struct): pack it
            ct = _layout(base, cls_name, fields, anon, t.size_or_type, packed=True)
        if ct is None:
            raise BtfError(f"{label}: no ctypes layout matches BTF (size {t.size_or_type})")
        _check(ct, label, fields, t.size_or_type)
        return ct


def _layout(base: Any, name: str, fields: list[tuple[str, Any, int]], anon: list[str],
            size: int, packed: bool) -> Any:
    """A ctypes record with `fields` at their offsets and `size`, or None if impossible.

    Holes become `_padN` byte arrays. Unions need no padding between members (all at 0).
    """
    out: list[tuple[str, Any]] = []
    pos = 0
    npad = 0
    align = 1
    for fname, ftype, off in (sorted(fields, key=lambda f: f[2]) if base is ctypes.Structure
                              else fields):
        falign = 1 if packed else ctypes.alignment(ftype)
        align = max(align, falign)
        if base is ctypes.Structure:
            natural = (pos + falign - 1) // falign * falign
            if natural > off:
                return None
            if off > natural:
                out.append((f"_pad{npad}", ctypes.c_uint8 * (off - pos)))
                npad += 1
            pos = off + ctypes.sizeof(ftype)
        else:
            if off != 0:
                return None
            pos = max(pos, ctypes.sizeof(ftype))
        out.append((fname, ftype))
    end = (pos + align - 1) // align * align
    if end > size:
        return None
    if end < size:  # trailing hole: pad explicitly (keeps alignment; size checked below)
        out.append((f"_pad{npad}", ctypes.c_uint8 * (size - pos)))
    ns: dict[str, Any] = {"_fields_": out}
    if packed:
        ns["_pack_"] = 1
    if anon:
        ns["_anonymous_"] = anon
    ct = type(name, (base,), ns)
    if ctypes.sizeof(ct) != size:
        return None
    if any(getattr(ct, fname).offset != off for fname, _, off in fields):
        return None  # a member BTF places off its natural alignment: the caller tries packed
    return ct


def _check(ct: Any, label: str, fields: list[tuple[str, Any, int]], size: int) -> None:
    """The promise of ctype(): same size, same offsets as BTF, or an error naming the field."""
    if ctypes.sizeof(ct) != size:
        raise BtfError(f"{label}: ctypes size {ctypes.sizeof(ct)} != BTF size {size}")
    for fname, _ftype, off in fields:
        got = getattr(ct, fname).offset
        if got != off:
            raise BtfError(f"{label}.{fname}: ctypes offset {got} != BTF offset {off}")
