"""Results of an end-to-end run: one JSON file and PNG plots in a results folder."""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import measure


def write_json(results: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=True, default=_nan_safe) + "\n")
    return path


def _nan_safe(o: object) -> object:
    return None if isinstance(o, float) and math.isnan(o) else str(o)


def plot_latency_cdf(added_ms: dict[str, list[float]], configured_ms: float, path: Path) -> Path:
    """CDF of the added one-way delay per shaper, with the configured value as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, values in sorted(added_ms.items()):
        s = sorted(values)
        if s:
            ax.step(s, [(i + 1) / len(s) for i in range(len(s))], where="post",
                    label=f"{name} (n={len(s)})")
    ax.axvline(configured_ms, color="black", linestyle="--", label=f"configured {configured_ms} ms")
    ax.set_xlabel("added one-way delay (ms): RTT - baseline median RTT "
                  "(every shaper: the direction towards hv2)")
    ax.set_ylabel("fraction of probes")
    ax.set_title("Added delay, 20 ms configured (VM, same boot)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    lo = min([configured_ms] + [min(v) for v in added_ms.values() if v])
    ax.set_xlim(lo - 1.0, configured_ms + 5.0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_goodput(goodput_mbps: dict[str, list[float]], configured_mbps: float, theory_mbps: float,
                 path: Path) -> Path:
    """TCP goodput per iperf3 interval (1 s) per shaper, with the configured rate and theory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, values in sorted(goodput_mbps.items()):
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.axhline(configured_mbps, color="black", linestyle="--",
               label=f"configured {configured_mbps}")
    ax.axhline(theory_mbps, color="gray", linestyle=":", label=f"payload theory {theory_mbps:.2f}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("TCP goodput (Mbit/s)")
    ax.set_ylim(0, configured_mbps * 1.2)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def scale_sides(scale: dict) -> dict[str, tuple[list[float], float | None, float | None]]:
    """A boot's throughput-at-scale sides (moa in the boot's mode; netem + HTB in a VTEP-mode
    boot): label -> (the rounds' ratios, CPU s per GB with 1 link, with many)."""
    n = scale.get("links", 65_534)
    mode = scale.get("p2p_mode", "vtep")
    sides = {f"moa, {mode} mode, {n:,} links": (
        scale.get(f"{mode}_tput_ratio_65534_by_round") or [],
        scale.get("moa_1_cpu_s_per_gb"), scale.get(f"moa_{n}_cpu_s_per_gb"))}
    for key, ratios in scale.items():
        if key.startswith("netem_tput_ratio_") and key.endswith("_by_round") and ratios:
            filters = key.removeprefix("netem_tput_ratio_").removesuffix("_by_round")
            sides[f"netem + HTB, {int(filters):,} filters"] = (
                ratios, scale.get("netem_1_cpu_s_per_gb"),
                scale.get(f"netem_{filters}_cpu_s_per_gb"))
    return sides


def plot_scale(sides: dict[str, tuple[list[float], float | None, float | None]],
               bound: float, path: Path) -> Path:
    """Throughput at scale: each side's rounds' ratios (many / 1 link) with their mean + 2 SE,
    the bound as a line; beside it each side's VM CPU time per GB, 1 link against many."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, cx) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110,
                                 gridspec_kw={"width_ratios": [3, 2]})
    labels = list(sides)
    for i, label in enumerate(labels):
        ratios = sides[label][0]
        ax.plot([i] * len(ratios), ratios, "o", alpha=0.6)
        if len(ratios) > 1:
            ax.plot([i - 0.25, i + 0.25], [measure.mean_plus_2se(ratios)] * 2,
                    color="black", label="mean + 2 SE" if i == 0 else None)
    ax.axhline(bound, color="red", linestyle="--", label=f"bound {bound} (mean + 2 SE must reach)")
    ax.set_xticks(range(len(labels)), [lb.replace(", ", "\n", 1) for lb in labels], fontsize=8)
    ax.set_ylabel("throughput, many / 1 (per round)")
    ax.set_ylim(0, max([1.3] + [r for v in sides.values() for r in v[0]]) * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    width = 0.38
    for i, label in enumerate(labels):
        _, one, many = sides[label]
        cx.bar(i - width / 2, one or 0, width, color="tab:blue", label="1" if i == 0 else None)
        cx.bar(i + width / 2, many or 0, width, color="tab:orange",
               label="many" if i == 0 else None)
    cx.set_xticks(range(len(labels)), ["\n".join(lb.split(", ")[:2]) for lb in labels],
                  fontsize=8)
    cx.set_ylabel("VM CPU s per GB received")
    cx.legend(fontsize=8)
    cx.grid(alpha=0.3, axis="y")
    fig.suptitle("One TCP flow through the box, 1 link against a full map (VM, TCG)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_all(results: dict, folder: Path) -> dict[str, Path]:
    """results.json (without raw samples), samples.json, latency_cdf.png, goodput.png,
    scale.png."""
    samples = results.get("samples", {})
    summary = {k: v for k, v in results.items() if k != "samples"}
    files = {
        "results": write_json(summary, folder / "results.json"),
        "samples": write_json(samples, folder / "samples.json"),
    }
    if samples.get("latency_added_ms"):
        files["latency_cdf"] = plot_latency_cdf(
            samples["latency_added_ms"], results["latency"]["configured_ms"],
            folder / "latency_cdf.png")
    if samples.get("goodput_mbps"):
        cap = results["capacity"]
        files["goodput"] = plot_goodput(samples["goodput_mbps"], cap["configured_mbps"],
                                        cap["theory_goodput_mbps"], folder / "goodput.png")
    if results.get("scale"):
        files["scale"] = plot_scale(scale_sides(results["scale"]), 0.95, folder / "scale.png")
    return files
