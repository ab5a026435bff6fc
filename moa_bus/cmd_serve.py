"""`moa serve`: run the service (uvloop) until SIGTERM/SIGINT.

Settings come from the command line, then the environment (MOA_NATS_URL, MOA_HOST, MOA_UPLINK),
then --config FILE (TOML, keys named like the long options: nats, host, uplink, local,
allow_loss_only, state_dir, embedded_port, stats_interval, drop_interval, netns, pin_root,
nats_user, nats_password, nats_token, nats_nkey, nats_ca, nats_cert, nats_key, stream_replicas,
ack_wait), then defaults. A NATS URL may be a comma-separated list of a cluster's servers.

The box's desired state is kept under --state-dir (desired/<host>/, /var/lib/moa by default);
at start the kernel is converged to it (open_kernel_box). Without a NATS URL it starts an
embedded nats-server (127.0.0.1:4222, JetStream, its store in <state-dir>/nats) and says so. On
SIGTERM/SIGINT it finishes the operation in hand, drains, and leaves the datapath as it is
(traffic stays shaped while the service restarts).

Exit status: 0 after SIGTERM/SIGINT; 2 for a settings error (one line on stderr saying what to
change; the settings and the box they name are checked before anything is started, so nothing is
left behind); 1 for a runtime failure (NATS unreachable, a server without JetStream, the embedded
nats-server not starting, a state directory that cannot be read, an unexpected error, which is
logged with its traceback). The example systemd unit does not restart on 2.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import tomllib
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import MISSING, dataclass, fields
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
    """A setting to change: `moa serve` says it in one line and exits 2."""


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
        except OSError as e:
            raise SettingsError(
                f"--config {args.config}: cannot read it ({e.strerror or e})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SettingsError(f"--config {args.config} is not valid TOML: {e}") from None
        for key, value in conf.items():
            if key not in names:
                raise SettingsError(f"--config {args.config}: unknown key {key!r} "
                                    f"(known: {', '.join(sorted(names))})")
            setattr(s, key, _checked_toml_value(args.config, key, value))
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
        raise SettingsError(f"--host (host in --config, MOA_HOST): {e}") from None
    check_ranges(s)
    return s


# The field types of ServeSettings, against which every value of --config is checked (its
# annotations are strings, `from __future__ import annotations`: resolved here once).
_FIELD_TYPES: dict[str, object] = typing.get_type_hints(ServeSettings)


def _allowed(tp: object) -> tuple[type, ...]:
    """The types a field accepts, None left out (TOML has no null: a key is set or absent)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)  # type: ignore[return-value]


def _toml(value: object) -> str:
    """`value` as it would be written in TOML (enough for a message)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _toml_kind(value: object) -> str:
    for tp, kind in ((bool, "a boolean"), (int, "an integer"), (float, "a float"),
                     (str, "a string"), (list, "an array"), (dict, "a table")):
        if isinstance(value, tp):
            return kind
    return "a date/time"


_KIND = {bool: "a boolean (true or false, without quotes)", int: "an integer (without quotes)",
         float: "a number (float, without quotes)", str: "a string (in quotes)"}


def _example(key: str, want: type, value: object) -> str:
    """A correct line for `key`: the value meant, when it can be guessed, else the default."""
    if isinstance(value, str):
        text = value.strip()
        if want is bool and text.lower() in ("true", "false"):
            return f"{key} = {text.lower()}"
        try:
            if want is int:
                return f"{key} = {int(text)}"
            if want is float:
                return f"{key} = {float(text)!r}"
        except ValueError:
            pass
    default = next(f.default for f in fields(ServeSettings) if f.name == key)
    if default is None or default is MISSING:
        default = {bool: False, int: 1, float: 1.0, str: "..."}[want]
    return f"{key} = {_toml(want(default))}"


def _checked_toml_value(path: str, key: str, value: object) -> object:
    """`value` if its TOML type fits the field `key` of ServeSettings (an integer fits a float
    field and becomes a float), else a SettingsError naming the key, the type and the value."""
    allowed = _allowed(_FIELD_TYPES[key])
    for want in allowed:
        if want is bool and isinstance(value, bool):
            return value
        if want is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if want is str and isinstance(value, str):
            return value
    want = allowed[0]
    raise SettingsError(
        f"--config {path}: {key} = {_toml(value)} is {_toml_kind(value)}, but {key} must be "
        f"{_KIND[want]}: write {_example(key, want, value)}")


def _setting(name: str) -> str:
    return f"--{name.replace('_', '-')} ({name} in --config)"


def check_ranges(s: ServeSettings) -> None:
    """Numbers that the types allow but the service cannot use."""
    for name in ("stats_interval", "drop_interval", "connect_timeout", "ack_wait"):
        value = getattr(s, name)
        if not value > 0:  # NaN too
            raise SettingsError(
                f"{_setting(name)} must be a number of seconds above 0, not {value:g}")
    if not 1 <= s.embedded_port <= 65535:
        raise SettingsError(f"{_setting('embedded_port')} must be a TCP port (1 to 65535), "
                            f"not {s.embedded_port}")
    if not 1 <= s.stream_replicas <= 5:
        raise SettingsError(f"{_setting('stream_replicas')} must be 1 to 5 (JetStream's limit), "
                            f"not {s.stream_replicas}")


# ---------------------------------------------------------------------------- the box's settings

def _in_netns(netns: str | None, *cmd: str) -> subprocess.CompletedProcess[str]:
    from datapath.netlink.worker import netns_path

    path = netns_path(netns)
    # nsenter, not `ip -n`: --netns may be a path, and `ip -n` takes only a name
    prefix = ["nsenter", f"--net={path}"] if path else []
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=30)


def _where(netns: str | None) -> str:
    return f"network namespace {netns} (`ip -n {netns} link` lists its devices)" if netns else \
        "this network namespace (`ip link` lists its devices)"


def uplink_addresses(uplink: str, netns: str | None) -> list[dict]:
    """iproute2's addr_info of `uplink`; a SettingsError when the namespace or the device does
    not exist."""
    from datapath.netlink.worker import netns_path

    path = netns_path(netns)
    if path and not os.path.exists(path):
        raise SettingsError(f"--netns {netns}: no such network namespace ({path} does not exist; "
                            "`ip netns list` shows the names)")
    out = _in_netns(netns, "ip", "-j", "addr", "show", "dev", uplink)
    if out.returncode != 0:
        if "does not exist" in out.stderr:
            raise SettingsError(f"--uplink {uplink}: no such device in {_where(netns)}; name the "
                                "device that carries the VXLAN traffic")
        raise SettingsError(f"--uplink {uplink}: {out.stderr.strip() or 'not found'}")
    return [a for dev in json.loads(out.stdout or "[]") for a in dev.get("addr_info", [])]


def first_ipv4(uplink: str, addrs: list[dict]) -> str:
    for a in addrs:
        if a.get("family") == "inet":
            return a["local"]
    raise SettingsError(f"--uplink {uplink} has no IPv4 address: give the VTEPs' source "
                        "address with --local ADDRESS (local = \"...\" in --config), or give the "
                        "uplink one")


def uplink_ipv4(uplink: str, netns: str | None) -> str:
    """The first IPv4 address of `uplink` (iproute2's JSON output)."""
    return first_ipv4(uplink, uplink_addresses(uplink, netns))


def _require_uplink(s: ServeSettings) -> str:
    if not s.uplink:
        raise SettingsError("--uplink DEV is required: the device that carries the VXLAN traffic "
                            "(or MOA_UPLINK, or uplink = \"...\" in --config)")
    return s.uplink


def _no_fq(detail: str) -> SettingsError:
    return SettingsError(
        f"this kernel has no sch_fq ({detail}): latency and capacity cannot be emulated. Start "
        "with --allow-loss-only (allow_loss_only = true in --config) to emulate loss only (links "
        "asking for latency or capacity are then refused), or run moa on a kernel with sch_fq "
        "(see README, the VM path).")


def probe_fq() -> tuple[bool, str] | None:
    """(the kernel has sch_fq, tc's error), tried in a throwaway network namespace (the box is
    not touched); None when the probe itself could not run (the datapath then finds out)."""
    from moa_bus.cmd_doctor import ScratchNetns

    with ScratchNetns() as ns:
        if not ns.try_("ip", "link", "show", "lo")[0]:
            return None
        return ns.try_("tc", "qdisc", "add", "dev", "lo", "root", "fq")


def check_box(s: ServeSettings) -> None:
    """The settings that name things on this machine, checked before anything starts: the uplink
    (given, existing, with an address unless --local), the source address, the NATS credential
    files, and sch_fq unless --allow-loss-only. A SettingsError says what to change."""
    uplink = _require_uplink(s)
    addrs = uplink_addresses(uplink, s.netns)
    if s.local:
        try:
            ipaddress.ip_address(s.local)
        except ValueError:
            raise SettingsError(f"--local {s.local} is not an IP address: give the VTEPs' source "
                                "address (default: the uplink's first IPv4 address)") from None
    else:
        first_ipv4(uplink, addrs)
    for name in ("nats_nkey", "nats_ca", "nats_cert", "nats_key"):
        path = getattr(s, name)
        if path is not None and not os.path.isfile(path):
            raise SettingsError(f"{_setting(name)}: {path} does not exist")
    if not s.allow_loss_only:
        probed = probe_fq()
        if probed is not None and not probed[0]:
            raise _no_fq(probed[1])


# ---------------------------------------------------------------------------- the box

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

    uplink = _require_uplink(s)
    store = StateStore(desired_dir(s))
    held, stored_generation = store.load()  # a damaged state stops us before the kernel
    local = s.local or uplink_ipv4(uplink, s.netns)
    config = DatapathConfig(uplink=uplink, local=local, netns=s.netns, pin_root=s.pin_root,
                            allow_loss_only=s.allow_loss_only, host=s.host)
    try:
        datapath = await KernelDatapath.start(config)
    except FqUnavailable as e:
        raise _no_fq(str(e)) from None
    try:
        desired = DesiredState(store=store, held=held,
                               generation=max(stored_generation, datapath.generation_floor()),
                               removed=store.removed, on_generation=datapath.record_generation)
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
    """Run until `stop` is set (or SIGTERM/SIGINT when running in the main thread); the exit
    status (see the module's docstring). `run` checks the settings before calling this."""
    from moa_bus.service import JetStreamUnavailable, MoaService, ServiceConfig, require_jetstream

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
    live = [False]  # connected and not closing: only then is a disconnection news
    try:
        nc = await connection.connect(s.nats_options(url),
                                      disconnected_cb=_quiet("disconnected from NATS", live),
                                      reconnected_cb=_quiet("reconnected to NATS", live))
        live[0] = True
        config = ServiceConfig(host=s.host, stats_interval=s.stats_interval,
                               drop_interval=s.drop_interval, stream_replicas=s.stream_replicas,
                               ack_wait=s.ack_wait)
        if config.jetstream:  # before the datapath: a server without it changes nothing here
            await require_jetstream(nc)
        box = await box_factory(s)
        service = MoaService(nc, box.datapath, box.desired, config, box.unconverged)
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
    except SettingsError as e:  # from the box factory
        say(str(e))
        return 2
    except (connection.BusConnectError, JetStreamUnavailable, StateError) as e:
        say(str(e))
        return 1
    except Exception:
        log.exception("stopped by an unexpected error")
        return 1
    finally:
        live[0] = False
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


def _quiet(text: str, live: list[bool]):
    async def cb() -> None:
        if live[0]:
            log.warning("%s", text)
    return cb


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="moa: %(message)s")
    try:
        settings = resolve(args)
        check_box(settings)  # before the embedded nats-server and the datapath start
    except SettingsError as e:
        print(f"moa serve: {e}", file=sys.stderr)
        return 2
    import uvloop

    return uvloop.run(serve(settings))
