"""Training-loader throughput: gpuzarr's torch loaders vs a stock DataLoader over zarr-python (and zarrdataset).

The same epoch of random crops (one ``RandomCrops`` list, identical for every reader) of
the demo dataset's ``raw`` array, in batches, on the CPU:

* ``ZarrLoader``: :class:`gpuzarr.torch.ZarrLoader` (one read_batch per batch, read ahead
  on a thread);
* ``RegionDataset + DataLoader(num_workers=2)``: the stock DataLoader over
  :class:`gpuzarr.torch.RegionDataset` (``__getitems__``: one read_batch per batch);
* ``zarr-python + DataLoader(num_workers=2)``: the usual map-style dataset whose
  ``__getitem__`` slices a ``zarr.Array`` for one crop;
* ``zarrdataset`` (PyPI peer) when it is installed in the same environment; listed with
  the reason when not.

Each reader's batches are checked against zarr-python before its result counts. CPU % is
the CPU time of this process and its (worker) children over the wall time, per core
(100 % = one core busy). Prints a table and writes JSON (``--out``).

    python benchmarks/bench_loader.py                      # 6 frames 1080x1920, 512 crops of 256x256, batches of 32
    python benchmarks/bench_loader.py --frames 8 --crop 512 --samples 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data
import zarr

import gpuzarr
import gpuzarr.torch as gt
from gpuzarr.tools.demo import ensure_demo_dataset


class ZarrCrops(torch.utils.data.Dataset):
    """The stock pattern: one crop per ``__getitem__``, sliced from a zarr-python array."""

    def __init__(self, path: str, regions: list[tuple[Any, ...]]) -> None:
        self.path = path
        self.regions = regions
        self._array: Any = None

    def __len__(self) -> int:
        return len(self.regions)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._array is None:  # opened in the worker
            self._array = zarr.open_array(self.path, mode="r")
        return torch.from_numpy(np.ascontiguousarray(self._array[self.regions[i]]))


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(name: str, make_batches: Any, reference: list[np.ndarray]) -> dict[str, Any]:
    """One epoch through ``make_batches()``: samples/s and CPU %, batches checked against ``reference``."""
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    samples, batches = 0, []
    for batch in make_batches():
        batches.append(batch)
        samples += len(batch)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    got = np.concatenate([np.asarray(b) for b in batches])
    want = np.concatenate(reference)
    if got.shape != want.shape or not np.array_equal(got, want):
        return {"reader": name, "status": "failed", "reason": "batches differ from zarr-python's"}
    return {"reader": name, "status": "ok", "samples": samples, "seconds": wall, "samples_per_s": samples / wall,
            "cpu_percent": 100.0 * cpu / wall}


def zarrdataset_status() -> str:
    """Why zarrdataset has no row of numbers here."""
    try:
        import zarrdataset  # noqa: F401
    except ImportError:
        return ("not installed: it does not resolve beside gpuzarr (every zarrdataset release needs poisson-disc, "
                "which needs numpy<2; zarr>=3.2 needs numpy>=2)")
    return "installed, but this benchmark has no adapter for its patch samplers"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a demo group (default: written under --work-dir)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "gpuzarr-bench-loader"))
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--chunk", type=int, default=480)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench-loader.json")
    args = parser.parse_args(argv)

    data = args.data or str(ensure_demo_dataset(Path(args.work_dir) / "demo.zarr", frames=args.frames,
                                                height=args.height, width=args.width, chunk=args.chunk,
                                                progress=False))
    path = f"{data}/raw"
    handle = gpuzarr.open_array(path)
    sampler = gpuzarr.RandomCrops((args.crop, args.crop), seed=0, samples_per_epoch=args.samples)
    regions = sampler.regions(handle.shape, 0)
    zarr_array = zarr.open_array(path, mode="r")
    b = args.batch_size
    reference = [np.stack([zarr_array[r] for r in regions[i : i + b]]) for i in range(0, len(regions), b)]

    def zarr_loader() -> Any:
        return gt.ZarrLoader(handle, sampler, b, device="cpu", rank=0, world_size=1)

    def region_dataset() -> Any:
        ds = gt.RegionDataset(handle, sampler, rank=0, world_size=1)
        return torch.utils.data.DataLoader(ds, batch_size=b, num_workers=args.workers)

    def zarr_python() -> Any:
        return torch.utils.data.DataLoader(ZarrCrops(path, regions), batch_size=b, num_workers=args.workers)

    rows = [
        measure("ZarrLoader (thread read-ahead)", zarr_loader, reference),
        measure(f"RegionDataset + DataLoader(num_workers={args.workers})", region_dataset, reference),
        measure(f"zarr-python + DataLoader(num_workers={args.workers})", zarr_python, reference),
    ]
    rows.append({"reader": "zarrdataset", "status": "skipped", "reason": zarrdataset_status()})

    base = next(r for r in rows if r["reader"].startswith("zarr-python"))
    print(f"{args.samples} random {args.crop}x{args.crop} crops of {path} {handle.shape}, batches of {b}, "
          f"{os.cpu_count()} cores")
    print(f"{'reader':<46} {'samples/s':>10} {'CPU %':>7} {'vs zarr-python':>15}")
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['reader']:<46} {r['status']}: {r['reason']}")
            continue
        ratio = r["samples_per_s"] / base["samples_per_s"] if base["status"] == "ok" else float("nan")
        r["speedup_vs_zarr_python"] = ratio
        print(f"{r['reader']:<46} {r['samples_per_s']:>10.1f} {r['cpu_percent']:>7.0f} {ratio:>14.2f}x")
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "parameters": vars(args) | {"array_shape": list(handle.shape), "chunks": list(handle.chunks)},
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
