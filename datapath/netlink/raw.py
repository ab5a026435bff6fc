"""rtnetlink by hand, pipelined: the bulk operations of a plan (thousands of VTEPs) and fast dumps.

pyroute2 costs about a millisecond of CPU per request and waits for each answer; a plan of a
thousand point-to-point links is ~14,000 requests. Here a request is a few struct.pack calls,
and requests go out in windows: the kernel processes every message of one send in order and
answers each with an ACK (or an error) carrying its sequence number, so a window of 128 costs one
round trip. Only the handful of messages the bulk paths need are built here, and the link and
qdisc dumps are decoded only as far as moa needs; single operations and checks stay with
pyroute2 (datapath/netlink/devices.py, datapath/netlink/tc.py). The kernel's numbers
(linux/rtnetlink.h, if_link.h, pkt_sched.h) that the package uses are defined here, once.

The socket belongs to the network namespace of the thread that creates it: create an `Rtnl` on
the netlink worker thread (`Netlink` does, datapath/netlink/devices.py).
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from datapath import faults

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10   # ACKs without the request echoed back
NETLINK_EXT_ACK = 11   # error messages in ACKs

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSGERR_ATTR_MSG = 1
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWQDISC, RTM_GETQDISC, RTM_NEWTFILTER = 36, 38, 44
TC_H_ROOT = 0xFFFFFFFF

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 4, 10, 18
IFLA_IFALIAS, IFLA_AF_SPEC, IFLA_GROUP = 20, 26, 27
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 2, 3, 4
IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT, IFLA_VXLAN_GROUP6, IFLA_VXLAN_LOCAL6 = 7, 15, 16, 17
IFLA_INET6_ADDR_GEN_MODE = 8
IN6_ADDR_GEN_MODE_NONE = 1
IFF_UP = 0x1

TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT = 0xFFFFFFF1
TC_CLSACT_HANDLE = 0xFFFF0000
TC_EGRESS = 0xFFFFFFF3  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS): egress filters' parent
TC_INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
ETH_P_ALL = 0x0003

# Requests in flight (their ACKs must fit the receive buffer). Even: CreateVtep's bulk path
# (datapath/plan/devices.py) sends each device's creation and marking as a pair.
WINDOW = 128
WINDOW_S = 0.01  # a send that takes the kernel longer is followed by smaller ones (Rtnl.run)

_HDR = struct.Struct("=IHHII")       # struct nlmsghdr
_IFINFO = struct.Struct("=BxHiII")   # struct ifinfomsg
_TCMSG = struct.Struct("=BxxxiIII")  # struct tcmsg


def attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n & 3)


def u8(kind: int, v: int) -> bytes:
    return attr(kind, struct.pack("=B", v))


def u32(kind: int, v: int) -> bytes:
    return attr(kind, struct.pack("=I", v))


def string(kind: int, s: str) -> bytes:
    return attr(kind, s.encode() + b"\0")


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


@dataclass(frozen=True)
class Request:
    """One rtnetlink request: message type, flags beyond REQUEST|ACK, body (header excluded)."""

    type: int
    body: bytes
    flags: int = 0
    ack: bool = True  # False for GET requests: the reply is the answer


@dataclass
class Reply:
    error: int = 0              # 0 or a positive errno
    message: str = ""           # the kernel's extended ACK message, if any
    payload: bytes | None = None  # a GET's answer (the message after the nlmsghdr)

    def raise_for(self, what: str) -> None:
        if self.error:
            extra = f": {self.message}" if self.message else ""
            raise OSError(self.error, f"{what}: {os.strerror(self.error)}{extra}")


class Rtnl:
    """A NETLINK_ROUTE socket that runs batches of requests, WINDOW at a time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.bind((0, 0))
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._seq = 1

    def close(self) -> None:
        self.sock.close()

    def run(self, requests: list[Request]) -> list[Reply]:
        """Send every request; one Reply each, in order. Errors are returned, never raised.

        At most WINDOW requests per send, fewer when a send takes the kernel longer than
        WINDOW_S: the kernel runs a send's requests back to back without yielding the CPU
        (a preemption-less kernel), and creating a VXLAN device costs time in proportion to
        the VXLAN devices the namespace holds (milliseconds each at 20,000), so 128 of them would
        keep a CPU from the service's event loop for a quarter of a second. Windows stay even:
        a device's creation and its marking are never split."""
        out: list[Reply] = []
        window, i, w = WINDOW, 0, 0
        while i < len(requests):
            t = time.monotonic()
            out.extend(self._window(requests[i:i + window]))
            i += window
            faults.hit("rtnl.window", w)  # a test's kill -9 in the middle of a batch
            w += 1
            took = time.monotonic() - t
            if took > WINDOW_S:
                window = max(2, int(window * WINDOW_S / took) & ~1)
            elif took < WINDOW_S / 2:
                window = min(WINDOW, window * 2)
        return out

    def dump_links(self) -> list[bytes]:
        """Every link of the namespace (RTM_GETLINK dump): the messages after their nlmsghdr."""
        return self._dump(RTM_GETLINK, ifinfo(), "link dump")

    def dump_qdiscs(self) -> list[bytes]:
        """Every qdisc of the namespace (RTM_GETQDISC dump), after their nlmsghdr."""
        return self._dump(RTM_GETQDISC, _TCMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), "qdisc dump")

    def _dump(self, mtype_req: int, body: bytes, what: str) -> list[bytes]:
        seq = self._seq
        self._seq += 1
        self.sock.sendall(_HDR.pack(_HDR.size + len(body), mtype_req,
                                    NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        out: list[bytes] = []
        while True:
            data = self.sock.recv(1 << 20)
            for off, length, mtype, _flags, mseq in _messages(data):
                if mseq == seq:
                    if mtype == NLMSG_DONE:
                        return out
                    if mtype == NLMSG_ERROR:
                        err = _error(data, off)
                        raise OSError(err, f"{what}: {os.strerror(err)}")
                    out.append(data[off + _HDR.size: off + length])

    def _window(self, requests: list[Request]) -> list[Reply]:
        first = self._seq
        parts = []
        for k, r in enumerate(requests):
            flags = NLM_F_REQUEST | r.flags | (NLM_F_ACK if r.ack else 0)
            parts.append(_HDR.pack(_HDR.size + len(r.body), r.type, flags, first + k, 0) + r.body)
        self._seq += len(requests)
        self.sock.sendall(b"".join(parts))
        replies = [Reply() for _ in requests]
        pending = len(requests)
        while pending:
            data = self.sock.recv(1 << 20)
            for off, length, mtype, mflags, seq in _messages(data):
                k = seq - first
                if 0 <= k < len(requests):
                    rep = replies[k]
                    if mtype == NLMSG_ERROR:
                        err = _error(data, off)
                        rep.error = err
                        if err:
                            rep.message = _ext_ack_message(data, off, length, mflags)
                        pending -= 1
                    elif mtype != NLMSG_DONE:
                        rep.payload = data[off + _HDR.size: off + length]
                        if not requests[k].ack:
                            pending -= 1
        return replies


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(offset, length, type, flags, seq) of every netlink message in one recv()'s data."""
    off = 0
    while off + _HDR.size <= len(data):
        length, mtype, flags, seq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            return
        yield off, length, mtype, flags, seq
        off += (length + 3) & ~3


def _error(data: bytes, off: int) -> int:
    """The positive errno (0: an ACK) of the NLMSG_ERROR message at `off`."""
    return -struct.unpack_from("=i", data, off + _HDR.size)[0]


def _ext_ack_message(data: bytes, off: int, length: int, flags: int) -> str:
    """NLMSGERR_ATTR_MSG of an extended ACK (with NETLINK_CAP_ACK the request is not echoed)."""
    if not flags & 0x200:  # NLM_F_ACK_TLVS
        return ""
    pos = off + _HDR.size + 4 + _HDR.size  # error code, then the request's header
    return _str(attr_of(data, NLMSGERR_ATTR_MSG, pos, off + length)) or ""


# -- the requests the bulk paths send -------------------------------------------------------------


def new_vxlan(name: str, vni: int, local: str, remote: str, port: int, mtu: int) -> Request:
    """RTM_NEWLINK of a VXLAN device, down, learning off, bound to no lower device (see
    datapath/netlink/devices.py, create_vtep); fails with EEXIST when the name is taken (the
    caller falls back to the checked single path)."""
    six = ipaddress.ip_address(remote).version == 6
    data = [u32(IFLA_VXLAN_ID, vni),
            attr(IFLA_VXLAN_GROUP6 if six else IFLA_VXLAN_GROUP,
                 ipaddress.ip_address(remote).packed),
            attr(IFLA_VXLAN_LOCAL6 if six else IFLA_VXLAN_LOCAL,
                 ipaddress.ip_address(local).packed),
            attr(IFLA_VXLAN_PORT, struct.pack("!H", port)),
            u8(IFLA_VXLAN_LEARNING, 0)]
    body = (ifinfo() + string(IFLA_IFNAME, name) + u32(IFLA_MTU, mtu) +
            attr(IFLA_LINKINFO, string(IFLA_INFO_KIND, "vxlan") +
                 attr(IFLA_INFO_DATA, b"".join(data))))
    return Request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)


def mark(name: str, alias: str) -> Request:
    """RTM_SETLINK by name: moa's alias and no IPv6 address generation (devices.NO_IPV6_ADDR)."""
    af = attr(IFLA_AF_SPEC, attr(socket.AF_INET6, u8(IFLA_INET6_ADDR_GEN_MODE,
                                                     IN6_ADDR_GEN_MODE_NONE)))
    return Request(RTM_SETLINK,
                   ifinfo() + string(IFLA_IFNAME, name) + string(IFLA_IFALIAS, alias) + af)


def set_up(name: str) -> Request:
    return Request(RTM_SETLINK, ifinfo(0, IFF_UP, IFF_UP) + string(IFLA_IFNAME, name))


def set_master(name: str, master_index: int) -> Request:
    return Request(RTM_SETLINK,
                   ifinfo() + string(IFLA_IFNAME, name) + u32(IFLA_MASTER, master_index))


def set_group(index: int, group: int) -> Request:
    return Request(RTM_SETLINK, ifinfo(index) + u32(IFLA_GROUP, group))


def delete_group(group: int) -> Request:
    """RTM_DELLINK of every device in `group`: one unregister_netdevice_many, so one RCU grace
    period for all of them instead of one each (~20 ms apiece on these machines)."""
    return Request(RTM_DELLINK, ifinfo() + u32(IFLA_GROUP, group))


def get_link(name: str) -> Request:
    return Request(RTM_GETLINK, ifinfo() + string(IFLA_IFNAME, name), ack=False)


def link_index_mtu(payload: bytes) -> tuple[int, int | None]:
    """(ifindex, mtu) from an RTM_NEWLINK answer."""
    return _IFINFO.unpack_from(payload, 0)[2], _u32(attr_of(payload, IFLA_MTU, _IFINFO.size))


def link_groups(links: list[bytes]) -> dict[int, int]:
    """ifindex -> device group, from dump_links()."""
    return {_IFINFO.unpack_from(p, 0)[2]: _u32(attr_of(p, IFLA_GROUP, _IFINFO.size)) or 0
            for p in links}


def link_name(payload: bytes) -> str | None:
    return _str(attr_of(payload, IFLA_IFNAME, _IFINFO.size))


def root_qdiscs(qdiscs: list[bytes]) -> dict[int, str]:
    """ifindex -> kind of its root qdisc, from a qdisc dump."""
    out = {}
    for payload in qdiscs:
        _family, index, _handle, parent, _info = _TCMSG.unpack_from(payload)
        if parent == TC_H_ROOT:
            out[index] = _str(attr_of(payload, TCA_KIND, _TCMSG.size)) or "?"
    return out


def alias_of(payload: bytes) -> str | None:
    """IFLA_IFALIAS of a link message without decoding the rest (most devices have none)."""
    return _str(attr_of(payload, IFLA_IFALIAS, _IFINFO.size))


IFLA_XDP, IFLA_XDP_PROG_ID = 43, 4


def _rtattrs(data: bytes, pos: int, end: int | None) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each rtattr in a run, the NLA_F_* bits masked off."""
    end = len(data) if end is None else end
    while pos + 4 <= end:
        n, kind = struct.unpack_from("=HH", data, pos)
        if n < 4:
            return
        yield kind & 0x3FFF, data[pos + 4: pos + n]
        pos += (n + 3) & ~3


def attrs(data: bytes, pos: int = 0, end: int | None = None) -> dict[int, bytes]:
    """{type: payload} of a run of rtattrs (the NLA_F_* bits masked off)."""
    return dict(_rtattrs(data, pos, end))


def attr_of(data: bytes, want: int, pos: int = 0, end: int | None = None) -> bytes | None:
    """The payload of the first rtattr of type `want` in a run; the rest is not looked at."""
    return next((p for kind, p in _rtattrs(data, pos, end) if kind == want), None)


def _str(b: bytes | None) -> str | None:
    return None if b is None else b.split(b"\0")[0].decode(errors="replace")


def _u32(b: bytes | None) -> int | None:
    return None if b is None or len(b) < 4 else struct.unpack_from("=I", b)[0]


def _ip(b: bytes | None) -> str | None:
    return None if not b else str(ipaddress.ip_address(b))


def parse_link(payload: bytes) -> dict:
    """What datapath.netlink.model.MoaDevice needs from an RTM_NEWLINK message (a dump's entry)."""
    _fam, _type, index, flags, _change = _IFINFO.unpack_from(payload, 0)
    a = attrs(payload, _IFINFO.size)
    info = attrs(a[IFLA_LINKINFO]) if IFLA_LINKINFO in a else {}
    kind = _str(info.get(IFLA_INFO_KIND))
    out = dict(index=index, flags=flags, name=_str(a.get(IFLA_IFNAME)),
               alias=_str(a.get(IFLA_IFALIAS)), mtu=_u32(a.get(IFLA_MTU)),
               master=_u32(a.get(IFLA_MASTER)), kind=kind, group=_u32(a.get(IFLA_GROUP)) or 0,
               address=a[IFLA_ADDRESS].hex(":") if IFLA_ADDRESS in a else None,
               xdp_prog_id=(_u32(attrs(a[IFLA_XDP]).get(IFLA_XDP_PROG_ID)) if IFLA_XDP in a
                            else None))
    if kind == "vxlan" and IFLA_INFO_DATA in info:
        d = attrs(info[IFLA_INFO_DATA])
        port = d.get(IFLA_VXLAN_PORT)
        out.update(vni=_u32(d.get(IFLA_VXLAN_ID)),
                   local=_ip(d.get(IFLA_VXLAN_LOCAL)) or _ip(d.get(IFLA_VXLAN_LOCAL6)),
                   remote=_ip(d.get(IFLA_VXLAN_GROUP)) or _ip(d.get(IFLA_VXLAN_GROUP6)),
                   port=struct.unpack("!H", port)[0] if port else None,
                   underlay=_u32(d.get(IFLA_VXLAN_LINK)))
    return out


def delete_name(name: str) -> Request:
    return Request(RTM_DELLINK, ifinfo() + string(IFLA_IFNAME, name))


def add_clsact(index: int) -> Request:
    body = (_TCMSG.pack(socket.AF_UNSPEC, index, TC_CLSACT_HANDLE, TC_H_CLSACT, 0)
            + string(TCA_KIND, "clsact"))
    return Request(RTM_NEWQDISC, body, NLM_F_CREATE | NLM_F_EXCL)


def add_bpf_filter(index: int, parent: int, prio: int, handle: int, prog_fd: int,
                   name: str) -> Request:
    """A direct-action bpf filter at (prio, handle); EEXIST when one is there already."""
    info = (prio << 16) | socket.htons(ETH_P_ALL)
    opts = u32(TCA_BPF_FD, prog_fd) + string(TCA_BPF_NAME, name) + u32(TCA_BPF_FLAGS,
                                                                      TCA_BPF_FLAG_ACT_DIRECT)
    body = (_TCMSG.pack(socket.AF_UNSPEC, index, handle, parent, info) + string(TCA_KIND, "bpf") +
            attr(TCA_OPTIONS, opts))
    return Request(RTM_NEWTFILTER, body, NLM_F_CREATE | NLM_F_EXCL)


__all__ = ["Reply", "Request", "Rtnl", "add_bpf_filter", "add_clsact", "delete_group",
           "get_link", "link_index_mtu", "mark", "new_vxlan", "set_group", "set_master",
           "set_up", "link_groups", "link_name", "delete_name", "parse_link", "alias_of"]
