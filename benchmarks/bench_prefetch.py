"""Loader throughput over S3 with and without chunk prefetch.

Serves one chunked float32 array (written by zarr-python) from an S3 endpoint that answers
every GET ``--latency`` seconds late, and reads the same seeded sequence of random-crop
batches through gpuzarr

* without prefetch (each batch fetches its chunks when it is read), and
* with ``gpuzarr.Loader(..., prefetch_chunks=depth)``, whose
  :class:`gpuzarr.storage.prefetch.PlannedPrefetcher` queues the chunks of the next ``depth``
  batches into a :class:`gpuzarr.storage.cache.PinnedLRUCache` in the background,

for each S3 client gpuzarr can use (``s3_client=obstore`` / ``s3fs``) and each server:

* ``static``: ``benchmarks/static_s3.py``, a read-only S3 endpoint over the array's
  directory that spends ~0.05 ms of CPU per GET, so the client machine pays what it pays
  against a real remote S3 (nothing for the server);
* ``moto``: moto's threaded server (latency added inside moto), ~2 ms of CPU per GET. On a
  small machine that CPU, not the latency, bounds the prefetching loader: a lower bound.

Each server runs in a separate process so it does not share the loader's GIL. Prints a
table and writes JSON (``--out``). Usage::

    python benchmarks/bench_prefetch.py --latency 0.02 0.05 --out bench_prefetch.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "benchmarks"))

from static_s3 import start_static_s3

import gpuzarr
from gpuzarr.storage.cache import PinnedLRUCache


def start_moto(latency: float) -> tuple[subprocess.Popen, dict[str, str]]:
    process = subprocess.Popen([sys.executable, str(REPO / "tests" / "s3_server.py"), "--read-latency", str(latency)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    info = dict(part.split("=", 1) for part in line.split())
    return process, {"endpoint_url": info["moto"], "key": info["key"], "secret": info["secret"]}


def write_array(root: Path, size: int, chunks: tuple[int, int]) -> np.ndarray:
    """``root/bench/data.zarr``: the array both servers serve (bucket ``bench``); returns its values."""
    import zarr

    array = zarr.create_array(str(root / "bench" / "data.zarr"), shape=(size, size), chunks=chunks, dtype="float32",
                              compressors=zarr.codecs.BloscCodec(cname="lz4"), overwrite=True)
    values = np.random.default_rng(0).normal(size=(size, size)).astype("float32")
    array[:] = values
    return values


def upload(root: Path, options: dict[str, str]) -> None:
    """Copy ``root/bench`` into moto's bucket ``bench`` (the same bytes the static server serves)."""
    from botocore.session import get_session

    client = get_session().create_client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id=options["key"],
                                         aws_secret_access_key=options["secret"], region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    for path in sorted((root / "bench").rglob("*")):
        if path.is_file():
            client.put_object(Bucket="bench", Key=path.relative_to(root / "bench").as_posix(), Body=path.read_bytes())


def start_server(kind: str, latency: float, root: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    if kind == "moto":
        process, options = start_moto(latency)
        upload(root, options)
        return process, options
    process, endpoint = start_static_s3(root, latency)
    return process, {"endpoint_url": endpoint, "key": "bench", "secret": "bench"}


def run_loader(url: str, options: dict[str, Any], sampler: gpuzarr.RandomCrops, batch_size: int,
               depth: int, workers: int | None, values: np.ndarray) -> tuple[float, int, dict[str, Any]]:
    """Seconds to iterate one epoch of ``sampler`` through :class:`gpuzarr.Loader` (first batch excluded).

    Every batch is checked against ``values`` afterwards (outside the timed loop).

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
        got = [next(batches)]  # warm connections, equally for every mode
        started = time.perf_counter()
        got.extend(batches)
        elapsed = time.perf_counter() - started
        regions = loader.epoch_regions(0)
        for i, batch in enumerate(got):
            expected = np.stack([values[r] for r in regions[i * batch_size : (i + 1) * batch_size]])
            if not np.array_equal(batch, expected):
                raise AssertionError(f"batch {i} differs from the array's values (depth {depth}, {options})")
        return elapsed, len(got) - 1, {"cache_hit_rate": round(cache.stats().hit_rate, 3)}


def write_result(out: Path, rows: list[dict[str, Any]], **parameters: Any) -> None:
    """The benchmark's JSON: date, machine, its parameters and rows."""
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        **parameters,
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, nargs="+", default=[0.02])
    parser.add_argument("--servers", nargs="+", choices=["static", "moto"], default=["static", "moto"])
    parser.add_argument("--clients", nargs="+", choices=["obstore", "s3fs"], default=["obstore", "s3fs"])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--size", type=int, default=2048, help="the array is size x size float32")
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--workers", type=int, default=None,
                        help="prefetch threads (default: the loader's, one per batch ahead)")
    parser.add_argument("--out", type=Path, default=Path("bench_prefetch.json"))
    args = parser.parse_args()

    chunks = (64, 64)
    sampler = gpuzarr.RandomCrops((args.crop, args.crop), seed=42,
                                  samples_per_epoch=(args.batches + 1) * args.batch_size)
    batch_mb = args.batch_size * args.crop * args.crop * 4 / 1e6
    url = "s3://bench/data.zarr"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpuzarr-bench-prefetch-") as tmp:
        root = Path(tmp)
        values = write_array(root, args.size, chunks)
        for server in args.servers:
            for latency in args.latency:
                process, options = start_server(server, latency, root)
                try:
                    for client in args.clients:
                        opened = {**options, "s3_client": client}
                        for depth in [0, *args.depths]:
                            elapsed, count, extra = run_loader(url, opened, sampler, args.batch_size, depth,
                                                               args.workers, values)
                            rows.append({"server": server, "latency_s": latency, "client": client,
                                         "mode": "planned prefetch" if depth else "no prefetch", "depth": depth,
                                         "seconds": elapsed, "batches": count, **extra})
                            baseline = next(r["seconds"] for r in rows if r["server"] == server and
                                            r["latency_s"] == latency and r["client"] == client and not r["depth"])
                            row = rows[-1]
                            row["batches_per_s"] = row["batches"] / row["seconds"]
                            row["mb_per_s"] = row["batches_per_s"] * batch_mb
                            row["speedup"] = baseline / row["seconds"]
                finally:
                    process.terminate()
                    process.wait(10)

    print(f"\n{args.batches} batches of {args.batch_size} x {args.crop}x{args.crop} float32 crops, chunks {chunks}, "
          f"prefetch workers: {args.workers or 'one per batch ahead'}; speedup = prefetch vs no prefetch, same server, client and latency")
    print(f"{'server':<8}{'latency':>8}  {'client':<9}{'depth':>6}{'batches/s':>11}{'MB/s':>8}{'speedup':>9}{'hit rate':>10}")
    for row in rows:
        print(f"{row['server']:<8}{row['latency_s'] * 1000:>6.0f}ms  {row['client']:<9}{row['depth']:>6}"
              f"{row['batches_per_s']:>11.1f}{row['mb_per_s']:>8.2f}{row['speedup']:>8.1f}x{row['cache_hit_rate']:>10.0%}")
    write_result(args.out, rows, batches=args.batches, batch_size=args.batch_size, crop=args.crop, size=args.size,
                 chunks=chunks, workers=args.workers)


if __name__ == "__main__":
    main()
