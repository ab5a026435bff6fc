"""Progress while a client waits for a long reply (materializing thousands of links).

The service answers a Materialize once, when the whole plan is applied; it publishes no progress
on the way. So the client shows what it knows: what it sent, a spinner and the time elapsed, on
stderr, only when stderr is a terminal (scripts and pipes get exactly the output they had).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class Waiting:
    """`with Waiting("materializing 5000 links") as w: ...`; `w.stop()` before printing a reply.

    The display is transient (gone once stopped) and leaves stdout alone, so a reply printed
    there afterwards is exactly what it would be without it.
    """

    def __init__(self, label: str, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = self.console.is_terminal
        self._progress: Progress | None = None
        self.label = label

    def __enter__(self) -> "Waiting":
        if self.enabled:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                console=self.console, transient=True, redirect_stdout=False, redirect_stderr=True)
            self._progress.add_task(self.label, total=None)
            self._progress.start()
        return self

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def then(self, show: Callable[[Any], None]) -> Callable[[Any], None]:
        """`show`, preceded by taking the display away (for client.run_request's show=)."""
        def wrapped(reply: Any) -> None:
            self.stop()
            show(reply)
        return wrapped


def describe_materialize(m: Any) -> str:
    """"5,000 link(s), 10,000 endpoint(s) of ID" for a schemas.Materialize."""
    endpoints = sum(len(link.endpoints) for link in m.links)
    return f"{len(m.links):,} link(s), {endpoints:,} endpoint(s) of {m.id}"
