"""`moa req SUBJECT [JSON|@file]`: like `nats req`: send, print the reply, exit 1 on an error ack
(ok: false, or a NATS micro error header) or when no reply comes within --timeout."""
from __future__ import annotations

import argparse

from moa_bus.cli import client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subject", help="e.g. moa.HOST.status or $SRV.PING")
    parser.add_argument("payload", nargs="?", help="JSON text, @FILE, or @- for stdin")
    client.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return client.run_request(args, args.subject, client.read_payload(args.payload))
