"""xarray + dask.distributed on worker processes, every worker decoding through gpuzarr.

Writes a tiny Zarr 3 dataset with xarray (a ``temperature(time, y, x)`` cube, sharded,
Blosc-compressed), starts a ``distributed.LocalCluster`` of worker *processes*, opens the
dataset with ``xr.open_zarr`` and computes a reduction with dask. Every process (the
client and each worker) reads with ``gpuzarr.GpuzarrCodecPipeline``: the variable
``ZARR_CODEC_PIPELINE__PATH`` is set before the workers start, so zarr's config in each
of them names it. At the end each worker reports its own
:func:`gpuzarr.integrations.zarr_pipeline.read_stats` (batches read through gpuzarr and
through zarr's fallback), and the result is checked against the same reduction computed
with zarr's default pipeline in this process::

    python examples/xarray_dask.py                 # 2 workers, a temporary dataset
    python examples/xarray_dask.py --workers 3 --path /tmp/t.zarr
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

PIPELINE = "gpuzarr.GpuzarrCodecPipeline"
DEFAULT = "zarr.core.codec_pipeline.BatchedCodecPipeline"


def write_dataset(path: Path, times: int, size: int) -> None:
    """A small temperature cube, chunked (1, size/2, size/2) in shards of (2, size, size)."""
    import numpy as np
    import xarray as xr
    import zarr

    rng = np.random.default_rng(0)
    t = np.arange(times)
    yy, xx = np.mgrid[0:size, 0:size]
    field = 280 + 10 * np.sin(xx / 9.0)[None] * np.cos(yy / 13.0)[None] + 0.5 * t[:, None, None]
    temperature = (field + rng.normal(0, 0.3, (times, size, size))).astype("float32")
    ds = xr.Dataset({"temperature": (("time", "y", "x"), temperature)},
                    coords={"time": t, "y": np.arange(size), "x": np.arange(size)})
    half = max(size // 2, 1)
    encoding = {"temperature": {"chunks": (1, half, half), "shards": (2, size, size),
                                "compressors": [zarr.codecs.BloscCodec(cname="zstd", shuffle="shuffle")]}}
    ds.chunk({"time": 2}).to_zarr(path, mode="w", zarr_format=3, encoding=encoding, consolidated=False)


def worker_stats() -> dict[str, int]:
    """Runs in each worker: what this process's gpuzarr pipelines did, and which pipeline zarr names."""
    import zarr

    from gpuzarr.integrations.zarr_pipeline import read_stats

    return {**read_stats(), "pid": os.getpid(), "configured": zarr.config.get("codec_pipeline.path") == PIPELINE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default=None, help="where to write the dataset (default: a temporary directory)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--times", type=int, default=16, help="time steps (default 16)")
    parser.add_argument("--size", type=int, default=64, help="y and x size (default 64)")
    args = parser.parse_args(argv)

    # before anything starts a worker: every process of the cluster reads through gpuzarr
    os.environ["ZARR_CODEC_PIPELINE__PATH"] = PIPELINE
    import numpy as np
    import xarray as xr
    import zarr
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.path) if args.path else Path(tmp) / "temperature.zarr"
        write_dataset(path, args.times, args.size)
        with (LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           dashboard_address=None) as cluster, Client(cluster) as client):
            client.wait_for_workers(args.workers)
            ds = xr.open_zarr(path, consolidated=False, chunks={"time": 1})
            mean = ds["temperature"].mean(dim="time").compute()
            stats = client.run(worker_stats)
        with zarr.config.set({"codec_pipeline.path": DEFAULT}):
            expected = xr.open_zarr(path, consolidated=False, chunks=None)["temperature"].mean(dim="time").values

    print(f"mean over time of temperature{tuple(ds['temperature'].shape)}: "
          f"min {float(mean.min()):.3f} max {float(mean.max()):.3f}")
    for address, s in sorted(stats.items()):
        print(f"worker {address} (pid {s['pid']}): {s['reads']} reads / {s['chunks']} chunks through gpuzarr, "
              f"{s['fallback_reads']} through zarr's fallback, configured={s['configured']}")
    ok = all(s["reads"] > 0 and s["fallback_reads"] == 0 and s["configured"] for s in stats.values())
    same = np.allclose(mean.values, expected, rtol=0, atol=1e-4)
    print(f"result equals zarr's default pipeline: {same}")
    print("every worker decoded through gpuzarr" if ok else "NOT every worker decoded through gpuzarr")
    return 0 if ok and same else 1


if __name__ == "__main__":
    sys.exit(main())
