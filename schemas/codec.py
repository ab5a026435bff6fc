"""decode / encode: JSON bytes <-> Structs; decode is where a message is parsed and checked, once.

decode(kind, data) runs msgspec's strict decoder (types, unknown fields) with a dec_hook that
parses the unit fields (Duration, Rate, Size: see schemas.messages) into plain ints, then the
rules of schemas/validate.py (check). Every failure, whatever its source, becomes an
InvalidMessage whose field is a path in the same form the rules use
("links[0].endpoints[1].vni"): msgspec's "... - at `$.links[0]...`" is rewritten. validate(m)
puts a Struct built in Python through the same decoder.
"""
from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from schemas import units
from schemas.messages import CHOICES, Duration, InvalidMessage, Rate, Size
from schemas.validate import check

T = TypeVar("T")

_PARSERS = {Duration: units.parse_duration, Rate: units.parse_rate, Size: units.parse_size}


def _dec_hook(kind: type, obj: Any) -> int:
    parse = _PARSERS.get(kind)
    if parse is None:
        raise NotImplementedError(f"no decoder for {kind!r}")
    # The plain int, which msgspec takes as an instance of the marker (schemas.messages). A
    # ValueError from the parser becomes a msgspec.ValidationError carrying the path.
    return parse(obj)


_decoders: dict[type, msgspec.json.Decoder] = {}
_encoder = msgspec.json.Encoder()

# msgspec: "<message> - at `$.links[0].vni`" (no suffix when the problem is at the root).
_AT = re.compile(r"^(?P<message>.*) - at `\$(?P<path>.*)`$", re.DOTALL)
_FIELD_MSG = re.compile(
    r"^Object (?P<what>contains unknown|missing required) field `(?P<name>.*)`$", re.DOTALL)


def _path_of(error: msgspec.ValidationError) -> tuple[str, str]:
    """(field path, message) from a msgspec ValidationError."""
    text = str(error)
    m = _AT.match(text)
    message, path = (m["message"], m["path"]) if m else (text, "")
    path = path[1:] if path.startswith(".") else path
    f = _FIELD_MSG.match(message)
    if f is not None:  # name the field itself, not the object holding it
        name = f["name"]
        path = f"{path}.{name}" if path else name
        what = "unknown field" if f["what"] == "contains unknown" else "missing required field"
        message = f"{what} {name!r}"
    choices = (CHOICES.get(".".join(path.rsplit(".", 2)[-2:]))
               or CHOICES.get(path.rsplit(".", 1)[-1]))
    if choices and message.startswith("Invalid enum value"):
        message = f"{message} (one of: {', '.join(choices)})"
    return path, message.replace("`", "")


def _check_well_formed(data: bytes | str) -> None:
    try:
        msgspec.json.decode(data)
    except msgspec.ValidationError:  # well-formed, e.g. a number beyond float range
        return
    except msgspec.DecodeError as e:
        raise InvalidMessage("", str(e), "malformed") from None
    except (UnicodeError, RecursionError):
        raise InvalidMessage("", "JSON is malformed", "malformed") from None


def decode(kind: type[T], data: bytes | str) -> T:
    """Decode JSON into kind, parse units, check the rules; raise InvalidMessage on any problem."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind, dec_hook=_dec_hook)
    try:
        message = decoder.decode(data)
    except msgspec.ValidationError as e:
        # msgspec judges the type as it reads, so "[" is "Expected object, got array": when the
        # text is not JSON at all, say that instead.
        _check_well_formed(data)
        field, text = _path_of(e)
        raise InvalidMessage(field, text) from None
    except msgspec.DecodeError as e:
        raise InvalidMessage("", str(e), "malformed") from None
    except UnicodeError as e:  # invalid UTF-8 in bytes, or lone surrogates in a str
        raise InvalidMessage("", f"JSON is malformed: not valid UTF-8 ({e.reason})",
                             "malformed") from None
    except RecursionError:
        raise InvalidMessage("", "JSON is malformed: nested too deeply", "malformed") from None
    return check(message)


def encode(obj: Any) -> bytes:
    """JSON bytes of a Struct (or anything msgspec encodes); unit fields as plain integers."""
    return _encoder.encode(obj)


def validate(m: T) -> T:
    """A Struct built in Python, checked as decode checks a message: through the decoder (types,
    units, rules); returns the decoded copy (addresses normalized), or raises InvalidMessage."""
    return decode(type(m), encode(m))
