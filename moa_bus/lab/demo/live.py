"""The demo's live part: `moa show --watch`'s table (moa_bus/cli/show.py) while pings run over
every link, refreshed each second on a terminal; a few snapshots when stdout is not one."""
from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Group
from rich.live import Live
from rich.text import Text

import schemas
from moa_bus.cli import show
from moa_bus.lab.demo.output import Output, fit_table
from moa_bus.lab.demo.pings import PAIRS
from moa_bus.lab.demo.processes import Processes
from moa_bus.lab.host_testbed import Testbed, ping_cmd

PING_RATE = 100  # pings per second per pair while the live table runs (root may go below 0.2 s)
SNAPSHOTS = 3  # when not on a terminal


def live_table(out: Output, procs: Processes, tb: Testbed, duration: float, live: bool | None,
               status: Callable[[], schemas.StatusReply]) -> schemas.StatusReply:
    """Pings over every pair for `duration` s with the table; the status at the end.
    `live`: None for a live table when stdout is a terminal."""
    console = out.console
    live = console.is_terminal if live is None else live
    pings = [procs.popen(ping_cmd(tb.node(p.src), p.dst_ip, None, 1 / PING_RATE,
                                  deadline=duration + 1),
                         procs.tmp / f"ping-live-{i}.txt") for i, p in enumerate(PAIRS)]
    note = Text(f"pings running: {', '.join(p.label for p in PAIRS)}, {PING_RATE}/s each",
                style="dim")
    st = status()
    prev, t_prev = show.totals(st), time.monotonic()
    end = t_prev + duration
    if live:
        width = console.width
        with Live(fit_table(show.build_table(st), width), console=console,
                  refresh_per_second=4) as view:
            while time.monotonic() < end:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                st = status()
                t = time.monotonic()
                view.update(Group(fit_table(show.build_table(st, prev, t - t_prev), width), note))
                prev, t_prev = show.totals(st), t
    else:
        start = t_prev
        out.say(note.plain)
        for k in range(1, SNAPSHOTS + 1):
            time.sleep(max(0.0, start + duration * k / SNAPSHOTS - time.monotonic()))
            st = status()
            t = time.monotonic()
            out.say(f"-- snapshot {k}/{SNAPSHOTS}, t={t - start:.1f} s")
            console.print(fit_table(show.build_table(st, prev, t - t_prev), console.width))
            prev, t_prev = show.totals(st), t
    for p in pings:
        if p.poll() is None:
            p.terminate()
        p.wait(timeout=10)
    return status()
