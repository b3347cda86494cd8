"""Loader with ``prefetch_chunks``: same values, each chunk fetched once, no threads left behind."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
import zarr

import gpuzarr
from gpuzarr.storage.base import ChunkFetcher
from gpuzarr.storage.cache import PinnedLRUCache


class CountingFetcher(ChunkFetcher):
    """Wraps a real fetcher and counts reads per key."""

    def __init__(self, inner: ChunkFetcher) -> None:
        self.inner = inner
        self.store_id = inner.store_id
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def fetch(self, keys: Sequence[str], ranges: Sequence[object] | None = None) -> list[object]:
        with self._lock:
            self.counts.update(keys)
        return self.inner.fetch(keys, ranges)  # type: ignore[arg-type]


@pytest.fixture
def array(tmp_path: object) -> zarr.Array:
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(6, 300, 300), chunks=(1, 50, 50), dtype="uint16")  # type: ignore[operator]
    arr[:] = (np.arange(arr.size) % 65521).reshape(arr.shape).astype("uint16")
    return arr


@pytest.mark.parametrize("prefetch_batches", [0, 2])
def test_prefetched_loader_equals_zarr_and_fetches_each_chunk_once(array: zarr.Array, prefetch_batches: int) -> None:
    handle = gpuzarr.open_array(str(array.store.root), cache=PinnedLRUCache(64 << 20))  # type: ignore[attr-defined]
    counting = CountingFetcher(handle.reader.fetcher)
    handle.reader.fetcher = counting
    sampler = gpuzarr.RandomCrops((70, 70), seed=5, samples_per_epoch=40)
    loader = gpuzarr.Loader(handle, sampler, 8, epochs=2, device="cpu", prefetch_chunks=3,
                            prefetch_batches=prefetch_batches)
    batches = list(loader)
    expected = [np.stack([array[r] for r in loader.epoch_regions(e)[i : i + 8]]) for e in range(2) for i in range(0, 40, 8)]
    assert len(batches) == len(expected)
    for got, want in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert counting.counts, "nothing was fetched"
    assert max(counting.counts.values()) == 1, counting.counts.most_common(3)
    assert not [t for t in threading.enumerate() if t.name.startswith("gpuzarr-prefetch")]


def test_prefetch_chunks_without_cache_is_a_clear_error(array: zarr.Array) -> None:
    handle = gpuzarr.open_array(array)
    with pytest.raises(ValueError, match="cache"):
        gpuzarr.Loader(handle, gpuzarr.RandomCrops((10, 10)), 4, prefetch_chunks=2)


def test_breaking_out_of_a_prefetching_loader_stops_its_threads(array: zarr.Array) -> None:
    handle = gpuzarr.open_array(array, cache=PinnedLRUCache(64 << 20))
    loader = gpuzarr.Loader(handle, gpuzarr.RandomCrops((70, 70), seed=1, samples_per_epoch=64), 4,
                            device="cpu", prefetch_chunks=4)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    alive = [t.name for t in threading.enumerate() if t.name.startswith(("gpuzarr-prefetch", "gpuzarr-loader"))]
    assert not alive
    assert loader.state_dict() == {"epoch": 0, "batch": 3}


def test_prefetch_threads_default_to_one_per_batch_in_flight(array: zarr.Array) -> None:
    """The current batch and the ``prefetch_chunks`` next ones are in flight at once unless the user asks
    for fewer threads."""
    handle = gpuzarr.open_array(array, cache=PinnedLRUCache(64 << 20))
    sampler = gpuzarr.RandomCrops((70, 70), seed=1, samples_per_epoch=64)
    loader = gpuzarr.Loader(handle, sampler, 4, device="cpu", prefetch_chunks=6)
    assert loader.prefetch_workers == 7
    names: set[str] = set()
    for i, _ in enumerate(loader):
        names |= {t.name for t in threading.enumerate() if t.name.startswith("gpuzarr-prefetch")}
        if i == 3:
            break
    assert len(names) == 7, names
    assert gpuzarr.Loader(handle, sampler, 4, prefetch_chunks=6, prefetch_workers=2).prefetch_workers == 2


@pytest.mark.parametrize("prefetch_batches", [0, 2])
def test_each_batch_is_planned_once_with_chunk_prefetch(array: zarr.Array, prefetch_batches: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan the chunk prefetch makes for a batch is the one its read executes: no batch is planned twice."""
    handle = gpuzarr.open_array(str(array.store.root), cache=PinnedLRUCache(64 << 20))  # type: ignore[attr-defined]
    planned: list[int] = []
    original = gpuzarr.ArrayHandle.plan

    def counting_plan(self: gpuzarr.ArrayHandle, regions: Sequence[object]) -> object:
        planned.append(len(regions))
        return original(self, regions)

    monkeypatch.setattr(gpuzarr.ArrayHandle, "plan", counting_plan)
    sampler = gpuzarr.RandomCrops((70, 70), seed=3, samples_per_epoch=36)
    loader = gpuzarr.Loader(handle, sampler, 8, epochs=2, device="cpu", prefetch_chunks=2,
                            prefetch_batches=prefetch_batches)
    batches = list(loader)
    expected = [np.stack([array[r] for r in loader.epoch_regions(e)[i : i + 8]]) for e in range(2) for i in range(0, 36, 8)]
    assert len(batches) == len(expected) == 10
    for got, want in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert planned == [8, 8, 8, 8, 4] * 2, planned
