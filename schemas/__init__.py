"""moa's messages: msgspec Structs at the edges, unit parsing, validation, JSON Schema files.

    from schemas import Materialize, decode, encode, InvalidMessage
    m = decode(Materialize, payload)    # units parsed, rules checked, or InvalidMessage(field, ...)
"""
from schemas.codec import decode, encode, validate
from schemas.messages import (
    DROP_REASONS, SOJOURN_BOUNDS_NS, SOJOURN_BUCKETS, SOJOURN_SHIFT, STAGES, Ack, AckError, Aqm,
    Dematerialize, DirectionStatus, DropBatch,
    DropEvent, Emulation,
    EmulationPatch, Endpoint, GilbertElliott, InvalidMessage, Link, LinkStats, LinkStatsBatch,
    LinkStatus, LinkUpdate, Materialize, MaterializationStatus, ReorderEarly, Schedule,
    ScheduleReport, ScheduleStep, Slot, StatusEmulation, StatusReply, StatusRequest, Trace,
    TraceSummary, Update, check_emulation, direction, status_emulation,
)
from schemas.units import (
    format_duration, format_rate, format_size, parse_duration, parse_rate, parse_size,
)
from schemas.validate import vni_fields

__all__ = [
    "DROP_REASONS", "SOJOURN_BOUNDS_NS", "SOJOURN_BUCKETS", "SOJOURN_SHIFT", "STAGES", "Ack",
    "AckError", "Aqm", "Dematerialize", "DirectionStatus",
    "DropBatch", "DropEvent",
    "Emulation", "EmulationPatch", "Endpoint", "GilbertElliott", "InvalidMessage", "Link",
    "LinkStats", "LinkStatsBatch", "LinkStatus", "LinkUpdate", "Materialize", "ReorderEarly",
    "MaterializationStatus", "Schedule", "ScheduleReport", "ScheduleStep", "Slot",
    "StatusEmulation", "StatusReply", "StatusRequest", "Trace", "TraceSummary", "Update",
    "status_emulation", "check_emulation", "decode",
    "direction",
    "encode", "format_duration", "format_rate", "format_size", "parse_duration", "parse_rate",
    "parse_size", "validate", "vni_fields",
]
