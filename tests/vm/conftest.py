"""Fixtures of the VM fidelity tier: the VM is prepared once per session (scripts/vm/prepare.sh
installs and downloads what is missing) and the reference batch boots once per session; the tests
assert on its results. pytest runs on the host; only the network steps run inside the VM."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from moa_bus.lab.vm import e2e, report, runner
from moa_bus.lab.vm.stack_scenarios import MoaConfig


@pytest.fixture(scope="session")
def vm_image() -> runner.VmImage:
    return runner.prepare()


@dataclass(frozen=True)
class ReferenceRun:
    results: dict
    vm: runner.VmRun
    folder: Path


@pytest.fixture(scope="session")
def reference_run(vm_image: runner.VmImage, tmp_path_factory) -> ReferenceRun:
    """One boot: topology with a bond uplink, then latency / capacity / bond / UDP scenarios, each
    with tc-netem and the reference EDT program. A boot failure raises runner.VmError (fails)."""
    work = tmp_path_factory.mktemp("vm-reference")
    # 2,100 s: the batch took 1,304 s in the last CI run before the scale scenario's rounds
    # were balanced (+170 s); pytest's own limit for the first test using it is 2,400.
    results, vm = e2e.run_reference(work, timeout_s=2100)
    report.write_all(results, work / "results")
    # On failure the assertion messages point here: console.log, cmd.log, steps/*.{out,err}.
    print(f"VM reference run in {work}: {json.dumps(results.get('vm'))}")
    return ReferenceRun(results, vm, work)


@pytest.fixture(scope="session")
def flow_run(vm_image: runner.VmImage, tmp_path_factory) -> ReferenceRun:
    """A second boot with `moa serve --p2p-mode flow`: the point-to-point scenarios only
    (e2e.P2P_SCENARIOS), judged by the same tests as the first, and throughput at scale with
    moa_flow full (tests/vm/test_vm_flow_mode.py; netem's side of it runs in the first boot
    only, moa_bus/lab/vm/scale_scenarios.py)."""
    work = tmp_path_factory.mktemp("vm-flow")
    results, vm = e2e.run_reference(work, mcfg=MoaConfig(p2p_mode="flow"),
                                    only=(*e2e.P2P_SCENARIOS, "scale"), timeout_s=2700)
    report.write_all(results, work / "results")
    print(f"VM flow-mode run in {work}: {json.dumps(results.get('vm'))}")
    return ReferenceRun(results, vm, work)
