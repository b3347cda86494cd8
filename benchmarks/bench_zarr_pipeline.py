"""zarr-python codec pipelines compared through the same ``zarr.open_array(...)[...]`` calls.

Pipelines (each one that is installed): zarr's default ``BatchedCodecPipeline``, zarr's
``FusedCodecPipeline``, zarrs-python's ``ZarrsCodecPipeline`` and
``gpuzarr.GpuzarrCodecPipeline``. Workloads:

``whole``
    ``raw[...]`` of the demo dataset's ``raw`` (uint8 RGB 4K frames, chunks (1, 3, 960, 960),
    Blosc zstd + bit-shuffle; written by :mod:`gpuzarr.tools.demo`).
``crops``
    ``--crops`` random ``raw[t, :, y:y+960, x:x+960]`` reads, one ``a[...]`` call each.
``sharded``
    ``--sharded-crops`` random ``a[t, y:y+128, x:x+128]`` reads of a uint16
    ``(32, 2048, 2048)`` array, shards ``(1, 1024, 1024)``, inner chunks ``(1, 128, 128)``,
    zstd + crc32c.
``unsharded``
    the same reads of a uint16 ``(8, 2048, 2048)`` array of the same ``(1, 128, 128)``
    zstd + crc32c chunks, unsharded: one small file per chunk in a ``LocalStore``.

Rounds are interleaved (round r runs every pipeline on every workload, in an order that
rotates with r), the same seeded selections for every pipeline; the first round checks
every pipeline's output equals the default pipeline's. gpuzarr's compiled CPU lane is
compiled (or loaded from Numba's cache) before the first round, a once-per-process cost
like other pipelines' start-up. Reports medians (and min/max) per
pipeline and workload, speed-ups over the default pipeline and over zarrs, prints a table
and writes JSON (``--out``). On the Blosc workloads a ``floor`` row gives the least work any
reader built on c-blosc must do (:func:`blosc_floor`): ``default ÷ floor`` bounds every such
reader's speed-up over the default pipeline here. Each run also records the process's CPU time (user + system,
every thread): on a shared machine wall times depend on how many threads a pipeline runs
against the other load, CPU time much less::

    python benchmarks/bench_zarr_pipeline.py --rounds 5 --out bench_zarr_pipeline.json
    python benchmarks/bench_zarr_pipeline.py --quick       # tiny data, a smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PIPELINES = {
    "default": "zarr.core.codec_pipeline.BatchedCodecPipeline",
    "fused": "zarr.core.codec_pipeline.FusedCodecPipeline",
    "zarrs": "zarrs.ZarrsCodecPipeline",
    "gpuzarr": "gpuzarr.GpuzarrCodecPipeline",
}


def available_pipelines(names: list[str]) -> dict[str, str]:
    import zarr.core.codec_pipeline as cp

    out = {}
    for name in names:
        path = PIPELINES[name]
        if name == "fused" and not hasattr(cp, "FusedCodecPipeline"):
            print(f"skipping {name}: this zarr ({__import__('zarr').__version__}) has no FusedCodecPipeline")
            continue
        if name == "zarrs" and importlib.util.find_spec("zarrs") is None:
            print("skipping zarrs: zarrs-python is not installed")
            continue
        out[name] = path
    return out


def sharded_array(path: Path, shape: tuple[int, int, int], shard: int | None, inner: int) -> Path:
    """The sharded uint16 workload array (smooth, compressible data), written once; ``shard=None``: unsharded."""
    import zarr

    marker = path / ".complete"
    if marker.exists():
        return path
    shards = None if shard is None else (1, shard, shard)
    arr = zarr.create_array(str(path), shape=shape, chunks=(1, inner, inner), shards=shards,
                            dtype="uint16", compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()],
                            fill_value=0, overwrite=True)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0 : shape[1], 0 : shape[2]].astype(np.float32)
    for t in range(shape[0]):
        base = 20000 + 8000 * np.sin(xx / (97 + t)) * np.cos(yy / (131 + 2 * t))
        arr[t] = (base + rng.normal(0, 40, base.shape)).astype(np.uint16)
    marker.touch()
    return path


def workloads(args: argparse.Namespace) -> dict[str, tuple[str, list[Any]]]:
    """name → (array path, list of selections)."""
    from gpuzarr.tools.demo import ensure_demo_dataset

    data = Path(args.data_dir)
    if args.quick:
        demo = ensure_demo_dataset(data / "demo-quick.zarr", 2, height=256, width=512, chunk=128, progress=False)
        crop, n_crops = 96, 4
        sharded = sharded_array(data / "sharded-quick.zarr", (2, 256, 256), 128, 32)
        unsharded = sharded_array(data / "unsharded-quick.zarr", (2, 256, 256), None, 32)
        sc, n_sc = 32, 8
    else:
        demo = ensure_demo_dataset(data / "demo.zarr", args.frames, progress=True)
        crop, n_crops = 960, args.crops
        sharded = sharded_array(data / "sharded.zarr", (32, 2048, 2048), 1024, 128)
        unsharded = sharded_array(data / "unsharded.zarr", (8, 2048, 2048), None, 128)
        sc, n_sc = 128, args.sharded_crops
    import zarr

    raw = zarr.open_array(str(demo / "raw"), mode="r")
    rng = np.random.default_rng(args.seed)
    t_n, _, h, w = raw.shape
    crops = [(int(rng.integers(t_n)), slice(None), slice(int(y), int(y) + crop), slice(int(x), int(x) + crop))
             for y, x in zip(rng.integers(0, h - crop + 1, n_crops), rng.integers(0, w - crop + 1, n_crops),
                             strict=True)]
    sh = zarr.open_array(str(sharded), mode="r")
    st, sh_h, sh_w = sh.shape
    scrops = [(int(rng.integers(st)), slice(int(y), int(y) + sc), slice(int(x), int(x) + sc))
              for y, x in zip(rng.integers(0, sh_h - sc + 1, n_sc), rng.integers(0, sh_w - sc + 1, n_sc),
                              strict=True)]
    un = zarr.open_array(str(unsharded), mode="r")
    ucrops = [(int(rng.integers(un.shape[0])), slice(int(y), int(y) + sc), slice(int(x), int(x) + sc))
              for y, x in zip(rng.integers(0, un.shape[1] - sc + 1, n_sc), rng.integers(0, un.shape[2] - sc + 1, n_sc),
                              strict=True)]
    return {
        "whole": (str(demo / "raw"), [Ellipsis]),
        "crops": (str(demo / "raw"), crops),
        "sharded": (str(sharded), scrops),
        "unsharded": (str(unsharded), ucrops),
    }


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(pipeline: str, path: str, selections: list[Any]) -> tuple[float, float, list[np.ndarray]]:
    """Open ``path`` under ``pipeline`` and read every selection: wall and CPU seconds of the reads, the results."""
    import zarr

    with zarr.config.set({"codec_pipeline.path": pipeline}):
        arr = zarr.open_array(path, mode="r")
        c0 = _cpu_seconds()
        t0 = time.perf_counter()
        results = [arr[sel] for sel in selections]
        return time.perf_counter() - t0, _cpu_seconds() - c0, results


def _region(sel: Any, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """A zarr selection of integers, step-1 slices or ``...`` as the box of slices gpuzarr plans."""
    items = () if sel is Ellipsis else (sel if isinstance(sel, tuple) else (sel,))
    items = items + (slice(None),) * (len(shape) - len(items))
    return tuple(slice(s, s + 1) if isinstance(s, int) else slice(*s.indices(n)[:2]) for s, n in zip(items, shape,
                                                                                                      strict=True))


def blosc_floor(path: str, selections: list[Any], threads: int, rounds: int) -> list[float] | None:
    """Seconds per round of the least work any c-blosc reader must do for ``selections``; None: not plain Blosc.

    For each selection, one after the other as a user's ``a[sel]`` calls come: decode the
    Blosc blocks its bytes lie in (every block of every chunk it touches that holds a
    byte it reads, the blocks split evenly over ``threads`` threads) with c-blosc's own
    ``blosc_getitem``, from bytes already in memory, into a scratch buffer; nothing else
    (no file read, no copy into an output, no planning timed). A reader built on c-blosc
    cannot be faster than this, so ``default ÷ floor`` bounds every such reader's
    speed-up over the default pipeline on this machine.
    """
    from concurrent.futures import ThreadPoolExecutor

    import gpuzarr
    from gpuzarr.codecs import native
    from gpuzarr.codecs.blosc.format import header_fields
    from gpuzarr.codecs.blosc.partial import block_runs
    from gpuzarr.plan.planner import chunk_byte_intervals

    handle = gpuzarr.open_array(path)
    if handle.chain.codec_names[-1:] != ("blosc",) or len(handle.chain.codec_names) > 2 or not native.available():
        return None
    itemsize = handle.dtype.itemsize
    work: list[list[list[tuple[int, int, int]]]] = []  # per selection, per thread: (address, first item, items)
    keep = []  # the chunks' bytes, alive while their addresses are used
    largest = 1
    for sel in selections:
        plan = handle.plan([_region(sel, handle.shape)])
        encoded = handle.reader.read(plan.chunk_coords)
        iv, off = chunk_byte_intervals(plan, handle.chunks, itemsize)
        blocks = []
        for u, buf in enumerate(encoded):
            if buf is None:
                continue
            src = np.frombuffer(memoryview(buf), dtype=np.uint8).copy()
            keep.append(src)
            _, _, _, typesize, nbytes, blocksize, _ = header_fields(src)
            nblocks = -(-nbytes // blocksize)
            largest = max(largest, min(blocksize, nbytes))
            for b0, b1 in block_runs(iv[off[u]:off[u + 1]], blocksize, nblocks):
                for b in range(b0, b1):
                    lo, hi = b * blocksize, min((b + 1) * blocksize, nbytes)
                    blocks.append((native.address(src), lo // typesize, (hi - lo) // typesize))
        work.append([blocks[i::threads] for i in range(threads)])
    scratch = [np.empty(largest, dtype=np.uint8) for _ in range(threads)]

    def decode(i: int, blocks: list[tuple[int, int, int]]) -> None:
        dest = native.address(scratch[i])
        for address, first, n_items in blocks:
            native.blosc_getitem_into(address, first, n_items, dest)

    times = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            t0 = time.perf_counter()
            for per_thread in work:
                list(pool.map(decode, range(threads), per_thread))
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    from gpuzarr.settings import usable_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO / "bench-out" / "zarr-pipeline"),
                        help="where the datasets are written once and reused")
    parser.add_argument("--frames", type=int, default=8, help="frames of the demo dataset (default 8)")
    parser.add_argument("--crops", type=int, default=32, help="960x960 crops in the crops workload")
    parser.add_argument("--sharded-crops", type=int, default=64, help="128x128 crops in the sharded workload")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--workloads", nargs="+", default=["whole", "crops", "sharded", "unsharded"],
                        choices=["whole", "crops", "sharded", "unsharded"])
    parser.add_argument("--quick", action="store_true", help="tiny datasets and one round: a smoke run")
    parser.add_argument("--out", default=None, help="JSON output path")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 2)

    import zarr

    load_start = os.getloadavg()
    pipelines = available_pipelines(args.pipelines)
    loads = {k: v for k, v in workloads(args).items() if k in args.workloads}
    times: dict[str, dict[str, list[float]]] = {w: {p: [] for p in pipelines} for w in loads}
    cpu: dict[str, dict[str, list[float]]] = {w: {p: [] for p in pipelines} for w in loads}
    names = list(pipelines)
    if "gpuzarr" in pipelines:  # the CPU engine's compiled lane: compiled (or loaded from cache) before any timing
        from gpuzarr.engines import compiled

        print(f"gpuzarr compiled lane: {'ready' if compiled.ready(wait=True) else 'not available'}", flush=True)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for wname, (path, sels) in loads.items():
            reference = None
            for name in order:
                seconds, cpu_seconds, results = run_one(pipelines[name], path, sels)
                times[wname][name].append(seconds)
                cpu[wname][name].append(cpu_seconds)
                if r == 0:
                    if reference is None:
                        _, _, reference = run_one(PIPELINES["default"], path, sels)
                    for a, b in zip(results, reference, strict=True):
                        np.testing.assert_array_equal(a, b, err_msg=f"{name} differs from default on {wname}")
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    # the least decode work any c-blosc reader must do (Blosc workloads), with as many threads as cores
    cores = usable_cores()
    for wname, (path, sels) in loads.items():
        floor = blosc_floor(path, sels, cores, args.rounds)
        if floor is not None:
            times[wname]["floor"] = floor
            cpu[wname]["floor"] = [float("nan")] * len(floor)
    rows = []
    for wname in loads:
        med = {p: statistics.median(v) for p, v in times[wname].items()}
        for p, v in times[wname].items():
            rows.append({
                "workload": wname, "pipeline": p, "median_ms": med[p] * 1e3, "min_ms": min(v) * 1e3,
                "max_ms": max(v) * 1e3, "runs_ms": [x * 1e3 for x in v],
                "cpu_median_ms": statistics.median(cpu[wname][p]) * 1e3,
                "cpu_runs_ms": [x * 1e3 for x in cpu[wname][p]],
                "speedup_vs_default": med["default"] / med[p] if "default" in med else None,
                "speedup_vs_zarrs": med["zarrs"] / med[p] if "zarrs" in med else None,
            })
    header = (f"{'workload':<9} {'pipeline':<8} {'median ms':>10} {'min-max ms':>17} {'x default':>10} "
              f"{'x zarrs':>8} {'cpu ms':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        vd = row["speedup_vs_default"]
        vz = row["speedup_vs_zarrs"]
        print(f"{row['workload']:<9} {row['pipeline']:<8} {row['median_ms']:>10.1f} "
              f"{row['min_ms']:>8.1f}-{row['max_ms']:<8.1f} {'' if vd is None else f'{vd:.2f}x':>10} "
              f"{'' if vz is None else f'{vz:.2f}x':>8} {row['cpu_median_ms']:>8.1f}")
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": usable_cores(),
                    "python": platform.python_version(),
                    "loadavg_1_5_15_start": list(load_start), "loadavg_1_5_15_end": list(os.getloadavg())},
        "versions": {"zarr": zarr.__version__, **({"zarrs": __import__("zarrs").__version__}
                                                   if "zarrs" in pipelines else {})},
        "rounds": args.rounds,
        "workloads": {k: {"array": v[0], "selections": len(v[1])} for k, v in loads.items()},
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
