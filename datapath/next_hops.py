"""Flow mode follows its next hops (docs/architecture.md, "Flow mode in the planner"): a flow
entry carries the MAC of the next hop toward its peer's remote, read when the entry was
planned. A VTEP asks the kernel's neighbour table for every frame; an entry would keep the
MAC it was written with, so a hypervisor whose NIC (or router) changes would be sent frames it
drops until its materialization was applied again. `NextHops` remembers, per remote, the MAC
its entries carry; `follow` (run on the netlink worker, every few seconds by the service)
compares them with the box's routes and neighbour table now and rewrites the entries of the
remotes whose next hop's MAC moved, in one batch write.

A check costs one neighbour dump per address family and one route lookup per remote the
entries send to (the box's hypervisors, not its links); the entries are read only when a MAC
moved. A next hop the table no longer knows (its entry failed or was removed) keeps the MAC
its entries carry: the box does not solicit it (its frames never go through the box's stack),
the hypervisor's own traffic or ARP brings the entry back.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from datapath.flow import FlowTable
from datapath.netlink import nexthop


class NextHops:
    """remote -> the MAC of its next hop, as the flow entries toward it carry it."""

    def __init__(self) -> None:
        self.macs: dict[str, str] = {}

    def learned(self, hops: Mapping[str, str]) -> None:
        """What a plan that was applied wrote (planner.FlowContext.hops)."""
        self.macs.update(hops)

    def moved(self, ipr: Any, ifindex: int) -> dict[str, str]:
        """remote -> its next hop's MAC now, for the remotes whose MAC is not the one known."""
        table: dict[int, dict[str, str]] = {}
        out = {}
        for remote, known in self.macs.items():
            _, hop = nexthop.route(ipr, remote)
            family = nexthop.family(hop)
            if family not in table:
                table[family] = nexthop.neighbours(ipr, ifindex, family)
            now = table[family].get(nexthop.canonical(hop))
            if now is not None and now != known:
                out[remote] = now
        return out

    def follow(self, ipr: Any, flows: FlowTable, ifindex: int) -> list[str]:
        """Rewrite the entries whose remote's next hop moved; what was done, one line a remote."""
        moved = self.moved(ipr, ifindex)
        if not moved:
            return []
        fixed = [dataclasses.replace(e, peer_mac=moved[e.peer_ip])
                 for e in flows.entries().values()
                 if e.peer_ip in moved and e.peer_mac != moved[e.peer_ip]]
        flows.set(fixed)
        said = []
        for remote, mac in sorted(moved.items()):
            n = sum(1 for e in fixed if e.peer_ip == remote)
            said.append(f"flow entries toward {remote}: next hop MAC {self.macs[remote]} -> "
                        f"{mac} ({n} rewritten)")
            self.macs[remote] = mac
        return said
