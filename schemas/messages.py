"""The messages of moa's contract (docs/contract.md) as msgspec Structs.

After schemas.decode every field is in Python units: durations in ns, rates in bit/s, sizes in
bytes (plain ints), loss as a float in [0, 1]. All Structs are keyword-only and reject unknown
fields, so a typo in an event is an error naming the field rather than a silently ignored key.

How the unit strings get in: the fields that take them are annotated with the marker types
Duration, Rate and Size. msgspec does not know these types, so when decoding it hands the raw
JSON value (int or string) to schemas.codec's dec_hook, which parses it with schemas.units.
schemas.validate then turns the marker instances back into plain ints, so that code building or
encoding these Structs never meets them. For type checkers the markers are simply int.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

if TYPE_CHECKING:
    Duration = int
    Rate = int
    Size = int
else:
    class Duration(int):
        """ns; on the wire an int (ns) or a string such as "10ms"."""

    class Rate(int):
        """bit/s; on the wire an int (bit/s) or a string such as "100mbps"; 0 = unlimited."""

    class Size(int):
        """bytes; on the wire an int (bytes) or a string such as "256KiB"."""

# Constraints that schemas.validate checks (with its own messages and field paths), stated in the
# generated JSON Schema too: extra_json_schema documents without making msgspec enforce them.
ID_MAX_LEN = 128
ID_PATTERN = r"[A-Za-z0-9._:-]{1,%d}" % ID_MAX_LEN
VNI_MIN, VNI_MAX = 1, (1 << 24) - 1

Id = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": f"^{ID_PATTERN}$"})]
Vni = Annotated[int, msgspec.Meta(extra_json_schema={"minimum": VNI_MIN, "maximum": VNI_MAX})]
Port = Annotated[int, msgspec.Meta(extra_json_schema={"minimum": 1, "maximum": 65535})]
Probability = Annotated[float, msgspec.Meta(extra_json_schema={"minimum": 0, "maximum": 1})]
IpAddress = Annotated[str, msgspec.Meta(extra_json_schema={
    "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})]

DropReason = Literal["loss", "queue", "horizon"]
Stage = Literal["egress", "ingress"]
LinkKind = Literal["p2p", "lan"]

# Names of the drop reasons and stages in the order of enum moa_drop_reason / enum moa_stage in
# datapath/bpf/abi.h (index = enum value); tests/test_schemas.py checks them against abi.h.
DROP_REASONS: tuple[str, ...] = ("loss", "queue", "horizon")
STAGES: tuple[str, ...] = ("egress", "ingress")


class _Message(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Strict: unknown fields are errors (inherited). kw_only is per class in msgspec, so every
    subclass says it again."""


# ----------------------------------------------------------------------------- emulation

class GilbertElliott(_Message, kw_only=True):
    """Burst loss: a two-state Markov chain, stepped once per packet.

    p: P(good -> bad), r: P(bad -> good); loss_good / loss_bad: loss probability in each state.
    """
    p: Probability
    r: Probability
    loss_good: Probability = 0.0
    loss_bad: Probability = 1.0


class Emulation(_Message, kw_only=True):
    """One link's parameters (both directions, every endpoint). See docs/semantics.md."""
    latency: Duration = 0
    jitter: Duration = 0
    loss: Probability = 0.0
    capacity: Rate = 0
    queue: Size | None = None
    burst: GilbertElliott | None = None
    reorder: bool = False


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

    def changes(self) -> dict[str, object]:
        """The fields this patch sets, by name."""
        return {name: value for name in self.__struct_fields__
                if (value := getattr(self, name)) is not UNSET}

    def apply(self, base: Emulation, field: str = "emulation") -> Emulation:
        """base with this patch's fields replaced, validated as a whole.

        Raises InvalidMessage (field under `field`) when the result breaks a rule that involves
        two fields, e.g. a patch lowering latency below the link's jitter.
        """
        from schemas.validate import check_emulation  # validate imports this module

        merged = msgspec.structs.replace(base, **self.changes())
        check_emulation(merged, field)
        return merged


# ----------------------------------------------------------------------------- materialize

class Endpoint(_Message, kw_only=True):
    """One VTEP of a link: its VNI and the experiment node's VTEP address (IPv4/IPv6 literal).

    local: the box's source address for this VTEP (default: the service's); port: the remote's
    VXLAN UDP port (default: the service's, 4789).
    """
    vni: Vni
    remote: IpAddress
    local: IpAddress | None = None
    port: Port | None = None


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
    """The whole desired state of one materialization id."""
    id: Id
    links: list[Link]


class Dematerialize(_Message, kw_only=True):
    id: Id


class LinkUpdate(_Message, kw_only=True):
    """New parameters for one link (by id) or for every link carrying a tag: exactly one of them."""
    link: Id | None = None
    tag: Id | None = None
    emulation: EmulationPatch


class Update(_Message, kw_only=True):
    """`moa set LINK-OR-TAG latency 50ms ...`: change some parameters of some links of one id."""
    id: Id
    links: list[LinkUpdate]


class StatusRequest(_Message, kw_only=True):
    """`{}` for everything, `{"id": ...}` for one materialization."""
    id: Id | None = None


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


class LinkStatsBatch(_Message, kw_only=True):
    host: str
    time_ns: int
    links: list[LinkStats]


# ----------------------------------------------------------------------------- status

class LinkStatus(_Message, kw_only=True):
    id: str
    kind: LinkKind
    vnis: list[int]
    emulation: Emulation
    counters: list[LinkStats]


class MaterializationStatus(_Message, kw_only=True):
    """One materialization as the box holds it. error: null when the kernel holds exactly this
    content; otherwise why it does not (the service could not converge the box to it at start,
    or a rollback was incomplete): re-send the Materialize to retry."""
    id: str
    generation: int
    links: list[LinkStatus]
    error: str | None = None


class StatusReply(_Message, kw_only=True):
    """What the box holds. fq_memory_bytes: worst-case sch_fq memory implied by the links.
    datapath: the classifier's box-wide counters since it was loaded (frames): non_vxlan,
    unknown_vni (passed untouched), ringbuf_fail (drop events lost), handover (LAN frames
    whose port wait the egress stage added), port_held (LAN frames a VTEP held until they left
    the sender's port), events_suppressed."""
    host: str
    materializations: list[MaterializationStatus]
    fq_memory_bytes: int
    datapath: dict[str, int] = {}
