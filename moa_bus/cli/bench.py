"""`moa bench {datapath,control,e2e,metrics}`: print figures; `--json` prints one JSON object.

The benchmarks live in the lab (moa_bus/lab/); each is named here by its module's path and
loaded only when chosen (the CLI imports nothing of the lab: moa_bus/cli/__init__.py).
"""
from __future__ import annotations

import argparse
import importlib

from moa_bus.cli import add_lazy_subcommands

NESTED = True  # add_arguments takes the argv after "bench" to pick its own subcommand

# benchmark -> (module with `add_arguments(parser)` and `run(args) -> int`, help)
BENCHES: dict[str, tuple[str, str]] = {
    "datapath": ("moa_bus.lab.datapath_bench", "ns per packet through BPF_PROG_TEST_RUN"),
    "e2e": ("moa_bus.lab.vm.e2e", "end-to-end fidelity in a qemu VM with sch_fq, against "
            "tc-netem"),
    "control": ("moa_bus.lab.control_bench", "materialize/update time, memory, pair vs bridge "
                "throughput, request round trip, drop events to NATS"),
    "metrics": ("moa_bus.lab.metrics_bench", "what a Prometheus scrape costs with 30,000 links, "
                "and its effect on the datapath and the event loop"),
}


def add_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    add_lazy_subcommands(parser, BENCHES, argv, "bench")


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(args._bench_module).run(args)
