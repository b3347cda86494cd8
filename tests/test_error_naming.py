"""Every error a user can get is a GpuzarrError naming the array and, where there is one, the key.

Fetchers know the store and the key but not which array asked: the handle adds the array
to any :class:`FetchError`. Invalid arguments and options are a :class:`ConfigurationError`
(also a ``ValueError``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

import gpuzarr
from gpuzarr.errors import ConfigurationError, FetchError, GpuzarrError


def make(path: Path, **kwargs: object) -> zarr.Array:
    arr = zarr.create_array(str(path), shape=(8, 8), chunks=(4, 4), dtype="int32", **kwargs)  # type: ignore[arg-type]
    arr[:] = np.arange(64, dtype="int32").reshape(8, 8)
    return arr


@pytest.mark.parametrize("shards", [None, (4, 8)])
def test_unreadable_chunk_is_a_fetch_error_naming_array_and_key(tmp_path: Path, shards: tuple[int, int] | None) -> None:
    path = tmp_path / "a.zarr"
    make(path, shards=shards)
    key = "c/0/0"
    os.remove(path / key)
    os.mkdir(path / key)  # the chunk (or shard) is now a directory: reading it fails with an OSError
    handle = gpuzarr.open_array(str(path))
    with pytest.raises(FetchError) as info:
        handle.read_batch([(slice(0, 4), slice(0, 4))], device="cpu")
    assert isinstance(info.value, GpuzarrError) and isinstance(info.value, OSError)
    assert str(path) in str(info.value) and info.value.array == handle.name
    assert key in str(info.value) and info.value.key.endswith(key)
    good = [(slice(4, 8), slice(4, 8))]  # other chunks still read
    np.testing.assert_array_equal(handle.read_batch(good, device="cpu")[0], np.arange(64).reshape(8, 8)[4:8, 4:8])


def test_naming_is_idempotent() -> None:
    exc = FetchError("s3://b/x: reading 'c/0' failed", key="c/0")
    named = exc.naming("s3://b/x/raw")
    assert named is not exc and type(named) is FetchError
    assert str(named).startswith("s3://b/x/raw: ") and named.key == "c/0" and named.array == "s3://b/x/raw"
    assert named.naming("s3://b/x/raw") is named


def test_invalid_arguments_are_configuration_errors(tmp_path: Path) -> None:
    make(tmp_path / "a.zarr")
    handle = gpuzarr.open_array(str(tmp_path / "a.zarr"))
    with pytest.raises(ConfigurationError, match="'tpu'"):
        handle.read_batch([(0, slice(None))], device="tpu")
    with pytest.raises(ConfigurationError, match=str(tmp_path)):
        gpuzarr.open_array(str(tmp_path / "a.zarr"), readahead=2)
    with pytest.raises(ConfigurationError, match=str(tmp_path)):
        handle.chunk_prefetcher(workers=1)
    from gpuzarr.storage.select import fetcher_for_location

    with pytest.raises(ConfigurationError, match="ftp"):
        fetcher_for_location("ftp://host/x.zarr")
    assert issubclass(ConfigurationError, ValueError) and issubclass(ConfigurationError, GpuzarrError)
