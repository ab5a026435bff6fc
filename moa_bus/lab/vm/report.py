"""Results of an end-to-end run: one JSON file and PNG plots in a results folder."""
from __future__ import annotations

import json
import math
from pathlib import Path


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


def write_all(results: dict, folder: Path) -> dict[str, Path]:
    """results.json (without raw samples), samples.json, latency_cdf.png, goodput.png."""
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
    return files
