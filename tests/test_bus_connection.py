"""Connecting to a real nats-server: auth options, TLS, a bounded failure, reconnect after a
restart."""
from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import nkeys
import pytest

from moa_bus.service.connection import BusConnectError, NatsOptions, connect
from moa_bus.service.embedded_nats import NatsServer, free_port
from tests.fixtures.nats import nats_server  # noqa: F401

pytestmark = pytest.mark.nats


async def _roundtrip(nc) -> bytes:
    async def echo(m) -> None:
        await m.respond(m.data)

    sub = await nc.subscribe("moatest.echo", cb=echo)
    try:
        reply = await nc.request("moatest.echo", b"hi", timeout=2)
        return reply.data
    finally:
        await sub.unsubscribe()


async def test_dead_port_fails_bounded_with_clear_message() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    # Bounded: without the deadline nats-py would retry for ~120 s (the test timeout catches that).
    with pytest.raises(BusConnectError) as err:
        await asyncio.wait_for(connect(NatsOptions(url=url, connect_timeout=1.0)), 20)
    assert url in str(err.value)
    assert "within 1 s" in str(err.value)


async def test_plain_connect_and_reconnect_forever(nats_server: NatsServer) -> None:
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await connect(NatsOptions(url=nats_server.url, connect_timeout=3),
                       reconnected_cb=on_reconnect)
    try:
        assert await _roundtrip(nc) == b"hi"
        assert nc.options["max_reconnect_attempts"] == -1
        nats_server.stop()
        await asyncio.sleep(0.3)
        nats_server.start()
        await asyncio.wait_for(reconnected.wait(), 15)
        assert await _roundtrip(nc) == b"hi"
    finally:
        await nc.close()


async def test_user_password(tmp_path: Path) -> None:
    server = NatsServer(port=free_port(), state_dir=tmp_path / "n",
                        extra_args=["--user", "moa", "--pass", "s3cret"])
    server.start()
    try:
        nc = await connect(NatsOptions(url=server.url, user="moa", password="s3cret"))
        assert await _roundtrip(nc) == b"hi"
        await nc.close()
        with pytest.raises(BusConnectError) as err:
            await connect(NatsOptions(url=server.url, user="moa", password="wrong",
                                      connect_timeout=1))
        assert "uthoriz" in str(err.value)
    finally:
        server.stop()


async def test_token(tmp_path: Path) -> None:
    server = NatsServer(port=free_port(), state_dir=tmp_path / "n", extra_args=["--auth", "tok123"])
    server.start()
    try:
        nc = await connect(NatsOptions(url=server.url, token="tok123"))
        assert await _roundtrip(nc) == b"hi"
        await nc.close()
    finally:
        server.stop()


async def test_nkey_seed_file(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    (tmp_path / "user.nk").write_bytes(seed)
    (tmp_path / "server.conf").write_text(
        f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    server = NatsServer(port=free_port(), state_dir=tmp_path / "n",
                        extra_args=["-c", str(tmp_path / "server.conf")])
    server.start()
    try:
        nc = await connect(NatsOptions(url=server.url, nkey_seed_file=str(tmp_path / "user.nk")))
        assert await _roundtrip(nc) == b"hi"
        await nc.close()
        with pytest.raises(BusConnectError):
            await connect(NatsOptions(url=server.url, connect_timeout=1))
    finally:
        server.stop()


def _make_certs(d: Path) -> None:
    def ssl(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=moa-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "ext.cnf", "-out", "server.pem")


async def test_tls_with_ca(tmp_path: Path) -> None:
    _make_certs(tmp_path)
    server = NatsServer(port=free_port(), state_dir=tmp_path / "n", extra_args=[
        "--tls", "--tlscert", str(tmp_path / "server.pem"),
        "--tlskey", str(tmp_path / "server.key")])
    server.start()
    try:
        nc = await connect(NatsOptions(url=f"tls://127.0.0.1:{server.port}",
                                       tls_ca=str(tmp_path / "ca.pem")))
        assert await _roundtrip(nc) == b"hi"
        await nc.close()
        # Without the CA the certificate is not trusted: a clear failure, not a hang.
        with pytest.raises(BusConnectError):
            await connect(NatsOptions(url=f"tls://127.0.0.1:{server.port}", connect_timeout=1))
    finally:
        server.stop()
