"""`moa demo`: shows what moa can do on this machine, as far as it is built."""
from __future__ import annotations

import argparse

from moa_bus import cmd_doctor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-loss-only", action="store_true", default=True,
                        help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    print("moa demo: first, what this machine can do\n")
    checks = cmd_doctor.run_checks(nats_url=None, allow_loss_only=True)
    for c in checks:
        print(f"  {'pass' if c.ok else 'miss'}  {c.name}: {c.detail}")
    return 0
