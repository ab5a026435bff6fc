"""A device's root qdisc tree, kept as rtnetlink messages and put back: what moa's sch_fq replaced.

Replacing a device's root qdisc destroys its whole tree: the qdiscs under it, their classes and
the filters attached to them. Before moa puts sch_fq on its uplink (or a bond's slaves), `save`
dumps that tree: every qdisc of the device but the ingress/clsact one (which sch_fq does not
touch) and the kernel's defaults (handle 0, which the kernel makes again by itself), every
class, every filter of every qdisc and class. A tree whose root is the kernel's default is not
saved: deleting moa's root qdisc gives the default back. The messages are kept as the kernel
dumped them, without their statistics (TCA_STATS, TCA_STATS2, TCA_XSTATS, ...): a dump of a
qdisc, class or filter is, attribute for attribute, the request that makes it again.

`restore` replays them in an order where every parent exists before its children (root qdisc,
then classes and child qdiscs as their parents appear, then filters), on the device as it is
named now, and checks the result by dumping again: what does not come back as it was (a kind
of filter whose dump is not a valid request, such as a bpf filter naming its program by id) is
reported, never silently dropped. Objects a parent makes by itself (prio's classes, u32's root
hash table) are answered EEXIST or EOPNOTSUPP and are there all the same: the check decides.

Runs on the netlink worker thread, in the box's namespace (an `Rtnl` made there).
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from datapath.netlink.raw import (
    NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, RTM_GETQDISC, RTM_NEWQDISC, RTM_NEWTFILTER,
    TC_H_ROOT, TCA_KIND, TCA_OPTIONS, Request, Rtnl, attr, attrs,
)

RTM_NEWTCLASS, RTM_GETTCLASS, RTM_GETTFILTER = 40, 42, 46
TC_H_INGRESS = 0xFFFFFFF1  # ingress and clsact qdiscs: not part of the root tree
TCA_CHAIN = 11
# What a dump adds that is not configuration: statistics, padding, flags of the dump itself.
_STATS = {3, 4, 6, 7, 9, 10, 12, 15, 16}  # STATS XSTATS FCNT STATS2 PAD DUMP_INVISIBLE
#                                           HW_OFFLOAD DUMP_FLAGS EXT_WARN_MSG
_TCMSG = struct.Struct("=BxxxiIII")  # struct tcmsg: family, ifindex, handle, parent, info
_RECORD = struct.Struct("=HHI")  # saved form: message type, flags, body length

_FLAGS = {RTM_NEWQDISC: NLM_F_CREATE | NLM_F_REPLACE, RTM_NEWTCLASS: NLM_F_CREATE,
          RTM_NEWTFILTER: NLM_F_CREATE | NLM_F_EXCL}


@dataclass(frozen=True)
class TcObject:
    """One qdisc, class or filter of a tree: its message type (RTM_NEW*) and body."""

    type: int
    body: bytes

    @property
    def handle(self) -> int:
        return _TCMSG.unpack_from(self.body)[2]

    @property
    def parent(self) -> int:
        return _TCMSG.unpack_from(self.body)[3]

    @property
    def kind(self) -> str:
        a = attrs(self.body, _TCMSG.size)
        return (a.get(TCA_KIND) or b"").split(b"\0")[0].decode(errors="replace")

    def identity(self) -> tuple:
        """What names the object on its device: type, handle, parent, kind (filters: also
        their priority, protocol and chain)."""
        _f, _i, handle, parent, info = _TCMSG.unpack_from(self.body)
        chain = attrs(self.body, _TCMSG.size).get(TCA_CHAIN)
        return (self.type, handle, parent, self.kind,
                info if self.type == RTM_NEWTFILTER else 0, chain)

    def describe(self) -> str:
        what = {RTM_NEWQDISC: "qdisc", RTM_NEWTCLASS: "class", RTM_NEWTFILTER: "filter"}[self.type]
        return f"{what} {self.kind} {_h(self.handle)} parent {_h(self.parent)}"


def _h(handle: int) -> str:
    return "root" if handle == TC_H_ROOT else f"{handle >> 16:x}:{handle & 0xFFFF:x}"


# Where a dump is not the request that makes the object again: the kernel's own words in it.
HTB_INIT, HTB_VERSION = 2, 3   # tc_htb_glob.version: the dump says HTB_VER (0x30011), a
#                                request must say HTB_VER >> 16 (htb_init)
# Filters' flags attribute by kind: a dump adds TCA_CLS_FLAGS_IN_HW/NOT_IN_HW, which a request
# may not carry (tc_flags_valid): only SKIP_HW | SKIP_SW are kept.
_FILTER_FLAGS = {"u32": 11, "flower": 22, "matchall": 3, "bpf": 9}
_SKIP_FLAGS = 0x3


def _request_options(mtype: int, kind: str, options: bytes) -> bytes:
    """A dumped TCA_OPTIONS as a request's (the quirks above)."""
    fix = (HTB_INIT if mtype == RTM_NEWQDISC and kind == "htb" else
           _FILTER_FLAGS.get(kind) if mtype == RTM_NEWTFILTER else None)
    if fix is None:
        return options
    out = b""
    for k, payload in _attr_list(options, 0):
        if k & 0x3FFF == fix and len(payload) >= 4:
            word = struct.unpack_from("=I", payload)[0]
            word = HTB_VERSION if fix == HTB_INIT and mtype == RTM_NEWQDISC else word & _SKIP_FLAGS
            payload = struct.pack("=I", word) + payload[4:]
        out += attr(k, payload)
    return out


def _clean(body: bytes, ifindex: int = 0, mtype: int = 0) -> bytes:
    """The body without statistics; with `mtype`, as a request for `ifindex` (the quirks
    above; a qdisc's or class's tcm_info is a dump's reference count, 0 in a request)."""
    family, index, handle, parent, info = _TCMSG.unpack_from(body)
    kind = (attrs(body, _TCMSG.size).get(TCA_KIND) or b"").split(b"\0")[0].decode(errors="replace")
    kept = b""
    for k, payload in _attr_list(body, _TCMSG.size):
        if k & 0x3FFF in _STATS:
            continue
        if mtype and k & 0x3FFF == TCA_OPTIONS:
            payload = _request_options(mtype, kind, payload)
        kept += attr(k, payload)
    if mtype and mtype != RTM_NEWTFILTER:
        info = 0
    return _TCMSG.pack(family, ifindex or index, handle, parent, info) + kept


def _attr_list(data: bytes, pos: int) -> list[tuple[int, bytes]]:
    out = []
    while pos + 4 <= len(data):
        n, kind = struct.unpack_from("=HH", data, pos)
        if n < 4:
            break
        out.append((kind, data[pos + 4:pos + n]))  # nested flags kept: replayed as dumped
        pos += (n + 3) & ~3
    return out


def _dump(rtnl: Rtnl, mtype: int, ifindex: int, parent: int = 0) -> list[bytes]:
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, parent, 0)
    try:
        return rtnl._dump(mtype, body, "tc dump")
    except OSError:  # a parent without classes or filters
        return []


def read_tree(rtnl: Rtnl, ifindex: int) -> list[TcObject]:
    """The device's root tree as it is now (module doc); empty when its root is the default."""
    qdiscs = [TcObject(RTM_NEWQDISC, _clean(p)) for p in _dump(rtnl, RTM_GETQDISC, 0)
              if _TCMSG.unpack_from(p)[1] == ifindex]
    root = [q for q in qdiscs if q.parent == TC_H_ROOT]
    if not root or root[0].handle == 0:
        return []
    qdiscs = [q for q in qdiscs if q.parent != TC_H_INGRESS and q.handle != 0]
    classes = [TcObject(RTM_NEWTCLASS, _clean(p)) for p in _dump(rtnl, RTM_GETTCLASS, ifindex)]
    filters = []
    for parent in [q.handle for q in qdiscs] + [c.handle for c in classes]:
        filters += [TcObject(RTM_NEWTFILTER, _clean(p))
                    for p in _dump(rtnl, RTM_GETTFILTER, ifindex, parent)]
    return qdiscs + classes + filters


def encode(tree: list[TcObject]) -> bytes:
    return b"".join(_RECORD.pack(o.type, 0, len(o.body)) + o.body for o in tree)


def decode(data: bytes) -> list[TcObject]:
    out, pos = [], 0
    while pos < len(data):
        mtype, _flags, n = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        out.append(TcObject(mtype, data[pos:pos + n]))
        pos += n
    return out


def _ordered(tree: list[TcObject]) -> list[TcObject]:
    """Qdiscs and classes with every parent before its children, then the filters."""
    nodes = [o for o in tree if o.type != RTM_NEWTFILTER]
    made: set[int] = {TC_H_ROOT}
    out: list[TcObject] = []
    while nodes:
        ready = [o for o in nodes if o.parent in made]
        if not ready:  # a parent that is not in the tree: try the rest as they come
            ready = nodes[:1]
        for o in ready:
            out.append(o)
            made.add(o.handle)
        nodes = [o for o in nodes if o not in ready]
    return out + [o for o in tree if o.type == RTM_NEWTFILTER]


def restore(rtnl: Rtnl, ifindex: int, tree: list[TcObject]) -> list[str]:
    """Make `tree` the device's root tree again (module doc); what did not come back."""
    if not tree:
        return []
    for o in _ordered(tree):
        rtnl.run([Request(o.type, _clean(o.body, ifindex, o.type), _FLAGS[o.type])])
    now = {o.identity() for o in read_tree(rtnl, ifindex)}
    return [o.describe() for o in tree if o.identity() not in now]
