"""The style rules are checked, not only declared. Python: pyproject.toml's [tool.ruff.lint]
(lines within 100 columns, pyflakes's unused imports and undefined names), run by ruff, a test
dependency. C (datapath/bpf/): lines within 100 columns with tabs at 8, the kernel's limit.
A failure lists every finding with its file and line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = 100


def test_ruff_finds_nothing() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    assert ruff.exists(), f"{ruff}: ruff is in pyproject's test extra (make setup installs it)"
    out = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "."],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_bpf_sources_keep_within_100_columns() -> None:
    sources = sorted((ROOT / "datapath" / "bpf").glob("*.[ch]"))
    assert sources
    long = [f"{p.relative_to(ROOT)}:{n}: {len(line.expandtabs(8))} columns"
            for p in sources for n, line in enumerate(p.read_text().splitlines(), 1)
            if len(line.expandtabs(8)) > COLUMNS]
    assert long == [], "\n".join(long)
