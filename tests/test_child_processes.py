"""tests/fixtures/processes.py: a test's child never outlives it, on a timeout or a refusal to
stop."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.fixtures.processes import run, stop

# A child that ignores SIGTERM, says so on stdout (and in argv[1], a file, with its pid), then
# sleeps for a minute.
HANGS = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "open(sys.argv[1], 'w').write(str(os.getpid())); print(1, flush=True); time.sleep(60)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_child_past_its_timeout_is_killed_and_reaped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(asyncio.TimeoutError):
        await run(sys.executable, "-c", HANGS, str(pid_file), timeout=5)
    assert not _alive(int(pid_file.read_text()))  # reaped: not even a zombie holds the pid


async def test_a_child_that_ignores_sigterm_is_killed_by_stop(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", HANGS, str(tmp_path / "pid"),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"1\n"  # SIGTERM is ignored from here on
    with pytest.raises(asyncio.TimeoutError):
        await stop(proc, timeout=1)
    assert proc.returncode == -9
    assert not _alive(proc.pid)


async def test_a_child_that_ends_gives_its_status_and_output() -> None:
    rc, out, err = await run(sys.executable, "-c", "import sys; print('out'); sys.exit(3)",
                             timeout=30)
    assert (rc, out, err) == (3, b"out\n", b"")
