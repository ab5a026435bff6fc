"""Fill the box's classifier maps with links that carry no traffic, and take them out again: the
VM's throughput-at-scale scenario (scale_scenarios.py) runs inside the VM, after `moa serve`
has pinned its maps:

    python -m moa_bus.lab.vm.fill_map --pin-root /sys/fs/bpf/moa --total 65534 --first-vni 100000
    python -m moa_bus.lab.vm.fill_map --pin-root /sys/fs/bpf/moa --remove --first-vni 100000

The fillers are written past the service (the pinned maps, as a second user would): VNIs from
--first-vni up, until moa_links holds --total VNIs; each gets an emulation of its own (latency
and capacity vary), so their parameters do not share cache lines. They have no device: the
scenario measures what the classifier's lookup costs with a full map, not a box of that many
VTEPs (docs/benchmarks.md says so).

--flow (a box serving with --p2p-mode flow): moa_flow, the hash map the uplink's ingress looks
every frame's VNI up in (datapath/bpf/flow.h), is filled too, until it holds --total entries:
the fillers as flow-mode links, VNI first+2k with first+2k+1, toward peers at addresses no
packet carries (10.250.0.0/16, MACs 02:fa:..), leaving by the uplink of the box's own entries
(the box's address and MAC, the ifindex; dummies when the box has none). moa_flow's real
entries are the point-to-point endpoints only, moa_links' also the LANs' members, so moa_flow
takes a few more fillers than moa_links: those few have no parameters (no frame of theirs is
ever sent, so none is shaped). The owners' map (moa_flow_owner) is not written: the planner
reads it, the datapath never does.

--remove deletes every VNI at or above --first-vni, from moa_links and (a flow-mode box)
moa_flow. The map sizes and the mode are the pinned maps' (a load must match them to reuse
the pins). Prints one JSON object: VNIs written or removed and moa_links' count after
(vnis, count), the same for moa_flow (flow_vnis, flow_count; null on a VTEP-mode box),
seconds.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import time

import schemas
from datapath.classifier import Classifier, ClassifierConfig
from datapath.flow import FLOW_MAP, FlowEntry, FlowTable
from datapath.libbpf import Map

# What a filler's entry leaves with when the box has no entry of its own to copy it from.
DUMMY_SRC = ("10.250.255.254", "02:fa:ff:ff:ff:fe", 1)


def _emulation(i: int) -> schemas.Emulation:
    return schemas.Emulation(latency=1_000_000 + 1_000 * (i % 1000),
                             capacity=1_000_000_000 + 1_000 * i)


def pinned_config(pin_root: str) -> ClassifierConfig:
    """The classifier's load-time sizes as the service pinned them (a reused pin must match):
    max_links from moa_links, flow mode when moa_flow has room for more than one entry
    (ClassifierConfig.max_entries), the ring buffer's size from moa_events."""
    sizes = {}
    for name in ("moa_links", FLOW_MAP, "moa_events"):
        path = os.path.join(pin_root, name)
        if not os.path.exists(path):
            raise SystemExit(f"fill_map: {path} is not pinned (is moa serve running with "
                             f"--pin-root {pin_root}?)")
        m = Map.from_pin(path)
        try:
            sizes[name] = m.max_entries
        finally:
            m.close()
    return ClassifierConfig(max_links=sizes["moa_links"], ringbuf_bytes=sizes["moa_events"],
                            flow_mode=sizes[FLOW_MAP] > 1)


def filler_flows(table: FlowTable, first_vni: int, n: int) -> list[FlowEntry]:
    """n entries, VNIs first_vni.. : first+2k and first+2k+1 are a link's two ends (an odd
    last one sends to first+n, which has no entry); peers at 10.250.x.y (fd00:fa::x:y when the
    box's address is IPv6), the box's source fields copied from one of its own entries."""
    own = next(iter(table.entries().values()), None)
    src_ip, src_mac, ifindex = (own.src_ip, own.src_mac, own.ifindex) if own else DUMMY_SRC
    v6 = ipaddress.ip_address(src_ip).version == 6
    out = []
    for i in range(n):
        p = (i ^ 1) + 1                       # 1..n+1: never 0 (10.250.0.0 is the network's)
        hi, lo = (p >> 8) & 0xFF, p & 0xFF
        peer_ip = f"fd00:fa::{hi:x}:{lo:x}" if v6 else f"10.250.{hi}.{lo}"
        out.append(FlowEntry(first_vni + i, first_vni + (i ^ 1), peer_ip,
                             f"02:fa:00:00:{hi:02x}:{lo:02x}", src_ip, src_mac, ifindex))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fill_map", description=__doc__.split("\n\n")[0])
    p.add_argument("--pin-root", required=True)
    p.add_argument("--first-vni", type=int, required=True)
    p.add_argument("--total", type=int, default=65_534)
    p.add_argument("--flow", action="store_true",
                   help="fill moa_flow too (a box serving with --p2p-mode flow)")
    p.add_argument("--remove", action="store_true")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    config = pinned_config(a.pin_root)
    if a.flow and not config.flow_mode:
        raise SystemExit(f"fill_map: --flow, but {a.pin_root}/{FLOW_MAP} holds one entry: the "
                         "box serves point-to-point links in VTEP mode")
    with Classifier.load(config, pin_root=a.pin_root) as clf:
        table = FlowTable(clf) if config.flow_mode else None
        flow_done = None
        if a.remove:
            mine = [v for v in clf.vnis() if v >= a.first_vni]
            done = clf.delete_links(mine)
            if table is not None:
                gone = [v for v in table.raw() if v >= a.first_vni]
                flow_done = table.remove(gone)
        else:
            want = a.total - clf.link_count()
            stages = {a.first_vni + i: clf.encode_stages(_emulation(i), None)
                      for i in range(max(0, want))}
            done = clf.update_links(stages)
            if a.flow:
                assert table is not None
                held = len(table.raw())
                flow_done = table.set(filler_flows(table, a.first_vni, max(0, a.total - held)))
        flow_count = len(table.raw()) if table is not None else None
        print(json.dumps({"vnis": done, "count": clf.link_count(), "flow_vnis": flow_done,
                          "flow_count": flow_count,
                          "seconds": round(time.monotonic() - t0, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
