"""The shapers moa is compared with, on the box's uplink egress, for one VNI (one link direction).

- tc-netem: a prio qdisc on the uplink device sends the VNI's packets (matched by outer
  destination address: the VNI's owner) to a netem child, everything else to a pfifo.
- the reference EDT program (scripts/vm/edt_ref.bpf.c): clsact egress on the uplink device,
  sch_fq on the slaves holds the packets.
Both act where moa's classifier does, so the three see the same packets.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from .runner import SCRIPTS
from .scripted_testbed import Testbed

EDT_REF_SOURCE = SCRIPTS / "edt_ref.bpf.c"


# edt_ref's filter on the uplink's egress hook: before moa's classifier (datapath.netlink.tc
# MOA_TC_PRIO 0xA0), which may share the hook; edt_ref passes other VNIs on (TC_ACT_UNSPEC).
EDT_REF_PRIO = 1


def clear(tb: Testbed) -> list[str]:
    """Remove the comparison shapers only: never the clsact hook (moa's classifier is there)."""
    box, dev = tb.ns("box"), tb.uplink_dev
    return [
        f"tc -n {box} qdisc del dev {dev} root 2>/dev/null || true",
        f"tc -n {box} filter del dev {dev} egress prio {EDT_REF_PRIO} 2>/dev/null || true",
    ]


def netem(
    tb: Testbed,
    vni: int,
    *,
    delay_ms: float = 0.0,
    rate_bps: int = 0,
    queue_ms: float = 100.0,
    loss_pct: float = 0.0,
) -> list[str]:
    """netem doing the link's job. The rate is charged per inner frame + 24 bytes, as moa does:
    netem sees the outer frame (inner + 50 bytes of VXLAN encapsulation), hence overhead -26; it
    charges that once per skb (a GSO packet is one skb), so it undercharges GSO packets."""
    box, dev = tb.ns("box"), tb.uplink_dev
    owner = tb.owner_of(vni).underlay
    opts = f"delay {delay_ms}ms"
    if rate_bps:
        opts += f" rate {rate_bps}bit -26"
        limit = max(10, int(rate_bps * queue_ms / 1e3 / 8 / 1538))
    else:
        limit = 100000
    if loss_pct:
        opts += f" loss {loss_pct}%"
    return clear(tb) + [
        f"tc -n {box} qdisc add dev {dev} root handle 1: prio bands 2 "
        "priomap 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
        f"tc -n {box} qdisc add dev {dev} parent 1:1 handle 10: netem limit {limit} {opts}",
        f"tc -n {box} qdisc add dev {dev} parent 1:2 handle 20: pfifo limit 10000",
        f"tc -n {box} filter add dev {dev} parent 1: protocol ip prio 1 u32 "
        f"match ip dst {owner}/32 flowid 1:1",
    ]


def build_edt_ref(
    outdir: Path, *, vni: int, delay_ns: int = 0, rate_bps: int = 0, queue_ns: int = 100_000_000
) -> Path:
    """Compile the reference EDT program for one configuration (on the host, clang 14)."""
    defs = {"VNI": vni, "DELAY_NS": delay_ns, "RATE_BPS": rate_bps, "QUEUE_NS": queue_ns}
    tag = hashlib.sha1(repr(sorted(defs.items())).encode()).hexdigest()[:10]
    obj = outdir / f"edt_ref-{tag}.bpf.o"
    flags = [f"-D{k}={v}ULL" if k != "VNI" else f"-D{k}={v}" for k, v in defs.items()]
    proc = subprocess.run(
        ["clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
         "-I/usr/include/x86_64-linux-gnu", *flags, "-c", str(EDT_REF_SOURCE), "-o", str(obj)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"clang failed on {EDT_REF_SOURCE}:\n{proc.stderr}")
    return obj


def edt_ref(tb: Testbed, obj: Path) -> list[str]:
    """Attach a compiled reference EDT object (fresh program and timeline on every attach)."""
    box, dev = tb.ns("box"), tb.uplink_dev
    return clear(tb) + [
        f"tc -n {box} qdisc add dev {dev} clsact 2>/dev/null || true",  # moa's may be there
        f"tc -n {box} filter add dev {dev} egress prio {EDT_REF_PRIO} handle 1 bpf direct-action "
        f"obj {obj} sec tc",
    ]
