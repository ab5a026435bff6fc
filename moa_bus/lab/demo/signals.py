"""Signals while the demo runs: SIGINT raises KeyboardInterrupt and SIGTERM/SIGHUP raise Stopped,
so every cleanup step runs; inside `critical()` (starting a process and recording it) a signal
waits until the section ends, so no child can be started without the cleanup knowing about it.
"""
from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Stopped(BaseException):
    """SIGTERM/SIGHUP arrived: unwind like Ctrl-C does, so every cleanup step runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    depth = 0
    pending: int | None = None

    @classmethod
    def handler(cls, signum: int, _frame: object) -> None:
        if cls.depth:
            cls.pending = signum
            return
        cls.raise_for(signum)

    @staticmethod
    def raise_for(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)


handler = _Signals.handler  # for on_stop_signals while the demo runs


@contextmanager
def critical() -> Iterator[None]:
    _Signals.depth += 1
    try:
        yield
    finally:
        _Signals.depth -= 1
        if not _Signals.depth and _Signals.pending is not None:
            signum, _Signals.pending = _Signals.pending, None
            _Signals.raise_for(signum)


@contextmanager
def on_stop_signals(action: Any) -> Iterator[None]:
    """`action` for SIGINT, SIGTERM and SIGHUP while inside; the previous ones after."""
    old = {s: signal.signal(s, action) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
