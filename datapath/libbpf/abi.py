"""The ctypes mirror of datapath/bpf/abi.h, built from the BTF of the compiled classifier.

There is no hand-written copy of abi.h in Python: the types below are generated on first use from
the BTF of ``datapath/bpf/tc_classifier.bpf.o`` (``datapath.bpf.object_path("tc_classifier")``),
so a field renamed or moved in abi.h is seen here at once, and a type the object lost raises
``AbiError`` naming it. Building needs no privilege (the object is opened, never loaded).

Public API
----------
Module attributes (built lazily from the classifier object on first access):
    ``Link``, ``StageParams``, ``GilbertElliott``, ``StageState``, ``LinkCounters``,
    ``GlobalCounters``, ``DropEvent``, ``Box``, ``DistTable``, ``DistCdf``, ``Flow``:
    ctypes.Structure subclasses of ``struct moa_*``;
    ``SkBuff``: ``struct __sk_buff`` (the tc context, for ``Program.test_run``);
    ``Stage``, ``DropReason``, ``LossModel``, ``Dist``, ``Aqm``: IntEnums from
    ``enum moa_stage`` ... with the
    ``MOA_STAGE_``/``MOA_DROP_``/``MOA_LOSS_`` prefixes stripped (``Stage.EGRESS``);
    ``StageFlags``: IntFlag from ``enum moa_stage_flags`` when the object's BTF has it;
    ``FlowCounter``: IntEnum of ``enum moa_flow_counter`` (flow mode's counters), likewise;
    ``FlowFlags``: IntFlag of ``enum moa_flow_flag`` (moa_flow.flags), likewise;
    ``NR_STAGES``, ``NR_DROP_REASONS``: the ``MOA_NR_*`` enumerators;
    ``DROP_EVENT_VERSION`` (and any other ``MOA_ABI_*`` of ``enum moa_abi_consts``, which the
    object declares to carry abi.h's macros into BTF); ``constants``: all of these as a dict;
    ``btf``: the ``datapath.libbpf.btf.Btf`` it all came from; ``path``: the object.
``load(path=None) -> Abi``
    The same set, as attributes of an ``Abi``, from any object whose BTF carries abi.h's types
    (tests use datapath/bpf/selftest.bpf.o). Cached per path.

BTF has no macros: a ``#define`` reaches Python only through ``enum moa_abi_consts``.

The names of the drop reasons and stages have one Python table, schemas.DROP_REASONS and
schemas.STAGES (schemas may not import the datapath). Building an ``Abi`` checks that table
against the object's ``enum moa_drop_reason`` and ``enum moa_stage`` and raises ``AbiError``
naming both on a mismatch, so a classifier and a reader that disagree never load together.
"""
from __future__ import annotations

import enum
import os
import threading
from typing import Any

import schemas
from datapath.libbpf.btf import Btf, BtfError, Kind
from datapath.libbpf.objects import read_btf

__all__ = ["Abi", "AbiError", "load", "STRUCTS", "ENUMS"]

# Python name -> BTF struct name. Every one must be in the object's BTF.
STRUCTS = {
    "Link": "moa_link",
    "StageParams": "moa_stage_params",
    "GilbertElliott": "moa_gilbert_elliott",
    "Chain": "moa_chain",
    "StageState": "moa_stage_state",
    "LinkCounters": "moa_link_counters",
    "GlobalCounters": "moa_global_counters",
    "DropEvent": "moa_drop_event",
    "Box": "moa_box",
    "DistTable": "moa_dist_table",
    "DistCdf": "moa_dist_cdf",
    "Flow": "moa_flow",
    "SkBuff": "__sk_buff",
}

# Python name -> (BTF enum name, prefix stripped from enumerator names, required).
ENUMS = {
    "Stage": ("moa_stage", "MOA_STAGE_", True),
    "DropReason": ("moa_drop_reason", "MOA_DROP_", True),
    "LossModel": ("moa_loss_model", "MOA_LOSS_", True),
    "StageFlags": ("moa_stage_flags", "MOA_F_", False),
    "Dist": ("moa_dist", "MOA_DIST_", True),
    "Aqm": ("moa_aqm", "MOA_AQM_", True),
    "FlowCounter": ("moa_flow_counter", "MOA_FLOW_", False),
    "FlowFlags": ("moa_flow_flag", "MOA_FLOW_F_", False),
}

# Optional: `enum moa_abi_consts { MOA_ABI_X = X, ... }` carries abi.h's #defines into BTF.
CONSTS_ENUM = "moa_abi_consts"

CLASSIFIER = "tc_classifier"


class AbiError(BtfError):
    """The object's BTF lacks a type of abi.h (or it cannot be mirrored)."""


class Abi:
    """abi.h's types from one object's BTF (see the module docstring)."""

    def __init__(self, path: str, btf: Btf | None = None) -> None:
        self.path = path
        self.btf = btf if btf is not None else read_btf(path)
        self.constants: dict[str, int] = {}
        for pyname, cname in STRUCTS.items():
            try:
                self.btf.find(cname, (Kind.STRUCT,))
            except BtfError:
                raise AbiError(
                    f"{path}: BTF lacks struct {cname} (needed for abi.{pyname}); BTF only holds "
                    f"types the object uses: use it in a map value, a global or a program"
                ) from None
            setattr(self, pyname, self.btf.ctype(f"struct {cname}"))
        for pyname, (cname, prefix, required) in ENUMS.items():
            try:
                values = self.btf.enum(cname)
            except BtfError:
                if required:
                    raise AbiError(
                        f"{path}: BTF lacks enum {cname} (needed for abi.{pyname}); use it in the "
                        f"object, e.g. as the type of a const volatile global") from None
                continue
            members = {}
            for name, value in values.items():
                if name.startswith("MOA_NR_"):
                    self.constants[name[len("MOA_"):]] = value
                elif name.startswith(prefix):
                    members[name[len(prefix):]] = value
                else:
                    members[name.removeprefix("MOA_")] = value
            base = enum.IntFlag if pyname in ("StageFlags", "FlowFlags") else enum.IntEnum
            setattr(self, pyname, base(pyname, members, module=__name__))
        # abi.h's macros, when the object mirrors them as enumerators (BTF has no macros).
        try:
            consts = self.btf.enum(CONSTS_ENUM)
        except BtfError:
            consts = {}
        for name, value in consts.items():
            self.constants[name.removeprefix("MOA_ABI_")] = value
        for name, value in self.constants.items():
            setattr(self, name, value)
        self._check_names("DropReason", "NR_DROP_REASONS", schemas.DROP_REASONS,
                          "schemas.DROP_REASONS")
        self._check_names("Stage", "NR_STAGES", schemas.STAGES, "schemas.STAGES")

    def _check_names(self, pyname: str, nr: str, table: tuple[str, ...], where: str) -> None:
        """The enumerators of ENUMS[pyname], by value, prefix cut, lower case, are `table`."""
        members = sorted(getattr(self, pyname), key=lambda m: m.value)
        names = tuple(m.name.lower() for m in members)
        dense = [m.value for m in members] == list(range(len(members)))
        if names != table or not dense or self.constants.get(nr) != len(table):
            raise AbiError(
                f"{self.path}: enum {ENUMS[pyname][0]} is "
                f"{', '.join(f'{m.name.lower()}={m.value}' for m in members)} "
                f"(MOA_{nr}={self.constants.get(nr)}), but {where} is {', '.join(table)}: "
                f"datapath/bpf/abi.h and schemas/messages.py must name the same ones, in order")

    def __repr__(self) -> str:
        return f"Abi({self.path!r})"


_cache: dict[str, Abi] = {}
_lock = threading.Lock()


def load(path: str | None = None) -> Abi:
    """abi.h's mirror from `path` (default: the packaged classifier object)."""
    if path is None:
        from datapath.bpf import object_path

        path = object_path(CLASSIFIER)
    path = os.path.abspath(path)
    with _lock:
        if path not in _cache:
            _cache[path] = Abi(path)
        return _cache[path]


_EXPORTS = set(STRUCTS) | set(ENUMS) | {"NR_STAGES", "NR_DROP_REASONS", "DROP_EVENT_VERSION",
                                         "constants", "btf", "path"}


def __getattr__(name: str) -> Any:
    # PEP 562: module attributes built on first access, so importing this module is cheap and
    # works before the classifier is built (only touching a type needs the object).
    if name in _EXPORTS:
        abi = load()
        if not hasattr(abi, name):
            raise AbiError(f"{abi.path}: BTF has no {name} (enum {ENUMS[name][0]})"
                           if name in ENUMS else f"{abi.path}: BTF has no {name}")
        return getattr(abi, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
