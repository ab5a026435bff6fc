"""Whether the kernel still holds a materialization as applied: a cheap check, not a plan.

Each of its VNIs' parameters are read from the classifier's map and each of its VTEPs is
looked up by name (SIOCGIFINDEX: under RCU, no RTNL), so an unchanged materialize is answered
without planning (docs/architecture.md, "Reads and writes").
"""
from __future__ import annotations

import fcntl
import socket
import struct
from collections.abc import Callable
from typing import Any

import schemas
from datapath.classifier import Classifier
from datapath.netlink.worker import NetlinkWorker
from datapath.plan.planner import PlanConfig, Stages, link_stages, vtep_name

PROBE_INLINE = 64  # this many devices are looked up from the loop's thread, more on the worker
_SIOCGIFINDEX = 0x8933


def devices_exist(names: list[str], probe: socket.socket | None = None) -> bool:
    """Every device `names` exists: in the namespace of `probe` (a socket), else of the
    calling thread (the netlink worker's: the box's)."""
    try:
        if probe is None:
            for name in names:
                socket.if_nametoindex(name)
        else:
            for name in names:
                fcntl.ioctl(probe.fileno(), _SIOCGIFINDEX, struct.pack("16si", name.encode(), 0))
    except OSError:
        return False
    return True


class HeldCheck:
    """holds(m) for one box: the classifier's map, and a socket of the box's namespace (made on
    the worker, which is in it) with which the event loop's thread looks devices up."""

    def __init__(self, worker: NetlinkWorker, classifier: Classifier, plan_config: PlanConfig,
                 encode: Callable[[Stages], bytes], flows: Any = None) -> None:
        self.worker, self.classifier = worker, classifier
        self.flows = flows  # datapath.flow.FlowTable in flow mode: P2P links are its entries
        self.plan_config, self.encode = plan_config, encode
        self._probe = worker.run(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)

    async def holds(self, m: schemas.Materialize) -> bool:
        want: dict[int, bytes] = {}
        for link in m.links:
            encoded: dict[int, bytes] = {}  # one per distinct Stages of the link
            for ep, st in zip(link.endpoints, link_stages(link, self.plan_config)):
                enc = encoded.get(id(st))
                if enc is None:
                    enc = encoded[id(st)] = self.encode(st)
                want[ep.vni] = enc
        raw = self.classifier.raw_links(want)
        if len(raw) != len(want) or any(self.classifier.stages_of(raw[vni]) != enc
                                        for vni, enc in want.items()):
            return False
        if self.flows is not None:  # flow mode: a P2P endpoint is an entry, not a device
            p2p = [ep.vni for link in m.links if len(link.endpoints) == 2
                   for ep in link.endpoints]
            if any(self.flows.map.lookup(vni) is None for vni in p2p):
                return False
            want = {vni: b"" for vni in want if vni not in set(p2p)}
        names = [vtep_name(vni) for vni in want]
        if len(names) <= PROBE_INLINE:
            return devices_exist(names, self._probe)
        return await self.worker.call(devices_exist, names)

    def close(self) -> None:
        self._probe.close()
