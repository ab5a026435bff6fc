"""BPF sources and their compiled objects (built by `make bpf`, shipped as package data)."""
from __future__ import annotations

from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent


def object_path(name: str) -> str:
    """Path of the compiled object `name` (e.g. "tc_classifier" -> tc_classifier.bpf.o)."""
    path = BPF_DIR / f"{name}.bpf.o"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: in a source checkout run `make bpf`; an installed moa ships it "
            "(reinstall with `pip install .`, which needs clang and libbpf-dev)")
    return str(path)
