"""Durations, rates and sizes: parsing docs/contract.md's units and formatting them for display.

Python-side units are plain integers: nanoseconds, bits per second, bytes. On the wire a value is
either such an integer or a string with a unit. Parsing is exact (decimal arithmetic, no floats):
"1.5ms" is 1_500_000 ns, and a string that does not name a whole number of the base unit
("1.5ns", "0.5B") is rejected rather than rounded, so that format_*(parse_*(s)) loses nothing.

Bounds (ValueError outside them), chosen as "absurd beyond here", not as what the datapath can do:
- durations: 0 .. 1 hour (latency must reach at least 10 s, docs/contract.md; interplanetary
  emulation wants minutes);
- rates: 0 .. 10 Tbit/s (0 means unlimited; 400 Gbit/s must fit);
- sizes: 0 .. 1 TiB.
Minimums that only make sense for one field (capacity >= 1 kbit/s, queue >= one frame) are checked
by the emulation's rules (schemas.messages.check_values), not here.

Accepted strings: a decimal number ("10", "1.5", ".5"), optionally one space, then a unit:
- durations: ns, us (or µs), ms, s
- rates: bps, kbps, mbps, gbps (decimal, bits); the prefix may be capitalised (Mbps, Gbps), the
  "bps" may not: "MBps" would read as bytes per second, which moa does not take.
- sizes: B, KB/kB, MB, GB (powers of 1000), KiB, MiB, GiB (powers of 1024).
"""
from __future__ import annotations

import math
import re
from decimal import Context, Decimal, InvalidOperation

NS_PER_S = 1_000_000_000
MAX_DURATION_NS = 3600 * NS_PER_S
MAX_RATE_BPS = 10 * 10**12
MAX_SIZE_BYTES = 1 << 40

DURATION_UNITS: dict[str, int] = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": NS_PER_S}
RATE_UNITS: dict[str, int] = {"bps": 1, "kbps": 10**3, "mbps": 10**6, "gbps": 10**9}
SIZE_UNITS: dict[str, int] = {
    "B": 1, "KB": 10**3, "kB": 10**3, "MB": 10**6, "GB": 10**9,
    "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
}

# Exact for every value within the bounds (the default context keeps 28 digits and would round).
_EXACT = Context(prec=80)
# Long enough for any sane value; stops "1" followed by a million zeros before Decimal sees it.
_MAX_TEXT = 40
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+) ?([^0-9\s.][^\s]*)")


def _parse(value: object, what: str, base: str, units: dict[str, int], maximum: int,
           fold_unit=None) -> int:
    """Shared parser: int in the base unit, or "<number><unit>"; exact, bounded, non-negative."""
    if isinstance(value, bool):  # bool is an int subclass; True is not "1 ns"
        raise ValueError(
            f"{what} must be an integer ({base}) or a string with a unit, not a boolean")
    if isinstance(value, int):
        n = value
        shown = f"{value}"
    elif isinstance(value, str):
        if len(value) > _MAX_TEXT:
            raise ValueError(f"{what} {value[:_MAX_TEXT]!r}... is too long")
        if value.startswith("-"):
            raise ValueError(f"{what} {value!r} is negative")
        m = _QUANTITY.fullmatch(value)
        if m is None:
            raise ValueError(
                f"{what} {value!r} is not a number with a unit (units: {', '.join(units)})")
        number, unit = m.groups()
        key = fold_unit(unit) if fold_unit else unit
        if key not in units:
            raise ValueError(
                f"{what} {value!r} has unknown unit {unit!r} (units: {', '.join(units)})")
        try:
            exact = _EXACT.multiply(Decimal(number), units[key])
        except InvalidOperation:  # pragma: no cover - the regex admits only plain decimals
            raise ValueError(f"{what} {value!r} is not a number") from None
        if exact != exact.to_integral_value():
            raise ValueError(f"{what} {value!r} is not a whole number of {base}")
        n = int(exact)
        shown = repr(value)
    elif isinstance(value, float):
        # Floats are refused even when integral: 1e7 ns written as a float has usually lost
        # precision somewhere, and a string with a unit says what was meant.
        if math.isnan(value):
            raise ValueError(f"{what} is NaN")
        raise ValueError(f"{what} {value!r} must be an integer ({base}) or a string with a unit")
    else:
        raise ValueError(
            f"{what} must be an integer ({base}) or a string with a unit, "
            f"not {type(value).__name__}")
    if n < 0:
        raise ValueError(f"{what} {shown} is negative")
    if n > maximum:
        raise ValueError(f"{what} {shown} is above the maximum {_format(maximum, units, base)}")
    return n


def _fold_rate_unit(unit: str) -> str:
    # "Mbps" and "mbps" are the same; "MBps" (bytes) is not accepted.
    return unit[:-3].lower() + unit[-3:] if unit.endswith("bps") else unit


def parse_duration(value: object) -> int:
    """Nanoseconds from an int (ns) or a string like "10ms", "1.5ms", "250us", "2s", "100ns"."""
    return _parse(value, "duration", "ns", DURATION_UNITS, MAX_DURATION_NS)


def parse_rate(value: object) -> int:
    """Bits per second from an int (bit/s) or a string like "100mbps", "1.5gbps", "64kbps"."""
    return _parse(value, "rate", "bit/s", RATE_UNITS, MAX_RATE_BPS, _fold_rate_unit)


def parse_size(value: object) -> int:
    """Bytes from an int or a string like "256KiB", "1MiB", "64KB", "1MB", "1500B"."""
    return _parse(value, "size", "bytes", SIZE_UNITS, MAX_SIZE_BYTES)


def _format(n: int, units: dict[str, int], base: str) -> str:
    """The largest unit in which n is >= 1, with as many decimals as it takes to be exact."""
    if n == 0:
        return "0" + next(iter(units))
    best = min(units.items(), key=lambda kv: kv[1])
    for name, factor in units.items():
        if factor <= n and factor > best[1]:
            best = (name, factor)
    name, factor = best
    text = format(_EXACT.divide(Decimal(n), factor), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}{name}"


def format_duration(ns: int) -> str:
    """10_000_000 -> "10ms"; exact, so parse_duration(format_duration(n)) == n."""
    return _format(ns, {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": NS_PER_S}, "ns")


def format_rate(bps: int) -> str:
    """100_000_000 -> "100mbps"; 0 -> "unlimited"."""
    if bps == 0:
        return "unlimited"
    return _format(bps, RATE_UNITS, "bit/s")


def format_size(nbytes: int) -> str:
    """262_144 -> "256KiB", 64_000 -> "64KB", 1536 -> "1.5KiB", 1500 -> "1.5KB". Always exact
    (parse_size gives nbytes back): a whole number of binary, else decimal units; else the
    first of them needing at most three decimals; else plain bytes."""
    if nbytes == 0:
        return "0B"
    binary = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    decimal = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}
    texts = [_format(nbytes, table, "bytes") for table in (binary, decimal)]
    for max_decimals in (0, 3):
        for text in texts:
            number = text.rstrip("BKMGi")
            if "." not in number or len(number.split(".")[1]) <= max_decimals:
                return text
    return f"{nbytes}B"
