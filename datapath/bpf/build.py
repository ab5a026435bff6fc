"""How moa's BPF programs are compiled: the one definition of clang's command line.

Three users, hence standard library only and no imports from the package:
- the Makefile: `make bpf` runs this file with the system python3 (it may run before the venv
  exists):  python3 datapath/bpf/build.py SRC OUT
- setup.py: loads this file by path (it runs before moa or its dependencies are installed);
- the tests that compile their own programs (tests/fixtures/bpf.py).

clang is taken from $CLANG (default "clang"; may carry extra words, e.g. "ccache clang-14").
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent


class BpfCompileError(Exception):
    """clang is missing or failed; the message names the file, clang's errors and the command."""


def cflags(include_dir: Path = BPF_DIR) -> list[str]:
    """-mcpu=v3: alu32, jmp32 and full atomics (the EDT cmpxchg needs them). Debian's clang
    needs the multiarch include dir for asm/types.h. `include_dir` holds moa's headers."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return ["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3",
            f"-I/usr/include/{multiarch}", f"-I{include_dir}"]


def object_name(src: Path) -> str:
    """x.bpf.c -> x.bpf.o, the name `datapath.bpf.object_path()` looks for."""
    return src.name.removesuffix(".c") + ".o"


def clang_command() -> list[str]:
    words = shlex.split(os.environ.get("CLANG", "clang")) or ["clang"]
    if shutil.which(words[0]) is None:
        raise BpfCompileError(f"{words[0]} not found (set CLANG to use another clang)")
    return words


def compile_object(src: Path, out: Path, include_dir: Path = BPF_DIR,
                   clang: Sequence[str] | None = None) -> Path:
    """Compile `src` into the object `out`; return `out`."""
    clang = list(clang or clang_command())
    cmd = [*clang, *cflags(include_dir), "-c", str(src), "-o", str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:  # e.g. CLANG names something that is not executable
        raise BpfCompileError(f"running {clang[0]} failed ({e})") from None
    if done.returncode != 0:
        raise BpfCompileError(f"compiling {Path(src).name} failed:\n{done.stderr.strip()}\n"
                              f"command: {shlex.join(cmd)}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {sys.argv[0]} SRC.bpf.c OUT.bpf.o", file=sys.stderr)
        return 2
    src, out = Path(argv[0]), Path(argv[1])
    try:
        compile_object(src, out)
    except BpfCompileError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
