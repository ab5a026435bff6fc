"""Build hook only: compile moa's BPF programs so that `pip install .` ships them.

pyproject.toml holds all the metadata; this file adds one step to setuptools' build_py. Every
datapath/bpf/*.bpf.c present at build time (except the test-only ones) is compiled with clang,
with the Makefile's flags, into the build's datapath/bpf/, so the .bpf.o files travel in the
wheel as package data and `datapath.bpf.object_path()` finds them next to the installed module.

Editable installs (`pip install -e .`, as `make setup` does) skip this: they run from the source
tree, where `make bpf` builds the objects next to their sources.

clang is taken from $CLANG (default "clang"; may carry extra words, e.g. "ccache clang-14").
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import CompileError

BPF_PACKAGE = "datapath.bpf"
# Compiled by the tests themselves into private tmp dirs (tests/test_libbpf.py, test_abi.py);
# nothing at run time loads them, so they are not shipped as objects (their sources are).
TEST_ONLY = frozenset({"selftest"})
INSTALL_HINT = ("moa's BPF programs are compiled when moa is installed: they need clang and "
                "libbpf's headers (Debian/Ubuntu: apt-get install clang libbpf-dev), then run "
                "pip install again; `moa doctor` checks both")


def bpf_cflags(src_dir: Path) -> list[str]:
    """The Makefile's BPF_CFLAGS. Debian's clang needs the multiarch include dir for asm/types.h."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return ["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3",
            f"-I/usr/include/{multiarch}", f"-I{src_dir}"]


def bpf_sources(src_dir: Path) -> list[Path]:
    """The programs to ship: *.bpf.c minus the test-only ones, in a stable order."""
    return sorted(p for p in src_dir.glob("*.bpf.c")
                  if p.name.removesuffix(".bpf.c") not in TEST_ONLY)


def object_name(src: Path) -> str:
    return src.name.removesuffix(".c") + ".o"  # x.bpf.c -> x.bpf.o, as `make bpf` names it


def clang_command() -> list[str]:
    words = shlex.split(os.environ.get("CLANG", "clang")) or ["clang"]
    if shutil.which(words[0]) is None:
        raise CompileError(f"{words[0]} not found (set CLANG to use another clang): {INSTALL_HINT}")
    return words


def compile_bpf_objects(src_dir: Path, out_dir: Path,
                        clang: list[str] | None = None) -> list[Path]:
    """Compile every shipped program of `src_dir` into `out_dir`; return the objects' paths."""
    sources = bpf_sources(src_dir)
    if not sources:
        return []
    clang = clang or clang_command()
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = []
    for src in sources:
        obj = out_dir / object_name(src)
        cmd = [*clang, *bpf_cflags(src_dir), "-c", str(src), "-o", str(obj)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:  # e.g. CLANG names something that is not executable
            raise CompileError(f"running {clang[0]} failed ({e}): {INSTALL_HINT}") from None
        if done.returncode != 0:
            raise CompileError(f"compiling {src.name} failed:\n{done.stderr.strip()}\n"
                               f"command: {shlex.join(cmd)}\n{INSTALL_HINT}")
        objects.append(obj)
    return objects


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
            outputs += [str(self._bpf_out_dir() / object_name(src))
                        for src in bpf_sources(self._bpf_src_dir())]
        return outputs

    def _bpf_src_dir(self) -> Path:
        return Path(self.get_package_dir(BPF_PACKAGE)).resolve()

    def _bpf_out_dir(self) -> Path:
        return Path(self.build_lib, *BPF_PACKAGE.split("."))


# setuptools' build backend runs this file as __main__; the tests import it for its functions.
if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithBpf})
