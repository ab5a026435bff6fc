"""Semantic checks that types alone cannot express, each naming the offending field by its path.

Rules (InvalidMessage for the first one broken; field is a path like "links[0].endpoints[1].vni"):
- ids (materialization, link, tag): 1..128 characters of letters, digits, ".", "_", "-", ":".
- link ids unique within a Materialize; the error names the second occurrence.
- a link has at least 2 endpoints (2: point-to-point, 3 or more: LAN).
- VNI in 1..16777215 and unique within the message; the error names the second occurrence.
  (Uniqueness against other materializations is the service's check: it needs the box's state.)
- remote / local: IPv4 or IPv6 literals, unicast and specified; local of the same family as
  remote. Normalized in place to Python's canonical text ("2001:DB8::1" -> "2001:db8::1") so that
  equal addresses compare equal when the planner diffs states.
- port: 1..65535.
- durations, rates, sizes: non-negative integers within schemas.units' bounds (unit strings have
  been parsed by decode; here the int values are checked again for Structs built in Python).
- jitter <= latency: the datapath draws the delay uniformly from latency ± jitter and clamps at
  0, so a larger jitter would skew the mean; refuse it rather than emulate something else.
- loss and every Gilbert-Elliott probability in [0, 1]; loss must be 0 when burst is given
  (burst.loss_good is the loss outside bursts), so that only one loss model applies.
- capacity 0 (unlimited) or at least 1 kbit/s (below that one frame takes seconds and every
  departure would fall beyond fq's horizon).
- queue requires a capacity: without a rate there is no backlog to bound (the datapath stores
  the queue as time at the rate). A queue is at least 1500 bytes: a smaller one would tail-drop
  every full-size frame that finds the link busy.
- Update: at least one link update; each names exactly one of link and tag and sets at least
  one parameter. Rules across two parameters (jitter <= latency, queue needs capacity) are
  checked by EmulationPatch.apply against the link's current parameters.

validate(m) normalizes in place (plain ints for unit fields, canonical IP text) and returns m.
"""
from __future__ import annotations

import ipaddress
import math
import re

from msgspec import UNSET

from schemas import units
from schemas.messages import (
    DROP_REASONS, ID_MAX_LEN, ID_PATTERN, VNI_MAX, VNI_MIN, Ack, AckError, Dematerialize,
    DropBatch, DropEvent, Emulation, EmulationPatch, GilbertElliott, Link, LinkStats,
    LinkStatsBatch, Materialize, StatusReply, StatusRequest, Update,
)

MIN_CAPACITY_BPS = 1_000
MIN_QUEUE_BYTES = 1_500
_ID = re.compile(ID_PATTERN)


class InvalidMessage(ValueError):
    """A message that cannot be applied. field: path of the offending value ("" = the whole
    message); code: "malformed" (not JSON) or "invalid"."""

    def __init__(self, field: str, message: str, code: str = "invalid") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.code = code

    def to_ack_error(self) -> AckError:
        return AckError(code=self.code, field=self.field or None, message=self.message)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check_id(value: object, path: str, what: str = "id") -> None:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        long = isinstance(value, str) and len(value) > 40
        shown = repr(value[:40]) + "..." if long else repr(value)
        raise InvalidMessage(path, f"{what} {shown} must be 1..{ID_MAX_LEN} characters of "
                                   "letters, digits, '.', '_', '-', ':'")


def _check_unit(parse, value: object, path: str) -> int:
    try:
        return int(parse(value))
    except ValueError as e:
        raise InvalidMessage(path, str(e)) from None


def _check_probability(value: object, path: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidMessage(path, f"{what} must be a number in [0, 1]")
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidMessage(path, f"{what} {value!r} is outside [0, 1]")
    return float(value)


def _check_burst(b: object, path: str) -> None:
    if not isinstance(b, GilbertElliott):
        raise InvalidMessage(path, "burst must be an object {p, r, loss_good, loss_bad}")
    for name in ("p", "r", "loss_good", "loss_bad"):
        setattr(b, name, _check_probability(getattr(b, name), _join(path, name), name))


def _check_params(e: Emulation | EmulationPatch, path: str) -> None:
    """Per-field checks, for a full Emulation or for the fields a patch sets. Normalizes."""
    def present(name: str) -> bool:
        return getattr(e, name) is not UNSET

    for name, parse in (("latency", units.parse_duration), ("jitter", units.parse_duration),
                        ("capacity", units.parse_rate)):
        if present(name):
            setattr(e, name, _check_unit(parse, getattr(e, name), _join(path, name)))
    if present("capacity") and 0 < e.capacity < MIN_CAPACITY_BPS:
        raise InvalidMessage(_join(path, "capacity"),
                             f"capacity {e.capacity} bit/s is below the minimum 1kbps "
                             "(0 means unlimited)")
    if present("queue") and e.queue is not None:
        e.queue = _check_unit(units.parse_size, e.queue, _join(path, "queue"))
        if e.queue < MIN_QUEUE_BYTES:
            raise InvalidMessage(_join(path, "queue"),
                                 f"queue {e.queue} bytes is below the minimum {MIN_QUEUE_BYTES} "
                                 "(one full-size frame)")
    if present("loss"):
        e.loss = _check_probability(e.loss, _join(path, "loss"), "loss")
    if present("burst") and e.burst is not None:
        _check_burst(e.burst, _join(path, "burst"))
    if present("reorder") and not isinstance(e.reorder, bool):
        raise InvalidMessage(_join(path, "reorder"), "reorder must be true or false")


def check_emulation(e: Emulation, path: str = "emulation") -> None:
    """Every rule for one complete Emulation, including those across fields."""
    if not isinstance(e, Emulation):
        raise InvalidMessage(path, "emulation must be an object")
    _check_params(e, path)
    if e.jitter > e.latency:
        raise InvalidMessage(_join(path, "jitter"),
                             f"jitter {units.format_duration(e.jitter)} is larger than latency "
                             f"{units.format_duration(e.latency)} (the delay is latency ± jitter)")
    if e.queue is not None and e.capacity == 0:
        raise InvalidMessage(_join(path, "queue"),
                             "queue needs a capacity: an unlimited link has no backlog to bound")
    if e.burst is not None and e.loss != 0.0:
        raise InvalidMessage(_join(path, "loss"),
                             "loss must be 0 when burst is given (use burst.loss_good)")


def _check_ip(value: object, path: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        raise InvalidMessage(path, f"{value!r} is not an IPv4 or IPv6 address") from None
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise InvalidMessage(path, f"{ip} is not a unicast address")
    return ip


def _check_link(link: Link, path: str, vnis: dict[int, str]) -> None:
    check_id(link.id, _join(path, "id"), "link id")
    for k, tag in enumerate(link.tags):
        check_id(tag, f"{path}.tags[{k}]", "tag")
    if len(link.endpoints) < 2:
        raise InvalidMessage(_join(path, "endpoints"),
                             f"a link needs at least 2 endpoints, got {len(link.endpoints)}")
    for j, ep in enumerate(link.endpoints):
        ep_path = f"{path}.endpoints[{j}]"
        vni_path = f"{ep_path}.vni"
        if type(ep.vni) is not int or not VNI_MIN <= ep.vni <= VNI_MAX:
            raise InvalidMessage(vni_path, f"{ep.vni!r} is outside {VNI_MIN}..{VNI_MAX}")
        if ep.vni in vnis:
            raise InvalidMessage(vni_path, f"VNI {ep.vni} is used twice (also {vnis[ep.vni]})")
        vnis[ep.vni] = vni_path
        remote = _check_ip(ep.remote, f"{ep_path}.remote")
        ep.remote = str(remote)
        if ep.local is not None:
            local = _check_ip(ep.local, f"{ep_path}.local")
            if local.version != remote.version:
                raise InvalidMessage(f"{ep_path}.local",
                                     f"local {local} and remote {remote} are of different families")
            ep.local = str(local)
        if ep.port is not None and (isinstance(ep.port, bool) or not 1 <= ep.port <= 65535):
            raise InvalidMessage(f"{ep_path}.port", f"port {ep.port!r} is outside 1..65535")
    check_emulation(link.emulation, _join(path, "emulation"))


def _validate_materialize(m: Materialize) -> None:
    check_id(m.id, "id")
    ids: dict[str, str] = {}
    vnis: dict[int, str] = {}
    for i, link in enumerate(m.links):
        path = f"links[{i}]"
        _check_link(link, path, vnis)
        if link.id in ids:
            raise InvalidMessage(f"{path}.id",
                                 f"link id {link.id!r} is used twice (also {ids[link.id]})")
        ids[link.id] = f"{path}.id"


def _validate_update(u: Update) -> None:
    check_id(u.id, "id")
    if not u.links:
        raise InvalidMessage("links", "an update needs at least one link update")
    for i, lu in enumerate(u.links):
        path = f"links[{i}]"
        if (lu.link is None) == (lu.tag is None):
            raise InvalidMessage(path, "give exactly one of link and tag")
        if lu.link is not None:
            check_id(lu.link, f"{path}.link", "link id")
        else:
            check_id(lu.tag, f"{path}.tag", "tag")
        if not isinstance(lu.emulation, EmulationPatch):
            raise InvalidMessage(f"{path}.emulation", "emulation must be an object")
        if not lu.emulation.changes():
            raise InvalidMessage(f"{path}.emulation", "sets no parameter")
        _check_params(lu.emulation, f"{path}.emulation")
        _check_patch_alone(lu.emulation, f"{path}.emulation")


def _check_patch_alone(p: EmulationPatch, path: str) -> None:
    """The cross-field rules a patch breaks whatever link it lands on (apply checks the rest)."""
    if p.latency is not UNSET and p.jitter is not UNSET and p.jitter > p.latency:
        raise InvalidMessage(_join(path, "jitter"),
                             f"jitter {units.format_duration(p.jitter)} is larger than latency "
                             f"{units.format_duration(p.latency)} (the delay is latency ± jitter)")
    if p.queue not in (UNSET, None) and p.capacity == 0:
        raise InvalidMessage(_join(path, "queue"),
                             "queue needs a capacity: an unlimited link has no backlog to bound")
    if p.burst not in (UNSET, None) and p.loss not in (UNSET, 0.0):
        raise InvalidMessage(_join(path, "loss"),
                             "loss must be 0 when burst is given (use burst.loss_good)")


def vni_fields(m: Materialize) -> dict[int, str]:
    """Each VNI of m with the path of its field, for errors about VNIs held by other ids."""
    return {ep.vni: f"links[{i}].endpoints[{j}].vni"
            for i, link in enumerate(m.links) for j, ep in enumerate(link.endpoints)}


def _check_reasons(counts: dict[str, int], path: str) -> None:
    for reason, n in counts.items():
        if reason not in DROP_REASONS:
            raise InvalidMessage(path, f"unknown drop reason {reason!r} "
                                       f"(reasons: {', '.join(DROP_REASONS)})")
        if n < 0:
            raise InvalidMessage(f"{path}.{reason}", f"count {n} is negative")


def validate(m):
    """Check m by the rules above (raising InvalidMessage) and normalize it in place; returns m.

    Messages without rules of their own (Ack, StatusReply, ...) pass unchanged.
    """
    if isinstance(m, Materialize):
        _validate_materialize(m)
    elif isinstance(m, Update):
        _validate_update(m)
    elif isinstance(m, Dematerialize):
        check_id(m.id, "id")
    elif isinstance(m, StatusRequest):
        if m.id is not None:
            check_id(m.id, "id")
    elif isinstance(m, Emulation):
        check_emulation(m, "")
    elif isinstance(m, DropBatch):
        _check_reasons(m.counts, "counts")
    elif isinstance(m, LinkStatsBatch):
        for i, ls in enumerate(m.links):
            _check_reasons(ls.drops, f"links[{i}].drops")
    elif isinstance(m, LinkStats):
        _check_reasons(m.drops, "drops")
    elif isinstance(m, StatusReply):
        for i, ms in enumerate(m.materializations):
            for j, ls in enumerate(ms.links):
                check_emulation(ls.emulation, f"materializations[{i}].links[{j}].emulation")
    elif isinstance(m, (Ack, DropEvent)):
        pass
    return m
