"""gpuzarr.config: settings read at use, ``config.set`` as a context manager, GPUZARR_* variables, explicit overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

import gpuzarr
from gpuzarr.codecs import chain as chain_module
from gpuzarr.settings import io_thread_budget, thread_budget
from gpuzarr.storage.local import LocalFileFetcher
from gpuzarr.storage.remote import RemoteFetcher
from gpuzarr.storage.retry import RetryPolicy
from gpuzarr.threads import cpu_pool


def test_set_is_a_context_manager_and_restores() -> None:
    before = gpuzarr.config.get("threads"), RetryPolicy().max_attempts
    with gpuzarr.config.set({"threads": 3, "retry.max_attempts": 2, "io_threads": 5}):
        assert thread_budget() == 3 and cpu_pool().size == 3
        assert io_thread_budget() == 5
        assert RetryPolicy().max_attempts == 2
        assert RetryPolicy(max_attempts=4).max_attempts == 4  # an explicit argument wins
    assert (gpuzarr.config.get("threads"), RetryPolicy().max_attempts) == before


def test_fetchers_take_the_settings_unless_given(tmp_path: Path) -> None:
    with gpuzarr.config.set({"io_threads": 3, "retry.max_attempts": 2, "s3.client": "s3fs",
                             "s3.max_concurrency": 7, "s3.request_timeout": 4.5}):
        local = LocalFileFetcher(tmp_path)
        assert local.max_workers == 3 and local.retry.max_attempts == 2
        assert LocalFileFetcher(tmp_path, max_workers=2).max_workers == 2
        remote = RemoteFetcher("s3://bucket/a.zarr", {"anon": True, "endpoint_url": "http://127.0.0.1:1"})
        assert (remote.s3_client, remote.max_concurrency, remote.request_timeout) == ("s3fs", 7, 4.5)
        assert remote.retry.max_attempts == 2
        explicit = RemoteFetcher("http://127.0.0.1:1/a.zarr", max_concurrency=3, request_timeout=1.0)
        assert (explicit.max_concurrency, explicit.request_timeout) == (3, 1.0)
    with gpuzarr.config.set({"io_threads": 4}):
        assert local.max_workers == 4  # read at each use
    local.close()


def _blosc_array(tmp_path: Path) -> tuple[zarr.Array, list[Any]]:
    data = np.arange(4 * 512 * 512, dtype="uint16").reshape(4, 512, 512)
    arr = zarr.create_array(str(tmp_path / "b.zarr"), shape=data.shape, chunks=(1, 512, 512), dtype=data.dtype,
                            compressors=BloscCodec(cname="lz4", clevel=1, shuffle="shuffle", blocksize=1 << 14))
    arr[...] = data
    return arr, [(i, slice(10, 30), slice(40, 90)) for i in range(4)]


def test_partial_decode_settings_decide_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arr, regions = _blosc_array(tmp_path)
    expected = np.stack([arr[r] for r in regions])
    decoded_in_part: list[bool] = []
    real = chain_module.decode_blocks_into

    def recording(view: Any, dest: Any, intervals: Any, *header: Any) -> bool:
        decoded_in_part.append(real(view, dest, intervals, *header))
        return decoded_in_part[-1]

    monkeypatch.setattr(chain_module, "decode_blocks_into", recording)
    handle = gpuzarr.open_array(arr)
    np.testing.assert_array_equal(handle.read_batch(regions, device="cpu"), expected)  # 512 KiB chunks: partial
    assert decoded_in_part == [True] * 4
    decoded_in_part.clear()
    with gpuzarr.config.set({"partial_decode.min_chunk_bytes": 1 << 20}):
        np.testing.assert_array_equal(handle.read_batch(regions, device="cpu"), expected)
    assert decoded_in_part == []  # below the threshold: whole chunks
    with gpuzarr.config.set({"partial_decode.max_fraction": 0.0}):
        np.testing.assert_array_equal(handle.read_batch(regions, device="cpu"), expected)
    assert decoded_in_part == [False] * 4  # every chunk "needs too much": decoded whole


def test_environment_variables_set_the_defaults(tmp_path: Path) -> None:
    code = (
        "import json, gpuzarr\n"
        "from gpuzarr.threads import cpu_pool\n"
        "from gpuzarr.storage.remote import RemoteFetcher\n"
        "from gpuzarr.storage.retry import RetryPolicy\n"
        "r = RemoteFetcher('s3://bucket/a.zarr', {'anon': True, 'endpoint_url': 'http://127.0.0.1:1'})\n"
        "print(json.dumps([cpu_pool().size, gpuzarr.config.get('partial_decode.min_chunk_bytes'),\n"
        "                  RetryPolicy().max_attempts, r.s3_client, r.max_concurrency]))\n"
    )
    env = {**os.environ, "GPUZARR_THREADS": "3", "GPUZARR_PARTIAL_DECODE__MIN_CHUNK_BYTES": "4096",
           "GPUZARR_RETRY__MAX_ATTEMPTS": "2", "GPUZARR_S3__CLIENT": "s3fs", "GPUZARR_S3__MAX_CONCURRENCY": "9"}
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [3, 4096, 2, "s3fs", 9]
