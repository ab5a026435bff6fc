"""The point-to-point redirect pair: two VTEPs of the box joined like a wire.

One loaded copy of pair_redirect.bpf.o serves every pair; its maps are pinned under the pin root
(`moa_pair_peers`, `moa_pair_stats`; the DEVMAP cannot be, see pair.h) so that attached programs
keep working while the service is down and a restarted service finds the pairs again.

Mode (measured on the host kernel 6.18, namespaces, offloads on at the senders, iperf3 TCP 4 s;
see tests/test_plumbing_netns.py and docs/kernel-facts.md): the tc ingress `bpf_redirect` carries
GRO/GSO super-packets that generic XDP cannot redirect, and generic XDP copies every non-linear
skb before the program even runs, so moa attaches the tc program alone by default
(`PairMode.TC`). `PairMode.XDP_TC` (XDP for MTU-sized frames, tc for the rest) is kept for
comparison and for kernels where it may pay off.
"""
from __future__ import annotations

import ctypes
import enum
import os
from dataclasses import dataclass
from pathlib import Path

from datapath.libbpf import BpfObject, Map

PAIR_OBJECT = Path(__file__).parent / "bpf" / "pair_redirect.bpf.o"
PAIR_TC_FILTER = "moa_pair"  # tc filter name: "moa" prefix marks it as moa's
PEERS_MAP = "moa_pair_peers"
DEVMAP = "pair_devmap"  # not pinned: see pair.h
STATS_MAP = "moa_pair_stats"
COUNTERS = ("xdp_redirect", "xdp_too_big", "tc_redirect", "miss")  # enum moa_pair_counter
COUNTER_ENUM = "moa_pair_counter"
PEER_STRUCT = "struct moa_pair_peer"


class PairMode(str, enum.Enum):
    TC = "tc"  # tc ingress bpf_redirect only (default)
    XDP_TC = "xdp+tc"  # generic XDP for MTU-sized frames, tc for GRO/GSO super-packets
    XDP = "xdp"  # XDP only: collapses TCP with offloads on (docs/kernel-facts.md); benchmarks only

    @property
    def uses_xdp(self) -> bool:
        return self is not PairMode.TC

    @property
    def uses_tc(self) -> bool:
        return self is not PairMode.XDP


@dataclass(frozen=True)
class PeerEntry:
    ifindex: int
    peer_ifindex: int
    peer_mtu: int


class PairProgram:
    """The loaded pair programs and their (pinned) maps.

    Map writes that involve the DEVMAP must run in the box's network namespace: call `connect`
    and `disconnect` on the netlink worker thread.
    """

    def __init__(self, pin_root: str | None, max_vteps: int = 65536,
                 path: str | os.PathLike[str] = PAIR_OBJECT) -> None:
        sizes = {PEERS_MAP: max_vteps, DEVMAP: max_vteps}
        self.obj = BpfObject.open(os.fspath(path), max_entries=sizes, pin_root=pin_root)
        self.xdp = self.obj.program("moa_pair_xdp")
        self.tc = self.obj.program("moa_pair_tc")
        self.peers: Map = self.obj.map(PEERS_MAP)
        self.devmap: Map = self.obj.map(DEVMAP)
        self.stats: Map = self.obj.map(STATS_MAP)
        # abi.h's pair records, from the object's BTF (no hand-written copy to drift).
        btf = self.obj.btf
        self.Peer = btf.ctype(PEER_STRUCT)
        self.counter_names = counter_names(btf.enum(COUNTER_ENUM))
        if self.counter_names != COUNTERS:
            raise RuntimeError(f"{path}: enum {COUNTER_ENUM} is {self.counter_names}, this "
                               f"code knows {COUNTERS}")

    def connect(self, a: int, b: int, a_mtu: int, b_mtu: int) -> None:
        """Entries for both directions; DEVMAP first so XDP never finds a peer without it."""
        self.devmap.update(a, b)
        self.devmap.update(b, a)
        self.peers.update(a, self.Peer(peer_ifindex=b, peer_mtu=b_mtu))
        self.peers.update(b, self.Peer(peer_ifindex=a, peer_mtu=a_mtu))

    def disconnect(self, *ifindexes: int) -> None:
        for i in ifindexes:
            self.peers.delete(i)
            self.devmap.delete(i)

    def entries(self) -> dict[int, PeerEntry]:
        out = {}
        for k, v in self.peers.items(key_type=ctypes.c_uint32, value_type=self.Peer):
            out[k.value] = PeerEntry(k.value, v.peer_ifindex, v.peer_mtu)
        return out

    def counters(self) -> dict[str, int]:
        return {name: sum(int.from_bytes(v, "little") for v in self.stats.lookup(i))
                for i, name in enumerate(self.counter_names)}

    def close(self) -> None:
        self.obj.close()


def counter_names(values: dict[str, int]) -> tuple[str, ...]:
    """The counters of `enum moa_pair_counter` by index, lower case without the prefix."""
    named = {v: k.removeprefix("MOA_PAIR_").lower() for k, v in values.items()
             if not k.startswith("MOA_PAIR_NR_")}
    nr = values.get("MOA_PAIR_NR_COUNTERS", len(named))
    if sorted(named) != list(range(nr)):
        raise RuntimeError(f"enum moa_pair_counter is not 0..{nr - 1}: {values}")
    return tuple(named[i] for i in range(nr))
