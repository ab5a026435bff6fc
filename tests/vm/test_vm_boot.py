"""The VM boots Debian's 6.1 kernel, runs a script, returns its exit code, and fails loudly."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from moa_bus.lab.vm import runner

# The first test using the session's boot waits for the whole batch (8-15 min under TCG);
# pytest-timeout counts fixture set-up against that test.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]

NEEDED_MODULES = {"sch_fq", "sch_netem", "bonding", "vxlan", "cls_bpf", "veth", "bridge"}


def test_exit_code_and_output_share(vm_image: runner.VmImage, tmp_path) -> None:
    script = 'uname -r > "$MOA_VM_OUT/uname"; echo from-vm; exit 3\n'
    run = runner.run_script(script, tmp_path, timeout_s=300)
    assert run.rc == 3
    assert (tmp_path / "uname").read_text().strip() == vm_image.version
    assert "from-vm" in run.log
    assert 0 < run.boot_s < 120, run  # guest uptime when the script started


def test_progress_ticker_shows_the_phases(vm_image: runner.VmImage, tmp_path) -> None:
    """Booting and running a batch take minutes under TCG: run.sh says which phase it is in,
    with the elapsed time, on stderr (on a terminal, or with MOA_VM_PROGRESS=1)."""
    script = 'mkdir -p "$MOA_VM_OUT/steps"; touch "$MOA_VM_OUT/steps/warm-up.out"; sleep 5\n'
    (tmp_path / "in.sh").write_text(script)
    proc = subprocess.run([str(runner.SCRIPTS / "run.sh"), str(tmp_path / "in.sh"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=400,
                          env={**os.environ, "MOA_VM_PROGRESS": "1", "MOA_VM_TIMEOUT": "300"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"VM: booting Linux 6\.1\S* under qemu \(tcg\) +\d+s", proc.stderr)
    assert re.search(r"VM: running in\.sh: warm-up +\d+s", proc.stderr), proc.stderr[-2000:]


def test_boot_failure_is_loud(vm_image: runner.VmImage, tmp_path) -> None:
    # A root share tag that does not exist: init cannot mount the host's /, the script never runs.
    with pytest.raises(runner.VmError) as err:
        runner.run_script("exit 0\n", tmp_path, timeout_s=300, append="moa.root=nosuchtag")
    text = str(err.value)
    assert "BOOT FAILURE" in text
    assert "moa-init: FAILED: mount 9p nosuchtag" in text  # the console's tail is in the error


def test_smoke(reference_run) -> None:
    smoke = reference_run.results["smoke"]
    assert smoke["rc"] == 0
    assert smoke["kernel"].startswith("6.1."), smoke["kernel"]
    assert NEEDED_MODULES <= set(smoke["modules"]), NEEDED_MODULES - set(smoke["modules"])
    assert smoke["bpffs"]


def test_every_step_ran(reference_run) -> None:
    steps = reference_run.results["steps"]
    failed = {n: (reference_run.folder / "steps" / f"{n}.err").read_text()[-800:]
              for n, s in steps.items() if s["rc"] != 0}
    assert not failed, failed
    assert {"setup", "latency-baseline-r0", "latency-edt_ref-r2", "capacity-edt_ref",
            "bond-edt_ref", "udp-edt_ref", "moa-serve", "moa-materialize", "latency-moa-r4",
            "capacity-moa", "bond-moa", "udp-moa", "loss-moa-1", "loss-moa-10", "lan-moa-2",
            "lan-netem-2", "update-moa", "update-netem", "iso-moa", "iso-netem", "pvl-latency",
            "pvl-tcp-plan", "moa-final"} <= set(steps)
    assert reference_run.vm.rc == 0
