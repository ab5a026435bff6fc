"""The end-to-end run: one VM boot, moa's real stack (moa serve with embedded NATS in the box
namespace, links materialized through NATS) and the comparison shapers (tc-netem, the reference
EDT program) on the same testbed; results JSON + plots. Usable as `moa bench e2e`
(add_arguments/run) or `python -m moa_bus.lab.vm.e2e`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

from . import moa_stack, report, runner
from .shaper_scenarios import E2eConfig, ShaperFn, ShaperScenarios, edt_ref_shaper, netem_shaper
from .stack_results import StackResults
from .impairment_scenarios import ImpairmentScenarios
from .netem_features import NetemFeatures
from .scale_scenarios import ScaleScenarios
from .stack_scenarios import MoaConfig, StackScenarios
from .schedule_scenario import ScheduleScenario
from .trace_scenario import TraceScenario
from .batch import Batch, results as step_results

DEFAULT_RESULTS = runner.REPO / "results" / "e2e"


def shapers(objdir: Path) -> tuple[dict[str, ShaperFn], list[str]]:
    """(comparison shapers by name, the ones whose queue sits on the bond's slaves)."""
    return ({"netem": netem_shaper, "edt_ref": edt_ref_shaper(objdir)},
            ["edt_ref"])


def _scenarios(workdir: Path, cfg: E2eConfig,
               mcfg: MoaConfig) -> tuple[ShaperScenarios, StackScenarios]:
    tb = moa_stack.testbed("mve")  # alone in the VM: no other helper's names to avoid
    all_shapers, bond_shapers = shapers(workdir)
    bridges = [(name, [vni for _, vni, _ in members])
               for name, members in moa_stack.COMPARISON_BRIDGES]
    sc = ShaperScenarios(tb, cfg, all_shapers, bond_shapers, bridges=bridges)
    ms = StackScenarios(sc, mcfg, moa_stack.MoaStack(tb, p2p_mode=mcfg.p2p_mode),
                        moa_stack.write_doc(workdir))
    sc.round_hooks.append(ms.latency_round)
    return sc, ms


# The scenarios of point-to-point links only (the LAN's, the P2P-against-LAN comparison and
# the held LAN member's rollback have none): what a flow-mode boot runs.
P2P_SCENARIOS = ("latency", "capacity", "udp", "loss", "update", "isolation", "long_latency",
                 "distributions", "link_state", "access", "aqm")
SCENARIOS = ("latency", "capacity", "udp", "loss", "lan", "update", "isolation", "p2p_vs_lan",
             "rollback", "long_latency", "distributions", "link_state", "access", "aqm", "features",
             "trace", "schedule", "scale")


def impairments(sc: ShaperScenarios, ms: StackScenarios) -> ImpairmentScenarios:
    """Issue 13's scenarios on the same testbed; netem on the plain bridge lan0."""
    (_, lan0), = [(n, m) for n, m in moa_stack.COMPARISON_BRIDGES if n == "lan0"]
    (_, v1, _), (_, v2, addr2) = lan0
    return ImpairmentScenarios(sc.tb, ms.stack, (v1, v2), addr2.split("/")[0])


def scale(sc: ShaperScenarios, ms: StackScenarios) -> ScaleScenarios:
    """Issue 16's throughput at scale; netem + HTB on the plain bridge lan0 towards hv2."""
    (_, lan0), = [(n, m) for n, m in moa_stack.COMPARISON_BRIDGES if n == "lan0"]
    (_, _, _), (_, v2, addr2) = lan0
    return ScaleScenarios(sc.tb, ms.stack, v2, addr2.split("/")[0])


def features(sc: ShaperScenarios, ms: StackScenarios) -> NetemFeatures:
    """Issue 13's duplicate, reorder and slots beside netem's, netem on lan0 towards hv2."""
    (_, lan0), = [(n, m) for n, m in moa_stack.COMPARISON_BRIDGES if n == "lan0"]
    (_, _, _), (_, v2, addr2) = lan0
    return NetemFeatures(sc.tb, ms.stack, v2, addr2.split("/")[0])


def full_batch(sc: ShaperScenarios, ms: StackScenarios,
               only: Collection[str] | None = None) -> Batch:
    """Set-up, moa's service and links, then every scenario (core first: latency, capacity,
    bond, UDP, loss; then the LAN case, the runtime update, isolation, P2P vs LAN), or only
    those named in `only` (SCENARIOS; a quicker boot while working on one of them)."""
    unknown = set(only or ()) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")

    def want(name: str) -> bool:
        return only is None or name in only

    batch = Batch()
    sc.smoke(batch, python=False)  # moa serve's start-up time is measured instead
    sc.setup(batch, [])
    ms.start(batch)
    if want("latency"):
        sc.latency(batch)
    if want("capacity"):  # the bond's scenario included
        sc.capacity(batch)
        ms.capacity(batch)
    if want("udp"):
        sc.udp(batch)
        ms.udp(batch)
    for name in ("loss", "lan", "update", "isolation", "p2p_vs_lan", "rollback", "long_latency"):
        if want(name):
            getattr(ms, name)(batch)
    ims = impairments(sc, ms)
    for name in ("distributions", "link_state", "access", "aqm"):
        if want(name):
            getattr(ims, name)(batch)
    if want("features"):
        features(sc, ms).features(batch)
    if want("trace"):
        TraceScenario(sc.tb, ms.stack).trace(batch)
    if want("schedule"):
        ScheduleScenario(sc.tb, ms.stack).schedule(batch)
    if want("scale"):  # last: it fills the classifier's map past the service
        scale(sc, ms).scale(batch)
    ms.finish(batch)
    return batch


def analyse(sc: ShaperScenarios, ms: StackScenarios, workdir: Path) -> dict:
    out = sc.analyse(workdir)
    steps = step_results(workdir)
    StackResults(ms).analyse(workdir, steps, out)
    ok = {n: s for n, s in steps.items() if s.rc == 0}
    out.update(impairments(sc, ms).analyse(ok))
    out["scale"] = scale(sc, ms).analyse(ok)
    out["features"] = features(sc, ms).analyse(ok)
    out["trace"] = TraceScenario(sc.tb, ms.stack).analyse(ok)
    out["schedule"] = ScheduleScenario(sc.tb, ms.stack).analyse(ok)
    out["p2p_mode"] = ms.stack.p2p_mode
    m = ok.get("moa-materialize")
    try:  # the box's VXLAN devices with every link up (flow mode: the LANs' only)
        out["box_vxlan_devices"] = sorted(d["ifname"] for d in
                                          json.loads(m.file(".vxlan.json").read_text()))
    except (AttributeError, OSError, ValueError, KeyError):
        out["box_vxlan_devices"] = None
    return out


def run_reference(
    workdir: Path, cfg: E2eConfig | None = None, *, timeout_s: int = 1800,
    mcfg: MoaConfig | None = None, only: Collection[str] | None = None,
) -> tuple[dict, runner.VmRun]:
    """Boot once, run every scenario with moa and the comparison shapers; results include the
    VM's timings and the host's load."""
    cfg = cfg or E2eConfig()
    image = runner.prepare()
    sc, ms = _scenarios(workdir, cfg, mcfg or MoaConfig())
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    run = runner.run_script(full_batch(sc, ms, only).script(), workdir, timeout_s=timeout_s,
                            progress=sys.stderr.isatty())
    results = analyse(sc, ms, workdir)
    results["vm"] = _vm_info(image.version, run, time.monotonic() - t0)
    # The VM's 2 vCPUs share the host's cores: other load shows up as late timers and slow
    # receivers in every shaper alike. Recorded so a failed tolerance can be read against it.
    results["vm"]["host_loadavg_before"] = load0
    results["vm"]["host_loadavg_after"] = os.getloadavg()[0]
    results["vm"]["host_cpus"] = os.cpu_count()
    (workdir / "vm.json").write_text(json.dumps(results["vm"]))
    return results, run


def _vm_info(version: str, run: runner.VmRun, host_s: float) -> dict:
    return {
        "kernel": version,
        "accel": (run.outdir / "accel").read_text().strip(),
        "boot_s": run.boot_s,
        "batch_s": run.cmd_s,
        "wall_s": run.wall_s,
        "host_s": host_s,
        "rc": run.rc,
    }


def reanalyse(workdir: Path, cfg: E2eConfig | None = None,
              mcfg: MoaConfig | None = None) -> dict:
    """Results of an earlier run kept with --keep, without booting again (mcfg: the boot's
    mode, as it was given: --p2p-mode)."""
    sc, ms = _scenarios(workdir, cfg or E2eConfig(), mcfg or MoaConfig())
    results = analyse(sc, ms, workdir)
    results["vm"] = json.loads((workdir / "vm.json").read_text())
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help=f"results folder (default {DEFAULT_RESULTS})")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the VM's working folder here (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print the results JSON")
    p.add_argument("--only", default=None, metavar="NAMES",
                   help=f"comma-separated scenarios to run (of {', '.join(SCENARIOS)}); "
                        "default: all")
    p.add_argument("--p2p-mode", choices=("vtep", "flow"), default="vtep",
                   help="moa serve's mode for point-to-point links in this boot (default vtep, "
                        "though moa serve's own default is flow: the reference boot runs every "
                        "scenario, LANs included, in VTEP mode; `make test` boots a second time "
                        "in flow mode for the point-to-point scenarios and scale)")
    p.add_argument("--reanalyse", type=Path, default=None, metavar="KEPT",
                   help="write results and plots from a folder kept with --keep, no boot")


def run(args: argparse.Namespace) -> int:
    if args.reanalyse:
        results = reanalyse(args.reanalyse, mcfg=MoaConfig(p2p_mode=args.p2p_mode))
        files = report.write_all(results, args.results)
        print("\n".join(f"{k}: {f}" for k, f in files.items()))
        return 0 if results["vm"]["rc"] == 0 else 1
    with tempfile.TemporaryDirectory(prefix="moa-e2e-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        only = args.only.split(",") if args.only else None
        results, vm = run_reference(workdir, only=only,
                                    mcfg=MoaConfig(p2p_mode=args.p2p_mode))
        files = report.write_all(results, args.results)
    summary = {k: v for k, v in results.items() if k not in ("samples", "steps")}
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        for k, f in files.items():
            print(f"{k}: {f}")
        print(f"VM: boot {vm.boot_s:.1f} s, batch {vm.cmd_s:.1f} s, wall {vm.wall_s:.1f} s")
    return 0 if vm.rc == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moa_bus.lab.vm.e2e")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
