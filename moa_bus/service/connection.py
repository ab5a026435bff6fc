"""Connecting to NATS: authentication and TLS options, a bounded first connect, then reconnect
forever.

Secrets reach this module as values read from files or the environment by the command line
(moa_bus/cli/client.py) or the settings (settings.py): never from a command line.

nats-py retries the *initial* connect max_reconnect_attempts x reconnect_time_wait (about 120 s by
default, even with allow_reconnect=False): here the first connect is bounded by a deadline and fails
with a message naming the URL and the last error; once connected, the client reconnects for as long
as the process runs.
"""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client

log = logging.getLogger("moa.bus")

DEFAULT_URL = "nats://127.0.0.1:4222"


class BusConnectError(ConnectionError):
    """NATS could not be reached (or refused us) within the connect deadline."""


@dataclass
class NatsOptions:
    url: str = DEFAULT_URL
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None  # a NATS .creds file: user JWT + nkey seed (operator mode)
    inbox_prefix: str | None = None  # replies come to <prefix>.*: what the user may subscribe to
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float = 5.0  # seconds for the whole first connect, all attempts included
    name: str = "moa"
    # Said after an authorization refusal: which credential was (not) used and why.
    auth_hint: str | None = None


def tls_context(opts: NatsOptions) -> ssl.SSLContext | None:
    """A client TLS context when any TLS option (or a tls:// URL) asks for one."""
    if not (opts.tls_ca or opts.tls_cert or opts.url.startswith("tls://")):
        return None
    ctx = ssl.create_default_context(cafile=opts.tls_ca)
    if opts.tls_cert:
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
    return ctx


def _connect_kwargs(opts: NatsOptions) -> dict[str, Any]:
    kw: dict[str, Any] = {"name": opts.name}
    if opts.user:
        kw["user"] = opts.user
        kw["password"] = opts.password or ""
    if opts.token:
        kw["token"] = opts.token
    if opts.nkey_seed_file:
        if not os.path.isfile(opts.nkey_seed_file):
            raise BusConnectError(f"nkey seed file {opts.nkey_seed_file} does not exist")
        kw["nkeys_seed"] = opts.nkey_seed_file
    if opts.creds_file:
        if not os.path.isfile(opts.creds_file):
            raise BusConnectError(f"creds file {opts.creds_file} does not exist")
        kw["user_credentials"] = opts.creds_file
    if opts.inbox_prefix:
        kw["inbox_prefix"] = opts.inbox_prefix
    ctx = tls_context(opts)
    if ctx is not None:
        kw["tls"] = ctx
    return kw


async def connect(opts: NatsOptions, **callbacks: Any) -> Client:
    """Connect within opts.connect_timeout seconds, or raise BusConnectError saying why.

    Extra keyword arguments (disconnected_cb, reconnected_cb, ...) go to nats-py.
    """
    errors: list[BaseException] = []

    async def error_cb(e: BaseException) -> None:
        errors.append(e)
        if user_error_cb is not None:
            await user_error_cb(e)

    user_error_cb = callbacks.pop("error_cb", None)
    budget = max(opts.connect_timeout, 0.1)
    per_attempt = min(2.0, budget)
    wait = 0.25
    attempts = max(1, int(budget / (per_attempt + wait)) + 1)
    nc = nats.NATS()
    try:
        await asyncio.wait_for(
            nc.connect(
                servers=server_list(opts.url),
                connect_timeout=per_attempt,
                reconnect_time_wait=wait,
                max_reconnect_attempts=attempts,
                allow_reconnect=True,
                error_cb=error_cb,
                **_connect_kwargs(opts),
                **callbacks,
            ),
            timeout=budget,
        )
    except (asyncio.TimeoutError, Exception) as e:
        try:
            await asyncio.wait_for(nc.close(), 1.0)
        except Exception:
            pass
        # An authorization refusal explains more than the connection resets that follow it.
        auth = [x for x in errors if "uthoriz" in f"{type(x).__name__} {x}"]
        last = auth[0] if auth else errors[-1] if errors else e
        why = f"{type(last).__name__}: {last}" if str(last) else type(last).__name__
        if auth and opts.auth_hint:
            why += f"; {opts.auth_hint}"
        raise BusConnectError(
            f"cannot connect to NATS at {opts.url} within {opts.connect_timeout:g} s ({why})"
        ) from e
    # Connected: from now on a lost server is waited for, however long it takes.
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = 1.0
    return nc


def server_list(url: str) -> list[str]:
    """A URL or a comma-separated list of a cluster's URLs ("nats://a:4222,nats://b:4222"): the
    client picks one and moves to another when it goes away."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    return servers or [url]
