"""``open_array(..., readahead=N)``: sequential and strided scans outside a Loader prefetch their next reads.

A fetcher wrapper records which thread fetched each chunk: once the stride detector has
seen the pattern, the chunks of later reads arrive through the prefetch threads and the
reads themselves fetch nothing; every chunk is fetched once; values equal zarr-python's.
Random access prefetches nothing.
"""

from __future__ import annotations

import pickle
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import gpuzarr
from gpuzarr import PinnedLRUCache


class ThreadRecordingFetcher:
    """Wraps a fetcher; counts the keys fetched per thread kind (prefetch or not)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.store_id = inner.store_id
        self.by_prefetch: Counter[str] = Counter()
        self.by_reader: Counter[str] = Counter()
        self._lock = threading.Lock()

    def fetch(self, keys: Any, ranges: Any = None) -> Any:
        counter = self.by_prefetch if threading.current_thread().name.startswith("gpuzarr-prefetch") else self.by_reader
        with self._lock:
            counter.update(keys)
        return self.inner.fetch(keys, ranges)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def array(tmp_path: Path) -> zarr.Array:
    data = np.random.default_rng(0).integers(0, 1000, (96, 80)).astype("int32")
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(8, 10), dtype="int32",
                            compressors=zarr.codecs.ZstdCodec())
    arr[:] = data
    return arr


def open_recorded(array: zarr.Array, readahead: int) -> tuple[gpuzarr.ArrayHandle, ThreadRecordingFetcher]:
    handle = gpuzarr.open_array(str(array.store.root), cache=PinnedLRUCache(16 << 20), readahead=readahead)  # type: ignore[attr-defined]
    recorder = ThreadRecordingFetcher(handle.reader.fetcher)
    handle.reader.fetcher = recorder
    return handle, recorder


@pytest.mark.parametrize(("step", "window"), [((8, 0), (8, 80)), ((0, 20), (96, 10)), ((16, 0), (8, 40))],
                         ids=["rows", "strided-columns", "every-other-row-band"])
def test_scans_prefetch_their_next_reads(array: zarr.Array, step: tuple[int, int], window: tuple[int, int]) -> None:
    handle, recorder = open_recorded(array, readahead=3)
    starts = [(i * step[0], i * step[1]) for i in range(99)
              if i * step[0] + window[0] <= array.shape[0] and i * step[1] + window[1] <= array.shape[1]]
    for r, c in starts:
        region = (slice(r, r + window[0]), slice(c, c + window[1]))
        np.testing.assert_array_equal(handle.read_batch([region], device="cpu")[0], array[region])
    handle.close()
    fetched = recorder.by_reader + recorder.by_prefetch
    assert max(fetched.values()) == 1, fetched.most_common(3)  # no chunk fetched twice
    # the pattern is confirmed by reads 0, 1, 2 (two equal shifts): every later read finds its chunks cached
    later = [k for k in recorder.by_reader if _read_index(k, step) >= 3]
    assert not later, f"reads after the pattern was seen fetched {later[:5]} themselves"
    assert recorder.by_prefetch, "nothing was prefetched"
    assert not [t for t in threading.enumerate() if t.name.startswith("gpuzarr-prefetch")]


def _read_index(key: str, step: tuple[int, int]) -> int:
    """The read of the scan whose window holds chunk ``key`` ("c/i/j", chunks 8x10)."""
    i, j = (int(x) for x in key.split("/")[1:])
    return i * 8 // step[0] if step[0] else j * 10 // step[1]


def test_random_access_prefetches_nothing(array: zarr.Array) -> None:
    handle, recorder = open_recorded(array, readahead=4)
    rng = np.random.default_rng(3)
    for _ in range(12):
        r, c = int(rng.integers(0, 80)), int(rng.integers(0, 60))
        region = (slice(r, r + 16), slice(c, c + 20))
        np.testing.assert_array_equal(handle.read_batch([region], device="cpu")[0], array[region])
    assert not recorder.by_prefetch
    handle.close()


def test_readahead_needs_a_cache_and_survives_pickling(array: zarr.Array) -> None:
    with pytest.raises(ValueError, match="cache"):
        gpuzarr.open_array(str(array.store.root), readahead=2)  # type: ignore[attr-defined]
    handle = gpuzarr.open_array(str(array.store.root), cache=PinnedLRUCache(1 << 20), readahead=2)  # type: ignore[attr-defined]
    handle.read_batch([(slice(0, 8), slice(0, 80))], device="cpu")  # starts the prefetch threads
    clone = pickle.loads(pickle.dumps(handle))
    assert clone.readahead == 2
    np.testing.assert_array_equal(clone.read_batch([(slice(8, 16), slice(0, 80))], device="cpu")[0], array[8:16])
    clone.close()
    handle.close()


def test_group_members_inherit_cache_disk_tier_and_readahead(tmp_path: Path) -> None:
    from gpuzarr.storage.disk_cache import CachingFetcher, DiskCache

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    data = np.arange(64 * 40, dtype="uint16").reshape(64, 40)
    group.create_array("sub/x", shape=data.shape, chunks=(8, 8), dtype="uint16")[:] = data
    cache = PinnedLRUCache(1 << 20)
    handle = gpuzarr.open_group(str(tmp_path / "g.zarr"), cache=cache, disk_cache=DiskCache(tmp_path / "disk", 1 << 20),
                                readahead=2)["sub"]["x"]
    assert handle.cache is cache and handle.readahead == 2 and isinstance(handle.fetcher, CachingFetcher)
    for r in range(0, 64, 8):
        np.testing.assert_array_equal(handle.read_batch([(slice(r, r + 8), slice(0, 40))], device="cpu")[0],
                                      data[r : r + 8])
    handle.close()
