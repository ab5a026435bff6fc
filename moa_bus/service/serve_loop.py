"""`moa serve`'s life: the embedded nats-server when no URL is given, the connection, the box,
the service, until SIGTERM/SIGINT (or `stop`); then it finishes the operation in hand, drains,
and leaves the datapath as it is (traffic stays shaped while the service restarts).

Without a URL the embedded nats-server admits only the holder of the nkey seed in
<state-dir>/local.nk, made at the first start (0600) and used by the service and the local CLI.

Exit status: 0 after SIGTERM/SIGINT; 2 for a settings error (one line saying what to change;
the command line checks the settings and the box they name before anything is started, so
nothing is left behind; an embedded credential others may read is found before the server
starts; also when another moa service already serves this host id on the same NATS, found by
micro discovery before the box is touched); 1 for a runtime failure (NATS unreachable, a server
without JetStream, the embedded nats-server not starting, a state directory that cannot be read,
an unexpected error, which is logged with its traceback). The example systemd unit does not
restart on 2.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from moa_bus.service import connection
from moa_bus.service.box import OpenedBox, open_kernel_box
from moa_bus.service.credentials import CredentialError, ensure_local_credential
from moa_bus.service.desired import StateError
from moa_bus.service.embedded_nats import NatsServer, NatsServerError
from moa_bus.service.micro import discover
from moa_bus.service.subjects import SERVICE_NAME
from moa_bus.service.settings import ServeSettings, SettingsError
from moa_bus.service.transport import (
    JetStreamUnavailable, MoaService, ServiceConfig, require_jetstream,
)

log = logging.getLogger("moa.bus")

BoxFactory = Callable[[ServeSettings], Awaitable[OpenedBox]]


async def serve(s: ServeSettings, box_factory: BoxFactory = open_kernel_box,
                stop: asyncio.Event | None = None, say: Callable[[str], None] | None = None) -> int:
    """Run until `stop` is set (or SIGTERM/SIGINT when running in the main thread); the exit
    status (see the module's docstring). The command line checks the settings before."""
    say = say or (lambda text: print(f"moa: {text}", file=sys.stderr, flush=True))
    stop = stop or asyncio.Event()
    # From the first step: a signal during start-up lets the start finish its step, then the
    # service stops cleanly (exit 0) instead of dying half-started by the default action.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (RuntimeError, ValueError):  # not the main thread (tests): `stop` only
            pass
    embedded: NatsServer | None = None
    url = s.nats
    seed: str | None = None
    if url is None:
        try:
            path, _ = ensure_local_credential(s.state_dir)
        except CredentialError as e:  # one that others may read, or not the service's
            say(str(e))
            return 2
        except OSError as e:
            say(f"cannot make the embedded nats-server's credential in {s.state_dir}: {e}")
            return 1
        seed = str(path)
        embedded = NatsServer(port=s.embedded_port, state_dir=Path(s.state_dir) / "nats",
                              credential=path)
        try:
            await asyncio.to_thread(embedded.start)
        except NatsServerError as e:
            say(f"could not start the embedded nats-server: {e}")
            return 1
        url = embedded.url
        say(f"no NATS URL given: started an embedded nats-server on {url} "
            f"(JetStream, store in {Path(s.state_dir) / 'nats'}; it admits only the holder of "
            f"the credential {path}, mode 0600, which the local `moa` commands use); pass --nats "
            "URL to use another server")
    nc = box = service = None
    live = [False]  # connected and not closing: only then is a disconnection news
    try:
        nc = await connection.connect(s.nats_options(url, local_seed=seed),
                                      error_cb=_refusals,
                                      disconnected_cb=_quiet("disconnected from NATS", live),
                                      reconnected_cb=_quiet("reconnected to NATS", live))
        live[0] = True
        config = ServiceConfig(host=s.host, stats_interval=s.stats_interval,
                               drop_interval=s.drop_interval, stream_replicas=s.stream_replicas,
                               ack_wait=s.ack_wait, metrics=s.metrics)
        if config.jetstream:  # before the datapath: a server without it changes nothing here
            await require_jetstream(nc)
        other = await running_instance(nc, s.host)
        if other is not None:  # before the datapath: the kernel is the other one's
            say(f"another moa service already serves host {s.host!r} on {url}: instance "
                f"{other.get('id')} (moa {other.get('version')}). Two services of one host would "
                "share its requests, its durable consumer and its box; stop that one, or give "
                "this box another --host")
            return 2
        box = await box_factory(s)
        service = MoaService(nc, box.datapath, box.desired, config, box.unconverged)
        await service.start()
        quiet_collector()
        if service.metrics_endpoint is not None:
            say(f"Prometheus metrics on {service.metrics_endpoint.url}")
        say(f"serving host {s.host!r} on {url} (moa.{s.host}.*; service 'moa')")
        await stop.wait()
        say("stopping: finishing the operation in hand; the datapath stays in place")
        return 0
    except SettingsError as e:  # from the box factory, or the metrics endpoint's address
        say(str(e))
        return 2
    except CredentialError as e:  # a password or token file that cannot be read
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


def quiet_collector() -> None:
    """Keep the garbage collector's full passes short: what start-up made (modules, the
    libraries, the box as loaded) is collected once and then frozen out of every later pass,
    which then walks only what the service makes while it runs. A full pass stops the event
    loop (and status) for as long as it takes."""
    gc.collect()
    gc.freeze()


async def running_instance(nc, host: str) -> dict | None:
    """The PING response of a moa service that serves `host` on this NATS already (micro
    discovery), or None."""
    for reply in await discover(nc, SERVICE_NAME):
        metadata = reply.get("metadata")
        if isinstance(metadata, dict) and metadata.get("host") == host:
            return reply
    return None


async def _refusals(e: BaseException) -> None:
    """The server refused one of our publications or subscriptions: its permissions for our
    user lack a subject the service needs (examples/nats-server.conf has what it needs)."""
    if "ermissions violation" in str(e):
        log.warning("the NATS server refused: %s", str(e).removeprefix("nats: "))


def _quiet(text: str, live: list[bool]):
    async def cb() -> None:
        if live[0]:
            log.warning("%s", text)
    return cb
