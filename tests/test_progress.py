"""`moa materialize` of thousands of links: a spinner with the time elapsed on a terminal's stderr
while the service works, nothing extra on a pipe, and stdout the same either way."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from moa_bus import progress
from moa_bus.natsserver import NatsServer
from tests.fixtures.nats import nats_server  # noqa: F401
from tests.test_bus_support import RecordingFakeDatapath, running_service

pytestmark = pytest.mark.nats

N_LINKS = 3000


def big_doc(mid: str) -> dict:
    return {"id": mid, "links": [
        {"id": f"l{i}", "endpoints": [{"vni": 1000 + 2 * i, "remote": "10.0.0.1"},
                                      {"vni": 1001 + 2 * i, "remote": "10.0.0.2"}]}
        for i in range(N_LINKS)]}


async def _materialize(path: Path, url: str, host: str, tty: bool) -> tuple[int, bytes, bytes]:
    """Run `moa materialize`; stderr on a pseudo-terminal when `tty`."""
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    master = slave = None
    if tty:
        master, slave = os.openpty()
    captured = bytearray()

    def pump() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the slave side closed
                return
            if not chunk:
                return
            captured.extend(chunk)
    reader = threading.Thread(target=pump, daemon=True) if tty else None
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moa_bus.cli", "materialize", str(path), "--nats", url, "--host", host,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=slave if tty else asyncio.subprocess.PIPE, env=env)
    if tty:
        os.close(slave)
        reader.start()
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if tty:
        await asyncio.to_thread(reader.join, 5)
        os.close(master)
        err = bytes(captured)
    return proc.returncode, out, err


async def test_materialize_shows_progress_on_a_terminal_only(nats_server: NatsServer, tmp_path: Path) -> None:
    host = f"progress{os.getpid()}"
    dp = RecordingFakeDatapath()
    f = tmp_path / "big.json"
    f.write_text(json.dumps(big_doc("big")))
    async with running_service(nats_server, dp, host):
        # The service takes 2.5 s: the gate holds materialize until the test opens it.
        dp.gate = asyncio.Event()
        task = asyncio.create_task(_materialize(f, nats_server.url, host, tty=True))
        await asyncio.wait_for(dp.entered.wait(), 30)
        await asyncio.sleep(2.5)
        dp.gate.set()
        rc, out, err = await task
        assert rc == 0, err
        ack = json.loads(out)  # stdout is the reply only, no spinner in it
        assert ack["ok"] is True and ack["id"] == "big"
        text = err.decode(errors="replace")
        assert f"materializing {N_LINKS:,} link(s), {2 * N_LINKS:,} endpoint(s) of big" in text
        assert "0:00:02" in text  # the elapsed time counted up while waiting
        # On a pipe: the same stdout, nothing on stderr.
        dp.gate = None
        rc2, out2, err2 = await _materialize(f, nats_server.url, host, tty=False)
        assert rc2 == 0 and err2 == b""
        ack2 = json.loads(out2)
        assert ack2["ok"] is True and ack2["generation"] == ack["generation"]  # same content


def test_waiting_is_silent_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    shown = []
    with progress.Waiting("x") as w:
        assert not w.enabled
        w.then(shown.append)("reply")
    assert shown == ["reply"]
    assert capsys.readouterr().err == ""
