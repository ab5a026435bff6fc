"""The messages of moa's contract (docs/contract.md) as msgspec Structs; an emulation's rules.

After schemas.decode every field is in its final unit: durations in ns, rates in bit/s, sizes in
bytes (plain ints), loss as a float in [0, 1]. All Structs are keyword-only and reject unknown
fields, so a typo in an event is an error naming the field rather than a silently ignored key.

How the unit strings get in: the fields that take them are annotated with the marker types
Duration, Rate and Size. msgspec does not know these types, so when decoding it hands the raw
JSON value (int or string) to schemas.codec's dec_hook, which parses it with schemas.units and
returns the plain int. msgspec accepts a hook's value when isinstance(value, type) holds, and a
marker's instances are exactly the ints (its metaclass says so): no marker object is ever made,
and code building, comparing or encoding these Structs only ever meets ints. For type checkers
the markers are simply int.

The rules of an emulation (check_values, check_across) live here, beside the Structs they
constrain, because EmulationPatch.apply needs them (which keeps this one module, past 450 lines:
the Structs of one message refer to each other and to those rules); the rules of whole messages
(ids, VNIs, addresses) are in schemas/validate.py, which imports this module (never the other way).
The Structs and those rules are one module because the Structs nest (an Update's patch applies
to a Link's Emulation, a status carries both) and msgspec must see each type where it is used.
"""
from __future__ import annotations

import functools
import hashlib
import typing
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

from schemas import units

if TYPE_CHECKING:
    Duration = int
    Rate = int
    Size = int
else:
    class _Unit(type):
        """The metaclass of the unit markers: their instances are the plain ints."""

        def __instancecheck__(cls, obj: object) -> bool:
            return type(obj) is int

    class Duration(metaclass=_Unit):
        """ns; on the wire an int (ns) or a string such as "10ms"."""

    class Rate(metaclass=_Unit):
        """bit/s; on the wire an int (bit/s) or a string such as "100mbps"; 0 = unlimited."""

    class Size(metaclass=_Unit):
        """bytes; on the wire an int (bytes) or a string such as "256KiB"."""

# Constraints that the rules check (schemas/validate.py; check_values below for probabilities),
# with their own messages and field paths, stated in the generated JSON Schema too:
# extra_json_schema documents without making msgspec enforce them.
ID_MAX_LEN = 128
ID_PATTERN = r"[A-Za-z0-9._:-]{1,%d}" % ID_MAX_LEN
VNI_MIN, VNI_MAX = 1, (1 << 24) - 1

Id = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": f"^{ID_PATTERN}$"})]
Vni = Annotated[int, msgspec.Meta(extra_json_schema={"minimum": VNI_MIN, "maximum": VNI_MAX})]
Port = Annotated[int, msgspec.Meta(extra_json_schema={"minimum": 1, "maximum": 65535})]
Probability = Annotated[float, msgspec.Meta(extra_json_schema={"minimum": 0, "maximum": 1})]
IpAddress = Annotated[str, msgspec.Meta(extra_json_schema={
    "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})]

# enum moa_drop_reason and enum moa_stage of datapath/bpf/abi.h, by name in enumerator order
# (index = value, prefix cut, lower case): the one Python table of them. schemas may not import
# the datapath, so the datapath checks this table against the classifier's BTF when it loads it
# (datapath/libbpf/abi.py, AbiError on a mismatch); tests/test_abi.py checks it against the BTF too
# and tests/test_schemas.py against abi.h's text.
DropReason = Literal["loss", "queue", "horizon", "link_down", "aqm"]
Stage = Literal["egress", "ingress"]
DROP_REASONS: tuple[str, ...] = typing.get_args(DropReason)
STAGES: tuple[str, ...] = typing.get_args(Stage)
# The sojourn histogram's buckets (abi.h, MOA_SOJOURN_SHIFT and MOA_SOJOURN_BUCKETS; checked
# against the classifier's BTF by tests/test_abi.py): bucket k counts sojourns below
# SOJOURN_BOUNDS_NS[k] (ns) and at or above the bound before it; the last bucket, one past
# these bounds, counts every sojourn of 2^30 ns (1.074 s) or more. Octaves from 1.024 us.
SOJOURN_SHIFT = 10
SOJOURN_BUCKETS = 22
SOJOURN_BOUNDS_NS: tuple[int, ...] = tuple(1 << (SOJOURN_SHIFT + k)
                                           for k in range(SOJOURN_BUCKETS - 1))
LinkKind = Literal["p2p", "lan"]
LinkState = Literal["up", "down"]
# The jitter's distributions (docs/semantics.md, "Delay distributions"), in enum moa_dist's order.
Distribution = Literal["uniform", "normal", "pareto", "paretonormal", "custom"]
# A custom distribution's table (distribution "custom"): netem's .dist values, in 1/8192 of the
# jitter (NETEM_DIST_SCALE), 2 to 4096 of them (moa holds 4096 quantiles; `moa set ... netem
# distribution FILE` thins a longer file to those).
DIST_TABLE_MAX = 4096
DistValue = Annotated[int, msgspec.Meta(ge=-32768, le=32767)]
DistTable = Annotated[tuple[DistValue, ...], msgspec.Meta(min_length=2, max_length=DIST_TABLE_MAX)]
# Trace-driven capacity (docs/semantics.md, "Trace-driven capacity"): Mahimahi's delivery
# opportunities, each 1,500 bytes of IP packets, in ms from the trace's start, non-decreasing,
# the last one > 0 (the trace repeats after it); 1 to TRACE_MAX of them (the datapath's
# MOA_TRACE_MAX, checked against its BTF by tests/test_abi.py), each at most TRACE_MS_MAX.
TRACE_MAX = 1 << 18
TRACE_MS_MAX = (1 << 32) - 1
TraceMs = Annotated[int, msgspec.Meta(ge=0, le=TRACE_MS_MAX)]
TRACE_QUEUE_MAX = (1 << 32) - 1     # stage_params.trace_queue: bytes, 32 bits


class Trace(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A link's capacity as a Mahimahi trace (docs/semantics.md, "Trace-driven capacity"):
    opportunities_ms are the lines of an mm-link trace file, one per 1,500-byte delivery
    opportunity. Inline content: a large trace reaches the box in a materialize or update of
    its own size (docs/contract.md, "Message sizes")."""
    opportunities_ms: Annotated[tuple[TraceMs, ...], msgspec.Meta(min_length=1,
                                                                 max_length=TRACE_MAX)]

    def summary(self) -> "TraceSummary":
        """How status names this trace (TraceSummary)."""
        ms = self.opportunities_ms
        text = "".join(f"{x}\n" for x in ms).encode()
        period = ms[-1]
        return TraceSummary(opportunities=len(ms), period_ms=period,
                            rate=max(1, len(ms) * TRACE_BITS * 1000 // period) if period else 0,
                            sha256=hashlib.sha256(text).hexdigest())


TRACE_BITS = 1500 * 8  # an opportunity carries 1,500 bytes


class TraceSummary(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A trace as status reports it (docs/contract.md, "Status"): not its content, which can
    be larger than a message (the T-Mobile downlink trace's 194,846 opportunities are 1.2 MB of
    JSON) and would be sent again with every page, but what identifies it. opportunities: how
    many; period_ms: the last one's time (the trace repeats after it); rate: its mean in bit/s
    (1,500 bytes an opportunity); sha256: of the trace as mm-link's text, each opportunity's
    ms and a newline: what `sha256sum` prints for a trace file in that form."""
    opportunities: int
    period_ms: int
    rate: int
    sha256: str


# The queue's management (docs/semantics.md, "Queue management"), in enum moa_aqm's order.
AqmKind = Literal["taildrop", "codel", "pie"]
# The gap between slot openings (docs/semantics.md, "Slots"): uniform in min..max, or one of the
# built-in tables (the delay's: enum moa_dist's ids), no custom table.
SlotDistribution = Literal["uniform", "normal", "pareto", "paretonormal"]
# The fields whose value is one of a few words, and those words: a refusal lists them (a key
# with a dot names a field inside an object, looked up before the bare name).
CHOICES: dict[str, tuple[str, ...]] = {"state": typing.get_args(LinkState),
                                       "distribution": typing.get_args(Distribution),
                                       "slot.distribution": typing.get_args(SlotDistribution),
                                       "kind": typing.get_args(AqmKind)}

MIN_CAPACITY_BPS = 1_000
# What a frame is charged on the link besides its bytes (docs/semantics.md, "What a link's
# capacity is charged for"): the per-frame overhead (Ethernet's L1 by default) and cells
# (netem's packetoverhead, cellsize, celloverhead). A frame is at least 60 bytes, so an overhead
# of -60 charges it nothing; the datapath holds them as 16-bit values.
DEFAULT_OVERHEAD = 24
OVERHEAD_MIN, OVERHEAD_MAX = -60, 4096
CELL_SIZE_MAX = 4096
CELL_OVERHEAD_MIN, CELL_OVERHEAD_MAX = -(CELL_SIZE_MAX - 1), 4096
Overhead = Annotated[int, msgspec.Meta(extra_json_schema={"minimum": OVERHEAD_MIN,
                                                          "maximum": OVERHEAD_MAX})]
CellSize = Annotated[int, msgspec.Meta(extra_json_schema={"minimum": 0,
                                                          "maximum": CELL_SIZE_MAX})]
CellOverhead = Annotated[int, msgspec.Meta(extra_json_schema={"minimum": CELL_OVERHEAD_MIN,
                                                              "maximum": CELL_OVERHEAD_MAX})]
MIN_QUEUE_BYTES = 1_500
# netem's reorder gap (ReorderEarly.gap): a packet is a candidate to go early after gap - 1
# delayed ones. netem's is 32 bits; the datapath counts to the gap in 32 bits without overflow
# up to 2^31.
REORDER_GAP_MAX = 1 << 31
ReorderGap = Annotated[int, msgspec.Meta(extra_json_schema={"minimum": 1,
                                                            "maximum": REORDER_GAP_MAX})]
# CoDel's target and interval: at least 1 us, at most 3 s (the datapath holds them as 32-bit ns
# and squares the interval below 2^63); RFC 8289's defaults when left out.
AQM_MIN_NS = 1_000
AQM_MAX_NS = 3_000_000_000
CODEL_TARGET_NS = 5_000_000
CODEL_INTERVAL_NS = 100_000_000
# PIE's QDELAY_REF and T_UPDATE (RFC 8033), its target and interval here.
PIE_TARGET_NS = 15_000_000
PIE_INTERVAL_NS = 15_000_000
# Slots: a gap (min, max, delay, jitter) of at most 4 s, so the datapath's 32-bit draw times the
# gap's span fits 64 bits; at most 2^31 - 1 packets or bytes a slot (netem's limit; 0 = none).
SLOT_GAP_MAX_NS = 4_000_000_000
SLOT_LIMIT_MAX = (1 << 31) - 1
SlotLimit = Annotated[int, msgspec.Meta(ge=0, le=SLOT_LIMIT_MAX)]


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


class _Message(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Strict: unknown fields are errors (inherited). kw_only is per class in msgspec, so every
    subclass says it again."""


# ----------------------------------------------------------------------------- emulation

class GilbertElliott(_Message, frozen=True, kw_only=True):
    """Burst loss: a two-state Markov chain, stepped once per packet.

    p: P(good -> bad), r: P(bad -> good); loss_good / loss_bad: loss probability in each state.
    """
    p: Probability
    r: Probability
    loss_good: Probability = 0.0
    loss_bad: Probability = 1.0


class Aqm(_Message, frozen=True, kw_only=True):
    """The queue's management (docs/semantics.md, "Queue management"). kind: taildrop (the
    queue limit alone), codel (RFC 8289 on each packet's sojourn) or pie (RFC 8033); the queue
    limit still applies. target / interval: CoDel's target and interval (null = 5 ms / 100 ms),
    PIE's QDELAY_REF and T_UPDATE (null = 15 ms / 15 ms). ecn: mark ECN-capable packets CE
    instead of dropping them (non-ECT packets are still dropped; PIE marks while its drop
    probability is at most 10 %)."""
    kind: AqmKind = "taildrop"
    target: Duration | None = None
    interval: Duration | None = None
    ecn: bool = False


class ReorderEarly(_Message, frozen=True, kw_only=True):
    """netem's `reorder P [CORR] gap G` (docs/semantics.md, "Reordering (netem's reorder)"):
    a packet is a candidate once gap - 1 packets were delayed since the last early one (gap 1:
    every packet), and a candidate skips the delay (latency and jitter; not the capacity) with
    `probability`. correlation: the lag-1 autocorrelation of the candidates' decisions, the
    share early kept (below 1)."""
    probability: Probability
    correlation: Probability = 0.0
    gap: ReorderGap = 1


class Slot(_Message, frozen=True, kw_only=True):
    """Departures released in slots, netem's `slot` (docs/semantics.md, "Slots"). The gap
    from one slot's opening to the next: distribution uniform, min..max (max null = min), or
    normal, pareto or paretonormal with its mean `delay` and its `jitter` (the delay's tables;
    min and max left out). packets / bytes: the most a slot releases (0 = no limit)."""
    distribution: SlotDistribution = "uniform"
    min: Duration | None = None
    max: Duration | None = None
    delay: Duration | None = None
    jitter: Duration = 0
    packets: SlotLimit = 0
    bytes: SlotLimit = 0

    def gaps(self) -> tuple[int, int]:
        """(gap, span) as the datapath holds them (abi.h slot_gap_ns, slot_span_ns): min and
        max - min, or delay and jitter."""
        if self.distribution == "uniform":
            lo = self.min or 0
            return lo, (self.max if self.max is not None else lo) - lo
        return self.delay or 0, self.jitter


# Frozen, hence hashable: the datapath turns each distinct emulation into its map bytes once
# (datapath/emulation.py).
class Emulation(_Message, frozen=True, kw_only=True):
    """One link's parameters (both directions, every endpoint). See docs/semantics.md. A box
    refuses (unsupported) a link whose latency + jitter + queue (or one full frame, if longer)
    at its capacity exceeds the box's horizon (moa serve --horizon, 30 s by default)."""
    latency: Duration = 0
    jitter: Duration = 0
    loss: Probability = 0.0
    capacity: Rate = 0
    queue: Size | None = None
    burst: GilbertElliott | None = None
    reorder: bool = False
    loss_correlation: Probability = 0.0
    state: LinkState = "up"
    distribution: Distribution = "uniform"
    distribution_table: DistTable | None = None
    delay_correlation: Probability = 0.0
    aqm: Aqm = msgspec.field(default_factory=Aqm)
    overhead: Overhead = DEFAULT_OVERHEAD
    cell_size: CellSize = 0
    cell_overhead: CellOverhead = 0
    corrupt: Probability = 0.0
    reorder_early: ReorderEarly | None = None
    duplicate: Probability = 0.0
    duplicate_correlation: Probability = 0.0
    slot: Slot | None = None
    trace: Trace | None = None


class EmulationPatch(_Message, kw_only=True):
    """Some of Emulation's fields; the ones left UNSET keep their value.

    For queue and burst, null (None) is a value: it removes the queue limit / the burst model.
    """
    latency: Duration | UnsetType = UNSET
    jitter: Duration | UnsetType = UNSET
    loss: Probability | UnsetType = UNSET
    capacity: Rate | UnsetType = UNSET
    queue: Size | None | UnsetType = UNSET
    burst: GilbertElliott | None | UnsetType = UNSET
    reorder: bool | UnsetType = UNSET
    loss_correlation: Probability | UnsetType = UNSET
    state: LinkState | UnsetType = UNSET
    distribution: Distribution | UnsetType = UNSET
    distribution_table: DistTable | None | UnsetType = UNSET
    delay_correlation: Probability | UnsetType = UNSET
    aqm: Aqm | UnsetType = UNSET  # replaces the whole aqm: fields left out take their defaults
    overhead: Overhead | UnsetType = UNSET
    cell_size: CellSize | UnsetType = UNSET
    cell_overhead: CellOverhead | UnsetType = UNSET
    corrupt: Probability | UnsetType = UNSET
    reorder_early: ReorderEarly | None | UnsetType = UNSET  # replaces the whole of it
    duplicate: Probability | UnsetType = UNSET
    duplicate_correlation: Probability | UnsetType = UNSET
    slot: Slot | None | UnsetType = UNSET  # null: no slots
    trace: Trace | None | UnsetType = UNSET

    def changes(self) -> dict[str, object]:
        """The fields this patch sets, by name."""
        return {name: value for name in self.__struct_fields__
                if (value := getattr(self, name)) is not UNSET}

    def apply(self, base: Emulation, field: str = "emulation") -> Emulation:
        """base with this patch's fields replaced, checked as a whole.

        Both were checked value by value when they were decoded; what is left are the rules
        across fields (check_across): InvalidMessage (field under `field`) when the result breaks
        one, e.g. a patch lowering latency below the link's jitter.
        """
        merged = msgspec.structs.replace(base, **self.changes())
        check_across(merged, field)
        return merged


# The names of an emulation's fields (LinkUpdate.inherit).
EmulationField = Literal["latency", "jitter", "loss", "capacity", "queue", "burst", "reorder",
                         "loss_correlation", "state", "distribution", "delay_correlation",
                         "overhead", "cell_size", "cell_overhead", "corrupt",
                         "distribution_table", "reorder_early", "duplicate",
                         "duplicate_correlation", "slot", "trace"]


# The rules of an emulation, written once for an Emulation and for a patch: a field a patch
# leaves UNSET is not checked, and a rule across two fields applies when both are set (a patch's
# other ones are checked by apply, against the link's values). Unit bounds (negative, above the
# maximum) are not here: schemas.units refuses them while decoding.

def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check_probability(value: float, path: str, what: str) -> None:
    if not 0.0 <= value <= 1.0:  # NaN too (it compares false)
        raise InvalidMessage(path, f"{what} {value!r} is outside [0, 1]")


def _check_correlation(value: float, path: str, what: str) -> None:
    """A correlation of a chain of decisions (reorder_early, duplicate): in [0, 1), as at 1
    the chain would never leave its first state."""
    _check_probability(value, path, what)
    if value >= 1.0:
        raise InvalidMessage(path, f"{what} {value!r} must be below 1")


def check_values(e: Emulation | EmulationPatch, path: str) -> None:
    """The rules of each field alone: capacity and queue minimums, probabilities in [0, 1]."""
    if e.capacity is not UNSET and 0 < e.capacity < MIN_CAPACITY_BPS:
        raise InvalidMessage(_join(path, "capacity"),
                             f"capacity {e.capacity} bit/s is below the minimum 1kbps "
                             "(0 means unlimited)")
    if e.queue not in (UNSET, None) and e.queue < MIN_QUEUE_BYTES:
        raise InvalidMessage(_join(path, "queue"),
                             f"queue {e.queue} bytes is below the minimum {MIN_QUEUE_BYTES} "
                             "(one full-size frame)")
    if e.loss is not UNSET:
        _check_probability(e.loss, _join(path, "loss"), "loss")
    if e.corrupt is not UNSET:
        _check_probability(e.corrupt, _join(path, "corrupt"), "corrupt")
    if e.duplicate is not UNSET:
        _check_probability(e.duplicate, _join(path, "duplicate"), "duplicate")
    if e.duplicate_correlation is not UNSET:
        _check_correlation(e.duplicate_correlation, _join(path, "duplicate_correlation"),
                           "duplicate_correlation")
    if e.reorder_early not in (UNSET, None):
        r, rp = e.reorder_early, _join(path, "reorder_early")
        _check_probability(r.probability, _join(rp, "probability"), "probability")
        _check_correlation(r.correlation, _join(rp, "correlation"), "correlation")
        if not 1 <= r.gap <= REORDER_GAP_MAX:
            raise InvalidMessage(_join(rp, "gap"),
                                 f"gap {r.gap} is outside 1..{REORDER_GAP_MAX} (packets)")
    if e.delay_correlation is not UNSET:
        _check_probability(e.delay_correlation, _join(path, "delay_correlation"),
                           "delay_correlation")
        if e.delay_correlation >= 1.0:  # every delay would be the first one
            raise InvalidMessage(_join(path, "delay_correlation"),
                                 f"delay_correlation {e.delay_correlation!r} must be below 1")
    if e.loss_correlation is not UNSET:
        _check_probability(e.loss_correlation, _join(path, "loss_correlation"), "loss_correlation")
        if e.loss_correlation >= 1.0:  # the chain would never leave its first state
            raise InvalidMessage(_join(path, "loss_correlation"),
                                 f"loss_correlation {e.loss_correlation!r} must be below 1")
    for name, lo, hi in (("overhead", OVERHEAD_MIN, OVERHEAD_MAX),
                         ("cell_size", 0, CELL_SIZE_MAX),
                         ("cell_overhead", CELL_OVERHEAD_MIN, CELL_OVERHEAD_MAX)):
        v = getattr(e, name)
        if v is not UNSET and not lo <= v <= hi:
            raise InvalidMessage(_join(path, name), f"{name} {v} is outside {lo}..{hi} (bytes)")
    if e.slot not in (UNSET, None):
        check_slot(e.slot, _join(path, "slot"))
    if isinstance(e.trace, Trace):  # a status's TraceSummary names a trace checked when sent
        _check_trace(e.trace.opportunities_ms, _join(path, "trace.opportunities_ms"))
    if e.burst not in (UNSET, None):
        for name in ("p", "r", "loss_good", "loss_bad"):
            _check_probability(getattr(e.burst, name), _join(path, f"burst.{name}"), name)
    if e.aqm is not UNSET:
        for name in ("target", "interval"):
            v = getattr(e.aqm, name)
            if v is not None and not AQM_MIN_NS <= v <= AQM_MAX_NS:
                raise InvalidMessage(_join(path, f"aqm.{name}"),
                                     f"{name} {units.format_duration(v)} is outside 1us..3s")
        if e.aqm.kind == "taildrop" and (e.aqm.target is not None or e.aqm.interval is not None
                                         or e.aqm.ecn):
            what = "ecn" if e.aqm.ecn else ("target" if e.aqm.target is not None else "interval")
            raise InvalidMessage(_join(path, f"aqm.{what}"),
                                 f"{what} needs an AQM: kind is taildrop (give codel or pie)")


def check_slot(s: Slot, path: str) -> None:
    """A slot's own rules: the fields of its form only, gaps within 0..4 s, max >= min, a
    distribution's jitter above 0, and a gap that can be above 0 (a slot of gap 0 would release
    everything at once: netem reads `slot 0` as no slots, moa asks for slot null)."""
    fmt = units.format_duration
    uniform = s.distribution == "uniform"
    for name in ("min", "max", "delay", "jitter"):
        v = getattr(s, name)
        if name in (("delay",) if uniform else ("min", "max")) and v is not None:
            raise InvalidMessage(_join(path, name),
                                 f"{name} is for {'a distribution' if uniform else 'uniform'} "
                                 f"slots, the distribution is {s.distribution}")
        if v is not None and v > SLOT_GAP_MAX_NS:
            raise InvalidMessage(_join(path, name), f"{name} {fmt(v)} is above 4s")
    if uniform and s.jitter:
        raise InvalidMessage(_join(path, "jitter"), "jitter is for a distribution's slots: "
                             "uniform slots take min and max")
    if uniform and s.min is None:
        raise InvalidMessage(_join(path, "min"), "uniform slots need min (the shortest gap)")
    if not uniform and s.delay is None:
        raise InvalidMessage(_join(path, "delay"),
                             f"{s.distribution} slots need delay (the gaps' mean)")
    if not uniform and not s.jitter:  # netem refuses it too; a fixed gap is min alone
        raise InvalidMessage(_join(path, "jitter"),
                             f"{s.distribution} slots need a jitter above 0 (a fixed gap: "
                             "uniform slots with min)")
    gap, span = s.gaps()
    if uniform and span < 0:
        raise InvalidMessage(_join(path, "max"), f"max {fmt(s.max or 0)} is below min {fmt(gap)}")
    if gap + span == 0:
        field = "max" if uniform else "delay"
        raise InvalidMessage(_join(path, field), "a slot needs a gap above 0 (no slots: "
                             "slot null)")


def _check_trace(ms: tuple[int, ...], path: str) -> None:
    """mm-link's own rules for a trace: non-decreasing, lasting more than 0 ms."""
    for i in range(1, len(ms)):
        if ms[i] < ms[i - 1]:
            raise InvalidMessage(f"{path}[{i}]", f"opportunity {ms[i]} ms is before the one "
                                 f"ahead of it ({ms[i - 1]} ms): the times must not decrease")
    if ms[-1] == 0:
        raise InvalidMessage(f"{path}[{len(ms) - 1}]",
                             "the last opportunity is at 0 ms: a trace must last more than 0 ms "
                             "(it repeats after its last opportunity)")


def check_across(e: Emulation | EmulationPatch, path: str) -> None:
    """The rules across fields: jitter <= latency, a queue only with a capacity, burst excludes
    loss and loss_correlation, a cell_overhead only with a cell_size and a cell of at least
    one byte."""
    if e.latency is not UNSET and e.jitter is not UNSET and e.jitter > e.latency:
        raise InvalidMessage(_join(path, "jitter"),
                             f"jitter {units.format_duration(e.jitter)} is larger than latency "
                             f"{units.format_duration(e.latency)} (the delay is latency ± jitter)")
    traced = e.trace not in (UNSET, None)
    if traced and e.capacity not in (UNSET, 0):
        raise InvalidMessage(_join(path, "trace"),
                             "trace and capacity exclude each other: the trace is the link's "
                             "capacity (give capacity 0)")
    if traced and e.cell_size not in (UNSET, 0):
        raise InvalidMessage(_join(path, "cell_size"),
                             "cells do not apply to a trace: its opportunities carry IP bytes "
                             "(give cell_size 0)")
    if traced and e.overhead not in (UNSET, DEFAULT_OVERHEAD):
        raise InvalidMessage(_join(path, "overhead"),
                             "overhead does not apply to a trace: its opportunities carry IP "
                             f"bytes (leave overhead at {DEFAULT_OVERHEAD})")
    if traced and e.queue not in (UNSET, None) and e.queue > TRACE_QUEUE_MAX:
        raise InvalidMessage(_join(path, "queue"),
                             f"queue {e.queue} bytes: a trace link's queue is at most "
                             f"{TRACE_QUEUE_MAX} bytes (the datapath counts it in 32 bits)")
    for name, given, what, off in (
            ("slot", e.slot not in (UNSET, None), "slotted", "null"),
            ("reorder_early", e.reorder_early not in (UNSET, None), "reordered", "null"),
            ("duplicate", e.duplicate not in (UNSET, 0.0), "duplicated", "0")):
        if traced and given:  # a trace's locked path has none of their code (edt.h)
            raise InvalidMessage(_join(path, "trace"),
                                 f"trace and {name} exclude each other: a trace link is not "
                                 f"{what} (give {name} {off} or trace null)")
    if e.queue not in (UNSET, None) and e.capacity == 0 and not traced:
        raise InvalidMessage(_join(path, "queue"),
                             "queue needs a capacity or a trace: an unlimited link has no "
                             "backlog to bound")
    if e.aqm is not UNSET and e.aqm.kind != "taildrop" and e.capacity == 0 and not traced:
        raise InvalidMessage(_join(path, "aqm.kind"),
                             f"{e.aqm.kind} needs a capacity: an unlimited link has no queue")
    if e.burst not in (UNSET, None) and e.loss not in (UNSET, 0.0):
        raise InvalidMessage(_join(path, "loss"),
                             "loss must be 0 when burst is given (use burst.loss_good)")
    if e.distribution == "custom" and e.distribution_table is None:
        raise InvalidMessage(_join(path, "distribution_table"),
                             "distribution custom needs its distribution_table (netem's .dist "
                             "values)")
    if e.distribution_table not in (UNSET, None) and e.distribution not in (UNSET, "custom"):
        raise InvalidMessage(_join(path, "distribution_table"),
                             f"distribution_table is only for distribution custom (the "
                             f"distribution is {e.distribution})")
    if e.cell_overhead not in (UNSET, 0) and e.cell_size == 0:
        raise InvalidMessage(_join(path, "cell_overhead"),
                             "cell_overhead needs a cell_size: without cells it charges nothing")
    if (e.cell_size not in (UNSET, 0) and e.cell_overhead is not UNSET
            and e.cell_size + e.cell_overhead < 1):
        raise InvalidMessage(_join(path, "cell_overhead"),
                             f"cell_overhead {e.cell_overhead} leaves a cell of cell_size "
                             f"{e.cell_size} costing {e.cell_size + e.cell_overhead} bytes "
                             "(at least 1)")
    if e.reorder_early not in (UNSET, None) and e.latency == 0:
        raise InvalidMessage(_join(path, "reorder_early"),
                             "reorder_early needs a latency: an early packet skips the delay, "
                             "and there is none to skip")
    if e.duplicate_correlation not in (UNSET, 0.0) and e.duplicate == 0.0:
        raise InvalidMessage(_join(path, "duplicate_correlation"),
                             "duplicate_correlation needs duplicate: it correlates the "
                             "decisions to duplicate, and there are none")
    if e.burst not in (UNSET, None) and e.loss_correlation not in (UNSET, 0.0):
        raise InvalidMessage(_join(path, "loss_correlation"),
                             "loss_correlation must be 0 when burst is given (burst is its own "
                             "model of correlated loss)")


def check_emulation(e: Emulation | EmulationPatch, path: str = "emulation") -> None:
    """Every rule of an emulation (or of the fields a patch sets)."""
    check_values(e, path)
    check_across(e, path)


# ----------------------------------------------------------------------------- schedules

# A schedule's bounds (docs/semantics.md, "Scheduled changes"): at most SCHEDULE_STEPS_MAX
# steps, offsets strictly increasing and at least SCHEDULE_GAP_MIN_NS apart (the service
# writes each step within 1 ms of its time: two closer steps could not be told apart), the
# last within SCHEDULE_SPAN_MAX_NS of the start; a repeat period longer than the last offset
# by that gap too. The rules are schemas/schedule.py's.
SCHEDULE_STEPS_MAX = 64
SCHEDULE_GAP_MIN_NS = 1_000_000
SCHEDULE_SPAN_MAX_NS = 7 * 86_400 * 1_000_000_000
StartNs = Annotated[int, msgspec.Meta(extra_json_schema={"minimum": 0,
                                                         "maximum": (1 << 63) - 1})]


class ScheduleStep(_Message, kw_only=True):
    """At `at` after the schedule's start (of each period, with `repeat`), set `set`'s fields
    on one link (`link`) or on every link carrying `tag`: exactly one of the two. The fields
    stay set until a later step sets them again (steps add up, as updates do)."""
    at: Duration
    set: EmulationPatch
    link: Id | None = None
    tag: Id | None = None


class Schedule(_Message, kw_only=True):
    """Changes of a materialization's links at given times (docs/semantics.md, "Scheduled
    changes"). start: CLOCK_REALTIME ns of the box (null: when the box accepts it; the box
    keeps the time it took, so a restart resumes in phase); repeat: the period after which
    the steps start again (null: once)."""
    steps: list[ScheduleStep]
    start: StartNs | None = None
    repeat: Duration | None = None


# ----------------------------------------------------------------------------- materialize

class Endpoint(_Message, kw_only=True):
    """One VTEP of a link: its VNI and the experiment node's VTEP address (IPv4/IPv6 literal).

    local: the box's source address for this VTEP (default: the service's); port: this
    endpoint's VXLAN UDP port, on the node's VTEP and on the box's (default 4789); the box's
    classifier takes VXLAN on every port its VTEPs use. emulation: this direction's own
    parameters, over the link's (docs/semantics.md, "Each direction"): the fields it sets
    replace the link's for the frames delivered towards this endpoint; the others follow the
    link's, also when an update changes them. Left out: the link's emulation.
    """
    vni: Vni
    remote: IpAddress
    local: IpAddress | None = None
    port: Port | None = None
    emulation: EmulationPatch | UnsetType = UNSET


def direction(link_emulation: Emulation, own: EmulationPatch | UnsetType) -> Emulation:
    """The emulation of the frames delivered towards an endpoint (its VNI's egress stage): the
    link's, with the endpoint's own fields (`own`, its Endpoint.emulation) over it. Checked as a
    whole when the message was decoded (schemas/validate.py)."""
    if own is UNSET:
        return link_emulation
    return msgspec.structs.replace(link_emulation, **own.changes())


class Link(_Message, kw_only=True):
    id: Id
    endpoints: list[Endpoint]
    emulation: Emulation = msgspec.field(default_factory=Emulation)
    tags: list[Id] = msgspec.field(default_factory=list)

    @property
    def kind(self) -> LinkKind:
        """"p2p" for two endpoints (redirect pair), "lan" for three or more (bridge)."""
        return "p2p" if len(self.endpoints) == 2 else "lan"


class Materialize(_Message, kw_only=True):
    """The whole desired state of one materialization id. schedule: changes of its links at
    given times (left out: none; a new Materialize replaces the schedule with its own)."""
    id: Id
    links: list[Link]
    schedule: Schedule | UnsetType = UNSET


class Dematerialize(_Message, kw_only=True):
    id: Id


class LinkUpdate(_Message, kw_only=True):
    """New parameters for one link (by id) or for every link carrying a tag: exactly one of them.

    endpoint (with `link` only): a VNI of that link; the patch then changes that direction's own
    parameters (Endpoint.emulation) rather than the link's, and `inherit` names fields of that
    direction that go back to following the link's (applied before the patch)."""
    link: Id | None = None
    tag: Id | None = None
    endpoint: Vni | None = None
    inherit: list[EmulationField] = msgspec.field(default_factory=list)
    emulation: EmulationPatch = msgspec.field(default_factory=lambda: EmulationPatch())


class Update(_Message, kw_only=True):
    """`moa set LINK-OR-TAG latency 50ms ...`: change some parameters of some links of one id.
    schedule: left out, the materialization's schedule keeps running over the new parameters;
    null cancels it; a Schedule replaces it (docs/semantics.md, "Scheduled changes")."""
    id: Id
    links: list[LinkUpdate] = msgspec.field(default_factory=list)
    schedule: Schedule | None | UnsetType = UNSET


# The `next` of a status page, handed back to get the page after it (docs/contract.md, "Status").
Cursor = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class StatusRequest(_Message, kw_only=True):
    """`{}` for everything, `{"id": ...}` for one materialization; `cursor`: the `next` of the
    page before (a reply holds what fits in one NATS message: docs/contract.md, "Status")."""
    id: Id | None = None
    cursor: Cursor | None = None


# ----------------------------------------------------------------------------- acks

class AckError(_Message, kw_only=True):
    """Why an operation was refused. code: "malformed" (not JSON), "invalid" (fails the schema or
    a rule; field says where) or a service code ("conflict", "not_found", ...: docs/contract.md)."""
    code: str
    field: str | None = None
    message: str


class Ack(_Message, kw_only=True):
    """The outcome of one operation; error is null when ok."""
    id: str | None
    op: str
    ok: bool
    generation: int | None = None
    elapsed_ms: float | None = None
    error: AckError | None = None


# ----------------------------------------------------------------------------- telemetry

class DropEvent(_Message, kw_only=True):
    """One dropped packet, from the classifier's ring buffer. len: inner bytes; segs: frames."""
    time_ns: int
    vni: int
    reason: DropReason
    stage: Stage
    len: int
    segs: int
    link: str | None = None
    materialization: str | None = None


class DropBatch(_Message, kw_only=True):
    """Drop events of one interval. counts: the events of this batch per reason. Drops that
    were not reported as events are counted apart: `suppressed` (over the BPF per-link budget)
    and `lost` (the ring buffer was full); the per-link counters hold every drop."""
    host: str
    events: list[DropEvent]
    counts: dict[str, int]
    suppressed: int
    lost: int


class LinkStats(_Message, kw_only=True):
    """Counters of one stage of one endpoint (VNI) of a link, summed over CPUs since set-up."""
    materialization: str
    link: str
    vni: int
    stage: Stage
    packets: int
    bytes: int
    drops: dict[str, int]
    marks: int = 0  # ECN: packets the AQM marked CE instead of dropping
    corrupted: int = 0  # packets that got one bit of their payload flipped (`corrupt`)
    duplicated: int = 0  # frames of the copies sent (`duplicate`), beside `packets`
    # Passed frames by the sojourn they had on the timeline, bucket k for sojourns below
    # SOJOURN_BOUNDS_NS[k] (the last: the rest); trailing empty buckets are left out, so an
    # unshaped stage's histogram is [packets] (docs/contract.md, "Queue telemetry").
    sojourn: list[int] = []
    backlog_ns: int = 0     # the stage's queue at the read, as time at its rate
    backlog_bytes: int = 0  # and as bytes at its rate (L1 overhead included)


class LinkStatsBatch(_Message, kw_only=True):
    """Part `part` of `parts` of one interval's counters (every part has the interval's
    `time_ns`): each part fits in one NATS message."""
    host: str
    time_ns: int
    links: list[LinkStats]
    part: int = 1
    parts: int = 1


class ScheduleReport(_Message, kw_only=True):
    """One step of a schedule, published on moa.<host>.schedule when it took effect. due_ns:
    when it was due, applied_ns: when its map writes were done (CLOCK_REALTIME ns of the box);
    late_ns = applied_ns - due_ns. cycle: 0 for the first period. links: the links it changed."""
    host: str
    materialization: str
    generation: int
    step: int
    cycle: int
    links: list[str]
    due_ns: int
    applied_ns: int
    late_ns: int


# ----------------------------------------------------------------------------- status

class StatusEmulation(Emulation, frozen=True, kw_only=True):
    """An emulation as status reports it: Emulation's fields, a trace by its summary."""
    trace: TraceSummary | None = None  # type: ignore[assignment]


@functools.lru_cache(maxsize=4096)
def status_emulation(e: Emulation) -> StatusEmulation:
    """`e` as status reports it (a status walks every link: each distinct emulation once)."""
    fields = {name: getattr(e, name) for name in e.__struct_fields__}
    fields["trace"] = None if e.trace is None else e.trace.summary()
    return StatusEmulation(**fields)


class DirectionStatus(_Message, kw_only=True):
    """The emulation of the frames delivered towards one endpoint (its VNI's egress stage), for
    an endpoint with parameters of its own: the link's with that endpoint's fields over it."""
    vni: int
    emulation: StatusEmulation


class LinkStatus(_Message, kw_only=True):
    """emulation: the link's (every direction without parameters of its own); directions: the
    effective emulation of each of `vnis` that has parameters of its own (empty: none has)."""
    id: str
    kind: LinkKind
    vnis: list[int]
    emulation: StatusEmulation
    counters: list[LinkStats]
    directions: list[DirectionStatus] = []


class MaterializationStatus(_Message, kw_only=True):
    """One materialization as the box holds it. error: null when the kernel holds exactly this
    content; otherwise why it does not (the service could not converge the box to it at start,
    or a rollback was incomplete): re-send the Materialize to retry."""
    id: str
    generation: int
    links: list[LinkStatus]
    error: str | None = None


class StatusReply(_Message, kw_only=True):
    """What the box holds. fq_memory_bytes: worst-case sch_fq memory implied by the links (each
    stage's rate, the uplink's for an unlimited link, times its longest hold; at most the
    uplink's line rate times the longest hold); a change past moa serve --fq-memory-max is
    refused.
    datapath: the classifier's box-wide counters since it was loaded (frames): non_vxlan,
    unknown_vni (passed untouched), ringbuf_fail (drop events lost), handover (LAN frames
    whose port wait the egress stage added), port_held (LAN frames a VTEP held until they left
    the sender's port), events_suppressed; in flow mode also flow_redirect (frames rewritten
    toward their peer), flow_mismatch (an entry's VNI but not addressed to the box: passed),
    flow_error (a rewrite failed: dropped), flow_released (sent as a clone of a local
    socket's frame), flow_pending (dropped: the peer's next hop has not answered ARP or
    neighbour discovery yet). next: the cursor of the next page
    (StatusRequest.cursor), null on the last; a materialization or a link that does not fit
    in one page continues on the next under the same id (docs/contract.md, "Status")."""
    host: str
    materializations: list[MaterializationStatus]
    fq_memory_bytes: int
    datapath: dict[str, int] = {}
    next: str | None = None
