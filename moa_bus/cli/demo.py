"""`moa demo`: a live demonstration in network namespaces (moa_bus/lab/demo/ builds and runs it;
named here by its module's path and loaded only when this verb runs: moa_bus/cli/__init__.py).

Needs root; no stdin. On a terminal it shows a live `moa show` table; otherwise (CI, a pipe) it
prints a few snapshots. Everything it makes is removed on exit, on error, on Ctrl-C and SIGTERM.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re

DEMO = "moa_bus.lab.demo"  # main(duration, prefix, live, console) -> exit status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=20.0, metavar="S",
                        help="seconds of live table while pings run (default 20; the whole demo "
                             "takes about 15 s more)")
    parser.add_argument("--prefix", metavar="NAME",
                        help="prefix of everything the demo creates: namespaces, pins, host id "
                             "(default: md + 4 random hex digits; at most 6 characters)")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--live", dest="live", action="store_true", default=None,
                      help="live table even when stdout is not a terminal")
    view.add_argument("--snapshots", dest="live", action="store_false",
                      help="print a few snapshots instead of a live table")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.prefix is not None and not re.fullmatch(r"[a-z][a-z0-9]{0,5}", args.prefix):
        parser_error = "--prefix: 1-6 lowercase letters and digits, starting with a letter"
        print(f"moa demo: {parser_error}")
        return 2
    if not 1 <= args.duration <= 600:
        print("moa demo: --duration must be between 1 and 600 seconds")
        return 2
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # a log, not a terminal: room for the table's columns
    return importlib.import_module(DEMO).main(args.duration, prefix=args.prefix, live=args.live,
                                              console=console)
