"""The rules of whole messages that types alone cannot express, each naming the offending field.

schemas.decode checks a message once, in this order: msgspec's strict decoder (types, unknown
and missing fields), schemas.units for every unit field (a string with a unit or an int, parsed
into ns, bit/s or bytes, within bounds, as the decoder reads it), then check(m) here. A Struct
built in Python has met none of that: schemas.validate(m) puts it through decode.

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
- an emulation's rules (schemas.messages.check_values and check_across, written once for an
  Emulation and for the fields of a patch):
  - jitter <= latency: the datapath draws the delay uniformly from latency ± jitter and clamps
    at 0, so a larger jitter would skew the mean; refuse it rather than emulate something else.
  - loss and every Gilbert-Elliott probability in [0, 1]; loss must be 0 when burst is given
    (burst.loss_good is the loss outside bursts), so that only one loss model applies.
  - capacity 0 (unlimited) or at least 1 kbit/s (below that one frame takes seconds and every
    departure would fall beyond fq's horizon).
  - queue requires a capacity: without a rate there is no backlog to bound (the datapath stores
    the queue as time at the rate). A queue is at least 1500 bytes: a smaller one would
    tail-drop every full-size frame that finds the link busy.
- an endpoint's own emulation (one direction, docs/semantics.md "Each direction"): sets at
  least one field, each within the bounds of a link's, and together with the link's emulation
  (its fields over the link's) keeps every rule across fields; a rule broken only by the two
  together is refused naming the endpoint's field and saying it is the combination.
- Update: at least one link update; each names exactly one of link and tag and sets at least
  one parameter; `endpoint` (a VNI) only with `link`, `inherit` only with `endpoint`, no field
  both inherited and set. A rule across two parameters is checked here when the patch sets
  both, and by
  EmulationPatch.apply against the link's current parameters.
- a schedule (Materialize.schedule, Update.schedule: docs/semantics.md, "Scheduled changes"):
  1..SCHEDULE_STEPS_MAX steps; each names exactly one of link and tag (in a Materialize, a link
  or tag it has) and sets at least one field, each within its bounds; offsets strictly
  increasing, at least SCHEDULE_GAP_MIN_NS apart, the last within SCHEDULE_SPAN_MAX_NS; a
  repeat period longer than the last offset by that gap. What each step makes of its links,
  every rule across fields in every period, is schemas/schedule.py's (the service runs it
  against the links the schedule will meet).
- drop reasons (DropBatch.counts, LinkStats.drops): names of schemas.messages.DROP_REASONS.
"""
from __future__ import annotations

import functools
import ipaddress
import re

from msgspec import UNSET

from schemas.messages import (
    DROP_REASONS, ID_MAX_LEN, ID_PATTERN, SCHEDULE_GAP_MIN_NS, SCHEDULE_SPAN_MAX_NS,
    SCHEDULE_STEPS_MAX, VNI_MAX, VNI_MIN, Dematerialize, DropBatch, Emulation, EmulationPatch,
    InvalidMessage, Link, LinkStats, LinkStatsBatch, Materialize, Schedule, StatusReply,
    StatusRequest, Update, check_across, check_emulation, direction,
)
from schemas import units

__all__ = ["InvalidMessage", "check", "check_id", "check_schedule", "vni_fields"]

_ID = re.compile(ID_PATTERN)


def check_id(value: str, path: str, what: str = "id") -> None:
    if not _ID.fullmatch(value):
        shown = repr(value[:40]) + "..." if len(value) > 40 else repr(value)
        raise InvalidMessage(path, f"{what} {shown} must be 1..{ID_MAX_LEN} characters of "
                                   "letters, digits, '.', '_', '-', ':'")


@functools.lru_cache(maxsize=4096)
def _parsed_ip(value: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None, bool]:
    """(the address or None, whether it is unicast), cached: a document of 10,000 links names
    the same few remotes 20,000 times."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None, False
    return ip, not (ip.is_unspecified or ip.is_multicast
                    or ip == ipaddress.IPv4Address("255.255.255.255"))


def _check_ip(value: str, path: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip, unicast = _parsed_ip(value)
    if ip is None:
        raise InvalidMessage(path, f"{value!r} is not an IPv4 or IPv6 address")
    if not unicast:
        raise InvalidMessage(path, f"{ip} is not a unicast address")
    return ip


def _check_link(link: Link, path: str, vnis: dict[int, str]) -> None:
    check_id(link.id, f"{path}.id", "link id")
    for k, tag in enumerate(link.tags):
        check_id(tag, f"{path}.tags[{k}]", "tag")
    if len(link.endpoints) < 2:
        raise InvalidMessage(f"{path}.endpoints",
                             f"a link needs at least 2 endpoints, got {len(link.endpoints)}")
    for j, ep in enumerate(link.endpoints):
        ep_path = f"{path}.endpoints[{j}]"
        vni_path = f"{ep_path}.vni"
        if not VNI_MIN <= ep.vni <= VNI_MAX:
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
        if ep.port is not None and not 1 <= ep.port <= 65535:
            raise InvalidMessage(f"{ep_path}.port", f"port {ep.port!r} is outside 1..65535")
    check_emulation(link.emulation, f"{path}.emulation")
    for j, ep in enumerate(link.endpoints):
        if ep.emulation is not UNSET:
            check_direction(link.emulation, ep.emulation, f"{path}.endpoints[{j}].emulation",
                            f"endpoint VNI {ep.vni}")


def check_direction(link_emulation: Emulation, own: EmulationPatch, path: str,
                    which: str) -> None:
    """An endpoint's own parameters (Endpoint.emulation): each field alone, then the direction
    they make over the link's emulation as a whole; a rule broken only by the two together is
    refused saying so (docs/contract.md, "Each direction")."""
    if not own.changes():
        raise InvalidMessage(path, "sets no parameter (leave it out to follow the link's)")
    check_emulation(own, path)
    try:
        check_across(direction(link_emulation, own), path)
    except InvalidMessage as e:
        raise InvalidMessage(e.field, f"{e.message}, in the direction towards {which}: its own "
                             f"parameters over the link's emulation") from None


def _check_materialize(m: Materialize) -> None:
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
    if m.schedule is not UNSET:
        check_schedule(m.schedule)
        tags = {t for link in m.links for t in link.tags}
        for k, step in enumerate(m.schedule.steps):
            if step.link is not None and step.link not in ids:
                raise InvalidMessage(f"schedule.steps[{k}].link",
                                     f"materialization {m.id!r} has no link {step.link!r}")
            if step.tag is not None and step.tag not in tags:
                raise InvalidMessage(f"schedule.steps[{k}].tag",
                                     f"materialization {m.id!r} has no link tagged {step.tag!r}")


def check_schedule(s: Schedule, path: str = "schedule") -> None:
    """A schedule's own rules (module doc); the links it names are checked where they are
    known (above for a Materialize, by the service for an Update)."""
    if not 1 <= len(s.steps) <= SCHEDULE_STEPS_MAX:
        raise InvalidMessage(f"{path}.steps", f"{len(s.steps)} steps: a schedule has 1 to "
                                              f"{SCHEDULE_STEPS_MAX}")
    if s.start is not None and not 0 <= s.start < 1 << 63:
        raise InvalidMessage(f"{path}.start", f"{s.start} is not a time in ns since the epoch "
                                              "(the box's CLOCK_REALTIME)")
    fmt = units.format_duration
    gap = fmt(SCHEDULE_GAP_MIN_NS)
    before = None
    for k, step in enumerate(s.steps):
        at = f"{path}.steps[{k}]"
        if (step.link is None) == (step.tag is None):
            raise InvalidMessage(at, "give exactly one of link and tag")
        if step.link is not None:
            check_id(step.link, f"{at}.link", "link id")
        else:
            check_id(step.tag, f"{at}.tag", "tag")
        if not step.set.changes():
            raise InvalidMessage(f"{at}.set", "sets no parameter")
        check_emulation(step.set, f"{at}.set")
        if step.at > SCHEDULE_SPAN_MAX_NS:
            raise InvalidMessage(f"{at}.at", f"{fmt(step.at)} is past the longest schedule, "
                                             f"{fmt(SCHEDULE_SPAN_MAX_NS)}")
        if before is not None and step.at < before + SCHEDULE_GAP_MIN_NS:
            raise InvalidMessage(f"{at}.at", f"{fmt(step.at)} is not at least {gap} after the "
                                             f"step before ({fmt(before)}): offsets increase")
        before = step.at
    if (s.repeat is not None
            and not before + SCHEDULE_GAP_MIN_NS <= s.repeat <= SCHEDULE_SPAN_MAX_NS):
        raise InvalidMessage(f"{path}.repeat", f"repeat {fmt(s.repeat)} must be at least {gap} "
                                               f"longer than the last offset ({fmt(before)}) "
                                               f"and at most {fmt(SCHEDULE_SPAN_MAX_NS)}")


def _check_update(u: Update) -> None:
    check_id(u.id, "id")
    if u.schedule not in (UNSET, None):
        check_schedule(u.schedule)
    if not u.links and u.schedule is UNSET:
        raise InvalidMessage("links", "an update needs at least one link update (or a "
                                      "schedule)")
    for i, lu in enumerate(u.links):
        path = f"links[{i}]"
        if (lu.link is None) == (lu.tag is None):
            raise InvalidMessage(path, "give exactly one of link and tag")
        if lu.link is not None:
            check_id(lu.link, f"{path}.link", "link id")
        else:
            check_id(lu.tag, f"{path}.tag", "tag")
        if lu.endpoint is not None:
            if lu.tag is not None:
                raise InvalidMessage(f"{path}.endpoint", "an endpoint is one VNI of one link: "
                                                         "give it with link, not with tag")
            if not VNI_MIN <= lu.endpoint <= VNI_MAX:
                raise InvalidMessage(f"{path}.endpoint",
                                     f"{lu.endpoint!r} is outside {VNI_MIN}..{VNI_MAX}")
        elif lu.inherit:
            raise InvalidMessage(f"{path}.inherit", "inherit is for one direction: give it "
                                                    "with endpoint")
        if len(set(lu.inherit)) != len(lu.inherit):
            raise InvalidMessage(f"{path}.inherit", "names a field twice")
        both = sorted(set(lu.inherit) & set(lu.emulation.changes()))
        if both:
            raise InvalidMessage(f"{path}.inherit", f"{both[0]} is both inherited and set")
        if not lu.emulation.changes() and not lu.inherit:
            raise InvalidMessage(f"{path}.emulation", "sets no parameter")
        check_emulation(lu.emulation, f"{path}.emulation")


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


def check(m):
    """Check a decoded message by the rules above (InvalidMessage for the first one broken),
    normalizing addresses in place; returns m. schemas.decode calls it: nothing else needs to.

    Messages without rules of their own (Ack, DropEvent, ...) pass unchanged.
    """
    if isinstance(m, Materialize):
        _check_materialize(m)
    elif isinstance(m, Update):
        _check_update(m)
    elif isinstance(m, (Dematerialize, StatusRequest)):
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
                for k, d in enumerate(ls.directions):
                    check_emulation(d.emulation,
                                    f"materializations[{i}].links[{j}].directions[{k}].emulation")
    return m
