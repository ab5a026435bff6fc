"""`moa serve`: run the service (uvloop) until SIGTERM/SIGINT.

Settings come from the command line, then the environment (MOA_NATS_URL, MOA_HOST, MOA_UPLINK),
then --config FILE (TOML, keys named like the long options: nats, host, uplink, local,
allow_loss_only, state_dir, embedded_port, stats_interval, drop_interval, netns, pin_root,
nats_user, nats_password, nats_token, nats_nkey, nats_ca, nats_cert, nats_key, stream_replicas,
ack_wait), then defaults. A NATS URL may be a comma-separated list of a cluster's servers.

Without a NATS URL it starts an embedded nats-server (127.0.0.1:4222, JetStream, state in
/var/lib/moa/nats) and says so. On SIGTERM/SIGINT it finishes the operation in hand, drains, and
leaves the datapath as it is (traffic stays shaped while the service restarts).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from moa_bus import connection
from moa_bus.desired import DesiredState, StateError, StateStore
from moa_bus.natsserver import DEFAULT_PORT, NatsServer, NatsServerError
from moa_bus.subjects import check_host, default_host

log = logging.getLogger("moa.bus")

DEFAULT_STATE_DIR = "/var/lib/moa"


@dataclass
class ServeSettings:
    nats: str | None = None  # None: embedded nats-server
    host: str = ""
    uplink: str | None = None
    local: str | None = None  # VTEP source address; default: the uplink's first IPv4 address
    allow_loss_only: bool = False
    state_dir: str = DEFAULT_STATE_DIR  # desired/<host>/: the desired state; nats/: embedded store
    embedded_port: int = DEFAULT_PORT
    stats_interval: float = 1.0
    drop_interval: float = 0.25
    netns: str | None = None
    pin_root: str = "/sys/fs/bpf/moa"
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_nkey: str | None = None
    nats_ca: str | None = None
    nats_cert: str | None = None
    nats_key: str | None = None
    connect_timeout: float = 5.0
    stream_replicas: int = 1  # replicas of the JetStream events stream moa creates (3 on a cluster)
    ack_wait: float = 30.0  # s JetStream waits for an ack before redelivering an event

    def nats_options(self, url: str) -> connection.NatsOptions:
        return connection.NatsOptions(
            url=url, user=self.nats_user, password=self.nats_password, token=self.nats_token,
            nkey_seed_file=self.nats_nkey, tls_ca=self.nats_ca, tls_cert=self.nats_cert,
            tls_key=self.nats_key, connect_timeout=self.connect_timeout, name=f"moa-serve-{self.host}")


class SettingsError(ValueError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    connection.add_arguments(parser)
    parser.add_argument("--config", metavar="FILE", help="TOML settings (see `moa serve --help`)")
    parser.add_argument("--host", help="this box's id in subjects (env MOA_HOST; default hostname)")
    parser.add_argument("--uplink", help="the device carrying VXLAN traffic (env MOA_UPLINK)")
    parser.add_argument("--local", help="VTEP source address (default: the uplink's IPv4 address)")
    parser.add_argument("--allow-loss-only", action="store_true", default=None,
                        help="on a kernel without sch_fq, run anyway: loss only")
    parser.add_argument("--state-dir", help="the box's desired state (desired/<host>/) and the "
                        f"embedded nats-server's store (nats/); default {DEFAULT_STATE_DIR}")
    parser.add_argument("--embedded-port", type=int, help=f"embedded nats-server's port ({DEFAULT_PORT})")
    parser.add_argument("--stats-interval", type=float, help="s between link counter messages (1)")
    parser.add_argument("--drop-interval", type=float, help="s between drop batches (0.25)")
    parser.add_argument("--netns", help="the box's network namespace (default: the current one)")
    parser.add_argument("--pin-root", help="bpffs directory for moa's pins (/sys/fs/bpf/moa)")
    parser.add_argument("--stream-replicas", type=int,
                        help="replicas of the JetStream events stream when moa creates it (1; "
                             "3 on a three-node cluster)")
    parser.add_argument("--ack-wait", type=float,
                        help="s JetStream waits for an event's ack before redelivering it (30); "
                             "used when moa creates its consumer")


def resolve(args: argparse.Namespace) -> ServeSettings:
    """Command line (env through its defaults) > MOA_HOST/MOA_UPLINK > TOML > built-in defaults."""
    s = ServeSettings()
    names = {f.name for f in fields(ServeSettings)}
    if args.config:
        try:
            with open(args.config, "rb") as f:
                conf = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise SettingsError(f"--config {args.config}: {e}") from None
        for key, value in conf.items():
            if key not in names:
                raise SettingsError(f"--config {args.config}: unknown key {key!r} "
                                    f"(known: {', '.join(sorted(names))})")
            setattr(s, key, value)
    env = {"host": os.environ.get("MOA_HOST"), "uplink": os.environ.get("MOA_UPLINK")}
    for key, value in env.items():
        if value:
            setattr(s, key, value)
    cli = {"nats": args.nats, "host": args.host, "uplink": args.uplink, "local": args.local,
           "allow_loss_only": args.allow_loss_only, "state_dir": args.state_dir,
           "embedded_port": args.embedded_port, "stats_interval": args.stats_interval,
           "drop_interval": args.drop_interval, "netns": args.netns, "pin_root": args.pin_root,
           "nats_user": args.nats_user, "nats_password": args.nats_password,
           "nats_token": args.nats_token, "nats_nkey": args.nats_nkey, "nats_ca": args.nats_ca,
           "nats_cert": args.nats_cert, "nats_key": args.nats_key,
           "connect_timeout": args.connect_timeout,
           "stream_replicas": getattr(args, "stream_replicas", None),
           "ack_wait": getattr(args, "ack_wait", None)}
    for key, value in cli.items():
        if value is not None and value != "":  # MOA_NATS_URL= (empty) means "not set"
            setattr(s, key, value)
    try:
        s.host = check_host(s.host) if s.host else default_host()
    except ValueError as e:
        raise SettingsError(str(e)) from None
    return s


# ---------------------------------------------------------------------------- the datapath

def uplink_ipv4(uplink: str, netns: str | None) -> str:
    """The first IPv4 address of `uplink` (iproute2's JSON output)."""
    cmd = ["ip", *(["-n", netns] if netns else []), "-j", "-4", "addr", "show", "dev", uplink]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SettingsError(f"uplink {uplink}: {out.stderr.strip() or 'not found'}")
    for dev in json.loads(out.stdout or "[]"):
        for a in dev.get("addr_info", []):
            if a.get("family") == "inet":
                return a["local"]
    raise SettingsError(f"uplink {uplink} has no IPv4 address: give --local ADDRESS")


@dataclass
class OpenedBox:
    """A box ready to serve: its datapath converged to its durable desired state."""
    datapath: Any  # datapath.api.Datapath
    desired: DesiredState
    unconverged: dict[str, str]  # materializations the kernel could not be converged to


def desired_dir(s: ServeSettings) -> Path:
    """Where this box's desired state lives: per host id, as its JetStream stream is."""
    return Path(s.state_dir) / "desired" / s.host


async def open_kernel_box(s: ServeSettings) -> OpenedBox:
    """The real datapath (datapath.api.KernelDatapath) on s.uplink, converged to the desired
    state stored under s.state_dir: what the kernel holds and no materialization owns is
    removed, what a materialization lacks is made (docs/architecture.md, "Desired state").
    `moa serve` and the tests of restarts both start a box through here."""
    from datapath.api import DatapathConfig, FqUnavailable, KernelDatapath

    if not s.uplink:
        raise SettingsError("--uplink DEV is required: the device that carries the VXLAN traffic "
                            "(or MOA_UPLINK, or uplink = \"...\" in --config)")
    store = StateStore(desired_dir(s))
    held, stored_generation = store.load()  # a damaged state stops us before the kernel
    local = s.local or uplink_ipv4(s.uplink, s.netns)
    config = DatapathConfig(uplink=s.uplink, local=local, netns=s.netns, pin_root=s.pin_root,
                            allow_loss_only=s.allow_loss_only, host=s.host)
    try:
        datapath = await KernelDatapath.start(config)
    except FqUnavailable as e:
        raise SettingsError(
            f"this kernel has no sch_fq ({e}): latency and capacity cannot be emulated. "
            "Start with --allow-loss-only to emulate loss only (links asking for latency or "
            "capacity are then refused), or run moa on a kernel with sch_fq "
            "(see README, the VM path).") from None
    try:
        desired = DesiredState(store=store, held=held,
                               generation=max(stored_generation, datapath.generation_floor()),
                               on_generation=datapath.record_generation)
        datapath.record_generation(desired.generation)
        report = await datapath.reconcile(desired.materializations())
    except BaseException:
        await datapath.close()
        raise
    for line in report.operations:
        log.info("start-up: %s", line)
    for line in report.purged:
        log.info("start-up: purged %s (no materialization owns it)", line)
    for mid, why in report.failed.items():
        log.error("start-up: %s is not what the kernel holds: %s", mid, why)
    log.info("desired state %s: %d materialization(s), generation %d; start-up changed %d "
             "thing(s)", desired_dir(s), len(held), desired.generation,
             len(report.operations) + len(report.purged))
    return OpenedBox(datapath, desired, dict(report.failed))


# ---------------------------------------------------------------------------- running

BoxFactory = Callable[[ServeSettings], Awaitable[OpenedBox]]


async def serve(s: ServeSettings, box_factory: BoxFactory = open_kernel_box,
                stop: asyncio.Event | None = None, say: Callable[[str], None] | None = None) -> int:
    """Run until `stop` is set (or SIGTERM/SIGINT when running in the main thread)."""
    from moa_bus.service import MoaService, ServiceConfig

    say = say or (lambda text: print(f"moa: {text}", file=sys.stderr, flush=True))
    stop = stop or asyncio.Event()
    embedded: NatsServer | None = None
    url = s.nats
    if url is None:
        embedded = NatsServer(port=s.embedded_port, state_dir=Path(s.state_dir) / "nats")
        try:
            await asyncio.to_thread(embedded.start)
        except NatsServerError as e:
            say(f"could not start the embedded nats-server: {e}")
            return 1
        url = embedded.url
        say(f"no NATS URL given: started an embedded nats-server on {url} "
            f"(JetStream, store in {Path(s.state_dir) / 'nats'}); pass --nats URL to use another "
            "server")
    nc = box = service = None
    try:
        nc = await connection.connect(s.nats_options(url),
                                      disconnected_cb=_quiet("disconnected from NATS"),
                                      reconnected_cb=_quiet("reconnected to NATS"))
        box = await box_factory(s)
        service = MoaService(nc, box.datapath, box.desired, ServiceConfig(
            host=s.host, stats_interval=s.stats_interval, drop_interval=s.drop_interval,
            stream_replicas=s.stream_replicas, ack_wait=s.ack_wait), box.unconverged)
        await service.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (RuntimeError, ValueError):  # not the main thread (tests): `stop` only
                pass
        say(f"serving host {s.host!r} on {url} (moa.{s.host}.*; service 'moa')")
        await stop.wait()
        say("stopping: finishing the operation in hand; the datapath stays in place")
        return 0
    except (connection.BusConnectError, SettingsError, StateError) as e:
        say(str(e))
        return 1
    finally:
        if service is not None:
            await service.stop()
        if box is not None:
            await box.datapath.close()
        if nc is not None:
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except Exception:
                await nc.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def _quiet(text: str):
    async def cb() -> None:
        log.warning("%s", text)
    return cb


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="moa: %(message)s")
    try:
        settings = resolve(args)
    except SettingsError as e:
        print(f"moa serve: {e}", file=sys.stderr)
        return 2
    import uvloop

    return uvloop.run(serve(settings))
