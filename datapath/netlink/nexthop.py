"""The MAC a flow-mode frame is sent to: the next hop toward a remote VTEP, from the box's routes
and neighbour table (docs/architecture.md, "Flow mode in the planner").

A route's gateway is the next hop, else the remote itself (on the uplink's subnet). A neighbour
entry that has an address (reachable, stale, delay, probe, permanent, noarp) gives it. None
known: resolution is started by sending one empty UDP datagram to the remote's discard port
(9): the kernel resolves the next hop to send it, by ARP or neighbour discovery, as for any
frame. The table is then polled until `wait_s`; a next hop still unknown is the caller's to
write as pending (datapath/next_hops.py solicits it again until it answers). The socket is
made on the netlink worker's thread, so it belongs to the box's network namespace.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections.abc import Iterable
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from datapath.netlink.model import DatapathNetlinkError

NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20
DISCARD_PORT = 9
POLL_S = 0.02


def route(ipr: Any, address: str) -> tuple[int | None, str]:
    """(the device's ifindex, the next hop's address) toward `address`; (None, address) when
    the box has no route to it."""
    try:
        routes = ipr.route("get", dst=address)
    except NetlinkError as e:
        if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
            return None, address
        raise DatapathNetlinkError(f"looking up the route to {address}: {e}") from e
    if not routes:
        return None, address
    return routes[0].get("RTA_OIF"), routes[0].get("RTA_GATEWAY") or address


def family(address: str) -> int:
    """The socket family of `address`."""
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))


def neighbours(ipr: Any, ifindex: int, fam: int) -> dict[str, str]:
    """address -> link-layer address of every entry of the neighbour table on `ifindex` in
    family `fam` that has one (reachable, stale, delay, probe, permanent, noarp)."""
    out = {}
    for msg in ipr.get_neighbours(family=fam, ifindex=ifindex):
        dst, mac = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
        if dst is None or not mac or msg["state"] & (NUD_INCOMPLETE | NUD_FAILED):
            continue
        out[canonical(dst)] = str(mac).lower()
    return out


def solicit(address: str) -> None:
    """Make the kernel resolve the next hop toward `address` (module doc)."""
    try:
        with socket.socket(family(address), socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.sendto(b"", (address, DISCARD_PORT))
    except OSError:
        pass  # unreachable: the table stays empty and the entries stay pending


def next_hop_macs(ipr: Any, addresses: Iterable[str], ifindex: int, wait_s: float,
                  ) -> dict[str, tuple[str, str | None]]:
    """address -> (its next hop's address, that hop's MAC or None) through `ifindex`. The
    unknown ones are solicited together and the table polled (one dump per family a poll)
    until all are known or `wait_s` has passed."""
    hops = {a: route(ipr, a)[1] for a in addresses}
    found = lookup(ipr, ifindex, hops)
    missing = [a for a, (_, mac) in found.items() if mac is None]
    for a in missing:
        solicit(a)
    deadline = time.monotonic() + wait_s
    while missing and time.monotonic() < deadline:
        time.sleep(POLL_S)
        found = lookup(ipr, ifindex, hops)
        missing = [a for a, (_, mac) in found.items() if mac is None]
    return found


def lookup(ipr: Any, ifindex: int, hops: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """address -> (its next hop, that hop's MAC in the neighbour table now or None), from
    `hops` (address -> next hop, as `route` gives it): one neighbour dump per family."""
    table = {fam: neighbours(ipr, ifindex, fam) for fam in {family(h) for h in hops.values()}}
    return {a: (h, table[family(h)].get(canonical(h))) for a, h in hops.items()}
