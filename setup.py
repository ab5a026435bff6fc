"""Build hook only: compile moa's BPF programs so that `pip install .` ships them.

pyproject.toml holds all the metadata; this file adds one step to setuptools' build_py. Every
datapath/bpf/*.bpf.c present at build time (except the test-only ones) is compiled with clang,
by datapath/bpf/build.py (the command `make bpf` runs too), into the build's datapath/bpf/, so the
.bpf.o files travel in the wheel as package data and `datapath.bpf.object_path()` finds them next
to the installed module.

Editable installs (`pip install -e .`, as `make setup` does) skip this: they run from the source
tree, where `make bpf` builds the objects next to their sources.

clang is taken from $CLANG (default "clang"; may carry extra words, e.g. "ccache clang-14").
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import CompileError

BPF_PACKAGE = "datapath.bpf"
# Compiled by the tests themselves into private tmp dirs (tests/fixtures/bpf.py); nothing at run
# time loads them, so they are not shipped as objects (their sources are).
TEST_ONLY = frozenset({"selftest"})
INSTALL_HINT = ("moa's BPF programs are compiled when moa is installed: they need clang and "
                "libbpf's headers (Debian/Ubuntu: apt-get install clang libbpf-dev), then run "
                "pip install again; `moa doctor` checks both")


def _load_bpf_build():
    """datapath/bpf/build.py by path: importing the package would need moa's dependencies,
    which are not installed yet when this runs."""
    path = Path(__file__).resolve().parent / "datapath" / "bpf" / "build.py"
    spec = importlib.util.spec_from_file_location("moa_bpf_build", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bpf_build = _load_bpf_build()


def bpf_sources(src_dir: Path) -> list[Path]:
    """The programs to ship: *.bpf.c minus the test-only ones, in a stable order."""
    return sorted(p for p in src_dir.glob("*.bpf.c")
                  if p.name.removesuffix(".bpf.c") not in TEST_ONLY)


def compile_bpf_objects(src_dir: Path, out_dir: Path,
                        clang: list[str] | None = None) -> list[Path]:
    """Compile every shipped program of `src_dir` into `out_dir`; return the objects' paths."""
    sources = bpf_sources(src_dir)
    if not sources:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        clang = clang or bpf_build.clang_command()
        return [bpf_build.compile_object(src, out_dir / bpf_build.object_name(src),
                                         include_dir=src_dir, clang=clang)
                for src in sources]
    except bpf_build.BpfCompileError as e:
        raise CompileError(f"{e}\n{INSTALL_HINT}") from None


class BuildPyWithBpf(build_py):
    """build_py, then the BPF objects into build_lib (not in editable mode: see the docstring)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for obj in compile_bpf_objects(self._bpf_src_dir(), self._bpf_out_dir()):
            self.announce(f"compiled {obj}", level=2)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if not self.editable_mode:
            outputs += [str(self._bpf_out_dir() / bpf_build.object_name(src))
                        for src in bpf_sources(self._bpf_src_dir())]
        return outputs

    def _bpf_src_dir(self) -> Path:
        return Path(self.get_package_dir(BPF_PACKAGE)).resolve()

    def _bpf_out_dir(self) -> Path:
        return Path(self.build_lib, *BPF_PACKAGE.split("."))


# setuptools' build backend runs this file as __main__; the tests import it for its functions.
if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithBpf})
