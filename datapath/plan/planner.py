"""Desired state (a Materialize) + what the box holds -> the ordered operations between them.

Build order, per the issue: a link's parameters are in the classifier map before its VTEP
exists (so no packet of it leaves unshaped), then bridges, VTEPs (created up), bridge ports,
pairs. Teardown runs the other way: pairs, VTEPs, bridges, parameters. Everything already as
desired yields no operation, so identical content plans to nothing.

Mapping of a link onto the box:
- point-to-point (2 endpoints): two VTEPs joined by the redirect pair; the link's emulation is the
  egress stage of each VNI (the egress VNI names the receiving endpoint), with that endpoint's
  own fields over it when it has some (one direction: link_stages); no ingress stage.
- LAN (3+ endpoints): VTEPs on a bridge; the link's emulation is each member's egress stage (the
  shared queue towards the receiver) and each member gets an ingress stage that models its own
  switch port: the link's capacity and queue, nothing else. A LAN is two real hops
  (datapath/bpf/port.h): every member's VTEP holds a frame (sch_fq + moa_port_hold) until it
  has left the sender's port, and only then does the receiver's stage judge it.
  Without sch_fq (loss-only boxes) nothing is held, the port delay is added at egress, and the
  port queue is kept at 2 ms: docs/semantics.md (LAN case) found that in one computation only a port
  queue much smaller than the shared one (2 ms vs 20 ms) left the slower sender its share.
  Loss and latency are applied once, at egress.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable

import msgspec

import schemas
from datapath.emulation import full_frame, queue_bytes
from datapath.netlink.model import FqSizing, MoaDevice, VtepSpec, owner_key
from datapath.flow import FlowEntry, Uplink
from datapath.pair import PeerEntry
from datapath.plan.devices import (
    AttachToBridge, CreateBridge, CreateVtep, DeleteBridge, DeleteVtep, DetachFromBridge,
    HoldAtPort,
)
from datapath.plan.flows import DeleteFlow, SetFlow, key_tag, owner_tag
from datapath.plan.operation import Operation
from datapath.plan.pair import CreatePair, DeletePair
from datapath.plan.params import DeleteLinkParams, SetLinkParams
from datapath.plan.ports import port_changes

PORT_QUEUE_NS = 2_000_000  # one computation (no hold): see the module doc
# With the hold: the handover field (16 bits of 1.024 us under the default mark mask, handover.h)
# reaches 67 ms; a port queue within 60 ms of link time never saturates it with full frames.
HELD_PORT_QUEUE_NS = 60_000_000
DEFAULT_VXLAN_PORT = 4789

# A VNI's (egress, ingress) stages; None = the stage does nothing.
Stages = tuple[schemas.Emulation | None, schemas.Emulation | None]


class PlanConflict(ValueError):
    """The desired state cannot be planned (a VNI or name held by another materialization)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class PlanConfig:
    uplink: str
    local: str
    vtep_mtu: int = 1450
    port_hold: FqSizing | None = None  # LAN VTEPs hold frames (sch_fq of this size); None: no
    vxlan_port: int = DEFAULT_VXLAN_PORT  # the classifier's own (load-time) VXLAN port
    flow: bool = False  # --p2p-mode flow: point-to-point links as moa_flow entries, no VTEPs


@dataclass(frozen=True)
class FlowSpec:
    """Where one flow-mode endpoint's frames go: its peer's VNI, VTEP and port, and the box's
    address the frames arrive at (and leave from)."""
    peer_vni: int
    peer_ip: str
    peer_port: int
    src_ip: str


@dataclass(frozen=True)
class FlowContext:
    """What a flow entry needs beyond the Materialize: the uplink (ifindex, MAC), each remote's
    next-hop MAC (datapath/netlink/nexthop.py), the table's encoding (FlowTable.encode)."""
    uplink: Uplink
    hops: dict[str, str | None]  # remote -> next hop's MAC; None: not resolved, entry pending
    encode: Callable[[FlowEntry], bytes]

    def entry(self, vni: int, spec: FlowSpec) -> FlowEntry:
        return FlowEntry(vni, spec.peer_vni, spec.peer_ip, self.hops[spec.peer_ip], spec.src_ip,
                         self.uplink.mac, self.uplink.ifindex, spec.peer_port)


def vtep_name(vni: int) -> str:
    return f"mv{vni}"


def bridge_name(materialization: str, link: str) -> str:
    digest = hashlib.sha1(f"{materialization}\0{link}".encode()).hexdigest()[:10]
    return f"mb{digest}"


def port_stage(egress: schemas.Emulation, held: bool = False) -> schemas.Emulation | None:
    """A LAN member's own port (ingress stage): the link rate and a queue, nothing else.

    held: the VTEPs hold frames (two real hops), so the port has the link's queue, within
    HELD_PORT_QUEUE_NS of link time; else 2 ms (module doc). At least two full frames, at most
    the link's queue."""
    if not egress.capacity:
        return None
    shared = queue_bytes(egress)
    port_ns = HELD_PORT_QUEUE_NS if held else PORT_QUEUE_NS
    q = max(2 * full_frame(egress), egress.capacity * port_ns // 8_000_000_000)
    if shared:
        q = min(q, shared)
    # The port charges frames as the link does (its overhead and cells: the same medium).
    return schemas.Emulation(capacity=egress.capacity, queue=q, overhead=egress.overhead,
                             cell_size=egress.cell_size, cell_overhead=egress.cell_overhead)


def link_stages(link: schemas.Link, cfg: PlanConfig) -> list[Stages]:
    """The stages of each endpoint of `link`, in its order: at egress the emulation of the frames
    delivered towards that endpoint (the link's, with the endpoint's own fields over it:
    schemas.direction), and on a LAN the member's own port as its ingress stage, made from the
    link's emulation (docs/semantics.md, "Each direction": an endpoint's own parameters are
    what it receives; what it sends goes through its port at the link's rate, then through
    the receiver's stage). Endpoints without parameters of their own share one Stages object."""
    shared = link.emulation
    port = None
    if len(link.endpoints) > 2:
        port = port_stage(shared, held=cfg.port_hold is not None)
    common = (shared, port)
    return [common if ep.emulation is msgspec.UNSET
            else (schemas.direction(shared, ep.emulation), port) for ep in link.endpoints]


def stage_groups(m: schemas.Materialize, cfg: PlanConfig,
                 positions: Iterable[int] | None = None) -> list[tuple[Stages, int, str]]:
    """m's stages for the box's limits (datapath/limits.py): per link, the stages its endpoints
    without parameters of their own share, with how many they are, then each endpoint's own,
    each with the path of the field that sets it (a refusal names it); of the links at
    `positions` only, when given."""
    out: list[tuple[Stages, int, str]] = []
    for i in range(len(m.links)) if positions is None else positions:
        link = m.links[i]
        stages = link_stages(link, cfg)
        own = [j for j, ep in enumerate(link.endpoints) if ep.emulation is not msgspec.UNSET]
        if len(own) < len(stages):
            shared = next(st for ep, st in zip(link.endpoints, stages)
                          if ep.emulation is msgspec.UNSET)
            out.append((shared, len(stages) - len(own), f"links[{i}].emulation"))
        out += [(stages[j], 1, f"links[{i}].endpoints[{j}].emulation") for j in own]
    return out


@dataclass
class Desired:
    vteps: dict[str, tuple[VtepSpec, str]] = field(default_factory=dict)  # name -> spec, link
    bridges: dict[str, str] = field(default_factory=dict)  # name -> link
    masters: dict[str, str] = field(default_factory=dict)  # vtep -> bridge
    pairs: list[tuple[str, str]] = field(default_factory=list)
    params: dict[int, tuple[Stages, str]] = field(default_factory=dict)  # vni -> stages, link
    flows: dict[int, tuple[FlowSpec, str]] = field(default_factory=dict)  # vni -> spec, link


def desired_state(m: schemas.Materialize, cfg: PlanConfig) -> Desired:
    d = Desired()
    for i, link in enumerate(m.links):
        stages = link_stages(link, cfg)
        names = []
        if cfg.flow and len(link.endpoints) == 2:
            a, b = link.endpoints
            for j, (ep, peer) in enumerate(((a, b), (b, a))):
                if ep.vni in d.flows or vtep_name(ep.vni) in d.vteps or a.vni == b.vni:
                    raise PlanConflict(f"links[{i}].endpoints[{j}].vni",
                                       f"VNI {ep.vni} is used twice in {m.id}")
                d.flows[ep.vni] = (FlowSpec(peer.vni, peer.remote, peer.port or DEFAULT_VXLAN_PORT,
                                            ep.local or cfg.local), link.id)
            for ep, st in zip(link.endpoints, stages):
                d.params[ep.vni] = (st, link.id)
            continue
        for j, ep in enumerate(link.endpoints):
            name = vtep_name(ep.vni)
            if name in d.vteps or ep.vni in d.flows:
                raise PlanConflict(f"links[{i}].endpoints[{j}].vni",
                                   f"VNI {ep.vni} is used twice in {m.id}")
            spec = VtepSpec(name=name, vni=ep.vni, local=ep.local or cfg.local, remote=ep.remote,
                            underlay=cfg.uplink, port=ep.port or DEFAULT_VXLAN_PORT,
                            mtu=cfg.vtep_mtu)
            d.vteps[name] = (spec, link.id)
            names.append(name)
        for ep, st in zip(link.endpoints, stages):
            d.params[ep.vni] = (st, link.id)
        if len(link.endpoints) == 2:
            d.pairs.append((names[0], names[1]))
        else:
            br = bridge_name(m.id, link.id)
            d.bridges[br] = link.id
            for name in names:
                d.masters[name] = br
    return d


@dataclass
class Current:
    """What the box holds, read from the kernel just before planning: nothing from memory."""

    devices: dict[str, MoaDevice] = field(default_factory=dict)  # by name, all materializations
    pairs: dict[int, PeerEntry] = field(default_factory=dict)  # by ifindex
    params: dict[int, bytes] = field(default_factory=dict)  # vni -> its stages, as encoded
    links: dict[int, bytes] = field(default_factory=dict)  # vni -> raw struct moa_link (rollback)
    vxlan_ports: frozenset[int] = frozenset()  # moa_vxlan_ports: VXLAN besides the classifier's
    # Flow mode: every moa_flow entry (raw), its owner (datapath/plan/flows.py), its peer port.
    flows: dict[int, bytes] = field(default_factory=dict)
    flow_owners: dict[int, bytes] = field(default_factory=dict)
    flow_ports: dict[int, int] = field(default_factory=dict)

    def of(self, materialization: str) -> dict[str, MoaDevice]:
        """The devices of one materialization (by id, or by its key: owner_key)."""
        key = owner_key(materialization)
        return {n: d for n, d in self.devices.items() if d.materialization == key}


def _spec_of(dev: MoaDevice, cfg: PlanConfig, underlay_name: str) -> VtepSpec:
    """The spec of a VTEP the kernel holds, its MAC included: what a rollback re-creates."""
    return VtepSpec(name=dev.name, vni=dev.vni or 0, local=dev.local or "", remote=dev.remote or "",
                    underlay=underlay_name, port=dev.port or DEFAULT_VXLAN_PORT, mtu=dev.mtu,
                    address=dev.address)


def plan(m: schemas.Materialize, current: Current, cfg: PlanConfig,
         encode: Callable[[Stages], bytes], uplink_index: int | None = None,
         flow: FlowContext | None = None) -> list[Operation]:
    """Operations that turn `current` into `m` for the materialization m.id (others untouched).

    `encode(stages)` gives the raw map value of a VNI's stages, compared with `current.params`
    so that only changed parameters are written. `uplink_index` is the uplink's ifindex (a
    VTEP bound to another lower device is re-created; moa's own are bound to none). `flow`:
    what flow entries need (required when m has flow-mode links).
    """
    mid = m.id
    mkey = owner_key(mid)  # what the devices' aliases say (datapath/netlink/model.py)
    want = desired_state(m, cfg)
    have = current.of(mid)
    by_index = {d.index: d for d in current.devices.values()}

    # Names and VNIs held by someone else stop the plan before anything is touched.
    for name, (spec, link) in want.vteps.items():
        other = current.devices.get(name)
        if other is not None and other.materialization != mkey:
            raise PlanConflict("links", f"VNI {spec.vni} ({name}) belongs to materialization "
                                        f"{other.materialization!r}, link {other.link!r}")
    mtag = key_tag(mid)
    mine_flows = {v for v, o in current.flow_owners.items() if o[:16] == mtag}
    for vni in set(want.flows) | {s.vni for s, _ in want.vteps.values()}:
        other = current.devices.get(vtep_name(vni))
        if vni in want.flows and other is not None and other.materialization != mkey:
            raise PlanConflict("links", f"VNI {vni} ({other.name}) belongs to materialization "
                                        f"{other.materialization!r}, link {other.link!r}")
        if vni in current.flow_owners and vni not in mine_flows:
            raise PlanConflict("links", f"VNI {vni} is a flow-mode endpoint of another "
                                        "materialization")

    # Which current VTEPs are kept as they are.
    recreate: set[str] = set()
    keep: set[str] = set()
    for name, dev in have.items():
        if dev.kind != "vxlan":
            continue
        wanted = want.vteps.get(name)
        if wanted is None:
            continue
        spec = wanted[0]
        same = (dev.vni == spec.vni and dev.local == spec.local and dev.remote == spec.remote
                and dev.port == spec.port and dev.mtu == spec.mtu
                and dev.link == owner_key(wanted[1])
                and (uplink_index is None or dev.underlay in (None, uplink_index)))
        (keep if same else recreate).add(name)

    teardown: list[Operation] = []
    build: list[Operation] = []

    # 1. pairs: those not wanted (or whose VTEPs are re-created) go first.
    wanted_pairs = {frozenset(p) for p in want.pairs}
    intact_pairs: set[frozenset[str]] = set()
    seen: set[int] = set()
    for idx, entry in current.pairs.items():
        if idx in seen:
            continue
        a = by_index.get(idx)
        b = by_index.get(entry.peer_ifindex)
        if ((a is not None and a.materialization != mkey)
                or (b is not None and b.materialization != mkey)):
            continue
        if a is None and b is None:
            continue  # stale entries of devices long gone: reconcile's business
        seen.update({idx, entry.peer_ifindex})
        names = frozenset(d.name for d in (a, b) if d is not None)
        back = current.pairs.get(entry.peer_ifindex)
        complete = (a is not None and b is not None and back is not None
                    and back.peer_ifindex == idx)
        if complete and names in wanted_pairs and names <= keep:
            intact_pairs.add(names)
            continue
        stale = tuple(i for i, d in ((idx, a), (entry.peer_ifindex, b)) if d is None)
        an = a.name if a is not None else (b.name if b is not None else "")
        bn = b.name if b is not None else an
        present = tuple(i for i, d in ((idx, a), (entry.peer_ifindex, b)) if d is not None)
        # Both VTEPs go in this plan (not kept): their deletion takes the programs with them.
        going = bool(present) and all(d is None or d.name not in keep for d in (a, b))
        teardown.append(DeletePair(an, bn, stale, devices_go=going,
                                   indexes=present if going else ()))

    # 2. VTEPs not wanted or changed (deleting one also takes it off its bridge).
    for name, dev in sorted(have.items()):
        if dev.kind != "vxlan":
            continue
        master = by_index.get(dev.master) if dev.master else None
        if name not in keep:
            held = cfg.port_hold if dev.root_qdisc == "fq" else None
            teardown.append(DeleteVtep(_spec_of(dev, cfg, cfg.uplink), mid, dev.link,
                                       master.name if master is not None else None, dev.index,
                                       hold=held))
        elif master is not None and want.masters.get(name) != master.name:
            teardown.append(DetachFromBridge(name, master.name))

    # 3. bridges not wanted.
    for name, dev in sorted(have.items()):
        if dev.kind == "bridge" and name not in want.bridges:
            teardown.append(DeleteBridge(name, mid, dev.link, dev.mtu, dev.index))
        elif dev.kind == "bridge" and owner_key(want.bridges[name]) != dev.link:
            teardown.append(DeleteBridge(name, mid, dev.link, dev.mtu, dev.index))

    # 3b. flow entries not wanted (before their parameters go).
    for vni in sorted(mine_flows - set(want.flows)):
        teardown.append(DeleteFlow(vni, current.flows.get(vni), current.flow_owners.get(vni)))
    # 4. parameters of VNIs this materialization no longer has.
    mine = {d.vni for d in have.values() if d.kind == "vxlan" and d.vni is not None} | mine_flows
    for vni in sorted(mine - set(want.params)):
        if vni in current.params:
            teardown.append(DeleteLinkParams(vni, current.links.get(vni)))

    # 4b. VXLAN ports that only VTEPs deleted above used (datapath/plan/ports.py).
    vteps = [(d.port, d.materialization == mkey) for d in current.devices.values()
             if d.kind == "vxlan" and d.port]
    vteps += [(p, v in mine_flows) for v, p in current.flow_ports.items()]
    ports_gone, ports_new = port_changes(
        current.vxlan_ports, {p for p, mine in vteps if mine}, {p for p, mine in vteps if not mine},
        ({spec.port for spec, _ in want.vteps.values()}
         | {spec.peer_port for spec, _ in want.flows.values()}) - {cfg.vxlan_port})
    if ports_gone is not None:
        teardown.append(ports_gone)
    # 5. the ports the new VTEPs use, and parameters, before any VTEP of theirs comes up.
    if ports_new is not None:
        build.append(ports_new)
    for vni, (stages, link) in sorted(want.params.items()):
        enc = encode(stages)  # once per distinct emulation: datapath.emulation.stage_bytes
        if current.params.get(vni) != enc:
            build.append(SetLinkParams(vni, stages[0], stages[1], enc, current.links.get(vni),
                                       mid, link))
    # 6. bridges.
    for name, link in sorted(want.bridges.items()):
        dev = have.get(name)
        if dev is None or dev.kind != "bridge" or dev.link != owner_key(link):
            build.append(CreateBridge(name, mid, link, cfg.vtep_mtu))
    # 7. VTEPs (created up).
    for name, (spec, link) in sorted(want.vteps.items()):
        if name not in keep:
            build.append(CreateVtep(spec, mid, link))
    # 8. bridge ports, each held at its port first (a VTEP joining a bridge: new, or kept and
    # changing bridge or kind of link).
    joining = []
    for name, br in sorted(want.masters.items()):
        dev = have.get(name)
        cur_master = by_index.get(dev.master).name if (
            dev is not None and name in keep and dev.master and dev.master in by_index) else None
        if cur_master != br:
            joining.append((name, br))
    if cfg.port_hold is not None:
        build += [HoldAtPort(name, cfg.port_hold) for name, _ in joining]
    build += [AttachToBridge(name, br) for name, br in joining]
    # 9. pairs.
    for a, b in want.pairs:
        if frozenset((a, b)) not in intact_pairs:
            build.append(CreatePair(a, b))
    # 10. flow entries, once both endpoints' parameters are in.
    owners: dict[str, bytes] = {}  # a link's owner, figured once for its two endpoints
    for vni, (spec, link) in sorted(want.flows.items()):
        assert flow is not None, "flow-mode links planned without a FlowContext"
        owner = owners.get(link)
        if owner is None:
            owner = owners[link] = owner_tag(mid, link)
        entry = flow.entry(vni, spec)
        held = current.flows.get(vni)  # a new entry is written without being encoded twice
        if held is None or held != flow.encode(entry) or current.flow_owners.get(vni) != owner:
            build.append(SetFlow(entry, owner, held, current.flow_owners.get(vni), mid, link))
    return teardown + build


def plan_removal(materialization: str, current: Current, cfg: PlanConfig,
                 encode: Callable[[Stages], bytes],
                 uplink_index: int | None = None) -> list[Operation]:
    """Everything of one materialization, torn down."""
    return plan(schemas.Materialize(id=materialization, links=[]), current, cfg, encode,
                uplink_index)
