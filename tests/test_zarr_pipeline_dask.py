"""gpuzarr's zarr pipeline on dask.distributed worker processes, and the xarray + dask example.

A ``LocalCluster`` of 2 worker processes computes reductions of a sharded, compressed
array read with ``da.from_zarr``: opened under gpuzarr's pipeline, the workers decode
through it (their own counters say so) and the results equal those of zarr's default
pipeline and of NumPy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

pytest.importorskip("distributed")
pytest.importorskip("xarray")

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "gpuzarr.GpuzarrCodecPipeline"
DEFAULT = "zarr.core.codec_pipeline.BatchedCodecPipeline"


def _stats() -> dict[str, int]:
    from gpuzarr.integrations.zarr_pipeline import read_stats

    return {**read_stats(), "pid": os.getpid()}


def _use(path: str) -> None:
    zarr.config.set({"codec_pipeline.path": path})


def test_two_worker_processes_compute_what_zarr_computes(tmp_path):
    import dask.array as da
    from distributed import Client, LocalCluster

    rng = np.random.default_rng(3)
    ref = rng.integers(0, 60000, (12, 96, 80), dtype=np.uint16)
    store = str(tmp_path / "a.zarr")
    arr = zarr.create_array(store, shape=ref.shape, chunks=(1, 16, 20), shards=(2, 48, 40), dtype="uint16",
                            compressors=[zarr.codecs.BloscCodec(cname="lz4", shuffle="bitshuffle")])
    arr[:] = ref
    results = {}
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
          Client(cluster) as client):
        client.wait_for_workers(2)
        pids = {s["pid"] for s in client.run(_stats).values()}
        assert len(pids) == 2 and os.getpid() not in pids  # two separate worker processes
        for name, path in (("gpuzarr", PLUGIN), ("default", DEFAULT)):
            client.run(_use, path)
            with zarr.config.set({"codec_pipeline.path": path}):
                d = da.from_zarr(store, chunks=(1, 48, 40))
                before = client.run(_stats)
                total, per_t, crop = client.compute([d.sum(dtype="uint64"), d.max(axis=(1, 2)),
                                                     d[3:9, 5:90, 7:70].mean(axis=0)], sync=True)
                after = client.run(_stats)
            results[name] = (total, per_t, crop)
            reads = {w: after[w]["reads"] - before[w]["reads"] for w in after}
            if name == "gpuzarr":
                assert all(n > 0 for n in reads.values()), f"a worker did not read through gpuzarr: {reads}"
                assert all(after[w]["fallback_reads"] == before[w]["fallback_reads"] for w in after)
            else:
                assert all(n == 0 for n in reads.values()), reads
    assert results["gpuzarr"][0] == results["default"][0] == int(ref.sum(dtype=np.uint64))
    np.testing.assert_array_equal(results["gpuzarr"][1], results["default"][1])
    np.testing.assert_array_equal(results["gpuzarr"][1], ref.max(axis=(1, 2)))
    np.testing.assert_array_equal(results["gpuzarr"][2], results["default"][2])


def test_xarray_dask_example_runs_on_worker_processes(tmp_path):
    script = REPO / "examples" / "xarray_dask.py"
    helped = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "--workers" in helped.stdout
    env = {k: v for k, v in os.environ.items() if k != "ZARR_CODEC_PIPELINE__PATH"}
    ran = subprocess.run([sys.executable, str(script), "--path", str(tmp_path / "t.zarr"), "--times", "8",
                          "--size", "32"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "every worker decoded through gpuzarr" in ran.stdout
    assert "result equals zarr's default pipeline: True" in ran.stdout
    assert ran.stdout.count("through gpuzarr, 0 through zarr's fallback, configured=True") == 2
