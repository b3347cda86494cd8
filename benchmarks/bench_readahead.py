"""Sequential scans over S3 with and without ``open_array(..., readahead=N)``.

Inference and preprocessing often read an array in order, outside any Loader: row bands,
tiles left to right. This reads ``--reads`` consecutive bands of ``--band`` chunk rows ×
``--width`` columns (each read touches ``band × width/64`` chunks) with
``handle.read_batch`` from the same S3 endpoints as ``bench_prefetch.py`` (every GET
answered ``--latency`` seconds late), with ``readahead`` 0 (off) and each ``--depths``
value, for each S3 client. Every band is checked against the array's values after the
timed loop. Prints a table and writes JSON (``--out``)::

    python benchmarks/bench_readahead.py --latency 0.02 --out bench_readahead.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_prefetch import start_server, write_array, write_result

import gpuzarr
from gpuzarr.storage.cache import PinnedLRUCache

CHUNK = 64


def scan(url: str, options: dict[str, Any], depth: int, reads: int, band: int, width: int,
         values: np.ndarray) -> float:
    """Seconds for ``reads`` consecutive bands (the first, which warms connections, not counted)."""
    regions = [(slice(i * band * CHUNK, (i + 1) * band * CHUNK), slice(0, width)) for i in range(reads + 1)]
    with gpuzarr.open_array(url, cache=PinnedLRUCache(512 << 20), readahead=depth, **options) as handle:
        got = [handle.read_batch(regions[:1], device="cpu")]
        started = time.perf_counter()
        got.extend(handle.read_batch([region], device="cpu") for region in regions[1:])
        elapsed = time.perf_counter() - started
    for i, (batch, region) in enumerate(zip(got, regions, strict=True)):
        if not np.array_equal(batch[0], values[region]):
            raise AssertionError(f"band {i} differs from the array's values (readahead {depth}, {options})")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, nargs="+", default=[0.02])
    parser.add_argument("--servers", nargs="+", choices=["static", "moto"], default=["static"])
    parser.add_argument("--clients", nargs="+", choices=["obstore", "s3fs"], default=["obstore", "s3fs"])
    parser.add_argument("--reads", type=int, default=30)
    parser.add_argument("--band", type=int, default=1, help="chunk rows per read")
    parser.add_argument("--width", type=int, default=512, help="columns per read")
    parser.add_argument("--size", type=int, default=2048, help="the array is size x size float32")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--out", type=Path, default=Path("bench_readahead.json"))
    args = parser.parse_args()
    if (args.reads + 1) * args.band * CHUNK > args.size:
        parser.error("--reads x --band chunk rows do not fit in --size")

    url = "s3://bench/data.zarr"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpuzarr-bench-readahead-") as tmp:
        root = Path(tmp)
        values = write_array(root, args.size, (CHUNK, CHUNK))
        for server in args.servers:
            for latency in args.latency:
                process, options = start_server(server, latency, root)
                try:
                    for client in args.clients:
                        baseline = None
                        for depth in [0, *args.depths]:
                            seconds = scan(url, {**options, "s3_client": client}, depth, args.reads, args.band,
                                           args.width, values)
                            baseline = baseline or seconds
                            rows.append({"server": server, "latency_s": latency, "client": client, "readahead": depth,
                                         "seconds": seconds, "reads_per_s": args.reads / seconds,
                                         "speedup": baseline / seconds})
                finally:
                    process.terminate()
                    process.wait(10)

    per_read = args.band * (args.width // CHUNK)
    print(f"\n{args.reads} consecutive reads of {args.band * CHUNK}x{args.width} float32 ({per_read} chunks of "
          f"{CHUNK}x{CHUNK} each); speedup = readahead vs none, same server, client and latency")
    print(f"{'server':<8}{'latency':>8}  {'client':<9}{'readahead':>10}{'reads/s':>9}{'speedup':>9}")
    for row in rows:
        print(f"{row['server']:<8}{row['latency_s'] * 1000:>6.0f}ms  {row['client']:<9}{row['readahead']:>10}"
              f"{row['reads_per_s']:>9.1f}{row['speedup']:>8.1f}x")
    write_result(args.out, rows, reads=args.reads, band_chunks=args.band, width=args.width, size=args.size,
                 chunks=CHUNK)


if __name__ == "__main__":
    main()
