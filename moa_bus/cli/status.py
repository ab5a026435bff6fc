"""`moa status [ID]`: what the box holds (materializations, links, emulation, counters), as JSON."""
from __future__ import annotations

import argparse
import json

from moa_bus.cli import client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", nargs="?", help="one materialization (default: all)")
    client.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    body = json.dumps({"id": args.id} if args.id else {}).encode()
    return client.run_request(args, lambda s: s.op("status"), body)
