"""Handles keep working in forked children (torch DataLoader workers fork on Linux)."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import warnings
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
    from gpuzarr.storage import remote

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        total = np.asarray(handle.read_batch(REGIONS, device="cpu")).sum(dtype=np.int64).item()
    queue.put((total, remote._obstore_ran_in == os.getpid(), [str(w.message) for w in caught]))


def _roundtrip_in_fork(handle: gpuzarr.ArrayHandle) -> tuple[int, bool, list[str]]:
    """(sum of the batch read in a forked child, whether obstore ran there, the child's warnings)."""
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
    assert _roundtrip_in_fork(handle)[0] == expected


@pytest.mark.parametrize("client", ["s3fs", "obstore"])
def test_s3_handle_used_before_fork_reads_in_child(s3_server: S3Server, client: str) -> None:  # noqa: F811
    bucket = s3_server.create_bucket()
    options = {"endpoint_url": s3_server.endpoint_url, "key": s3_server.key, "secret": s3_server.secret}
    arr = zarr.create_array(f"s3://{bucket}/a.zarr", shape=(64, 64), chunks=(8, 8), dtype="int32",
                            storage_options=options)
    arr[:] = np.arange(64 * 64, dtype="int32").reshape(64, 64)
    handle = gpuzarr.open_array(f"s3://{bucket}/a.zarr", s3_client=client, **options)
    try:
        expected = handle.read_batch(REGIONS, device="cpu").sum(dtype=np.int64).item()  # client made in the parent
        total, obstore_in_child, child_warnings = _roundtrip_in_fork(handle)
        assert total == expected
        # obstore's runtime ran in the parent, so the child must not touch it (it would hang): s3fs, with a warning
        assert not obstore_in_child
        assert any("does not survive fork" in w for w in child_warnings) == (client == "obstore")
    finally:
        handle.close()


def test_forked_child_keeps_obstore_when_the_parent_never_read(s3_server: S3Server) -> None:  # noqa: F811
    """The DataLoader pattern: open in the parent, read only in the workers → obstore in every worker.

    Runs in a fresh interpreter, since obstore has already made requests in this test process.
    """
    bucket = s3_server.create_bucket()
    options = {"endpoint_url": s3_server.endpoint_url, "key": s3_server.key, "secret": s3_server.secret}
    arr = zarr.create_array(f"s3://{bucket}/a.zarr", shape=(64, 64), chunks=(8, 8), dtype="int32",
                            storage_options=options)
    arr[:] = np.arange(64 * 64, dtype="int32").reshape(64, 64)
    script = textwrap.dedent(f"""
        import multiprocessing as mp, os, sys, warnings
        import numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import gpuzarr
        from gpuzarr.storage import remote
        from test_fork import REGIONS, _read_in_child
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        handle = gpuzarr.open_array("s3://{bucket}/a.zarr", s3_client="obstore", **{options!r})
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        children = [ctx.Process(target=_read_in_child, args=(handle, queue)) for _ in range(2)]
        for child in children:
            child.start()
        results = [queue.get(timeout=60) for _ in children]
        for child in children:
            child.join(10)
        print(all(r[1] for r in results), sorted({{r[0] for r in results}}), sum(len(r[2]) for r in results))
    """)
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = sum(int(np.arange(64 * 64).reshape(64, 64)[r].sum()) for r in REGIONS)
    assert done.stdout.split() == ["True", f"[{expected}]", "0"]
