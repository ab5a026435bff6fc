"""`moa materialize` of thousands of links: a spinner with the time elapsed on a terminal's stderr
while the service works, nothing extra on a pipe, and stdout the same either way. The service
is the real one over the testbed's box (tests/fixtures/service.py); a failpoint holds its plan
for 2.5 s (datapath/faults.py), as a slow kernel would."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from datapath import faults
from moa_bus.cli import progress
from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.embedded_nats import NatsServer
from tests.fixtures.docs import materialize_doc
from tests.fixtures.moabox import moa_devices
from tests.fixtures.nats import nats_server  # noqa: F401
from tests.fixtures.processes import reap
from tests.fixtures.service import box_service
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.nats]

N_LINKS = 3000


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
        sys.executable, "-m", "moa_bus.cli", "materialize", str(path), "--nats", url,
        "--host", host,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=slave if tty else asyncio.subprocess.PIPE, env=env)
    if tty:
        os.close(slave)
        reader.start()
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await reap(proc)
    if tty:
        await asyncio.to_thread(reader.join, 5)
        os.close(master)
        err = bytes(captured)
    return proc.returncode, out, err


async def test_materialize_shows_progress_on_a_terminal_only(nats_server: NatsServer,
                                                              topo: Testbed,
                                                              tmp_path: Path) -> None:
    host = f"progress{os.getpid()}"
    f = tmp_path / "big.json"
    f.write_text(json.dumps(materialize_doc("big", 1000, N_LINKS)))
    async with box_service(nats_server, topo, host):
        # The service takes 2.5 s more than it would: its plan sleeps before operation 0 (on
        # the netlink worker thread; the service's loop stays free).
        faults.arm("plan.before/big/0=sleep:2500")
        try:
            rc, out, err = await _materialize(f, nats_server.url, host, tty=True)
        finally:
            faults.disarm()
        assert rc == 0, err
        ack = json.loads(out)  # stdout is the reply only, no spinner in it
        assert ack["ok"] is True and ack["id"] == "big" and ack["generation"] == 1, ack
        text = err.decode(errors="replace")
        assert f"materializing {N_LINKS:,} link(s), {2 * N_LINKS:,} endpoint(s) of big" in text
        assert "0:00:02" in text  # the elapsed time counted up while waiting
        devices = await asyncio.to_thread(moa_devices, topo.box)
        assert len(devices) == 2 * N_LINKS and set(devices.values()) == {
            f"moa:big:l{i}" for i in range(N_LINKS)}
        # On a pipe: the same stdout, nothing on stderr.
        rc2, out2, err2 = await _materialize(f, nats_server.url, host, tty=False)
        assert rc2 == 0 and err2 == b""
        ack2 = json.loads(out2)
        assert ack2["ok"] is True and ack2["generation"] == ack["generation"]  # same content
        assert await asyncio.to_thread(moa_devices, topo.box) == devices


def test_waiting_is_silent_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    shown = []
    with progress.Waiting("x") as w:
        assert not w.enabled
        w.then(shown.append)("reply")
    assert shown == ["reply"]
    assert capsys.readouterr().err == ""
