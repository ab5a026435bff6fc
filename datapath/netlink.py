"""Netlink work for moa's box: VTEPs, bridges, clsact + tc bpf filters, sch_fq, generic XDP.

Everything here runs on ONE dedicated thread (`NetlinkWorker`): pyroute2 cannot open netlink
sockets inside a uvloop loop, and the thread is also where moa enters the box's network namespace
(setns affects only the calling thread), so netlink requests and DEVMAP writes - whose ifindex the
kernel resolves in the writer's namespace - both land in the right namespace.

`Netlink` is the synchronous API, valid only on the worker thread; asyncio code awaits
`NetlinkWorker.call(fn, *args)`.

What moa creates is marked with an ifalias `moa:<materialization>:<link>` (both parts
percent-encoded so that a ':' inside an id cannot be mistaken for the separator); tc filters moa
attaches carry a name starting with `moa`. Nothing else is ever modified or deleted.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar
from urllib.parse import quote, unquote

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from datapath import rtnl
from datapath.rtnl import Rtnl

T = TypeVar("T")

ALIAS_PREFIX = "moa:"
TC_EGRESS = 0xFFFFFFF3  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)
TC_INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
TC_CLSACT_HANDLE = 0xFFFF0000
# moa's tc filters sit at one fixed priority/handle per hook so that finding and replacing them
# needs no state: another tool's filters at other priorities are left alone.
MOA_TC_PRIO = 0xA0
MOA_TC_HANDLE = 1
MOA_FILTER_PREFIX = "moa"
XDP_FLAGS_SKB_MODE = 2  # VXLAN has no native XDP; attach AND detach must say generic mode
IFF_UP = 1
CLONE_NEWNET = 0x40000000
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
IN6_ADDR_GEN_MODE_NONE = 1
# moa's VTEPs and bridges are part of the wire: they must put no frame of their own into an
# experiment. With an IPv6 link-local address a device sends DAD, router solicitations and MLD
# reports when it comes up; address generation off (set before the device is up: the kernel
# refuses it in RTM_NEWLINK and applies it after the flags in RTM_SETLINK) keeps it silent.
NO_IPV6_ADDR = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE",
                                                   IN6_ADDR_GEN_MODE_NONE]]}]]}


class DatapathNetlinkError(RuntimeError):
    """A netlink operation failed; says on which device and what."""


class FqUnavailable(DatapathNetlinkError):
    """The kernel has no sch_fq: latency and capacity cannot be emulated (only loss)."""


class NotOurs(DatapathNetlinkError):
    """A device with the name moa wants exists and is not marked as moa's: it is never touched."""


def make_alias(materialization: str, link: str) -> str:
    return f"{ALIAS_PREFIX}{quote(materialization, safe='')}:{quote(link, safe='')}"


def parse_alias(alias: str | None) -> tuple[str, str] | None:
    """(materialization, link) of a moa alias, None for anything else."""
    if not alias or not alias.startswith(ALIAS_PREFIX):
        return None
    parts = alias[len(ALIAS_PREFIX):].split(":")
    if len(parts) != 2:
        return None
    return unquote(parts[0]), unquote(parts[1])


@dataclass(frozen=True)
class VtepSpec:
    """One VXLAN endpoint in the box: what the kernel device must look like."""

    name: str
    vni: int
    local: str
    remote: str
    underlay: str
    port: int = 4789
    mtu: int = 1450
    address: str | None = None  # its MAC; None: the kernel picks one (a rollback restores it)


@dataclass(frozen=True)
class FqSizing:
    """sch_fq parameters. Defaults of fq (limit 10k, flow_limit 100) drop under EDT delays
    (docs/kernel-facts.md): size them from the links' bandwidth-delay products (`fq_sizing_for`)."""

    limit: int = 100_000
    flow_limit: int = 100_000
    buckets: int = 1024
    horizon_ns: int = 10_000_000_000
    orphan_mask: int = 1023


def fq_sizing_for(max_bdp_bytes: int, total_bdp_bytes: int, mtu: int = 1500,
                  horizon_ns: int = 10_000_000_000, buckets: int = 1024) -> FqSizing:
    """Packets fq must hold: one link's BDP in one (pseudo-)flow, all links' BDP in total.

    Forwarded packets have no socket, so fq hashes them into orphan_mask+1 pseudo-flows and one
    link's packets may all share one: flow_limit must cover the largest link's BDP, limit the sum.
    Counted in minimum-size packets would be wasteful; MTU-sized (with a 2x margin) is what a
    bulk flow puts there. GSO packets make this conservative (one skb, many frames).
    """
    per_flow = max(1000, 2 * -(-max_bdp_bytes // mtu))
    total = max(10_000, 2 * -(-total_bdp_bytes // mtu), per_flow)
    return FqSizing(limit=total, flow_limit=per_flow, buckets=buckets, horizon_ns=horizon_ns,
                    orphan_mask=buckets - 1)


@dataclass(frozen=True)
class MoaDevice:
    """A device moa created, as the kernel reports it."""

    name: str
    index: int
    kind: str  # "vxlan" | "bridge"
    materialization: str
    link: str
    up: bool
    mtu: int
    master: int | None
    vni: int | None = None
    local: str | None = None
    remote: str | None = None
    port: int | None = None
    underlay: int | None = None
    xdp_prog_id: int | None = None
    address: str | None = None  # MAC
    root_qdisc: str | None = None  # kind of its root qdisc when asked for ("fq": a held LAN port)


@dataclass(frozen=True)
class TcFilter:
    direction: str  # "egress" | "ingress"
    prio: int
    handle: int
    name: str
    prog_id: int | None


def _parent(direction: str) -> int:
    if direction == "egress":
        return TC_EGRESS
    if direction == "ingress":
        return TC_INGRESS
    raise ValueError(f"direction must be egress or ingress, not {direction!r}")


class Netlink:
    """Synchronous netlink operations; every method must run on the worker thread."""

    def __init__(self, ipr: IPRoute, netns_path: str | None) -> None:
        self.ipr = ipr
        self.netns_path = netns_path
        self._thread = threading.get_ident()
        self.rtnl = Rtnl()  # bulk paths of a plan (datapath/rtnl.py); same thread, same netns

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise RuntimeError("Netlink used outside its worker thread")

    # -- devices ---------------------------------------------------------------------------

    def ifindex(self, name: str) -> int | None:
        self._check_thread()
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def require_ifindex(self, name: str) -> int:
        index = self.ifindex(name)
        if index is None:
            raise DatapathNetlinkError(f"device {name!r} does not exist")
        return index

    def _link_msg(self, index: int) -> Any:
        return self.ipr.get_links(index)[0]

    def alias_of(self, name: str) -> str | None:
        index = self.ifindex(name)
        if index is None:
            return None
        return self._link_msg(index).get("IFLA_IFALIAS")

    def _claim(self, name: str, alias: str, kind: str) -> int | None:
        """Index of an existing device that moa already owns under this alias, None if absent;
        raises NotOurs when the name is taken by something moa did not create."""
        index = self.ifindex(name)
        if index is None:
            return None
        msg = self._link_msg(index)
        have_alias = msg.get("IFLA_IFALIAS")
        linkinfo = msg.get("IFLA_LINKINFO")
        have_kind = linkinfo.get("IFLA_INFO_KIND") if linkinfo else None
        if parse_alias(have_alias) is None or have_kind != kind:
            raise NotOurs(f"device {name!r} exists and is not moa's (alias {have_alias!r}, "
                          f"kind {have_kind!r}): refusing to touch it")
        if have_alias != alias:
            raise NotOurs(f"device {name!r} belongs to {parse_alias(have_alias)}, "
                          f"not to {parse_alias(alias)}")
        return index

    def _mark(self, name: str, alias: str) -> int:
        """Alias (moa's mark) and no IPv6 address generation, in one request, while down."""
        index = self.require_ifindex(name)
        self.ipr.link("set", index=index, ifalias=alias, IFLA_AF_SPEC=NO_IPV6_ADDR)
        return index

    def _delete_ours(self, name: str, alias: str | None) -> None:
        """Delete `name` if moa created it (for `alias` when given: another materialization's
        device of the same name is not this one's to delete)."""
        index = self.ifindex(name)
        if index is None:
            return
        have = self._link_msg(index).get("IFLA_IFALIAS")
        if parse_alias(have) is None:
            raise NotOurs(f"device {name!r} is not moa's: refusing to delete it")
        if alias is not None and have != alias:
            raise NotOurs(f"device {name!r} belongs to {parse_alias(have)}, not to "
                          f"{parse_alias(alias)}: refusing to delete it")
        try:
            self.ipr.link("del", index=index)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise DatapathNetlinkError(f"deleting {name}: {e}") from e

    def create_vtep(self, spec: VtepSpec, alias: str, up: bool = True) -> int:
        """Create (or find, already created by moa) the VXLAN device; learning off.

        The kernel ignores IFLA_IFALIAS in RTM_NEWLINK, so the alias is set right after the
        device is created, before it comes up: a crash between the two leaves a down device that
        moa does not claim (NotOurs names it; remove it by hand).
        """
        self._check_thread()
        index = self._claim(spec.name, alias, "vxlan")
        if index is None:
            underlay = self.require_ifindex(spec.underlay)
            six = ipaddress.ip_address(spec.remote).version == 6
            attrs: dict[str, Any] = {
                "ifname": spec.name, "kind": "vxlan", "vxlan_id": spec.vni,
                "vxlan_port": spec.port, "vxlan_learning": 0, "vxlan_link": underlay,
                "mtu": spec.mtu,
            }
            if spec.address is not None:
                attrs["address"] = spec.address
            attrs["vxlan_group6" if six else "vxlan_group"] = spec.remote
            attrs["vxlan_local6" if six else "vxlan_local"] = spec.local
            try:
                self.ipr.link("add", **attrs)
            except NetlinkError as e:
                raise DatapathNetlinkError(f"creating VTEP {spec.name} (VNI {spec.vni}): {e}") from e
            index = self._mark(spec.name, alias)
        if up:
            self.set_up(spec.name, True)
        return index

    def delete_vtep(self, name: str, alias: str | None = None) -> None:
        self._check_thread()
        self._delete_ours(name, alias)

    def create_bridge(self, name: str, alias: str, mtu: int | None = None) -> int:
        """A LAN's bridge: STP off (it is part of the wire), forwarding delay irrelevant,
        multicast snooping off: with it the bridge joins the multicast router discovery groups
        (224.0.0.106, ff02::6a) and sends IGMP/MLD reports of its own into the LAN."""
        self._check_thread()
        index = self._claim(name, alias, "bridge")
        if index is None:
            attrs: dict[str, Any] = {"ifname": name, "kind": "bridge", "br_stp_state": 0,
                                     "br_forward_delay": 0, "br_mcast_snooping": 0}
            if mtu is not None:
                attrs["mtu"] = mtu
            try:
                self.ipr.link("add", **attrs)
            except NetlinkError as e:
                raise DatapathNetlinkError(f"creating bridge {name}: {e}") from e
            index = self._mark(name, alias)
        self.set_up(name, True)
        return index

    def delete_bridge(self, name: str, alias: str | None = None) -> None:
        self._check_thread()
        self._delete_ours(name, alias)

    def set_master(self, name: str, master: str | None) -> None:
        self._check_thread()
        index = self.require_ifindex(name)
        master_index = self.require_ifindex(master) if master else 0
        try:
            self.ipr.link("set", index=index, master=master_index)
        except NetlinkError as e:
            raise DatapathNetlinkError(f"setting master of {name} to {master}: {e}") from e

    def set_up(self, name: str, up: bool) -> None:
        self._check_thread()
        index = self.require_ifindex(name)
        try:
            self.ipr.link("set", index=index, state="up" if up else "down")
        except NetlinkError as e:
            raise DatapathNetlinkError(f"setting {name} {'up' if up else 'down'}: {e}") from e

    def list_moa_devices(self, qdiscs: bool = False) -> list[MoaDevice]:
        """Every device carrying a moa alias (VTEPs and bridges), with what reconcile needs;
        with `qdiscs`, the kind of each one's root qdisc too (one more dump).

        One raw dump (datapath/rtnl.py): decoding thousands of links through pyroute2 took
        seconds; only the messages with moa's alias are decoded here."""
        self._check_thread()
        roots = rtnl.root_qdiscs(self.rtnl.dump_qdiscs()) if qdiscs else {}
        out: list[MoaDevice] = []
        for payload in self.rtnl.dump_links():
            owner = parse_alias(rtnl.alias_of(payload))
            if owner is None:
                continue
            d = rtnl.parse_link(payload)
            out.append(MoaDevice(
                name=d["name"], index=d["index"], kind=d["kind"] or "?",
                materialization=owner[0], link=owner[1], up=bool(d["flags"] & IFF_UP),
                mtu=d["mtu"], master=d["master"] or None, vni=d.get("vni"),
                local=d.get("local"), remote=d.get("remote"), port=d.get("port"),
                underlay=d.get("underlay"), xdp_prog_id=d["xdp_prog_id"] or None,
                address=d.get("address"),
                root_qdisc=roots.get(d["index"])))
        return out

    # -- XDP (generic mode) -------------------------------------------------------------------

    def attach_xdp(self, name: str, prog_fd: int) -> None:
        self._check_thread()
        index = self.require_ifindex(name)
        try:
            self.ipr.link("set", index=index,
                          xdp={"attrs": [["IFLA_XDP_FD", prog_fd],
                                         ["IFLA_XDP_FLAGS", XDP_FLAGS_SKB_MODE]]})
        except NetlinkError as e:
            raise DatapathNetlinkError(f"attaching XDP (generic) to {name}: {e}") from e

    def detach_xdp(self, name: str) -> None:
        """Detach; without XDP_FLAGS_SKB_MODE the kernel leaves a generic program attached."""
        self._check_thread()
        index = self.ifindex(name)
        if index is None:
            return
        try:
            self.ipr.link("set", index=index,
                          xdp={"attrs": [["IFLA_XDP_FD", -1],
                                         ["IFLA_XDP_FLAGS", XDP_FLAGS_SKB_MODE]]})
        except NetlinkError as e:
            raise DatapathNetlinkError(f"detaching XDP from {name}: {e}") from e

    def xdp_prog_id(self, name: str) -> int | None:
        self._check_thread()
        xdp = self._link_msg(self.require_ifindex(name)).get("IFLA_XDP")
        return (xdp.get("IFLA_XDP_PROG_ID") or None) if xdp else None

    # -- tc: clsact and bpf filters -----------------------------------------------------------

    def has_clsact(self, name: str) -> bool:
        """Slow (pyroute2 dumps every qdisc of the namespace): checks and tests only. A filter
        dump cannot tell, it answers empty with or without clsact."""
        index = self.require_ifindex(name)
        return any(q.get("TCA_KIND") == "clsact" for q in self.ipr.get_qdiscs(index))

    def ensure_clsact(self, name: str) -> None:
        self._check_thread()
        index = self.require_ifindex(name)
        try:
            self.ipr.tc("add", "clsact", index=index)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise DatapathNetlinkError(f"adding clsact to {name}: {e}") from e

    def remove_clsact(self, name: str) -> None:
        """Remove clsact only when no filter but moa's is left on it (another tool's stay)."""
        self._check_thread()
        index = self.ifindex(name)
        if index is None:
            return
        for direction in ("egress", "ingress"):
            for msg in self.ipr.get_filters(index=index, parent=_parent(direction)):
                opts = msg.get("TCA_OPTIONS")
                if opts is None:
                    continue  # a chain header, not a filter
                if msg.get("TCA_KIND") != "bpf" or not (opts.get("TCA_BPF_NAME") or "").startswith(
                        MOA_FILTER_PREFIX):
                    return  # another tool's filter: its clsact stays
        try:
            self.ipr.tc("del", "clsact", index=index)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EINVAL):
                raise DatapathNetlinkError(f"removing clsact from {name}: {e}") from e

    def list_filters(self, name: str, direction: str, index: int | None = None) -> list[TcFilter]:
        self._check_thread()
        index = index if index is not None else self.require_ifindex(name)
        out = []
        try:
            msgs = list(self.ipr.get_filters(index=index, parent=_parent(direction)))
        except NetlinkError as e:
            if e.code in (errno.EINVAL, errno.ENOENT):  # no clsact
                return []
            raise
        for msg in msgs:
            if msg.get("TCA_KIND") != "bpf":
                continue
            opts = msg.get("TCA_OPTIONS")
            if opts is None:  # the per-priority chain header, not a filter
                continue
            out.append(TcFilter(direction=direction, prio=msg["info"] >> 16, handle=msg["handle"],
                                name=opts.get("TCA_BPF_NAME") or "",
                                prog_id=opts.get("TCA_BPF_ID")))
        return out

    def attach_bpf(self, name: str, direction: str, prog_fd: int, prog_name: str) -> None:
        """Attach a direct-action bpf filter at moa's priority, replacing moa's previous one.

        `prog_name` must start with "moa" (how reconcile recognises moa's filters).
        """
        self._check_thread()
        if not prog_name.startswith(MOA_FILTER_PREFIX):
            raise ValueError(f"moa's filter names start with {MOA_FILTER_PREFIX!r}: {prog_name!r}")
        self.ensure_clsact(name)
        index = self.require_ifindex(name)
        for f in self.list_filters(name, direction, index):
            if f.prio == MOA_TC_PRIO and not f.name.startswith(MOA_FILTER_PREFIX):
                raise NotOurs(f"{direction} filter at prio {MOA_TC_PRIO} on {name} is not moa's")
        try:
            self.ipr.tc("replace-filter", "bpf", index=index, handle=MOA_TC_HANDLE,
                        parent=_parent(direction), prio=MOA_TC_PRIO, fd=prog_fd,
                        name=prog_name, direct_action=True)
        except NetlinkError as e:
            raise DatapathNetlinkError(f"attaching {prog_name} to {name} {direction}: {e}") from e

    def detach_bpf(self, name: str, direction: str) -> None:
        self._check_thread()
        index = self.ifindex(name)
        if index is None:
            return
        ours = [f for f in self.list_filters(name, direction, index)
                if f.prio == MOA_TC_PRIO and f.name.startswith(MOA_FILTER_PREFIX)]
        for f in ours:
            try:
                self.ipr.tc("del-filter", "bpf", index=index, parent=_parent(direction),
                            prio=f.prio, handle=f.handle)
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.EINVAL):
                    raise DatapathNetlinkError(f"detaching {f.name} from {name}: {e}") from e

    # -- sch_fq -------------------------------------------------------------------------------

    def _tc_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        # pyroute2 0.9.7 has no sch_fq encoder; iproute2's `tc` has one. The child inherits this
        # thread's network namespace (fork copies the calling thread's nsproxy).
        return subprocess.run(["tc", *args], capture_output=True, text=True)

    def qdisc_kind(self, name: str) -> str | None:
        index = self.require_ifindex(name)
        for q in self.ipr.get_qdiscs(index):
            if q["parent"] == 0xFFFFFFFF:
                return q.get("TCA_KIND")
        return None

    @staticmethod
    def _fq_args(name: str, sizing: FqSizing) -> list[str]:
        horizon_us = max(1, sizing.horizon_ns // 1000)
        return ["qdisc", "replace", "dev", name, "root", "fq",
                "limit", str(sizing.limit), "flow_limit", str(sizing.flow_limit),
                "buckets", str(sizing.buckets), "orphan_mask", str(sizing.orphan_mask),
                "horizon", f"{horizon_us}us", "horizon_drop"]

    @staticmethod
    def _fq_error(name: str, r: subprocess.CompletedProcess[str]) -> Exception:
        msg = (r.stderr or r.stdout).strip()
        if "unknown" in msg.lower() or "no such file" in msg.lower():
            return FqUnavailable(f"this kernel has no sch_fq ({msg}): latency and capacity "
                                 "cannot be emulated; allow loss-only mode to run anyway")
        return DatapathNetlinkError(f"setting sch_fq on {name}: {msg}")

    def ensure_fq(self, name: str, sizing: FqSizing) -> None:
        """sch_fq as root qdisc of `name`, sized as given (replaces whatever root qdisc was)."""
        self._check_thread()
        self.require_ifindex(name)
        r = self._tc_cli(*self._fq_args(name, sizing))
        if r.returncode != 0:
            raise self._fq_error(name, r)

    def ensure_fq_many(self, devices: list[tuple[str, FqSizing]]) -> None:
        """ensure_fq for many devices in one `tc -batch` process (a fork each costs ~5 ms).
        On a failure the devices are retried one by one, so the error names the device."""
        self._check_thread()
        if not devices:
            return
        script = "".join(" ".join(self._fq_args(n, z)) + "\n" for n, z in devices)
        r = subprocess.run(["tc", "-force", "-batch", "-"], input=script, capture_output=True,
                           text=True)
        if r.returncode != 0:
            for name, sizing in devices:
                self.ensure_fq(name, sizing)

    def remove_fq(self, name: str) -> None:
        self._check_thread()
        if self.ifindex(name) is None or self.qdisc_kind(name) != "fq":
            return
        r = self._tc_cli("qdisc", "del", "dev", name, "root")
        if r.returncode != 0:
            raise DatapathNetlinkError(f"removing sch_fq from {name}: {r.stderr.strip()}")

    def bond_slaves(self, name: str) -> list[str] | None:
        """Slave device names when `name` is a bond, else None."""
        self._check_thread()
        index = self.require_ifindex(name)
        linkinfo = self._link_msg(index).get("IFLA_LINKINFO")
        if not linkinfo or linkinfo.get("IFLA_INFO_KIND") != "bond":
            return None
        return [m.get("IFLA_IFNAME") for m in self.ipr.get_links() if m.get("IFLA_MASTER") == index]

    def mtu(self, name: str) -> int:
        return self._link_msg(self.require_ifindex(name)).get("IFLA_MTU")


_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_path(netns: str | None) -> str | None:
    if netns is None:
        return None
    return netns if netns.startswith("/") else f"/var/run/netns/{netns}"


class NetlinkWorker:
    """One thread, in the box's network namespace, owning the IPRoute socket.

    `await call(fn, *args)` runs fn(*args) there; `run(fn, *args)` is the blocking form for
    code that is not on an event loop. fn may use `worker.nl` (the Netlink of that thread).
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._path = netns_path(netns)
        self._nl: Netlink | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moa-netlink")
        self._executor.submit(self._start).result()

    def _start(self) -> None:
        if self._path is not None:
            _enter_netns(self._path)
        self._nl = Netlink(IPRoute(), self._path)

    @property
    def nl(self) -> Netlink:
        assert self._nl is not None
        return self._nl

    def on_thread(self) -> bool:
        return self._nl is not None and threading.get_ident() == self._nl._thread

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.on_thread():
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        if self._nl is not None:
            try:
                self._executor.submit(self._nl.ipr.close).result()
                self._nl.rtnl.close()
            finally:
                self._nl = None
        self._executor.shutdown(wait=True)
