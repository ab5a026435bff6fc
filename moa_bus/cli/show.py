"""`moa show [--watch | --netem]`: the box's links in a table with live counters (from
moa.<host>.status); with --watch the table refreshes every --interval seconds and shows packet
and bit rates. --netem prints each row's emulation in netem's words instead, one line per row
(`ID LINK [--endpoint VNI] netem WORDS`, moa_bus/cli/netem_syntax.py): `moa set --id ID LINK
[--endpoint VNI] netem WORDS` sets those words on a link."""
from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

import schemas
from moa_bus import engine
from moa_bus.cli import client, netem_syntax

# (materialization, link, the row's first VNI) -> packets, bytes, drops
Totals = dict[tuple[str, str, int], tuple[int, int, int]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    how.add_argument("--netem", action="store_true",
                     help="each link's emulation in netem's words, one line per direction row")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S")
    client.add_arguments(parser)


def rows(link: schemas.LinkStatus) -> list[tuple[list[int], schemas.StatusEmulation]]:
    """The table's rows of one link: one for the VNIs that follow the link's emulation, then one
    per direction with parameters of its own (docs/semantics.md, "Each direction"), each with
    the VNIs it is the receiving end of."""
    own = {d.vni: d.emulation for d in link.directions}
    shared = [v for v in link.vnis if v not in own]
    out = [(shared, link.emulation)] if shared else []
    return out + [([v], own[v]) for v in link.vnis if v in own]


def totals(status: schemas.StatusReply) -> Totals:
    out: Totals = {}
    for m in status.materializations:
        for link in m.links:
            for vnis, _ in rows(link):
                # A frame passes exactly one egress stage (its receiving VNI's); a LAN frame also
                # passed its sender's ingress stage, so counting both would count it twice. Drops
                # happen at either stage and are each a frame lost.
                cs = [c for c in link.counters if c.vni in vnis]
                p = sum(c.packets for c in cs if c.stage == "egress")
                b = sum(c.bytes for c in cs if c.stage == "egress")
                d = sum(sum(c.drops.values()) for c in cs)
                out[(m.id, link.id, vnis[0])] = (p, b, d)
    return out


def _jitter(e: schemas.StatusEmulation) -> str:
    if not e.jitter:
        return "-"
    words = [schemas.format_duration(e.jitter)]
    if e.distribution != "uniform":
        words.append(e.distribution)
    if e.delay_correlation:
        words.append(f"(corr {e.delay_correlation:g})")
    return " ".join(words)


def _emulation(e: schemas.StatusEmulation) -> list[str]:
    return [schemas.format_duration(e.latency) if e.latency else "-",
            _jitter(e),
            _loss(e),
            _capacity(e) + _charge(e) + _aqm(e) + _slot(e)]


def _capacity(e: schemas.StatusEmulation) -> str:
    """The rate, or a trace's mean rate over its period (docs/semantics.md, "Trace-driven
    capacity")."""
    if e.trace is None:
        return schemas.format_rate(e.capacity)
    return f"trace ~{schemas.format_rate(e.trace.rate)}"


def _loss(e: schemas.StatusEmulation) -> str:
    out = ((f"{e.loss:g} (corr {e.loss_correlation:g})" if e.loss_correlation else f"{e.loss:g}")
           if e.loss else "-")
    if e.corrupt:
        out += f" corrupt {e.corrupt:g}"
    if e.duplicate:
        out += f" dup {e.duplicate:g}" + (f" (corr {e.duplicate_correlation:g})"
                                          if e.duplicate_correlation else "")
    if (r := e.reorder_early) is not None:
        out += f" early {r.probability:g}" + (f" (corr {r.correlation:g})" if r.correlation
                                              else "") + (f" gap {r.gap}" if r.gap != 1 else "")
    return out


def _packets(link: schemas.LinkStatus, vnis: list[int], p: int) -> str:
    """The packets cell: the frames passed, and the copies sent beside them (`duplicate`)."""
    dup = sum(c.duplicated for c in link.counters if c.vni in vnis and c.stage == "egress")
    return f"{p:,} (+{dup:,} dup)" if dup else f"{p:,}"


def _charge(e: schemas.StatusEmulation) -> str:
    """The frames' charge when it is not the default (24 bytes of overhead, no cells)."""
    out = f" oh {e.overhead}" if e.overhead != schemas.messages.DEFAULT_OVERHEAD else ""
    if e.cell_size:
        out += f" cells {e.cell_size}{e.cell_overhead:+d}"
    return out


def _slot(e: schemas.StatusEmulation) -> str:
    """Slots (docs/semantics.md, "Slots"): the gap (min-max, or a distribution's delay±jitter)
    and the most a slot releases (frames p, bytes B)."""
    sl = e.slot
    if sl is None:
        return ""
    fmt = schemas.format_duration
    if sl.distribution == "uniform":
        gap = fmt(sl.min or 0) + (f"-{fmt(sl.max)}" if sl.max not in (None, sl.min) else "")
    else:
        gap = f"{sl.distribution} {fmt(sl.delay or 0)}±{fmt(sl.jitter)}"
    limits = (f" {sl.packets}p" if sl.packets else "") + (f" {sl.bytes}B" if sl.bytes else "")
    return f" slot {gap}{limits}"


def _aqm(e: schemas.StatusEmulation) -> str:
    if e.aqm.kind == "taildrop":
        return ""
    return f" {e.aqm.kind}{'+ecn' if e.aqm.ecn else ''}"


def quantile_bucket(hist: list[int], q: float) -> int | None:
    """The bucket of a sojourn histogram (LinkStats.sojourn) that holds its q-quantile: the
    first whose cumulative count reaches q of the total; None when it counts nothing."""
    total = sum(hist)
    if not total:
        return None
    want, run = q * total, 0
    for k, n in enumerate(hist):
        run += n
        if run >= want and n:
            return k
    return len(hist) - 1


def _short(ns: int) -> str:
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns >= scale:
            return f"{ns / scale:.3g}{unit}"
    return f"{ns}ns"


def bucket_label(k: int | None) -> str:
    """A bucket as the bound its sojourns are below ("<2.05ms"), the top one as ">=1.07s"."""
    if k is None:
        return "-"
    bounds = schemas.SOJOURN_BOUNDS_NS
    return f"<{_short(bounds[k])}" if k < len(bounds) else f">={_short(bounds[-1])}"


def queue(link: schemas.LinkStatus, vnis: list[int]) -> list[str]:
    """The queue columns of a row: the p50 and p99 sojourn of the frames delivered towards its
    VNIs (their egress stages' histograms, summed), and the backlog now (the longest of theirs
    as time, their bytes summed)."""
    cs = [c for c in link.counters if c.vni in vnis and c.stage == "egress"]
    hist = [0] * schemas.SOJOURN_BUCKETS
    for c in cs:
        for k, n in enumerate(c.sojourn):
            hist[k] += n
    ns = max((c.backlog_ns for c in cs), default=0)
    size = sum(c.backlog_bytes for c in cs)
    backlog = f"{_short(ns)} {schemas.format_size(size)}" if ns else "-"
    return [f"{bucket_label(quantile_bucket(hist, 0.5))} "
            f"{bucket_label(quantile_bucket(hist, 0.99))}",
            backlog]


def build_table(status: schemas.StatusReply, previous: Totals | None = None,
                dt: float = 0.0) -> Table:
    """The table; with the totals of a previous status `dt` seconds ago, rates too. A link whose
    directions differ has a row per direction: `to VNI` names the receiving end."""
    table = Table(title=f"moa on {status.host}", title_justify="left")
    for col in ("materialization", "link", "kind", "VNIs", "latency", "jitter", "loss",
                "capacity", "packets", "bytes", "drops", "sojourn p50 p99", "backlog"):
        table.add_column(col, justify="right" if col in ("packets", "bytes", "drops") else "left")
    if previous is not None and dt > 0:
        table.add_column("pkt/s", justify="right")
        table.add_column("bit/s", justify="right")
    now = totals(status)
    for m in status.materializations:
        for link in m.links:
            several = len(rows(link)) > 1
            for vnis, e in rows(link):
                key = (m.id, link.id, vnis[0])
                p, b, d = now[key]
                kind = f"{link.kind} (down)" if e.state == "down" else link.kind
                shown = ",".join(map(str, vnis))
                if several and vnis[0] in {x.vni for x in link.directions}:
                    shown = f"to {shown}"
                row = [m.id, link.id, kind, shown, *_emulation(e), _packets(link, vnis, p),
                       f"{b:,}", f"{d:,}", *queue(link, vnis)]
                if previous is not None and dt > 0:
                    p0, b0, _ = previous.get(key, (p, b, d))
                    row += [f"{(p - p0) / dt:,.0f}",
                            schemas.format_rate(int(max(b - b0, 0) * 8 / dt)) if b > b0 else "0"]
                table.add_row(*row)
    table.caption = caption(status)
    return table


def caption(status: schemas.StatusReply) -> str | None:
    """The box-wide figures under the table: fq's worst case and the classifier's counters of
    frames that belong to no link (only those that are not zero)."""
    parts = []
    if status.fq_memory_bytes:
        parts.append(f"sch_fq worst-case memory: {schemas.format_size(status.fq_memory_bytes)}")
    dp = status.datapath
    for key, label in (("port_held", "frames held at LAN ports"),
                       ("unknown_vni", "passed, VNI of no link"),
                       ("non_vxlan", "passed, not VXLAN"),
                       ("ringbuf_fail", "drop events lost")):
        if dp.get(key):
            parts.append(f"{label}: {dp[key]:,}")
    return " · ".join(parts) or None


def netem_lines(status: schemas.StatusReply) -> list[str]:
    """One line per row of the table: `ID LINK netem WORDS` for the link's emulation, `ID LINK
    --endpoint VNI netem WORDS` for a direction with parameters of its own (its effective
    emulation). An emulation with every field at its default has no words after `netem`."""
    out = []
    for m in status.materializations:
        for link in m.links:
            own = {d.vni for d in link.directions}
            for vnis, e in rows(link):
                where = f" --endpoint {vnis[0]}" if vnis[0] in own else ""
                out.append(f"{m.id} {link.id}{where} netem {netem_syntax.render(e)}".rstrip())
    return out


def run(args: argparse.Namespace) -> int:
    console = Console()

    async def go(box: engine.MoaClient) -> int:
        status = await box.status()
        if args.netem:  # plain lines, never wrapped: they are meant to be copied
            for line in netem_lines(status):
                print(line)
            return 0
        if not args.watch:
            console.print(build_table(status))
            return 0
        prev, t_prev = totals(status), time.monotonic()
        with Live(build_table(status), console=console, refresh_per_second=4) as live:
            while True:
                await asyncio.sleep(args.interval)
                status = await box.status()
                t = time.monotonic()
                live.update(build_table(status, prev, t - t_prev))
                prev, t_prev = totals(status), t

    return client.run_engine(args, go, lambda code: code)
