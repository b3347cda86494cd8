#!/usr/bin/env python
"""Read throughput of the local fetchers: plain reads vs kvikio into pinned host or device memory.

Reads every chunk file of one array of the demo dataset (``raw`` by default; written first
if missing) in batches of ``--batch`` chunks, through

* ``posix``: :class:`gpuzarr.storage.local.LocalFileFetcher` with kvikio off (``os.pread`` in a
  thread pool, into host memory) — what the CPU engine reads with;
* ``posix + upload``: the same, then one host→device copy per batch (how the GPU engine
  got its bytes before device reads were wired in);
* ``kvikio → pinned host``: ``CuFile.pread`` into one pinned host buffer per batch;
* ``kvikio → device``: ``fetch_device``, ``CuFile.pread`` straight into one device buffer
  (GDS where the system has it, kvikio's compat mode otherwise).

GB/s = encoded bytes read / seconds, best of ``--repeats`` passes over the whole array.
The page cache is warm after the first pass; each row also records its first (coldest)
pass, and ``--drop-caches`` tries to drop the page cache before every pass (root only;
the JSON says whether it worked). Rows that cannot run here (no GPU, no kvikio) are listed
with the reason. Prints a table and writes JSON (``--out``)::

    python benchmarks/bench_io.py --out bench_io.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpuzarr import _optional
from gpuzarr.storage.local import LocalFileFetcher, cuda_io_usable
from gpuzarr.tools.demo import DEFAULT_DEMO_PATH, ensure_demo_dataset


def chunk_keys(array_dir: Path) -> list[str]:
    """Store keys (relative to the array) of every chunk file, in a fixed shuffled order."""
    keys = sorted(p.relative_to(array_dir).as_posix() for p in (array_dir / "c").rglob("*") if p.is_file())
    order = np.random.default_rng(0).permutation(len(keys))
    return [keys[i] for i in order]


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def timed_passes(read_batch: Callable[[list[str]], int], keys: list[str], batch: int, repeats: int,
                 drop: bool, synchronize: Callable[[], None]) -> tuple[list[float], int]:
    """Seconds of each pass over ``keys`` and the bytes one pass reads."""
    seconds: list[float] = []
    nbytes = 0
    for _ in range(repeats):
        if drop:
            drop_page_cache()
        nbytes = 0
        started = time.perf_counter()
        for i in range(0, len(keys), batch):
            nbytes += read_batch(keys[i : i + batch])
        synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds, nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(DEFAULT_DEMO_PATH))
    parser.add_argument("--array", default="raw")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64, help="chunks per fetch call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--drop-caches", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_io.json"))
    args = parser.parse_args()

    ensure_demo_dataset(args.data, args.frames)
    array_dir = args.data / args.array
    keys = chunk_keys(array_dir)
    gpu = cuda_io_usable()
    cp = None
    if _optional.cupy_device():
        import cupy as cp
    sync = cp.cuda.get_current_stream().synchronize if cp is not None else (lambda: None)

    def host_bytes(fetcher: LocalFileFetcher) -> Callable[[list[str]], int]:
        return lambda batch: sum(len(b) for b in fetcher.fetch(batch) if b is not None)

    def host_then_upload(fetcher: LocalFileFetcher) -> Callable[[list[str]], int]:
        from gpuzarr.storage.buffers import concatenate_aligned

        def read(batch: list[str]) -> int:
            blob, _, length = concatenate_aligned([b for b in fetcher.fetch(batch) if b is not None])
            cp.asarray(blob)  # one host→device copy of the batch
            return int(length.sum())

        return read

    def device(fetcher: LocalFileFetcher) -> Callable[[list[str]], int]:
        return lambda batch: int(fetcher.fetch_device(batch).lengths.sum())

    modes: list[tuple[str, bool, str, Callable[[LocalFileFetcher], Callable[[list[str]], int]]]] = [
        ("posix", False, "", host_bytes),
        ("posix + upload", False, "" if cp is not None else "no CUDA device for CuPy", host_then_upload),
        ("kvikio -> pinned host", True, "" if gpu else "kvikio cannot run here (no CUDA device/driver)", host_bytes),
        ("kvikio -> device", True, "" if gpu else "kvikio cannot run here (no CUDA device/driver)", device),
    ]
    rows: list[dict[str, Any]] = []
    dropped = drop_page_cache() if args.drop_caches else False
    for name, use_kvikio, unavailable, make in modes:
        if unavailable:
            rows.append({"mode": name, "unavailable": unavailable})
            continue
        with LocalFileFetcher(array_dir, use_kvikio=use_kvikio) as fetcher:
            seconds, nbytes = timed_passes(make(fetcher), keys, args.batch, args.repeats, dropped, sync)
        rows.append({"mode": name, "fetcher": repr(fetcher), "bytes": nbytes, "seconds": seconds,
                     "gb_per_s": nbytes / min(seconds) / 1e9, "first_pass_gb_per_s": nbytes / seconds[0] / 1e9})

    total = next((r["bytes"] for r in rows if "bytes" in r), 0)
    print(f"\n{array_dir}: {len(keys)} chunk files, {total / 1e6:.1f} MB, batches of {args.batch}; page cache "
          f"{'dropped before each pass' if dropped else 'warm after the first pass'}")
    print(f"{'mode':<24}{'GB/s (best)':>12}{'first pass':>12}")
    for row in rows:
        if "unavailable" in row:
            print(f"{row['mode']:<24}{'-':>12}{'-':>12}   ({row['unavailable']})")
        else:
            print(f"{row['mode']:<24}{row['gb_per_s']:>12.2f}{row['first_pass_gb_per_s']:>12.2f}")
    device_name = None
    if cp is not None:
        device_name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "gpu": device_name,
        "kvikio": _optional.kvikio().version,
        "array": str(array_dir),
        "chunks": len(keys),
        "batch": args.batch,
        "repeats": args.repeats,
        "page_cache_dropped": dropped,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
