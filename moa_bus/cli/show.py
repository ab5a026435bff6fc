"""`moa show [--watch]`: the box's links in a table with live counters (from moa.<host>.status);
with --watch the table refreshes every --interval seconds and shows packet and bit rates."""
from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

import schemas
from moa_bus import engine
from moa_bus.cli import client

Totals = dict[tuple[str, str], tuple[int, int, int]]  # (materialization, link) -> packets, bytes, drops


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S")
    client.add_arguments(parser)


def totals(status: schemas.StatusReply) -> Totals:
    out: Totals = {}
    for m in status.materializations:
        for link in m.links:
            # A frame passes exactly one egress stage (its receiving VNI's); a LAN frame also
            # passed its sender's ingress stage, so counting both would count it twice. Drops
            # happen at either stage and are each a frame lost.
            p = sum(c.packets for c in link.counters if c.stage == "egress")
            b = sum(c.bytes for c in link.counters if c.stage == "egress")
            d = sum(sum(c.drops.values()) for c in link.counters)
            out[(m.id, link.id)] = (p, b, d)
    return out


def _jitter(e: schemas.Emulation) -> str:
    if not e.jitter:
        return "-"
    words = [schemas.format_duration(e.jitter)]
    if e.distribution != "uniform":
        words.append(e.distribution)
    if e.delay_correlation:
        words.append(f"(corr {e.delay_correlation:g})")
    return " ".join(words)


def _emulation(e: schemas.Emulation) -> list[str]:
    return [schemas.format_duration(e.latency) if e.latency else "-",
            _jitter(e),
            (f"{e.loss:g} (corr {e.loss_correlation:g})" if e.loss_correlation else f"{e.loss:g}")
            if e.loss else "-",
            schemas.format_rate(e.capacity) + _aqm(e)]


def _aqm(e: schemas.Emulation) -> str:
    if e.aqm.kind == "taildrop":
        return ""
    return f" {e.aqm.kind}{'+ecn' if e.aqm.ecn else ''}"


def build_table(status: schemas.StatusReply, previous: Totals | None = None,
                dt: float = 0.0) -> Table:
    """The table; with the totals of a previous status `dt` seconds ago, rates too."""
    table = Table(title=f"moa on {status.host}", title_justify="left")
    for col in ("materialization", "link", "kind", "VNIs", "latency", "jitter", "loss",
                "capacity", "packets", "bytes", "drops"):
        table.add_column(col, justify="right" if col in ("packets", "bytes", "drops") else "left")
    if previous is not None and dt > 0:
        table.add_column("pkt/s", justify="right")
        table.add_column("bit/s", justify="right")
    now = totals(status)
    for m in status.materializations:
        for link in m.links:
            p, b, d = now[(m.id, link.id)]
            kind = f"{link.kind} (down)" if link.emulation.state == "down" else link.kind
            row = [m.id, link.id, kind, ",".join(map(str, link.vnis)), *_emulation(link.emulation),
                   f"{p:,}", f"{b:,}", f"{d:,}"]
            if previous is not None and dt > 0:
                p0, b0, _ = previous.get((m.id, link.id), (p, b, d))
                row += [f"{(p - p0) / dt:,.0f}", schemas.format_rate(int(max(b - b0, 0) * 8 / dt))
                        if b > b0 else "0"]
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


def run(args: argparse.Namespace) -> int:
    console = Console()

    async def go(box: engine.MoaClient) -> int:
        status = await box.status()
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
