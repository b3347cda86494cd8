"""open_array with a memory cache and a disk tier: values, hits, and pickling into workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import zarr

import gpuzarr
from gpuzarr.storage.disk_cache import DiskCache


def make_array(tmp_path: Path) -> zarr.Array:
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(64, 64), chunks=(8, 8), dtype="int32",
                            compressors=zarr.codecs.ZstdCodec())
    arr[:] = np.arange(64 * 64, dtype="int32").reshape(64, 64)
    return arr


def test_disk_tier_serves_the_second_handle(tmp_path: Path) -> None:
    arr = make_array(tmp_path)
    regions = [(slice(3, 20), slice(5, 30)), (slice(30, 47), slice(0, 25))]
    disk = DiskCache(tmp_path / "tier", 1 << 20)
    first = gpuzarr.open_array(str(tmp_path / "a.zarr"), disk_cache=disk).read_batch(regions, device="cpu")
    second_handle = gpuzarr.open_array(str(tmp_path / "a.zarr"), disk_cache=DiskCache(tmp_path / "tier", 1 << 20))
    second = second_handle.read_batch(regions, device="cpu")
    np.testing.assert_array_equal(first, np.stack([arr[r] for r in regions]))
    np.testing.assert_array_equal(second, first)
    stats = second_handle.disk_cache.stats()
    assert stats.hits > 0 and stats.misses == 0


def test_pickled_handle_keeps_its_caches(tmp_path: Path) -> None:
    make_array(tmp_path)
    handle = gpuzarr.open_array(str(tmp_path / "a.zarr"), cache=gpuzarr.PinnedLRUCache(1 << 20),
                                disk_cache=DiskCache(tmp_path / "tier", 1 << 20))
    region = [(slice(0, 10), slice(0, 10))]
    handle.read_batch(region, device="cpu")
    clone = pickle.loads(pickle.dumps(handle))
    assert clone.cache.max_bytes == 1 << 20 and len(clone.cache) == 0  # memory: same budget, empty
    assert clone.disk_cache.directory == handle.disk_cache.directory  # disk: the same shared tier
    np.testing.assert_array_equal(clone.read_batch(region, device="cpu"), handle.read_batch(region, device="cpu"))
    assert clone.disk_cache.stats().hits > 0
