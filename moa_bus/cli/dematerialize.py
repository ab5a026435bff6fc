"""`moa dematerialize ID`: remove one materialization from the box."""
from __future__ import annotations

import argparse

from moa_bus.cli import client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="materialization id")
    client.add_arguments(parser, timeout=60.0)


def run(args: argparse.Namespace) -> int:
    return client.run_engine(args, lambda box: box.dematerialize(args.id), client.print_ack)
