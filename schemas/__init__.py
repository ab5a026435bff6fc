"""moa's messages: msgspec Structs at the edges, unit parsing, validation, JSON Schema files.

    from schemas import Materialize, decode, encode, InvalidMessage
    m = decode(Materialize, payload)      # units parsed, validated, or InvalidMessage(field, ...)
"""
from schemas.codec import decode, encode
from schemas.messages import (
    DROP_REASONS, STAGES, Ack, AckError, Dematerialize, DropBatch, DropEvent, Emulation,
    EmulationPatch, Endpoint, GilbertElliott, Link, LinkStats, LinkStatsBatch, LinkStatus,
    LinkUpdate, Materialize, MaterializationStatus, StatusReply, StatusRequest, Update,
)
from schemas.units import (
    format_duration, format_rate, format_size, parse_duration, parse_rate, parse_size,
)
from schemas.validate import InvalidMessage, check_emulation, validate, vni_fields

__all__ = [
    "DROP_REASONS", "STAGES", "Ack", "AckError", "Dematerialize", "DropBatch", "DropEvent",
    "Emulation", "EmulationPatch", "Endpoint", "GilbertElliott", "InvalidMessage", "Link",
    "LinkStats", "LinkStatsBatch", "LinkStatus", "LinkUpdate", "Materialize",
    "MaterializationStatus", "StatusReply", "StatusRequest", "Update", "check_emulation", "decode",
    "encode", "format_duration", "format_rate", "format_size", "parse_duration", "parse_rate",
    "parse_size", "validate", "vni_fields",
]
