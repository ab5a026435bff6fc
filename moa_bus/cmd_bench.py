"""`moa bench {datapath,control,e2e}`: print figures; `--json` prints one JSON object."""
from __future__ import annotations

import argparse
import importlib

# benchmark -> module with `add_arguments(parser)` and `run(args) -> int`
BENCHES = {
    "datapath": "datapath.bench",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, module in BENCHES.items():
        p = sub.add_parser(name)
        p.set_defaults(_bench_module=module)
        importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(args._bench_module).run(args)
