"""Handles keep working in forked children (torch DataLoader workers fork on Linux)."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np
import pytest
import zarr
from s3_server import S3Server, s3_server  # noqa: F401 - fixture

import gpuzarr

# forking a multi-threaded process is exactly what DataLoader workers do; the warning is the point
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")

REGIONS = [(slice(i, i + 16), slice(0, 40)) for i in range(0, 40, 4)]


def _read_in_child(handle: Any, queue: Any) -> None:
    queue.put(np.asarray(handle.read_batch(REGIONS, device="cpu")).sum(dtype=np.int64).item())


def _roundtrip_in_fork(handle: gpuzarr.ArrayHandle) -> int:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(handle, queue))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung reading a batch")
    assert child.exitcode == 0
    return queue.get(timeout=5)


def test_local_handle_used_before_fork_reads_in_child(tmp_path: Any) -> None:
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(64, 64), chunks=(8, 8), dtype="int32")
    arr[:] = np.arange(64 * 64, dtype="int32").reshape(64, 64)
    handle = gpuzarr.open_array(str(tmp_path / "a.zarr"))
    expected = handle.read_batch(REGIONS, device="cpu").sum(dtype=np.int64).item()
    handle.reader.fetcher.fetch(["c/0/0", "c/0/1"])  # start the fetcher's own pool in the parent
    assert _roundtrip_in_fork(handle) == expected


def test_s3_handle_used_before_fork_reads_in_child(s3_server: S3Server) -> None:  # noqa: F811
    bucket = s3_server.create_bucket()
    options = {"endpoint_url": s3_server.endpoint_url, "key": s3_server.key, "secret": s3_server.secret}
    arr = zarr.create_array(f"s3://{bucket}/a.zarr", shape=(64, 64), chunks=(8, 8), dtype="int32",
                            storage_options=options)
    arr[:] = np.arange(64 * 64, dtype="int32").reshape(64, 64)
    handle = gpuzarr.open_array(f"s3://{bucket}/a.zarr", **options)
    try:
        expected = handle.read_batch(REGIONS, device="cpu").sum(dtype=np.int64).item()  # client made in the parent
        assert _roundtrip_in_fork(handle) == expected
    finally:
        handle.close()
