r"""Testbed topologies for end-to-end tests, as shell commands (iproute2).

Shell, not pyroute2: inside the VM (software emulation) Python runs 12-15x slower, and the same
commands also run on the host. The shape is a real testbed's:

    hv1 (VTEPs) --\                              /-- upa --\
    hv2 (VTEPs) ---+-- fab: bridge "fabric" -- bond --        +== box: uplink (bond, fq on slaves)
    ...          --/     (the switch)                \-- upb --/

`box` is where moa runs: its uplink is a bond of two veths (balance-xor, layer3+4 hash, so VXLAN
flows with different UDP source ports use both slaves) with sch_fq on each slave, or a single veth
on a host kernel without bonding/fq. The switch side is a bond too: a static LAG on both ends, as
a real switch would be configured. Each hypervisor namespace owns VTEPs (one per emulated link
endpoint) with an overlay address, so traffic generated there crosses the box, as in a testbed.
Until moa's datapath materializes links, `box_bridge` stands in for it: plain VTEPs in the box,
bridged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

VXLAN_PORT = 4789


@dataclass(frozen=True)
class Vtep:
    vni: int
    address: str  # overlay address with prefix on the hypervisor's VTEP, e.g. "192.168.77.1/24"

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def dev(self) -> str:
        return f"vx{self.vni}"


@dataclass(frozen=True)
class Hypervisor:
    name: str  # short role name, e.g. "hv1"; the namespace is prefix + name
    underlay: str  # underlay IPv4 address, in Testbed.underlay_net
    vteps: tuple[Vtep, ...] = ()


@dataclass
class Testbed:
    prefix: str  # unique per test run (other helpers share the host): e.g. "mv" + pid digits
    hypervisors: tuple[Hypervisor, ...]
    uplink: Literal["bond", "veth"] = "bond"
    box_underlay: str = "10.77.0.1"
    prefix_len: int = 24
    underlay_mtu: int = 1600  # room for VXLAN's 50 bytes, so the overlay keeps MTU 1500
    overlay_mtu: int = 1500
    fq_opts: str = "limit 100000 flow_limit 100000"  # fq's defaults drop a delayed link's BDP
    uplink_dev: str = "uplink"
    slaves: tuple[str, ...] = ("upa", "upb")
    with_fq: bool = True  # False on the host kernel, which has no sch_fq

    def __post_init__(self) -> None:
        if len(self.prefix) > 6:
            raise ValueError("prefix must be at most 6 characters (namespace and device names)")

    # names -------------------------------------------------------------------------------------
    def ns(self, role: str) -> str:
        """Namespace of a role: "box", "fab" or a hypervisor's name."""
        return f"{self.prefix}{role}"

    @property
    def namespaces(self) -> list[str]:
        return [self.ns("box"), self.ns("fab")] + [self.ns(h.name) for h in self.hypervisors]

    def hypervisor(self, name: str) -> Hypervisor:
        return next(h for h in self.hypervisors if h.name == name)

    def owner_of(self, vni: int) -> Hypervisor:
        return next(h for h in self.hypervisors for v in h.vteps if v.vni == vni)

    def vtep(self, vni: int) -> Vtep:
        return next(v for h in self.hypervisors for v in h.vteps if v.vni == vni)

    @property
    def uplink_devices(self) -> tuple[str, ...]:
        """Devices whose qdisc releases the box's egress (where fq must sit)."""
        return self.slaves if self.uplink == "bond" else (self.uplink_dev,)

    # commands ----------------------------------------------------------------------------------
    def setup(self) -> list[str]:
        box, fab = self.ns("box"), self.ns("fab")
        mtu = self.underlay_mtu
        cmds = [f"ip netns add {n}" for n in self.namespaces]
        cmds += [f"ip -n {n} link set lo up" for n in self.namespaces]
        cmds += [
            f"ip -n {fab} link add fabric type bridge",
            f"ip -n {fab} link set fabric mtu {mtu} up",
        ]
        if self.uplink == "bond":
            bond = "mode balance-xor xmit_hash_policy layer3+4 miimon 100"
            cmds += [
                f"ip -n {box} link add {self.uplink_dev} type bond {bond}",
                f"ip -n {fab} link add boxlag type bond {bond}",
            ]
            for i, s in enumerate(self.slaves):
                peer = f"lag{i}"
                cmds += [
                    f"ip link add {s} netns {box} type veth peer name {peer} netns {fab}",
                    f"ip -n {box} link set {s} master {self.uplink_dev}",
                    f"ip -n {fab} link set {peer} master boxlag",
                ]
            cmds += [
                f"ip -n {fab} link set boxlag mtu {mtu} master fabric",
                f"ip -n {fab} link set boxlag up",
            ]
            cmds += [f"ip -n {fab} link set lag{i} up" for i in range(len(self.slaves))]
            cmds += [f"ip -n {box} link set {s} up" for s in self.slaves]
        else:
            cmds += [
                f"ip link add {self.uplink_dev} netns {box} type veth peer name boxport "
                f"netns {fab}",
                f"ip -n {fab} link set boxport mtu {mtu} master fabric",
                f"ip -n {fab} link set boxport up",
            ]
        cmds += [
            f"ip -n {box} link set {self.uplink_dev} mtu {mtu} up",
            f"ip -n {box} addr add {self.box_underlay}/{self.prefix_len} dev {self.uplink_dev}",
        ]
        if self.with_fq:
            cmds += [f"tc -n {box} qdisc replace dev {d} root fq {self.fq_opts}"
                     for d in self.uplink_devices]
        for h in self.hypervisors:
            hv = self.ns(h.name)
            port = f"p{h.name}"
            cmds += [
                f"ip link add eth0 netns {hv} type veth peer name {port} netns {fab}",
                f"ip -n {fab} link set {port} mtu {mtu} master fabric",
                f"ip -n {fab} link set {port} up",
                f"ip -n {hv} link set eth0 mtu {mtu} up",
                f"ip -n {hv} addr add {h.underlay}/{self.prefix_len} dev eth0",
            ]
            for v in h.vteps:
                cmds += self._vtep(hv, v.dev, v.vni, local=h.underlay, remote=self.box_underlay)
                cmds += [
                    f"ip -n {hv} addr add {v.address} dev {v.dev}",
                    f"ip -n {hv} link set {v.dev} up",
                ]
        return cmds

    def _vtep(self, ns: str, dev: str, vni: int, *, local: str, remote: str) -> list[str]:
        return [
            f"ip -n {ns} link add {dev} type vxlan id {vni} local {local} remote {remote} "
            f"dstport {VXLAN_PORT} nolearning",
            f"ip -n {ns} link set {dev} mtu {self.overlay_mtu}",
        ]

    def box_bridge(self, name: str, vnis: list[int]) -> list[str]:
        """Stand-in for moa's forwarding: the box's VTEPs for `vnis` joined by a plain bridge."""
        box = self.ns("box")
        cmds = [f"ip -n {box} link add {name} type bridge", f"ip -n {box} link set {name} up"]
        for vni in vnis:
            dev = f"vx{vni}"
            cmds += self._vtep(box, dev, vni, local=self.box_underlay,
                               remote=self.owner_of(vni).underlay)
            cmds += [f"ip -n {box} link set {dev} master {name}", f"ip -n {box} link set {dev} up"]
        return cmds

    def teardown(self) -> list[str]:
        """Deleting the namespaces deletes every device in them (veth peers included)."""
        return [f"ip netns del {n}" for n in self.namespaces]


def two_hypervisors(
    prefix: str, uplink: Literal["bond", "veth"] = "bond", with_fq: bool = True
) -> Testbed:
    """The smallest useful testbed: hv1 (VNI 100, 192.168.77.1) and hv2 (VNI 101, .2)."""
    return Testbed(
        prefix=prefix,
        uplink=uplink,
        with_fq=with_fq,
        hypervisors=(
            Hypervisor("hv1", "10.77.0.11", (Vtep(100, "192.168.77.1/24"),)),
            Hypervisor("hv2", "10.77.0.12", (Vtep(101, "192.168.77.2/24"),)),
        ),
    )
