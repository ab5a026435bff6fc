"""`moa set LINK-OR-TAG [--id MATERIALIZATION] key value ...`: change some links' emulation
(like MergeTB's `moacmd set`), e.g. `moa set a-b latency 50ms capacity 100mbps loss 0.01`.

Keys: latency, jitter (durations), capacity (rate), queue (size, or "none"), loss (0..1),
loss_correlation (0..1, below 1), reorder (true/false), state (up/down), distribution (uniform,
normal, pareto, paretonormal), delay_correlation (0..1, below 1), aqm (taildrop, codel, pie) with
target, interval (durations) and ecn (true/false): these four make the link's whole `aqm` (the
ones left out take their defaults), e.g. `moa set a-b aqm codel target 5ms ecn true`; overhead,
cell_size, cell_overhead (bytes; what each frame is charged, e.g. ATM's `cell_size 48
cell_overhead 5`), corrupt (0..1: the share of packets with one bit of their payload
flipped), duplicate and duplicate_correlation (0..1, the correlation below 1: the share of
packets sent twice; netem's `reorder` has its netem words only), trace (a Mahimahi trace file,
mm-link's format, or "none": the link's capacity follows its delivery opportunities,
docs/semantics.md "Trace-driven capacity"; capacity becomes 0 unless given). Without --id the
materialization is the one holding a link of that name, or, for a tag, the only
materialization on the box. A name that is a link id is a link, else a tag.

--endpoint VNI (a link only): the values are that direction's own, for the frames delivered
towards that endpoint (docs/semantics.md, "Each direction"), e.g. the uplink of an access link:
`moa set access --endpoint 101 capacity 2mbps`; the value `inherit` makes a key of that
direction follow the link's value again (`moa set access --endpoint 101 capacity inherit`).

`moa set LINK-OR-TAG netem WORDS`: netem's own words instead of the pairs, e.g. `moa set a-b
netem delay 100ms 20ms distribution normal loss 1% 25% rate 10mbit` (`distribution NAME` of
another table reads NAME.dist where tc does, or a path, here, and sends its values)
(moa_bus/cli/netem_syntax.py; docs/contract.md, "netem's words"); a word moa does not implement is
refused naming it, exit 2, and nothing is sent. --dry-run prints the Update it would send and sends
nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import schemas
from datapath.traces import read_mahimahi
from moa_bus import engine
from moa_bus.cli import client, netem_syntax

KEYS = ("latency", "jitter", "capacity", "queue", "loss", "loss_correlation", "reorder", "state",
        "distribution", "delay_correlation", "aqm", "target", "interval", "ecn", "overhead",
        "cell_size", "cell_overhead", "corrupt", "duplicate", "duplicate_correlation", "trace")
INT_KEYS = ("overhead", "cell_size", "cell_overhead")  # bytes, overheads may be negative
AQM_KEYS = {"aqm": "kind", "target": "target", "interval": "interval", "ecn": "ecn"}


INHERIT = "inherit"  # the value that gives a direction's key back to the link's


class UsageError(ValueError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="LINK-OR-TAG")
    parser.add_argument("params", nargs="+", metavar="KEY VALUE",
                        help=f"pairs; keys: {', '.join(KEYS)}; with --endpoint, the value "
                             f"{INHERIT!r}: that key follows the link's again; or `netem` and "
                             "netem's words (delay 100ms 20ms loss 1%% ...)")
    parser.add_argument("--id", dest="materialization", metavar="MATERIALIZATION")
    parser.add_argument("--endpoint", type=int, metavar="VNI",
                        help="change the direction towards this endpoint of the link only")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the Update it would send (after reading status), send nothing")
    client.add_arguments(parser, timeout=60.0)


def split_inherit(words: list[str]) -> tuple[list[str], list[str]]:
    """(the pairs whose value is not `inherit`, the keys whose value is)."""
    if len(words) % 2:
        raise UsageError(f"parameters come in KEY VALUE pairs; {words[-1]!r} has no value")
    pairs, inherit = [], []
    for key, value in zip(words[::2], words[1::2]):
        if value == INHERIT:
            if key not in KEYS:
                raise UsageError(f"unknown parameter {key!r} (one of {', '.join(KEYS)})")
            inherit.append(key)
        else:
            pairs += [key, value]
    return pairs, inherit


def parse_words(params: list[str]) -> tuple[dict[str, object], list[str]]:
    """(the emulation patch, the keys to inherit) from the words after LINK-OR-TAG: KEY VALUE
    pairs, or `netem` and netem's words (NetemError naming a word moa does not take)."""
    if params and params[0] == "netem":
        return netem_syntax.parse(params[1:], read_table=table_text), []
    pairs, inherit = split_inherit(params)
    return parse_params(pairs), inherit


def table_dirs() -> list[Path]:
    """Where tc looks for NAME.dist: $TC_LIB_DIR, else its library directory (/usr/lib/tc, or
    Debian's multiarch /usr/lib/<triplet>/tc)."""
    if os.environ.get("TC_LIB_DIR"):
        return [Path(os.environ["TC_LIB_DIR"])]
    return [Path("/usr/lib/tc"), Path("/usr/lib64/tc"), *sorted(Path("/usr/lib").glob("*/tc"))]


def table_text(name: str) -> str:
    """The text of netem's `distribution NAME` table: a path (with a / or ending in .dist) as
    given, else NAME.dist where tc looks (FileNotFoundError saying where)."""
    if "/" in name or name.endswith(".dist"):
        return Path(name).read_text()
    for d in table_dirs():
        if (d / f"{name}.dist").is_file():
            return (d / f"{name}.dist").read_text()
    raise FileNotFoundError(f"no {name}.dist in {', '.join(map(str, table_dirs()))} "
                            "(give a path to the table)")


def trace_file(path: str) -> dict[str, list[int]]:
    """A Mahimahi trace file as Emulation.trace (UsageError naming the file and the line)."""
    try:
        text = Path(path).read_text()
        return {"opportunities_ms": list(read_mahimahi(text).opportunities_ms)}
    except (OSError, ValueError) as e:
        raise UsageError(f"trace {path}: {e}") from None


def parse_params(words: list[str]) -> dict[str, object]:
    """["latency", "50ms", "loss", "0.01"] -> {"latency": "50ms", "loss": 0.01} (units stay text:
    the service parses them with the same rules as any message)."""
    if len(words) % 2:
        raise UsageError(f"parameters come in KEY VALUE pairs; {words[-1]!r} has no value")
    out: dict[str, object] = {}
    for key, value in zip(words[::2], words[1::2]):
        if key not in KEYS:
            raise UsageError(f"unknown parameter {key!r} (one of {', '.join(KEYS)})")
        if key in ("loss", "loss_correlation", "delay_correlation", "corrupt", "duplicate",
                   "duplicate_correlation"):
            try:
                out[key] = float(value)
            except ValueError:
                raise UsageError(f"{key} {value!r} is not a number in [0, 1]") from None
        elif key == "state":
            if value.lower() not in ("up", "down"):
                raise UsageError(f"state {value!r}: give up or down")
            out[key] = value.lower()
        elif key in ("reorder", "ecn"):
            if value.lower() not in ("true", "false", "on", "off", "1", "0"):
                raise UsageError(f"{key} {value!r}: give true or false")
            out[key] = value.lower() in ("true", "on", "1")
        elif key in INT_KEYS:
            try:
                out[key] = int(value, 10)
            except ValueError:
                raise UsageError(f"{key} {value!r} is not a whole number of bytes") from None
        elif key == "queue" and value.lower() == "none":
            out[key] = None
        elif key == "trace":
            out[key] = None if value.lower() == "none" else trace_file(value)
        else:
            out[key] = int(value) if value.isdigit() else value
    if out.get("trace") is not None:
        out.setdefault("capacity", 0)        # the trace is the capacity (they exclude each other)
    aqm = {AQM_KEYS[k]: out.pop(k) for k in list(out) if k in AQM_KEYS}
    if aqm:
        out["aqm"] = aqm
    return out


def pick_target(status: dict, target: str, materialization: str | None) -> tuple[str, dict]:
    """(materialization id, {"link": target} or {"tag": target}) from a status reply."""
    mats = status.get("materializations", [])
    if materialization is not None:
        chosen = [m for m in mats if m["id"] == materialization]
        if not chosen:
            raise UsageError(f"no materialization {materialization!r} on this box")
        m = chosen[0]
        is_link = any(link["id"] == target for link in m["links"])
        return m["id"], ({"link": target} if is_link else {"tag": target})
    holders = [m["id"] for m in mats if any(link["id"] == target for link in m["links"])]
    if len(holders) == 1:
        return holders[0], {"link": target}
    if len(holders) > 1:
        raise UsageError(f"link {target!r} is in {', '.join(holders)}: say which with --id")
    if len(mats) == 1:
        return mats[0]["id"], {"tag": target}
    raise UsageError(f"{target!r} is no link id here; as a tag it needs --id "
                     f"({len(mats)} materializations on this box)")


def link_update(which: dict, emulation: dict[str, object], endpoint: int | None,
                inherit: list[str]) -> dict:
    """One entry of an Update's `links` (docs/contract.md, "Each direction" for endpoint and
    inherit)."""
    if inherit and endpoint is None:
        raise UsageError(f"{INHERIT!r} needs --endpoint (a direction's own value goes back to "
                         "following the link's)")
    for key in inherit:
        if key not in KEYS + ("burst",):
            raise UsageError(f"unknown parameter {key!r} to inherit (one of {', '.join(KEYS)})")
    if not emulation and not inherit:
        raise UsageError("give at least one KEY VALUE pair")
    out: dict = {**which, "emulation": emulation}
    if endpoint is not None:
        if "link" not in which:
            raise UsageError(f"--endpoint needs a link: {which['tag']!r} is a tag here")
        out["endpoint"] = endpoint
        if inherit:
            out["inherit"] = list(inherit)
    return out


def run(args: argparse.Namespace) -> int:
    try:
        emulation, inherit = parse_words(args.params)
        link_update({"link": args.target}, emulation, args.endpoint, inherit)
    except (UsageError, netem_syntax.NetemError) as e:
        print(f"moa set: {e}", file=sys.stderr)
        return 2

    async def change(box: engine.MoaClient) -> schemas.Ack | dict:
        st = json.loads(schemas.encode(await box.status()))
        mid, which = pick_target(st, args.target, args.materialization)
        entry = link_update(which, emulation, args.endpoint, inherit)
        if args.dry_run:
            return {"id": mid, "links": [entry]}
        return await box.update({"id": mid, "links": [entry]})

    def done(result: schemas.Ack | dict) -> int:
        if isinstance(result, dict):  # --dry-run: the Update, checked as the service would
            try:
                schemas.decode(schemas.Update, json.dumps(result))
            except schemas.InvalidMessage as e:
                print(f"moa set: {e}", file=sys.stderr)
                return 2
            print(json.dumps(result))
            print("nothing sent (dry run)", file=sys.stderr)
            return 0
        return client.print_ack(result)

    try:
        return client.run_engine(args, change, done)
    except UsageError as e:
        print(f"moa set: {e}", file=sys.stderr)
        return 2
