"""`moa materialize FILE [--dry-run]`: send a Materialize (JSON file, or - for stdin).

The file is checked here first (same rules as the service), so a typo is reported without a
round trip. --dry-run asks the service for the ordered operations it would run, changing nothing
(the request carries the header Moa-Dry-Run: 1). A file larger than the server's max_payload
goes through the service's object store (engine.MoaClient does it: moa_bus/engine_paging.py,
docs/contract.md "Sizes").
"""
from __future__ import annotations

import argparse
import sys

import schemas
from moa_bus import engine
from moa_bus.cli import client, progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="Materialize JSON (see docs/contract.md), or - for stdin")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the ordered operations the box would run; change nothing")
    client.add_arguments(parser, timeout=120.0)


def _show_plan(ops: engine.Plan) -> int:
    for i, op in enumerate(ops, 1):
        print(f"{i:4d}  {op}")
    if ops.count > len(ops):  # the list was cut to fit one message
        print(f"   ... and {ops.count - len(ops):,} more")
    print(f"{ops.count} operation(s); nothing applied (dry run)")
    return 0


def run(args: argparse.Namespace) -> int:
    data = client.read_payload("@-" if args.file == "-" else f"@{args.file}")
    try:
        m = schemas.decode(schemas.Materialize, data)
    except schemas.InvalidMessage as e:
        where = f" at {e.field}" if e.field else ""
        print(f"moa: {args.file}: {e.code}{where}: {e.message}", file=sys.stderr)
        return 1
    what = progress.describe_materialize(m)
    # The file's own bytes are sent (the service reads them as this check did).
    if args.dry_run:  # the request carries Moa-Dry-Run: 1 (engine.MoaClient.plan)
        with progress.Waiting(f"planning {what} (dry run); waiting for the service") as w:
            return client.run_engine(args, lambda box: box.plan(data), _show_plan, w.stop)
    # On a terminal: a spinner with the time elapsed until the ack comes (stderr, transient).
    with progress.Waiting(f"materializing {what}; waiting for the ack") as w:
        return client.run_engine(args, lambda box: box.materialize(data), client.print_ack,
                                 w.stop)


