"""netem's own words for a link's emulation: `moa set LINK netem delay 100ms 20ms distribution
normal loss 1% 25% rate 10mbit` and `moa show --netem` (docs/contract.md, "netem's words").

parse(words) turns the words after `netem` into an EmulationPatch-shaped JSON dict; render(e)
gives the words of an Emulation. Pure: no I/O, no service. parse refuses (NetemError, naming the
word) every netem word moa does not implement, and checks the patch by the emulation's rules
(schemas.messages.check_emulation) so that nothing invalid is sent.

The words, as iproute2's tc reads them (tc/q_netem.c):
- `delay TIME [JITTER [CORRELATION]]` (`latency` is tc's other name for it): latency, jitter and
  delay_correlation; it sets all three (the ones left out are 0) and the distribution, which is
  `uniform` unless `distribution NAME` is among the words. A time needs a unit (s, ms, us, ns,
  also sec/msec/usec/nsec and their plurals): tc reads a bare number as ns, which is never
  what was meant.
- `distribution {uniform|normal|pareto|paretonormal|NAME|FILE}`: only with `delay`. Any other
  name is a table (iproute2's .dist format), read by `moa set` where tc reads it ($TC_LIB_DIR,
  /usr/lib/tc, /usr/lib/*/tc: NAME.dist; or a path) and sent as distribution `custom` with its
  values. `distribution custom` keeps the link's table (what `moa show --netem` writes for it).
- `loss [random] PERCENT [CORRELATION]` (tc's other name: `drop`): loss and loss_correlation,
  and no burst model. `loss gemodel p [r [1-h [1-k]]]`: the Gilbert-Elliott model, `burst`
  {p, r, loss_bad: 1-h, loss_good: 1-k}; tc's defaults for the ones left out: r = 1 - p,
  1-h = 100 %, 1-k = 0 %. A percentage may leave out its `%` (tc's rule).
- `corrupt PERCENT [CORRELATION]`: corrupt (one bit flipped in the inner payload of that share
  of the packets, docs/semantics.md "Corruption"); a correlation other than 0 is refused.
- `reorder PERCENT [CORRELATION]` and `gap G`: reorder_early {probability, correlation, gap}
  (a share of the packets skips the delay, docs/semantics.md "Reordering (netem's reorder)");
  the gap is 1 when left out, and `gap` without `reorder` is refused, as tc does. moa's
  correlation keeps the share (netem's moves it).
- `duplicate PERCENT [CORRELATION]`: duplicate and duplicate_correlation (docs/semantics.md
  "Duplication"), the correlation kept as the share's lag-1 autocorrelation.
- `rate RATE [PACKETOVERHEAD [CELLSIZE [CELLOVERHEAD]]]`: capacity, in tc's bit units (bit,
  kbit, mbit, gbit, tbit, kibit, mibit, gibit, tibit), and what each frame is charged: overhead,
  cell_size, cell_overhead (bytes; the overheads may be negative). tc's byte units (bps, kbps,
  MBps ...) are refused: moa's own `capacity 100mbps` means bits, tc's `rate 100mbps` bytes,
  and a guess would be wrong by 8. The overhead left out is moa's 24 (a frame's L1 overhead),
  not netem's 0: `rate 10mbit 0` charges the frame alone, as netem's `rate 10mbit` does.
- `slot MIN [MAX] [packets N] [bytes B]` or `slot distribution NAME DELAY JITTER [packets N]
  [bytes B]`: slot (docs/semantics.md, "Slots"), MAX left out is MIN, N and B whole numbers
  (left out: no limit), NAME one of the built-in tables (normal, pareto, paretonormal; a table
  file is refused). packets before bytes, as tc reads them.
- `moa KEY VALUE ...`, last: moa's own keys that netem has no word for (queue, aqm, target,
  interval, ecn, reorder, state), with the values `moa set` takes.

Why this is one module, past 450 lines: parse and render are each other's inverse (tested as
such) and are kept side by side, so that a word changed in one is seen changing in the other.

Each group of words replaces the fields it names and nothing else: `delay 10ms` leaves the loss
as it was, as a patch does. render writes the groups whose fields are not at their defaults, so
for every valid Emulation e, parse(render(e)) applied to the default Emulation gives e back.
"""
from __future__ import annotations

import json
import re
from decimal import Context, Decimal, InvalidOperation

from collections.abc import Callable

from datapath.distributions import custom_table, read_dist_file
from schemas import units
from schemas.messages import (
    CHOICES, DEFAULT_OVERHEAD, DIST_TABLE_MAX, Aqm, Emulation, EmulationPatch, InvalidMessage,
    check_emulation,
)

# netem words moa does not implement, and what to say about each.
UNSUPPORTED: dict[str, str] = {
    "ecn": "netem's ecn marks instead of its loss model's drops; moa marks in its AQM "
           "(`moa aqm codel ecn true`)",
    "limit": "netem's limit counts every packet in the qdisc, the delayed ones too; moa's "
             "queue is bytes in front of the rate (`moa queue 64KiB`)",
    "seed": "moa's random numbers have no seed",
}
ALIASES = {"latency": "delay", "drop": "loss"}
GROUPS = ("delay", "distribution", "loss", "reorder", "gap", "duplicate", "corrupt", "rate",
          "slot", "moa")
MOA_KEYS = ("queue", "aqm", "target", "interval", "ecn", "reorder", "state")
# moa's keys that a netem word says; in the `moa` tail they are refused, naming that word.
NETEM_SAYS = {"latency": "delay", "jitter": "delay", "delay_correlation": "delay",
              "distribution": "distribution", "distribution_table": "distribution",
              "loss": "loss", "loss_correlation": "loss", "capacity": "rate", "burst": "loss",
              "overhead": "rate", "cell_size": "rate", "cell_overhead": "rate",
              "corrupt": "corrupt", "reorder_early": "reorder", "duplicate": "duplicate",
              "duplicate_correlation": "duplicate", "slot": "slot"}

_NUMBER = r"([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)"
_TIME = re.compile(_NUMBER + r"([A-Za-z]*)")
_PERCENT = re.compile(_NUMBER + r"(%?)")
_RATE = re.compile(_NUMBER + r"([A-Za-z]*)")
_TIME_UNITS = {"s": 10**9, "sec": 10**9, "secs": 10**9, "ms": 10**6, "msec": 10**6,
               "msecs": 10**6, "us": 10**3, "usec": 10**3, "usecs": 10**3, "ns": 1, "nsec": 1,
               "nsecs": 1}
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
               "kibit": 1 << 10, "mibit": 1 << 20, "gibit": 1 << 30, "tibit": 1 << 40}
_BYTE_RATE_UNITS = {"bps", "kibps", "kbps", "mibps", "mbps", "gibps", "gbps", "tibps", "tbps"}
_TRUE, _FALSE = ("true", "on", "1"), ("false", "off", "0")
_EXACT = Context(prec=80, Emin=-999_999, Emax=999_999)


class NetemError(ValueError):
    """Words moa cannot take; `word` is the one at fault."""

    def __init__(self, word: str, message: str) -> None:
        super().__init__(message)
        self.word = word


def _is_number(word: str | None) -> bool:
    """tc's NEXT_IS_NUMBER: the next word starts with a digit."""
    return word is not None and word[:1].isdigit()


def _decimal(text: str, word: str, what: str, scale: int) -> Decimal:
    """text x scale, exactly (a float's shortest form has at most 17 digits and an exponent
    above -330: what render writes for the tiniest probability)."""
    if len(text) > 40:
        raise NetemError(word, f"netem {word}: {what} {text[:40]!r}... is too long")
    try:
        d = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the patterns admit only plain decimals
        raise NetemError(word, f"netem {word}: {what} {text!r} is not a number") from None
    if abs(d.adjusted()) > 400:
        raise NetemError(word, f"netem {word}: {what} {text!r} is out of range")
    return _EXACT.multiply(d, scale)


def _time(word: str, text: str, what: str) -> int:
    m = _TIME.fullmatch(text)
    if m is None:
        raise NetemError(word, f"netem {word}: {what} {text!r} is not a time (e.g. 100ms)")
    number, unit = m.groups()
    if not unit:
        raise NetemError(word, f"netem {word}: {what} {text!r} has no unit (tc would read "
                               f"ns; write {text}ms or {text}ns)")
    if unit.lower() not in _TIME_UNITS:
        raise NetemError(word, f"netem {word}: {what} {text!r} has unknown unit {unit!r} "
                               "(s, ms, us, ns)")
    exact = _decimal(number, word, what, _TIME_UNITS[unit.lower()])
    if exact != exact.to_integral_value():
        raise NetemError(word, f"netem {word}: {what} {text!r} is not a whole number of ns")
    try:
        return units.parse_duration(int(exact))
    except ValueError as e:
        raise NetemError(word, f"netem {word}: {what} {text!r}: {e}") from None


def _percent(word: str, text: str, what: str) -> float:
    m = _PERCENT.fullmatch(text)
    if m is None:
        raise NetemError(word, f"netem {word}: {what} {text!r} is not a percentage (e.g. 1%)")
    value = _decimal(m.group(1), word, what, 1).scaleb(-2, _EXACT)
    if value > 1:
        raise NetemError(word, f"netem {word}: {what} {text!r} is above 100%")
    return float(value)


def _rate(word: str, text: str) -> int:
    if "%" in text:
        raise NetemError(word, f"netem {word}: {text!r}, a share of a device's speed, is not "
                               "supported by moa: a link has no device; give bit/s (10mbit)")
    m = _RATE.fullmatch(text)
    if m is None:
        raise NetemError(word, f"netem {word}: {text!r} is not a rate (e.g. 10mbit)")
    number, unit = m.groups()
    if unit.lower() in _BYTE_RATE_UNITS:
        raise NetemError(word, f"netem {word}: {text!r} is in tc's bytes per second, which "
                               "moa does not take (moa's own `capacity 100mbps` is bits): "
                               "write the rate in bit units (kbit, mbit, gbit)")
    if not unit:
        raise NetemError(word, f"netem {word}: {text!r} has no unit; write e.g. {text}mbit")
    if unit.lower() not in _RATE_UNITS:
        raise NetemError(word, f"netem {word}: {text!r} has unknown unit {unit!r} "
                               f"({', '.join(_RATE_UNITS)})")
    exact = _decimal(number, word, "rate", _RATE_UNITS[unit.lower()])
    if exact != exact.to_integral_value():
        raise NetemError(word, f"netem {word}: {text!r} is not a whole number of bit/s")
    try:
        return units.parse_rate(int(exact))
    except ValueError as e:
        raise NetemError(word, f"netem {word}: {text!r}: {e}") from None


def _refuse_unsupported(word: str) -> None:
    if word in UNSUPPORTED:
        raise NetemError(word, f"netem word {word!r} is not supported by moa "
                               f"({UNSUPPORTED[word]})")


class _Words:
    def __init__(self, words: list[str]) -> None:
        self.words = list(words)
        self.i = 0

    def peek(self) -> str | None:
        return self.words[self.i] if self.i < len(self.words) else None

    def take(self, word: str, what: str) -> str:
        value = self.peek()
        if value is None:
            raise NetemError(word, f"netem {word}: {what} is missing")
        self.i += 1
        return value

    def take_number(self) -> str | None:
        """The next word if it is a number (tc's optional positional values), else None."""
        if _is_number(self.peek()):
            self.i += 1
            return self.words[self.i - 1]
        return None


def _delay(w: _Words) -> dict[str, object]:
    latency = _time("delay", w.take("delay", "TIME"), "time")
    out: dict[str, object] = {"latency": latency, "jitter": 0, "delay_correlation": 0.0,
                              "distribution": "uniform", "distribution_table": None}
    if (jitter := w.take_number()) is not None:
        out["jitter"] = _time("delay", jitter, "jitter")
        if (corr := w.take_number()) is not None:
            out["delay_correlation"] = _percent("delay", corr, "correlation")
    return out


def _loss(w: _Words, word: str) -> dict[str, object]:
    first = w.take(word, "PERCENT, `random PERCENT` or `gemodel p`")
    if first == "random":
        first = w.take(word, "PERCENT after random")
    if _is_number(first):
        out: dict[str, object] = {"loss": _percent("loss", first, "percentage"),
                                  "loss_correlation": 0.0, "burst": None}
        if (corr := w.take_number()) is not None:
            out["loss_correlation"] = _percent("loss", corr, "correlation")
        return out
    if first == "gemodel":
        p = _percent("loss", w.take("loss", "gemodel's p"), "gemodel p")
        burst = {"p": p, "r": float(1 - Decimal(repr(p))), "loss_bad": 1.0, "loss_good": 0.0}
        for name, what in (("r", "gemodel r"), ("loss_bad", "gemodel 1-h"),
                           ("loss_good", "gemodel 1-k")):
            value = w.take_number()
            if value is None:
                break
            burst[name] = _percent("loss", value, what)
        return {"loss": 0.0, "loss_correlation": 0.0, "burst": burst}
    if first == "state":
        raise NetemError("state", "netem word 'loss state' (the 4-state Markov model) is not "
                                  "supported by moa: use `loss gemodel p r 1-h 1-k`")
    raise NetemError(first, f"netem loss: {first!r} is not a loss model moa takes "
                            "(PERCENT, random PERCENT, gemodel p r 1-h 1-k)")


_INT = re.compile(r"[+-]?[0-9]{1,6}")


def _bytes(word: str, text: str, what: str, signed: bool) -> int:
    """tc's get_s32/get_u32 for the rate's byte counts, in decimal (bounds: the emulation's)."""
    if _INT.fullmatch(text) is None or (not signed and text[:1] in "+-"):
        kind = "a whole number of bytes" + ("" if signed else ", not negative")
        raise NetemError(word, f"netem rate: {what} {text!r} is not {kind}")
    return int(text, 10)


def _corrupt(w: _Words) -> dict[str, object]:
    """`corrupt PERCENT [CORRELATION]`: corrupt. A correlation other than 0 is refused: moa's
    corruption is independent per packet (netem's correlation mixes successive draws)."""
    out: dict[str, object] = {"corrupt": _percent("corrupt", w.take("corrupt", "PERCENT"),
                                                  "percentage")}
    if (corr := w.take_number()) is not None and _percent("corrupt", corr, "correlation"):
        raise NetemError("corrupt", f"netem corrupt: correlation {corr!r} is not supported by "
                                    "moa (each packet is corrupted independently); give 0% or "
                                    "leave it out")
    return out


def _percent_pair(w: _Words, word: str) -> tuple[float, float]:
    """`WORD PERCENT [CORRELATION]` (reorder, duplicate): the share and its correlation."""
    p = _percent(word, w.take(word, "PERCENT"), "percentage")
    corr = w.take_number()
    return p, (_percent(word, corr, "correlation") if corr is not None else 0.0)


def _gap(w: _Words) -> int:
    """`gap G` (tc's get_u32): packets, at least 1 (tc turns 0 into 1; moa refuses it)."""
    text = w.take("gap", "G")
    if not text.isdigit() or len(text) > 10:
        raise NetemError("gap", f"netem gap: {text!r} is not a whole number of packets")
    return int(text, 10)
_SLOT_TABLES = ("normal", "pareto", "paretonormal")


def _slot(w: _Words) -> dict[str, object]:
    """`slot MIN [MAX]` or `slot distribution NAME DELAY JITTER`, then `packets N`, `bytes B`
    (tc's order): the whole `slot`."""
    first = w.take("slot", "MIN or `distribution NAME DELAY JITTER`")
    slot: dict[str, object]
    if _is_number(first):
        slot = {"min": _time("slot", first, "min")}
        if (hi := w.take_number()) is not None:
            slot["max"] = _time("slot", hi, "max")
    elif first == "distribution":
        name = w.take("slot", "the distribution's name")
        if name not in _SLOT_TABLES:
            raise NetemError("slot", f"netem slot distribution {name!r}: moa's slots take "
                                     f"{', '.join(_SLOT_TABLES)} (no table file)")
        slot = {"distribution": name,
                "delay": _time("slot", w.take("slot", "DELAY"), "delay"),
                "jitter": _time("slot", w.take("slot", "JITTER"), "jitter")}
    else:
        raise NetemError("slot", f"netem slot: {first!r} is neither a time (slot MIN [MAX]) nor "
                                 "`distribution`")
    for key in ("packets", "bytes"):
        if w.peek() == key:
            w.i += 1
            value = w.take("slot", f"{key}'s number")
            if not value.isdigit() or len(value) > 10:
                raise NetemError("slot", f"netem slot {key}: {value!r} is not a whole number")
            slot[key] = int(value)
    return {"slot": slot}


def _rate_group(w: _Words) -> dict[str, object]:
    """`rate RATE [PACKETOVERHEAD [CELLSIZE [CELLOVERHEAD]]]` (tc reads the overheads as signed
    numbers, the cell size as unsigned): capacity, overhead, cell_size, cell_overhead. The ones
    left out take moa's defaults: overhead 24 (netem's is 0: moa charges every frame its L1
    overhead, docs/semantics.md), no cells."""
    capacity = _rate("rate", w.take("rate", "RATE"))
    out: dict[str, object] = {"capacity": capacity, "overhead": DEFAULT_OVERHEAD,
                              "cell_size": 0, "cell_overhead": 0}
    for name, what, signed in (("overhead", "packetoverhead", True),
                               ("cell_size", "cellsize", False),
                               ("cell_overhead", "celloverhead", True)):
        nxt = w.peek()
        if nxt is None or not (nxt[:1].isdigit() or (signed and nxt[:1] in "+-")):
            break
        w.i += 1
        out[name] = _bytes(what, nxt, what, signed)
    return out


def _moa_tail(w: _Words) -> dict[str, object]:
    out: dict[str, object] = {}
    aqm: dict[str, object] = {}
    given: set[str] = set()
    while (key := w.peek()) is not None:
        w.i += 1
        if key in NETEM_SAYS:
            raise NetemError(key, f"moa {key}: with netem's words, say it with "
                                  f"netem's {NETEM_SAYS[key]!r}")
        if key not in MOA_KEYS:
            raise NetemError(key, f"moa {key!r}: not one of moa's keys after `moa` "
                                  f"({', '.join(MOA_KEYS)})")
        if key in given:
            raise NetemError(key, f"moa {key}: given twice")
        given.add(key)
        value = w.take(key, "its value")
        if value == "inherit":
            raise NetemError(key, f"moa {key} inherit: use `moa set LINK --endpoint VNI {key} "
                                  "inherit`, without netem")
        if key == "queue":
            if value.lower() == "none":
                out[key] = None
            else:
                try:
                    out[key] = units.parse_size(value)
                except ValueError as e:
                    raise NetemError(key, f"moa queue: {e}") from None
        elif key in ("reorder", "ecn"):
            if value.lower() not in _TRUE + _FALSE:
                raise NetemError(key, f"moa {key} {value!r}: give true or false")
            (aqm if key == "ecn" else out)[key] = value.lower() in _TRUE
        elif key == "state":
            if value.lower() not in CHOICES["state"]:
                raise NetemError(key, f"moa state {value!r}: give up or down")
            out[key] = value.lower()
        elif key == "aqm":
            if value.lower() not in CHOICES["kind"]:
                raise NetemError(key, f"moa aqm {value!r}: one of {', '.join(CHOICES['kind'])}")
            aqm["kind"] = value.lower()
        else:  # target, interval
            try:
                aqm[key] = units.parse_duration(value)
            except ValueError as e:
                raise NetemError(key, f"moa {key}: {e}") from None
    if aqm:
        out["aqm"] = aqm
    return out


# Which word set a field of the patch: a refusal by the emulation's rules names it.
_WORD_OF = {"latency": "delay", "jitter": "delay", "delay_correlation": "delay",
            "distribution": "distribution", "distribution_table": "distribution",
            "loss": "loss", "loss_correlation": "loss", "burst": "loss", "capacity": "rate",
            "overhead": "rate", "cell_size": "rate", "cell_overhead": "rate",
            "corrupt": "corrupt", "reorder_early": "reorder", "duplicate": "duplicate",
            "duplicate_correlation": "duplicate", "slot": "slot", "queue": "moa queue",
            "aqm": "moa aqm",
            "reorder": "moa reorder", "state": "moa state"}


def _table(name: str, read_table: Callable[[str], str] | None) -> list[int]:
    """`distribution NAME` of a table: its values (thinned to the DIST_SIZE quantiles moa holds
    when longer, which is the table moa would hold anyway)."""
    if read_table is None:
        raise NetemError("distribution", f"netem distribution {name!r}: a table file is read "
                                         "by `moa set` (one of "
                                         f"{', '.join(CHOICES['distribution'])} here)")
    try:
        values = read_dist_file(read_table(name))
    except (OSError, ValueError) as e:
        raise NetemError("distribution", f"netem distribution {name!r}: {e}") from None
    if len(values) > DIST_TABLE_MAX:
        values = list(custom_table(tuple(values)))
    return values


def parse(words: list[str], read_table: Callable[[str], str] | None = None) -> dict[str, object]:
    """The words after `netem` -> an EmulationPatch-shaped JSON dict (durations in ns, rates in
    bit/s, sizes in bytes, probabilities in [0, 1]); NetemError naming the word otherwise.
    read_table(name): the text of the .dist table a `distribution NAME` that is not built in
    names (moa set's: tc's lookup, `table_text`); without it such a name is refused."""
    if not words:
        raise NetemError("netem", "netem: give netem's words after it (e.g. delay 100ms)")
    w = _Words(words)
    out: dict[str, object] = {}
    seen: set[str] = set()
    distribution: str | None = None
    table: list[int] | None = None
    gap: int | None = None
    while (word := w.peek()) is not None:
        w.i += 1
        group = ALIASES.get(word, word)
        _refuse_unsupported(group)
        if group not in GROUPS:
            raise NetemError(word, f"netem word {word!r} is not one moa takes (delay, "
                                   f"distribution, loss, reorder, gap, duplicate, corrupt, "
                                   f"rate, slot, then moa KEY VALUE ...)")
        if group in seen:
            raise NetemError(word, f"netem word {word!r} is given twice")
        seen.add(group)
        if group == "delay":
            out.update(_delay(w))
        elif group == "distribution":
            distribution = w.take("distribution", "its name")
            if distribution not in CHOICES["distribution"]:
                table = _table(distribution, read_table)
                distribution = "custom"
        elif group == "loss":
            out.update(_loss(w, word))
        elif group == "reorder":
            p, corr = _percent_pair(w, "reorder")
            out["reorder_early"] = {"probability": p, "correlation": corr, "gap": 1}
        elif group == "gap":
            gap = _gap(w)
        elif group == "duplicate":
            out["duplicate"], out["duplicate_correlation"] = _percent_pair(w, "duplicate")
        elif group == "corrupt":
            out.update(_corrupt(w))
        elif group == "rate":
            out.update(_rate_group(w))
        elif group == "slot":
            out.update(_slot(w))
        else:
            out.update(_moa_tail(w))
    if gap is not None:
        if "reorder" not in seen:
            raise NetemError("gap", "netem word 'gap' needs 'reorder PERCENT' among the words")
        out["reorder_early"]["gap"] = gap  # type: ignore[index]
    if distribution is not None:
        if "delay" not in seen:
            raise NetemError("distribution", "netem word 'distribution' needs 'delay TIME "
                                             "JITTER' among the words")
        out["distribution"] = distribution
        if table is not None:
            out["distribution_table"] = table
        elif distribution == "custom":  # the link's table, kept
            out.pop("distribution_table", None)
    _check(out)
    return out


def _check(patch: dict[str, object]) -> None:
    """The emulation's rules on the fields the words set (the service checks them again
    against the link's other fields)."""
    from schemas.codec import decode
    try:
        check_emulation(decode(EmulationPatch, json.dumps(patch)), "")
    except InvalidMessage as e:
        root = e.field.split(".", 1)[0].split("[", 1)[0]
        word = "gap" if e.field == "reorder_early.gap" else _WORD_OF.get(root, root)
        raise NetemError(word, f"netem {word}: {e.message}") from None


# ----------------------------------------------------------------------------- render

def _pct(p: float) -> str:
    """A probability as tc's percentage, exact: parse gives the same float back."""
    if p == 0:
        return "0%"
    d = Decimal(repr(p)).scaleb(2)
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if len(text) > 24:  # a tiny probability: the exponent form, which tc's strtod reads too
        text = str(d.normalize()).lower()
    return f"{text}%"


def _rate_words(bps: int) -> str:
    if not bps:  # unlimited, with a charge of its own to write after it
        return "0bit"
    return units.format_rate(bps)[:-3] + "bit"  # "100mbps" -> "100mbit": tc's bits


def render(e: Emulation) -> str:
    """The netem words of an emulation; the fields netem has no word for follow `moa`. Every
    field at its default leaves its group out (an all-default emulation is "")."""
    words: list[str] = []
    if e.latency or e.jitter or e.delay_correlation or e.distribution != "uniform":
        words += ["delay", units.format_duration(e.latency)]
        if e.jitter or e.delay_correlation:
            words.append(units.format_duration(e.jitter))
        if e.delay_correlation:
            words.append(_pct(e.delay_correlation))
        if e.distribution != "uniform":  # a custom table: `custom`, the link's table kept
            words += ["distribution", e.distribution]
    if e.burst is not None:
        b = e.burst
        words += ["loss", "gemodel", _pct(b.p), _pct(b.r)]
        if b.loss_bad != 1.0 or b.loss_good != 0.0:
            words.append(_pct(b.loss_bad))
        if b.loss_good != 0.0:
            words.append(_pct(b.loss_good))
    elif e.loss or e.loss_correlation:
        words += ["loss", _pct(e.loss)]
        if e.loss_correlation:
            words.append(_pct(e.loss_correlation))
    if e.reorder_early is not None:
        r = e.reorder_early
        words += ["reorder", _pct(r.probability)]
        if r.correlation:
            words.append(_pct(r.correlation))
        if r.gap != 1:
            words += ["gap", str(r.gap)]
    if e.duplicate or e.duplicate_correlation:
        words += ["duplicate", _pct(e.duplicate)]
        if e.duplicate_correlation:
            words.append(_pct(e.duplicate_correlation))
    if e.corrupt:
        words += ["corrupt", _pct(e.corrupt)]
    cells = e.cell_size or e.cell_overhead
    if e.capacity or e.overhead != DEFAULT_OVERHEAD or cells:
        words += ["rate", _rate_words(e.capacity)]
        if e.overhead != DEFAULT_OVERHEAD or cells:
            words.append(str(e.overhead))
        if cells:
            words.append(str(e.cell_size))
        if e.cell_overhead:
            words.append(str(e.cell_overhead))
    if e.slot is not None:
        sl = e.slot
        if sl.distribution == "uniform":
            words += ["slot", units.format_duration(sl.min or 0)]
            if sl.max is not None:
                words.append(units.format_duration(sl.max))
        else:
            words += ["slot", "distribution", sl.distribution, units.format_duration(sl.delay or 0),
                      units.format_duration(sl.jitter)]
        if sl.packets:
            words += ["packets", str(sl.packets)]
        if sl.bytes:
            words += ["bytes", str(sl.bytes)]
    tail: list[str] = []
    if e.queue is not None:
        tail += ["queue", units.format_size(e.queue)]
    if e.aqm != Aqm():
        tail += ["aqm", e.aqm.kind]
        if e.aqm.target is not None:
            tail += ["target", units.format_duration(e.aqm.target)]
        if e.aqm.interval is not None:
            tail += ["interval", units.format_duration(e.aqm.interval)]
        if e.aqm.ecn:
            tail += ["ecn", "true"]
    if e.reorder:
        tail += ["reorder", "true"]
    if e.state != "up":
        tail += ["state", e.state]
    if tail:
        words += ["moa", *tail]
    return " ".join(words)
