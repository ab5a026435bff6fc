"""What moa's netlink work is about: its devices, their marks (ifalias), fq sizing, its errors.

What moa creates is marked with an ifalias `moa:<materialization>:<link>` (both parts
percent-encoded so that a ':' inside an id cannot be mistaken for the separator); tc filters moa
attaches carry a name starting with `moa` (datapath/netlink/tc.py). Nothing else is ever modified
or deleted. Nothing here talks to the kernel: the planner uses these types without netlink.

The kernel keeps at most IFALIASZ - 1 = 255 bytes of an alias (pyroute2's encoding of it one
less: the kernel answered a 255-byte alias set through it with ERANGE), and two valid ids of 128
characters, each ':' encoded as `%3A`, take up to 773. So each part gets at most 124 bytes
(253 in all): a part that is longer keeps its first 91 bytes and ends in `#` and 32 hex digits
of the SHA-256 of the whole id (no valid id contains `#`, so a hashed part is never mistaken for
an id). Such a part is a key, not an id: `owner_key(id)` is what `parse_alias` gives back for a
device of that id (the id itself when it fits), and everything that matches devices to ids compares
keys. The id is recoverable from the desired state, which holds the whole id: the one whose key
matches.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import quote, unquote

ALIAS_PREFIX = "moa:"
ALIAS_MAX = 255  # IFALIASZ (256) minus its NUL
ALIAS_PART_MAX = 124  # two parts, the prefix and ':' in 253 bytes (module doc)
HASH_MARK = "#"
_HASH_HEX = 32
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


class DatapathNetlinkError(RuntimeError):
    """A netlink operation failed; says on which device and what."""


class FqUnavailable(DatapathNetlinkError):
    """The kernel has no sch_fq: latency and capacity cannot be emulated (only loss)."""


class NotOurs(DatapathNetlinkError):
    """A device with the name moa wants exists and is not marked as moa's: it is never touched."""


def alias_part(ident: str) -> str:
    """One part of an alias: the id percent-encoded, or hashed when that exceeds
    ALIAS_PART_MAX (module doc). A key (a hashed part) is its own part."""
    if HASH_MARK in ident:
        return ident
    encoded = quote(ident, safe="")
    if len(encoded) <= ALIAS_PART_MAX:
        return encoded
    digest = hashlib.sha256(ident.encode()).hexdigest()[:_HASH_HEX]
    return encoded[:ALIAS_PART_MAX - 1 - _HASH_HEX] + HASH_MARK + digest


def _from_part(part: str) -> str:
    return part if HASH_MARK in part else unquote(part)


def owner_key(ident: str) -> str:
    """What parse_alias gives back for a device of `ident`: the id itself when its part fits,
    else its hashed part. Devices are matched to ids by comparing keys."""
    if HASH_MARK not in ident and 3 * len(ident.encode()) <= ALIAS_PART_MAX:
        return ident  # its part fits even if every byte is percent-encoded: it comes back whole
    return _from_part(alias_part(ident))


def make_alias(materialization: str, link: str) -> str:
    """`moa:<materialization>:<link>`, at most ALIAS_MAX bytes whatever the ids (module doc)."""
    return f"{ALIAS_PREFIX}{alias_part(materialization)}:{alias_part(link)}"


def parse_alias(alias: str | None) -> tuple[str, str] | None:
    """(materialization, link) of a moa alias as keys (owner_key), None for anything else."""
    if not alias or not alias.startswith(ALIAS_PREFIX):
        return None
    parts = alias[len(ALIAS_PREFIX):].split(":")
    if len(parts) != 2:
        return None
    return _from_part(parts[0]), _from_part(parts[1])


@dataclass(frozen=True)
class VtepSpec:
    """One VXLAN endpoint in the box: what the kernel device must look like."""

    name: str
    vni: int
    local: str
    remote: str
    underlay: str
    port: int = 4789
    mtu: int = 1450
    address: str | None = None  # its MAC; None: the kernel picks one (a rollback restores it)


@dataclass(frozen=True)
class FqSizing:
    """sch_fq parameters. Defaults of fq (limit 10k, flow_limit 100) drop under EDT delays
    (docs/kernel-facts.md): size them from the links' bandwidth-delay products (`fq_sizing_for`)."""

    limit: int = 100_000
    flow_limit: int = 100_000
    buckets: int = 1024
    horizon_ns: int = 10_000_000_000
    orphan_mask: int = 1023


def fq_sizing_for(max_bdp_bytes: int, total_bdp_bytes: int, mtu: int = 1500,
                  horizon_ns: int = 10_000_000_000, buckets: int = 1024) -> FqSizing:
    """Packets fq must hold: one link's BDP in one (pseudo-)flow, all links' BDP in total.

    Forwarded packets have no socket, so fq hashes them into orphan_mask+1 pseudo-flows and one
    link's packets may all share one: flow_limit must cover the largest link's BDP, limit the sum.
    Counted in minimum-size packets would be wasteful; MTU-sized (with a 2x margin) is what a
    bulk flow puts there. GSO packets make this conservative (one skb, many frames).
    """
    per_flow = max(1000, 2 * -(-max_bdp_bytes // mtu))
    total = max(10_000, 2 * -(-total_bdp_bytes // mtu), per_flow)
    return FqSizing(limit=total, flow_limit=per_flow, buckets=buckets, horizon_ns=horizon_ns,
                    orphan_mask=buckets - 1)


@dataclass(frozen=True)
class MoaDevice:
    """A device moa created, as the kernel reports it."""

    name: str
    index: int
    kind: str  # "vxlan" | "bridge"
    materialization: str
    link: str
    up: bool
    mtu: int
    master: int | None
    vni: int | None = None
    local: str | None = None
    remote: str | None = None
    port: int | None = None
    underlay: int | None = None
    xdp_prog_id: int | None = None
    address: str | None = None  # MAC
    root_qdisc: str | None = None  # kind of its root qdisc when asked for ("fq": a held LAN port)

