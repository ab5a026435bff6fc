"""What the demo prints: its lines and steps, and `moa show`'s table fitted to the terminal."""
from __future__ import annotations

from dataclasses import dataclass, field

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text


def indent(text: str, n: int = 3) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


@dataclass
class Output:
    console: Console = field(default_factory=Console)

    def say(self, text: str = "", style: str | None = None) -> None:
        self.console.print(text, style=style, highlight=False, markup=False, soft_wrap=True)

    def step(self, text: str) -> None:
        self.console.print()
        self.console.print(Text(f"== {text}", style="bold cyan"), soft_wrap=True)


def fit_table(table: Table, width: int) -> Table:
    """`moa show`'s table, narrowed for a terminal under 140 columns: the demo has a single
    materialization and names its links after their kind, so those columns go first."""
    if width >= 140:
        return table
    for name in ("materialization", "kind", "jitter", "bytes"):
        for i, col in enumerate(table.columns):
            if col.header == name:
                del table.columns[i]  # a column holds its own cells: the rows shrink with it
                break
    table.box = box.SIMPLE_HEAD
    return table
