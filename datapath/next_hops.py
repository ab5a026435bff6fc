"""Flow mode follows its next hops (docs/architecture.md, "Flow mode in the planner"): a flow
entry carries the MAC of the next hop toward its peer's remote, read when the entry was
planned. A VTEP asks the kernel's neighbour table for every frame; an entry would keep the
MAC it was written with, so a hypervisor whose NIC (or router) changes would be sent frames it
drops until its materialization was applied again, and an entry planned while its next hop
was silent would stay pending. `NextHops` remembers, per remote, the MAC its entries carry or
that they wait for one; `follow` (run on the netlink worker, every few seconds by the service)
compares them with the box's routes and neighbour table now and, in one batch write each
pass, rewrites the entries of the remotes whose next hop's MAC moved and those of the pending
remotes that answered. A pending remote still silent is solicited again (a VTEP's neighbour
entry retries likewise while frames wait for it).

A check costs one neighbour dump per address family and one route lookup per remote the
entries send to (the box's hypervisors, not its links). The entries are read when a MAC moved,
and on each pass while some are pending (which of them still are, and toward which remotes:
a remote whose links went away is no longer solicited). A resolved next hop the table no
longer knows (its entry failed or was removed) keeps the MAC its entries carry: the box does
not solicit it (its frames never go through the box's stack), the hypervisor's own traffic or
ARP brings the entry back.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from datapath.flow import FlowEntry, FlowTable
from datapath.netlink import nexthop


class NextHops:
    """remote -> the MAC of its next hop, as the flow entries toward it carry it; the remotes
    whose entries are pending. Remotes are canonical addresses (as entries decode them)."""

    def __init__(self) -> None:
        self.macs: dict[str, str] = {}
        self.pending: set[str] = set()

    def learned(self, hops: Mapping[str, str | None]) -> None:
        """What a plan that was applied wrote (planner.FlowContext.hops)."""
        for remote, mac in hops.items():
            r = nexthop.canonical(remote)
            if mac is None:
                self.pending.add(r)
            else:
                self.macs[r] = mac
                self.pending.discard(r)

    def seed(self, entries: Iterable[FlowEntry]) -> None:
        """What the kernel's entries carry (a restart: the table outlives the service)."""
        self.learned({e.peer_ip: e.peer_mac for e in entries})

    def _now(self, ipr: Any, ifindex: int, remotes: Iterable[str]) -> dict[str, str | None]:
        """remote -> its next hop's MAC in the neighbour table now (None: not there)."""
        hops = {r: nexthop.route(ipr, r)[1] for r in remotes}
        return {r: mac for r, (_, mac) in nexthop.lookup(ipr, ifindex, hops).items()}

    def moved(self, ipr: Any, ifindex: int) -> dict[str, str]:
        """remote -> its next hop's MAC now, for the remotes whose MAC is not the one known."""
        return {r: mac for r, mac in self._now(ipr, ifindex, self.macs).items()
                if mac is not None and mac != self.macs[r]}

    def follow(self, ipr: Any, flows: FlowTable, ifindex: int) -> list[str]:
        """Rewrite the entries whose remote's next hop moved or answered; solicit the pending
        ones still silent; what was done, one line a remote."""
        moved = self.moved(ipr, ifindex)
        held = flows.raw() if moved or self.pending else {}  # one read serves both
        waiting = [flows.decode(v, raw) for v, raw in held.items() if flows.pending(raw)]
        if self.pending:
            self.pending = {e.peer_ip for e in waiting}
        answered = {r: mac for r, mac in self._now(ipr, ifindex, self.pending).items()
                    if mac is not None}
        for remote in self.pending - answered.keys():
            nexthop.solicit(remote)
        if not moved and not answered:
            return []
        fixed = [dataclasses.replace(e, peer_mac=answered[e.peer_ip])
                 for e in waiting if e.peer_ip in answered]
        if moved:
            resolved = (flows.decode(v, raw) for v, raw in held.items() if not flows.pending(raw))
            fixed += [dataclasses.replace(e, peer_mac=moved[e.peer_ip]) for e in resolved
                      if e.peer_ip in moved and e.peer_mac != moved[e.peer_ip]]
        flows.set(fixed)
        said = []
        for remote, mac in sorted({**moved, **answered}.items()):
            n = sum(1 for e in fixed if e.peer_ip == remote)
            was = self.macs.get(remote, "pending")
            said.append(f"flow entries toward {remote}: next hop MAC {was} -> {mac} "
                        f"({n} rewritten)")
            self.macs[remote] = mac
            self.pending.discard(remote)
        return said
