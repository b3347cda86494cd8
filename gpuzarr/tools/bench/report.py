"""Turning a benchmark result into what people read: a terminal table and a JSON file.

:func:`render_table` prints one row per reader (rich), skipped and failed readers with
their reason; :func:`throughput_table` is the short crops/s + GB/s version ``gpuzarr
demo`` ends with; :func:`write_json` saves the whole result (environment included).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _rate(metric: dict[str, float], digits: int = 1) -> str:
    return f"{_fmt(metric['median'], digits)} [{_fmt(metric['p25'], digits)}–{_fmt(metric['p75'], digits)}]"


def _zarr_python_crops_per_s(readers: dict[str, Any]) -> float | None:
    """The baseline every speed-up is relative to: zarr-python's default pipeline."""
    entry = readers.get("zarr-python")
    if entry and entry.get("status") == "ok":
        return float(entry["metrics"]["crops_per_s"]["median"])
    return None


def _title(result: dict[str, Any]) -> str:
    ds, cfg = result["dataset"], result["config"]
    crop = "x".join(str(c) for c in cfg["crop"])
    from rich.markup import escape

    return escape(f"gpuzarr bench [{result['preset']}]: batches of {cfg['batch_size']} random {crop} crops of "
            f"{ds['array_path']} {tuple(ds['shape'])} {ds['dtype']}, chunks {tuple(ds['chunks'])}, "
            f"{cfg['repeats']} repeats (median [IQR])")


def make_console() -> Any:
    """A rich console; wide when writing to a file or pipe, so tables are not folded."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)


def render_table(result: dict[str, Any], console: Any = None) -> None:
    """Print the full per-reader table (throughput, latency, resources)."""
    from rich.markup import escape
    from rich.table import Table

    console = console or make_console()
    readers = result["readers"]
    baseline = _zarr_python_crops_per_s(readers)
    gpu = result["monitoring"]["gpu"] is not None
    console.print(_title(result))
    table = Table()
    for column, justify in (("reader", "left"), ("crops/s", "right"), ("vs zarr", "right"),
                            ("decoded GB/s", "right"), ("compressed GB/s", "right"),
                            ("p50/p95/p99 ms", "right"), ("CPU % proc/sys", "right"), ("peak RSS MB", "right"),
                            ("cache hits", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    if gpu:
        for column in ("GPU %", "GPU mem MB", "PCIe rx MB/s", "SM MHz", "W"):
            table.add_column(column, justify="right")
    not_timed = []
    for entry in readers.values():
        if entry["status"] != "ok":
            style = "yellow" if entry["status"] == "skipped" else "red"
            table.add_row(entry["label"], f"[{style}]{entry['status']}[/]")
            not_timed.append(f"[{style}]{entry['status']}[/] {escape(entry['label'])}: {escape(entry['reason'])}")
            continue
        m = entry["metrics"]
        speedup = "n/a" if baseline is None else f"{m['crops_per_s']['median'] / baseline:.2f}x"
        lat = m["latency_ms"]
        hit = m["cache_hit_rate"]
        row = [
            entry["label"],
            _rate(m["crops_per_s"]),
            speedup,
            _rate(m["decoded_gb_s"], 2),
            _rate(m["compressed_gb_s"], 2),
            f"{_fmt(lat['p50'])}/{_fmt(lat['p95'])}/{_fmt(lat['p99'])}",
            f"{_fmt(m['cpu_util_percent'], 0)}/{_fmt(m.get('system_cpu_percent_mean'), 0)}",
            _fmt(m["peak_rss_mb"], 0),
            "n/a" if hit is None else f"{hit:.0%}",
        ]
        if gpu:
            g = m["gpu"] or {}
            row += [_fmt(g.get("util_percent_mean"), 0), _fmt(g.get("mem_used_mb_max"), 0),
                    _fmt(g.get("pcie_rx_mb_s_mean"), 0), _fmt(g.get("sm_clock_mhz_mean"), 0),
                    _fmt(g.get("power_w_mean"), 0)]
        table.add_row(*row)
    console.print(table)
    for line in not_timed:
        console.print(line)
    ratio = result["dataset"]["compression_ratio"]
    env = result["environment"]
    load = env.get("load_average") or {}
    console.print(
        f"dataset {result['dataset']['location']} (compression ratio {_fmt(ratio, 2)}x); "
        f"CPU {env['cpu']['model']} x{env['cpu']['usable_cores']}, load average before/after "
        f"{(load.get('before') or ['n/a'])[0]}/{(load.get('after') or ['n/a'])[0]}; "
        f"GPU {', '.join(d['name'] for d in env['gpu']['devices']) or 'none'}"
        + ("" if gpu else f" (no GPU monitoring: {result['monitoring']['gpu_unavailable_reason']})")
    )


def throughput_table(result: dict[str, Any], console: Any = None) -> None:
    """Print the short table ``gpuzarr demo`` ends with: crops/s and GB/s per reader."""
    from rich.markup import escape
    from rich.table import Table

    console = console or make_console()
    console.print(_title(result))
    table = Table()
    table.add_column("reader")
    table.add_column("crops/s", justify="right")
    table.add_column("output GB/s", justify="right")
    table.add_column("decoded GB/s", justify="right")
    not_timed = []
    for entry in result["readers"].values():
        if entry["status"] != "ok":
            table.add_row(entry["label"], entry["status"], "", "")
            not_timed.append(escape(f"{entry['status']} {entry['label']}: {entry['reason']}"))
            continue
        m = entry["metrics"]
        table.add_row(entry["label"], _fmt(m["crops_per_s"]["median"]), _fmt(m["output_gb_s"]["median"], 2),
                      _fmt(m["decoded_gb_s"]["median"], 2))
    console.print(table)
    for line in not_timed:
        console.print(line)


def save_outputs(result: dict[str, Any], out_dir: str | Path, *, plots: bool = True) -> dict[str, str]:
    """Write ``bench-<preset>.json`` (and the PNG plots) into ``out_dir``; return the paths.

    The paths are also recorded in ``result["files"]`` before the JSON is written. Without
    matplotlib the plots are skipped and ``result["plots_skipped"]`` says why.
    """
    out = Path(out_dir)
    prefix = f"bench-{result['preset']}-"
    files: dict[str, str] = {}
    if plots and importlib.util.find_spec("matplotlib") is None:
        result["plots_skipped"] = "matplotlib is not installed (pip install 'gpuzarr[bench]')"
    elif plots:
        from gpuzarr.tools.bench.plots import write_plots

        files.update(write_plots(result, out, prefix=prefix))
    files["json"] = str(out / f"bench-{result['preset']}.json")
    result["files"] = files
    write_json(result, files["json"])
    return files


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Write ``result`` as indented JSON (NaN written as null) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_result(result) + "\n", encoding="utf-8")
    return path


def dumps_result(result: dict[str, Any]) -> str:
    """``result`` as indented, strictly valid JSON text."""
    return json.dumps(_json_safe(result), indent=2, allow_nan=False)


def _json_safe(value: Any) -> Any:
    """Plain JSON: tuples as lists, NaN/inf as null, NumPy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
