"""One cache-key identity for every fetcher: stores never read each other's cached chunks.

A shared :class:`~gpuzarr.storage.cache.PinnedLRUCache` keys entries on the fetcher's
``cache_identity``. In-memory stores get a token unique to their fetcher (their ``str`` is
``memory://<id>`` and Python reuses ids), locations that outlive the process get their
canonical URL (so equal locations share entries), and only the latter may use the disk tier.
"""

from __future__ import annotations

import gc
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuzarr
from gpuzarr.errors import GpuzarrWarning
from gpuzarr.storage.disk_cache import CachingFetcher, DiskCache
from gpuzarr.storage.local import LocalFileFetcher
from gpuzarr.storage.remote import RemoteFetcher
from gpuzarr.storage.zarr_store import ZarrStoreFetcher


def short_lived_reads(cache: gpuzarr.PinnedLRUCache, n: int, shards: tuple[int, ...] | None) -> set[int]:
    """Open ``n`` arrays over fresh MemoryStores one after another, each with other values; check each read."""
    ids: set[int] = set()
    for i in range(n):
        store = zarr.storage.MemoryStore()
        ids.add(id(store))
        arr = zarr.create_array(store, shape=(12, 6), chunks=(4, 3), shards=shards, dtype="int32")
        expected = np.arange(72, dtype="int32").reshape(12, 6) + 1000 * i
        arr[:] = expected
        handle = gpuzarr.open_array(arr, cache=cache)
        np.testing.assert_array_equal(handle.read_batch([(slice(0, 12), slice(0, 6))], device="cpu")[0], expected)
        np.testing.assert_array_equal(handle.read_batch([(slice(3, 7), slice(1, 4))], device="cpu")[0],
                                      expected[3:7, 1:4])
        del handle, arr, store
        gc.collect()
    return ids


@pytest.mark.parametrize("shards", [None, (8, 6)])
def test_short_lived_memory_stores_sharing_a_cache_never_mix(shards: tuple[int, ...] | None) -> None:
    cache = gpuzarr.PinnedLRUCache(64 << 20, pinned=False)
    ids = short_lived_reads(cache, 50, shards)
    assert len(ids) < 50  # Python did reuse store ids: the case that used to collide was exercised
    assert cache.stats().entries > 0


@settings(max_examples=15)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=8))
def test_interleaved_live_and_dead_memory_stores(keep_alive: list[int]) -> None:
    """Some arrays stay alive while others die and new ones (likely at the same ids) are made."""
    cache = gpuzarr.PinnedLRUCache(8 << 20, pinned=False)
    alive: list[tuple[gpuzarr.ArrayHandle, np.ndarray]] = []
    for i, keep in enumerate(keep_alive):
        arr = zarr.create_array(zarr.storage.MemoryStore(), shape=(10,), chunks=(3,), dtype="int64")
        values = np.arange(10, dtype="int64") * (i + 7) - i
        arr[:] = values
        handle = gpuzarr.open_array(arr, cache=cache)
        np.testing.assert_array_equal(handle[2:9], values[2:9])
        if keep:
            alive.append((handle, values))
        del arr, handle
        gc.collect()
        for live, live_values in alive:  # every live array still reads its own values, from the cache too
            np.testing.assert_array_equal(live.read_batch([slice(0, 10)], device="cpu")[0], live_values)


def test_memory_store_identity_is_unique_and_not_pickled() -> None:
    store = zarr.storage.MemoryStore()
    a, b = ZarrStoreFetcher(store), ZarrStoreFetcher(store)
    assert a.persistent_identity is None
    assert a.cache_identity == a.cache_identity  # stable for one fetcher
    assert a.cache_identity != b.cache_identity
    state = a.__getstate__()
    assert "_cache_token" not in state


def test_equal_locations_share_one_identity(tmp_path: Path) -> None:
    (tmp_path / "x.zarr").mkdir()
    assert LocalFileFetcher(tmp_path / "x.zarr").cache_identity == LocalFileFetcher(
        str(tmp_path / "." / "x.zarr")).cache_identity == (tmp_path / "x.zarr").resolve().as_uri()
    s3 = RemoteFetcher("s3://bucket/data.zarr/", {"endpoint_url": "HTTP://127.0.0.1:9000/", "anon": True})
    assert s3.cache_identity == "s3://bucket/data.zarr@http://127.0.0.1:9000"
    assert RemoteFetcher("HTTPS://Example.org/data.zarr/").cache_identity == "https://example.org/data.zarr"


def test_handles_of_one_directory_share_the_memory_cache(tmp_path: Path) -> None:
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(16,), chunks=(4,), dtype="int16")
    arr[:] = np.arange(16)
    cache = gpuzarr.PinnedLRUCache(1 << 20, pinned=False)
    gpuzarr.open_array(str(tmp_path / "a.zarr"), cache=cache)[:]
    before = cache.stats()
    np.testing.assert_array_equal(gpuzarr.open_array(str(tmp_path / "a.zarr"), cache=cache)[:], np.arange(16))
    after = cache.stats()
    assert after.hits - before.hits == 4 and after.misses == before.misses


def test_memory_store_skips_the_disk_tier(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "disk", 1 << 20)
    arr = zarr.create_array(zarr.storage.MemoryStore(), shape=(8,), chunks=(4,), dtype="int8")
    arr[:] = np.arange(8)
    with pytest.warns(GpuzarrWarning, match="no lasting location"):
        handle = gpuzarr.open_array(arr, disk_cache=disk)
    np.testing.assert_array_equal(handle[:], np.arange(8))
    assert disk.stats().entries == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fetcher = CachingFetcher(LocalFileFetcher(tmp_path), disk=disk)  # a directory keeps the tier
    assert fetcher.disk is disk


def test_pickled_memory_handle_gets_a_new_identity() -> None:
    arr = zarr.create_array(zarr.storage.MemoryStore(), shape=(8,), chunks=(4,), dtype="int8")
    arr[:] = np.arange(8)
    handle = gpuzarr.open_array(arr, cache=gpuzarr.PinnedLRUCache(1 << 20, pinned=False))
    clone = pickle.loads(pickle.dumps(handle))
    assert clone.fetcher.cache_identity != handle.fetcher.cache_identity
    np.testing.assert_array_equal(clone[:], np.arange(8))
