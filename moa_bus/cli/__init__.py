"""`moa`, the command line: one module per verb; this file only dispatches.

Only the chosen verb's module is imported, so `moa doctor` works on a machine where, say, the
benchmark's dependencies are missing. Imports run lab -> cli -> service: the verbs whose work
lives in the lab (`demo`, `bench`) name the lab's modules by their path (moa_bus/lab/), loaded
only when that verb runs; no module here imports the lab.
`python -m moa_bus.cli` is the console script `moa`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help). Each module has `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("moa_bus.cli.serve", "run the service (embedded nats-server without --nats)"),
    "req": ("moa_bus.cli.req", "send a request like `nats req`; exit 1 on an error ack"),
    "materialize": ("moa_bus.cli.materialize", "send a Materialize file (--dry-run: the plan)"),
    "dematerialize": ("moa_bus.cli.dematerialize", "remove a materialization"),
    "set": ("moa_bus.cli.set", "change links' emulation: set LINK-OR-TAG latency 50ms ... "
            "(or netem delay 50ms ...)"),
    "status": ("moa_bus.cli.status", "what the box holds, with counters (JSON)"),
    "show": ("moa_bus.cli.show", "a table of links with live counters "
             "(--watch; --netem: netem's words)"),
    "watch": ("moa_bus.cli.watch", "print acks and telemetry as they come"),
    "bench": ("moa_bus.cli.bench", "benchmarks: datapath, control, e2e"),
    "doctor": ("moa_bus.cli.doctor", "what this kernel and machine can and cannot do"),
    "demo": ("moa_bus.cli.demo", "a live demonstration in network namespaces"),
}


def add_lazy_subcommands(parser: argparse.ArgumentParser, commands: dict[str, tuple[str, str]],
                         argv: list[str], dest: str) -> None:
    """Register `commands`; import and configure only the one named in `argv`."""
    chosen = next((a for a in argv if not a.startswith("-")), None)
    sub = parser.add_subparsers(dest=dest, required=True)
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(**{f"_{dest}_module": module})
        if name == chosen:
            rest = argv[argv.index(name) + 1:]
            importlib.import_module(module).add_arguments(
                p, *([rest] if _wants_argv(module) else []))


def _wants_argv(module: str) -> bool:
    return getattr(importlib.import_module(module), "NESTED", False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="moa", description="in-kernel link emulator for testbeds")
    add_lazy_subcommands(parser, COMMANDS, argv, "command")
    args = parser.parse_args(argv)
    return importlib.import_module(args._command_module).run(args)
