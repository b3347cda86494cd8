"""PNG plots of a benchmark result (matplotlib, Agg backend: no display needed).

* ``throughput.png`` — crops/s per reader: bar at the median, error bar over the IQR,
  min–max marked by dots.
* ``latency.png`` — batch latency distribution per reader (box plot with every repeat
  drawn as a point).
* ``utilisation.png`` — GPU utilisation over time when NVML sampled the run, otherwise
  CPU utilisation of the process; each timed batch is shaded in its reader's colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _ok_readers(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, e) for name, e in result["readers"].items() if e["status"] == "ok"]


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(result: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    readers = _ok_readers(result)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(readers) + 2), 4))
    labels = [e["label"] for _, e in readers]
    medians = [e["metrics"]["crops_per_s"]["median"] for _, e in readers]
    lower = [m - e["metrics"]["crops_per_s"]["p25"] for m, (_, e) in zip(medians, readers, strict=True)]
    upper = [e["metrics"]["crops_per_s"]["p75"] - m for m, (_, e) in zip(medians, readers, strict=True)]
    x = list(range(len(readers)))
    ax.bar(x, medians, yerr=[lower, upper], capsize=6, color=[_COLOURS[i % len(_COLOURS)] for i in x])
    for i, (_, e) in enumerate(readers):
        ax.plot([i, i], [e["metrics"]["crops_per_s"]["min"], e["metrics"]["crops_per_s"]["max"]], "k.", ms=4)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel("crops / s (median, IQR; dots: min/max)")
    cfg = result["config"]
    ax.set_title(f"{result['preset']}: batch {cfg['batch_size']} × {cfg['crop'][0]}×{cfg['crop'][1]} crops")
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def plot_latency(result: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    readers = _ok_readers(result)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(readers) + 2), 4))
    data = [[s * 1e3 for s in e["batch_seconds"]] for _, e in readers]
    if data:
        ax.boxplot(data, showfliers=False)
        for i, values in enumerate(data, start=1):
            ax.plot([i] * len(values), values, ".", color=_COLOURS[(i - 1) % len(_COLOURS)], alpha=0.7)
        ax.set_xticks(range(1, len(data) + 1), [e["label"] for _, e in readers], rotation=20, ha="right")
    ax.set_ylabel("batch latency (ms)")
    ax.set_title(f"{result['preset']}: latency per batch")
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def plot_utilisation(result: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    gpu_samples = result["timeline"]["gpu"]
    use_gpu = bool(gpu_samples) and any(s.get("gpu_util_percent") is not None for s in gpu_samples)
    samples = gpu_samples if use_gpu else result["timeline"]["cpu"]
    key = "gpu_util_percent" if use_gpu else "cpu_percent"
    fig, ax = plt.subplots(figsize=(9, 3.6))
    readers = _ok_readers(result)
    colours = {name: _COLOURS[i % len(_COLOURS)] for i, (name, _) in enumerate(readers)}
    # Shade every timed batch by the reader that ran it (exact spans recorded by the runner).
    for span in result["timeline"].get("batches", []):
        if span["reader"] in colours:
            ax.axvspan(span["start"], span["end"], color=colours[span["reader"]], alpha=0.25, lw=0)
    ax.step([s["t"] for s in samples], [s.get(key) or 0.0 for s in samples], where="post", color="black", lw=1)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.35) for c in colours.values()]
    if handles:
        ax.legend(handles, [e["label"] for _, e in readers], fontsize=7, loc="upper right", ncol=2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("GPU utilisation (%)" if use_gpu else "process CPU (% of all cores)")
    ax.set_ylim(0, 105)
    ax.set_title("GPU utilisation (NVML) over the run" if use_gpu
                 else "CPU utilisation of the process over the run (no GPU monitoring)")
    return _save(plt, fig, path)


def write_plots(result: dict[str, Any], out_dir: str | Path, prefix: str = "") -> dict[str, str]:
    """Write the three PNGs into ``out_dir`` and return their paths by plot name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "throughput": str(plot_throughput(result, out / f"{prefix}throughput.png")),
        "latency": str(plot_latency(result, out / f"{prefix}latency.png")),
        "utilisation": str(plot_utilisation(result, out / f"{prefix}utilisation.png")),
    }
