"""`moa serve`: run the service (uvloop) until SIGTERM/SIGINT.

This module parses the command line; the settings and their checks are
moa_bus/service/settings.py and box_checks.py, the service's life moa_bus/service/serve_loop.py
(its exit status: 0 after SIGTERM/SIGINT, 2 for a setting to change, 1 for a runtime failure).
The box's desired state is kept under --state-dir (desired/<host>/, /var/lib/moa by default); at
start the kernel is converged to it. Without a NATS URL an embedded nats-server is started
(127.0.0.1:4222, JetStream, its store in <state-dir>/nats).
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from moa_bus.cli import client, environment
from moa_bus.service.embedded_nats import DEFAULT_PORT
from moa_bus.service.settings import (
    DEFAULT_STATE_DIR, ServeSettings, SettingsError, resolve, size_argument,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the service. Without --nats it starts an embedded nats-server on 127.0.0.1 that "
        "admits only the holder of the credential kept in <state-dir>/local.nk (made at first "
        "start, readable by root only); the local `moa` commands use it by themselves.")
    parser.epilog = environment.epilog(serve=True)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    client.add_nats_arguments(parser)
    parser.add_argument("--config", metavar="FILE", help="TOML settings (see `moa serve --help`)")
    parser.add_argument("--host", help="this box's id in subjects (env MOA_HOST; default hostname)")
    parser.add_argument("--uplink", help="the device carrying VXLAN traffic (env MOA_UPLINK)")
    parser.add_argument("--local", help="VTEP source address (default: the uplink's IPv4 address)")
    parser.add_argument("--allow-loss-only", action="store_true", default=None,
                        help="on a kernel without sch_fq, run anyway: loss only")
    parser.add_argument("--state-dir", help="the box's desired state (desired/<host>/), the "
                        "embedded nats-server's store (nats/) and credential (local.nk); env "
                        f"MOA_STATE_DIR; default {DEFAULT_STATE_DIR}")
    parser.add_argument("--embedded-port", type=int,
                        help=f"embedded nats-server's port ({DEFAULT_PORT})")
    parser.add_argument("--stats-interval", type=float, help="s between link counter messages (1)")
    parser.add_argument("--drop-interval", type=float, help="s between drop batches (0.25)")
    parser.add_argument("--netns", help="the box's network namespace (default: the current one)")
    parser.add_argument("--pin-root", help="bpffs directory for moa's pins (/sys/fs/bpf/moa)")
    parser.add_argument("--stream-replicas", type=int,
                        help="replicas of the JetStream events stream when moa creates it (1; "
                             "3 on a three-node cluster)")
    parser.add_argument("--metrics", metavar="ADDR:PORT",
                        help="serve Prometheus metrics on http://ADDR:PORT/metrics (off by "
                             "default; e.g. 127.0.0.1:9464; docs/metrics.md)")
    parser.add_argument("--horizon", type=float,
                        help="s: no departure further ahead (30); a link needing more is refused "
                             "unsupported")
    parser.add_argument("--fq-memory-max", metavar="SIZE", type=size_argument,
                        help="worst-case sch_fq memory a change may bring the box to, e.g. 8GiB "
                             "(default: half the machine's memory)")
    parser.add_argument("--p2p-mode", choices=("vtep", "flow"),
                        help="point-to-point links as flow entries on the uplink, no device "
                             "(flow, the default), or as two VTEPs joined by a redirect pair "
                             "(vtep)")
    parser.add_argument("--max-links", type=int,
                        help="VNIs (endpoints) the classifier's maps hold (65536; a point-to-point "
                             "link takes two: 262144 for 100,000 flow-mode links)")
    parser.add_argument("--ack-wait", type=float,
                        help="s JetStream waits for an event's ack before redelivering it (30); "
                             "used when moa creates its consumer")


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """The settings: this command line (the NATS options' defaults carry MOA_NATS_URL ...) over
    the environment, --config and the defaults (moa_bus.service.settings.resolve)."""
    given = {f.name: getattr(args, f.name, None) for f in fields(ServeSettings)}
    return resolve(args.config, given)


def run(args: argparse.Namespace) -> int:
    from moa_bus.service.box_checks import check_box

    logging.basicConfig(level=logging.INFO, format="moa: %(message)s")
    try:
        settings = settings_from_args(args)
        check_box(settings)  # before the embedded nats-server and the datapath start
    except SettingsError as e:
        print(f"moa serve: {e}", file=sys.stderr)
        return 2
    import uvloop

    from moa_bus.service.serve_loop import serve

    return uvloop.run(serve(settings))
