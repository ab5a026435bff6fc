"""moa's devices through pyroute2, one checked request at a time: VTEPs, bridges, generic XDP.

`Netlink` is the synchronous API of the netlink worker thread (datapath/netlink/worker.py); its
tc half (clsact, bpf filters, sch_fq) is `TrafficControl` (datapath/netlink/tc.py). The bulk
paths of a plan and the dumps go through `Rtnl` (datapath/netlink/raw.py) instead, on the same
thread. Only devices carrying moa's mark (datapath/netlink/model.py) are modified or deleted.
"""
from __future__ import annotations

import array
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from datapath.netlink import nexthop, raw
from datapath.netlink.model import DatapathNetlinkError, MoaDevice, NotOurs, VtepSpec, parse_alias
from datapath.netlink.raw import IFF_UP, IN6_ADDR_GEN_MODE_NONE, Rtnl
from datapath.netlink.tc import TrafficControl

SIOCETHTOOL, ETHTOOL_GSET = 0x8946, 0x1
XDP_FLAGS_SKB_MODE = 2  # VXLAN has no native XDP; attach AND detach must say generic mode
# moa's VTEPs and bridges are part of the wire: they must put no frame of their own into an
# experiment. With an IPv6 link-local address a device sends DAD, router solicitations and MLD
# reports when it comes up; address generation off (set before the device is up: the kernel
# refuses it in RTM_NEWLINK and applies it after the flags in RTM_SETLINK) keeps it silent.
NO_IPV6_ADDR = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE",
                                                   IN6_ADDR_GEN_MODE_NONE]]}]]}


def ipv6_off(name: str) -> None:
    """Turn IPv6 off on a device of moa's, while it is down (net.ipv6.conf.<name>.disable_ipv6).

    Address generation off keeps a device silent, but bringing it up still makes IPv6 add the
    device's multicast route (ff00::/8) and walk the whole IPv6 routing table: both grow with
    the number of devices, so the box's n-th VTEP came up in O(n) and 60,000 VTEPs took
    quadratic time (docs/architecture.md, "Building many VTEPs"). A VTEP or bridge of moa's
    carries frames, never an address of its own, so IPv6 is off on it. Netlink cannot set this
    (the kernel only takes the address generation mode and token in IFLA_AF_SPEC), hence the
    sysctl; it is per network namespace, and the calling thread (the netlink worker) is in the
    box's. Without IPv6 in the kernel there is nothing to turn off."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
    except FileNotFoundError:
        if os.path.exists("/proc/sys/net/ipv6/conf"):
            raise DatapathNetlinkError(f"device {name!r} has no IPv6 settings") from None


class Netlink(TrafficControl):
    """Synchronous netlink operations; every method must run on the worker thread.

    Devices here; clsact, bpf filters and sch_fq in the TrafficControl it inherits."""

    def __init__(self, ipr: IPRoute, netns_path: str | None) -> None:
        self.ipr = ipr
        self.netns_path = netns_path
        self._thread = threading.get_ident()
        self.rtnl = Rtnl()  # bulk paths and dumps (datapath/netlink/raw.py); same thread, netns

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

        It is bound to no lower device: a VXLAN device bound to the uplink becomes one of the
        uplink's upper devices, and the kernel walks all of them to link each new one, so the
        n-th VTEP cost O(n) and 60,000 took quadratic time (docs/architecture.md, "Building
        many VTEPs"). Its frames follow the box's routes instead; `route_device` is how the
        datapath checks, before creating any, that each remote is reached through the uplink.

        The kernel ignores IFLA_IFALIAS in RTM_NEWLINK, so the alias is set right after the
        device is created, before it comes up: a crash between the two leaves a down device that
        moa does not claim (NotOurs names it; remove it by hand).
        """
        self._check_thread()
        index = self._claim(spec.name, alias, "vxlan")
        if index is None:
            six = ipaddress.ip_address(spec.remote).version == 6
            attrs: dict[str, Any] = {
                "ifname": spec.name, "kind": "vxlan", "vxlan_id": spec.vni,
                "vxlan_port": spec.port, "vxlan_learning": 0, "mtu": spec.mtu,
            }
            if spec.address is not None:
                attrs["address"] = spec.address
            attrs["vxlan_group6" if six else "vxlan_group"] = spec.remote
            attrs["vxlan_local6" if six else "vxlan_local"] = spec.local
            try:
                self.ipr.link("add", **attrs)
            except NetlinkError as e:
                raise DatapathNetlinkError(
                    f"creating VTEP {spec.name} (VNI {spec.vni}): {e}") from e
            index = self._mark(spec.name, alias)
        ipv6_off(spec.name)  # before up (also for a device found half-made by an earlier run)
        if up:
            self.set_up(spec.name, True)
        return index

    def route_device(self, address: str) -> int | None:
        """The ifindex of the device the box's routes send `address` through, None when there
        is no route to it."""
        self._check_thread()
        try:
            routes = self.ipr.route("get", dst=address)
        except NetlinkError as e:
            if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                return None
            raise DatapathNetlinkError(f"looking up the route to {address}: {e}") from e
        return routes[0].get("RTA_OIF") if routes else None

    def next_hop_macs(self, addresses: Iterable[str], ifindex: int, wait_s: float = 1.0,
                      ) -> dict[str, tuple[str, str | None]]:
        """address -> (next hop, its MAC or None) (datapath/netlink/nexthop.py)."""
        self._check_thread()
        return nexthop.next_hop_macs(self.ipr, addresses, ifindex, wait_s)

    def mac_of(self, name: str) -> str:
        return str(self._link_msg(self.require_ifindex(name)).get("IFLA_ADDRESS")).lower()

    def name_of(self, index: int) -> str:
        self._check_thread()
        try:
            return self._link_msg(index).get("IFLA_IFNAME") or f"ifindex {index}"
        except NetlinkError:
            return f"ifindex {index}"

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
        ipv6_off(name)
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

        One raw dump (datapath/netlink/raw.py): decoding thousands of links through pyroute2 took
        seconds; only the messages with moa's alias are decoded here."""
        self._check_thread()
        roots = raw.root_qdiscs(self.rtnl.dump_qdiscs()) if qdiscs else {}
        out: list[MoaDevice] = []
        for payload in self.rtnl.dump_links():
            owner = parse_alias(raw.alias_of(payload))
            if owner is None:
                continue
            d = raw.parse_link(payload)
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

    def link_speed_bps(self, name: str) -> int | None:
        """The device's speed as its driver reports it (ethtool's, ETHTOOL_GSET; a bond's is
        the sum of its active slaves'), None when unknown. The socket is made on this thread,
        so the ioctl names a device of the box's namespace."""
        self._check_thread()
        cmd = array.array("B", struct.pack("=I", ETHTOOL_GSET) + bytes(40))  # struct ethtool_cmd
        ifreq = struct.pack("16sP", name.encode()[:15], cmd.buffer_info()[0]).ljust(40, b"\0")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
        except OSError:
            return None
        mbps = struct.unpack_from("=H", cmd, 12)[0] | struct.unpack_from("=H", cmd, 28)[0] << 16
        return None if mbps in (0, 0xFFFF, 0xFFFFFFFF) else mbps * 1_000_000
