"""The box's side of flow mode (`--p2p-mode flow`) for KernelDatapath: the pins across a mode
switch, what the planner reads of moa_flow, each remote's next-hop MAC, the entries a restart
purges (docs/architecture.md, "Flow mode in the planner").
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import os

import schemas
from datapath.classifier import ClassifierConfig
from datapath.contract import MapUsage
from datapath.flow import FLOW_MAP, OWNER_MAP, STATS_MAP, FlowTable, Uplink
from datapath.libbpf import Map, abi
from datapath.netlink.nexthop import canonical
from datapath.netlink.devices import Netlink
from datapath.next_hops import NextHops
from datapath.plan.flows import key_tag
from datapath.plan.planner import Current, FlowContext, PlanConfig

log = logging.getLogger("datapath.flow_mode")

P2P_MODES = ("vtep", "flow")
NEXT_HOP_WAIT_S = 1.0  # a live next hop answers in milliseconds; a silent one goes pending


def fit_pins(pin_root: str, config: ClassifierConfig) -> None:
    """A box switched between modes across a restart: moa_flow (and its owners) pinned at the
    other mode's size cannot be reused, so the pins go and the load makes new ones. Switching
    to VTEP mode drops the entries with them; switching to flow mode starts empty. Either way
    the reconcile that follows plans every link anew in the box's mode. moa_flow_stats pinned
    by a release with fewer counters goes too (its counts restart; libbpf would refuse it)."""
    want = {FLOW_MAP: config.max_entries()[FLOW_MAP], OWNER_MAP: config.max_entries()[FLOW_MAP],
            STATS_MAP: abi.load().constants["NR_FLOW_COUNTERS"]}
    for name, size_wanted in want.items():
        path = os.path.join(pin_root, name)
        if not os.path.exists(path):
            continue
        pinned = Map.from_pin(path)
        try:
            size = pinned.max_entries
        finally:
            pinned.close()
        if size != size_wanted:
            log.warning("%s pinned with %d entries, this box needs %d: unpinned (the box "
                        "changed --p2p-mode or moa's release; its links are planned anew)",
                        name, size, size_wanted)
            os.unlink(path)


def read_flows(table: FlowTable | None, current: Current) -> Current:
    """`current` with every flow entry, its owner and its peer port (one batch read each)."""
    if table is not None:
        current.flows = table.raw()
        current.flow_owners = table.owners()
        current.flow_ports = {v: table.peer_port(raw) for v, raw in current.flows.items()}
    return current


def owned(current: Current, materialization: str) -> set[int]:
    """The VNIs of the flow entries `materialization` holds."""
    tag = key_tag(materialization)
    return {v for v, o in current.flow_owners.items() if o[:16] == tag}


def flow_context(nl: Netlink, table: FlowTable | None, m: schemas.Materialize,
                 cfg: PlanConfig, uplink: str, uplink_index: int,
                 hops: NextHops | None = None) -> FlowContext | None:
    """What m's flow entries need: the uplink and the next-hop MAC of each remote of a
    flow-mode link (datapath/netlink/nexthop.py). A next hop the neighbour table does not
    hold is solicited; one still silent after NEXT_HOP_WAIT_S keeps the MAC `hops` knows for
    its remote (what the entries toward it carry: datapath/next_hops.py), else its entries
    are written pending and the service resolves them later, as a VTEP would. A remote
    already pending is solicited but not waited for again (a hypervisor that is down costs
    each materialize toward it nothing). None when m has no flow-mode link. An endpoint whose
    frames would change family is refused: `unsupported`."""
    if table is None or not any(len(link.endpoints) == 2 for link in m.links):
        return None
    remotes: set[str] = set()
    for i, link in enumerate(m.links):
        if len(link.endpoints) != 2:
            continue
        for j, ep in enumerate(link.endpoints):
            peer = link.endpoints[1 - j]
            src = ep.local or cfg.local
            if _family(src) != _family(peer.remote):
                raise schemas.InvalidMessage(
                    f"links[{i}].endpoints[{1 - j}].remote",
                    f"remote {peer.remote} is IPv{_family(peer.remote)} but endpoint {j}'s "
                    f"frames arrive at {src} (IPv{_family(src)}): flow mode keeps a frame's "
                    "outer family (set both endpoints' local, or use --p2p-mode vtep)",
                    code="unsupported")
            remotes.add(ep.remote)
    hops = hops or NextHops()
    waiting = {r for r in remotes if canonical(r) in hops.pending}
    found = nl.next_hop_macs(remotes - waiting, uplink_index, NEXT_HOP_WAIT_S)
    found.update(nl.next_hop_macs(waiting, uplink_index, 0.0) if waiting else {})
    macs: dict[str, str | None] = {}
    for remote, (hop, mac) in found.items():
        macs[remote] = mac or hops.macs.get(canonical(remote))
        if macs[remote] is None and remote not in waiting:
            via = "" if hop == remote else f" through {hop}"
            log.warning("remote %s%s: no neighbour entry on %s after %g s; its flow entries "
                        "are written pending (frames dropped, counted as flow pending) until "
                        "it answers", remote, via, uplink, NEXT_HOP_WAIT_S)
    up = Uplink(uplink_index, cfg.local, nl.mac_of(uplink))
    return FlowContext(up, macs, table.encode)


@functools.lru_cache(maxsize=4096)
def _family(address: str) -> int:
    """4 or 6 (cached: a box's links name the same few addresses, 4 times per link)."""
    return ipaddress.ip_address(address).version


def purge_foreign(table: FlowTable | None, desired: list[schemas.Materialize]) -> list[str]:
    """Flow entries whose materialization the desired state no longer has (a restart after a
    dematerialize that did not reach the kernel): removed before any plan sees them."""
    if table is None:
        return []
    tags = {key_tag(m.id) for m in desired}
    owners = table.owners()
    gone = [v for v, o in owners.items() if o[:16] not in tags]
    gone += [v for v in table.raw() if v not in owners]  # an entry without owner: half made
    table.remove_owned(gone)
    return [f"flow entry of VNI {v}" for v in sorted(gone)]


def purge_unwanted(table: FlowTable | None, keep_vnis: set[int]) -> tuple[set[int], list[str]]:
    """Entries of VNIs no desired link has, removed: (the UDP ports the kept entries send to,
    what was purged)."""
    current = read_flows(table, Current())
    gone = [v for v in current.flows if v not in keep_vnis]
    if table is not None and gone:
        table.remove_owned(gone)
    return ({p for v, p in current.flow_ports.items() if v in keep_vnis},
            [f"flow entry of VNI {v}" for v in sorted(gone)])


def usage(table: FlowTable | None) -> list[MapUsage]:
    """moa_flow's entries (counted in batch reads) and size, in flow mode."""
    if table is None:
        return []
    return [MapUsage(table.map.name, table.map.lookup_batch()[2], table.map.max_entries)]
