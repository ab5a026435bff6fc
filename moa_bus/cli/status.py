"""`moa status [ID]`: what the box holds (materializations, links, emulation, counters), as JSON:
the whole box, however many pages the service answered it in."""
from __future__ import annotations

import argparse

from moa_bus.cli import client, paging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", nargs="?", help="one materialization (default: all)")
    client.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Every page of the box's status, put together (moa_bus/cli/paging.py)."""
    async def whole(nc, subject, _payload, timeout, _headers):
        return await paging.whole_status(nc, subject, args.id, timeout)
    return client.run_request(args, lambda s: s.op("status"), b"", send=whole)
