"""Boot the fidelity VM once per batch: thin Python over scripts/vm/{prepare,run}.sh."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]  # moa_bus/lab/vm/runner.py
SCRIPTS = REPO / "scripts" / "vm"
BOOT_FAILURE_RC = 125  # run.sh: the VM never reached cmd.sh


class VmError(RuntimeError):
    """The VM could not be prepared or booted; the message carries the console's tail."""


@dataclass(frozen=True)
class VmImage:
    version: str  # e.g. "6.1.0-56-amd64"
    kernel: Path
    initrd: Path
    kdir: Path


@dataclass(frozen=True)
class VmRun:
    rc: int  # cmd.sh's exit code
    outdir: Path
    wall_s: float  # host wall time of the whole qemu run
    boot_s: float  # guest uptime when cmd.sh started (kernel + init)
    cmd_s: float  # guest time spent in cmd.sh

    @property
    def log(self) -> str:
        return (self.outdir / "cmd.log").read_text(errors="replace")


def prepare() -> VmImage:
    """Run prepare.sh (idempotent; installs and downloads what is missing) and describe the
    image."""
    proc = subprocess.run(
        [str(SCRIPTS / "prepare.sh"), "--print"], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise VmError(f"scripts/vm/prepare.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    kv = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return VmImage(
        version=kv["MOA_VM_VERSION"],
        kernel=Path(kv["MOA_VM_KERNEL"]),
        initrd=Path(kv["MOA_VM_INITRD"]),
        kdir=Path(kv["MOA_VM_KDIR"]),
    )


def _read_float(path: Path) -> float:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return float("nan")


def run_script(
    script: str,
    outdir: Path,
    *,
    timeout_s: int = 900,
    append: str = "",
    env: dict[str, str] | None = None,
    progress: bool = False,
) -> VmRun:
    """Boot once, run `script` (bash) inside with MOA_VM_OUT=outdir, return its exit code and times.

    Raises VmError when the VM does not reach the script (boot failure or timeout), with the
    console's tail: a broken VM must fail loudly, never look like a failed measurement.
    With `progress`, run.sh's ticker (phase, latest step, elapsed time) goes to our stderr.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    cmd = outdir / "cmd.sh"
    cmd.write_text(script)
    run_env = dict(os.environ, **(env or {}))
    run_env["MOA_VM_TIMEOUT"] = str(timeout_s)
    if append:
        run_env["MOA_VM_APPEND"] = append
    if progress:
        run_env["MOA_VM_PROGRESS"] = "1"
    proc = subprocess.run(
        [str(SCRIPTS / "run.sh"), str(cmd), str(outdir)],
        stdout=subprocess.PIPE,
        stderr=None if progress else subprocess.PIPE,  # the ticker needs the real stderr
        text=True,
        env=run_env,
        timeout=timeout_s + 60,
    )
    if proc.returncode == BOOT_FAILURE_RC or not (outdir / "rc").exists():
        said = proc.stderr[-6000:] if proc.stderr is not None else _tail(outdir / "console.log")
        raise VmError(f"VM boot failed (run.sh exit {proc.returncode}):\n{said}")
    boot_s = _read_float(outdir / "boot_s")
    return VmRun(
        rc=proc.returncode,
        outdir=outdir,
        wall_s=_read_float(outdir / "wall_s"),
        boot_s=boot_s,
        cmd_s=_read_float(outdir / "end_s") - boot_s,
    )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "BOOT FAILURE; console.log (tail):\n" + "\n".join(
            path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"BOOT FAILURE; no console log: {e}"
