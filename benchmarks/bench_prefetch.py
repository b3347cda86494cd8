"""Loader throughput over S3 with and without chunk prefetch.

Starts moto (answering every GET/HEAD ``--latency`` seconds late, 20 ms by default; the
delay is added inside moto, so there is no second Python HTTP hop eating the 2 cores) in
a *separate process* so the server does not share the GIL with the
loader, writes a chunked float32 array to it with zarr-python, then reads the same
seeded sequence of random-crop batches through gpuzarr

* without prefetch (each batch fetches its chunks when it is read), and
* with ``gpuzarr.Loader(..., prefetch_chunks=depth)``, whose
  :class:`gpuzarr.prefetch.PlannedPrefetcher` queues the chunks of the next ``depth``
  batches into a :class:`gpuzarr.cache.PinnedLRUCache` in the background.

Prints a table and writes JSON (``--out``). Usage::

    python benchmarks/bench_prefetch.py --latency 0.02 --batches 40 --out bench_prefetch.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gpuzarr
from gpuzarr.cache import PinnedLRUCache


def start_server(latency: float) -> tuple[subprocess.Popen, dict[str, str]]:
    process = subprocess.Popen([sys.executable, str(REPO / "tests" / "s3_server.py"), "--read-latency", str(latency)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    info = dict(part.split("=", 1) for part in line.split())
    return process, info


def run_loader(url: str, options: dict[str, Any], sampler: gpuzarr.RandomCrops, batch_size: int,
               depth: int, workers: int) -> tuple[float, int, dict[str, Any]]:
    """Seconds to iterate one epoch of ``sampler`` through :class:`gpuzarr.Loader` (first batch excluded).

    Both modes read through the same :class:`PinnedLRUCache` (so chunks shared between
    batches are fetched once either way, and the difference is prefetch alone). ``depth``
    0: no prefetch (each batch fetches its missing chunks when it is read, no read-ahead
    thread); otherwise the loader prefetches the chunks of the next ``depth`` batches.
    """
    cache = PinnedLRUCache(512 << 20)
    with gpuzarr.open_array(url, cache=cache, **options) as handle:
        loader = gpuzarr.Loader(handle, sampler, batch_size, device="cpu", prefetch_batches=0,
                                prefetch_chunks=depth, prefetch_workers=workers)
        batches = iter(loader)
        next(batches)  # warm connections, equally for every mode
        started = time.perf_counter()
        count = sum(1 for _ in batches)
        elapsed = time.perf_counter() - started
        return elapsed, count, {"cache_hit_rate": round(cache.stats().hit_rate, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--size", type=int, default=2048, help="the array is size x size float32")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench_prefetch.json"))
    args = parser.parse_args()

    import zarr

    process, info = start_server(args.latency)
    try:
        direct = {"endpoint_url": info["moto"], "key": info["key"], "secret": info["secret"]}
        from botocore.session import get_session

        client = get_session().create_client("s3", endpoint_url=info["moto"], aws_access_key_id=info["key"],
                                             aws_secret_access_key=info["secret"], region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        url = "s3://bench/data.zarr"
        shape, chunks = (args.size, args.size), (64, 64)
        array = zarr.create_array(url, shape=shape, chunks=chunks, dtype="float32",
                                  compressors=zarr.codecs.BloscCodec(cname="lz4"), storage_options=direct)
        array[:] = np.random.default_rng(0).normal(size=shape).astype("float32")
        sampler = gpuzarr.RandomCrops((args.crop, args.crop), seed=42,
                                      samples_per_epoch=(args.batches + 1) * args.batch_size)
        batch_mb = args.batch_size * args.crop * args.crop * 4 / 1e6

        rows: list[dict[str, Any]] = []
        baseline, count, extra = run_loader(url, direct, sampler, args.batch_size, 0, args.workers)
        rows.append({"mode": "no prefetch", "depth": 0, "seconds": baseline, "batches": count, **extra})
        for depth in args.depths:
            elapsed, count, extra = run_loader(url, direct, sampler, args.batch_size, depth, args.workers)
            rows.append({"mode": "planned prefetch", "depth": depth, "seconds": elapsed, "batches": count, **extra})
        for row in rows:
            row["batches_per_s"] = row["batches"] / row["seconds"]
            row["mb_per_s"] = row["batches_per_s"] * batch_mb
            row["speedup"] = baseline / row["seconds"]

        print(f"\nS3 (moto) + {args.latency * 1000:.0f} ms per request, {args.batches} batches of "
              f"{args.batch_size} x {args.crop}x{args.crop} float32 crops, chunks {chunks}")
        print(f"{'mode':<18}{'depth':>6}{'batches/s':>11}{'MB/s':>8}{'speedup':>9}{'hit rate':>10}")
        for row in rows:
            hit = f"{row['cache_hit_rate']:.0%}" if "cache_hit_rate" in row else "-"
            print(f"{row['mode']:<18}{row['depth']:>6}{row['batches_per_s']:>11.1f}{row['mb_per_s']:>8.2f}"
                  f"{row['speedup']:>8.1f}x{hit:>10}")
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
            "latency_s": args.latency,
            "batches": args.batches,
            "batch_size": args.batch_size,
            "crop": args.crop,
            "chunks": chunks,
            "workers": args.workers,
            "rows": rows,
        }
        args.out.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.out}")
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    main()
