"""`moa status [ID]`: what the box holds (materializations, links, emulation, counters), as JSON:
the whole box, however many pages the service answered it in (engine.MoaClient.status puts
them together)."""
from __future__ import annotations

import argparse
import json
import sys

import schemas
from moa_bus.cli import client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", nargs="?", help="one materialization (default: all)")
    client.add_arguments(parser)


def _print(status: schemas.StatusReply) -> int:
    obj = json.loads(schemas.encode(status))
    print(json.dumps(obj, indent=2 if sys.stdout.isatty() else None))
    return 0


def run(args: argparse.Namespace) -> int:
    return client.run_engine(args, lambda box: box.status(args.id), _print)
