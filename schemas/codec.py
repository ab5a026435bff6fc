"""decode / encode: JSON bytes <-> Structs, with unit parsing and validation.

decode(kind, data) runs msgspec's strict decoder (types, unknown fields) with a dec_hook that
parses the unit fields (Duration, Rate, Size: see schemas.messages), then schemas.validate. Every
failure, whatever its source, becomes an InvalidMessage whose field is a path in the same form
validate uses ("links[0].endpoints[1].vni"): msgspec's "... - at `$.links[0]...`" is rewritten.
"""
from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from schemas import units
from schemas.messages import Duration, Rate, Size
from schemas.validate import InvalidMessage, validate

T = TypeVar("T")

_PARSERS = {Duration: units.parse_duration, Rate: units.parse_rate, Size: units.parse_size}


def _dec_hook(kind: type, obj: Any) -> Any:
    parse = _PARSERS.get(kind)
    if parse is None:
        raise NotImplementedError(f"no decoder for {kind!r}")
    # A ValueError from the parser becomes a msgspec.ValidationError carrying the path.
    return kind(parse(obj))


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, int):  # the unit markers are int subclasses
        return int(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_decoders: dict[type, msgspec.json.Decoder] = {}
_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)

# msgspec: "<message> - at `$.links[0].vni`" (no suffix when the problem is at the root).
_AT = re.compile(r"^(?P<message>.*) - at `\$(?P<path>.*)`$", re.DOTALL)
_FIELD_MSG = re.compile(r"^Object (?P<what>contains unknown|missing required) field `(?P<name>.*)`$",
                        re.DOTALL)


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
    """Decode JSON into kind, parse units, validate; raise InvalidMessage on any problem."""
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
    return validate(message)


def encode(obj: Any) -> bytes:
    """JSON bytes of a Struct (or anything msgspec encodes); unit fields as plain integers."""
    return _encoder.encode(obj)
