"""The host path's shortcuts give exactly what the long way gives.

Chunk keys come from one string format found by probing zarr's own encoder (checked here
against ``encode_chunk_key`` for every encoding zarr writes); keys for error messages are
built lazily (:class:`ChunkKeys`); a batch of deferred reads is one object; the local
fetcher reads several ranges of one shard through one open file. Each must agree with
the plain route, value for value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuzarr
from gpuzarr.storage.base import ByteRange, DeferredRead, DeferredReads, SuffixRange
from gpuzarr.storage.local import LocalFileFetcher
from gpuzarr.storage.reader import ChunkKeys, ChunkReader


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="default-slash"),
        pytest.param({"chunk_key_encoding": {"name": "default", "separator": "."}}, id="default-dot"),
        pytest.param({"chunk_key_encoding": {"name": "v2", "separator": "."}}, id="v2-dot"),
        pytest.param({"chunk_key_encoding": {"name": "v2", "separator": "/"}}, id="v2-slash"),
        pytest.param({"zarr_format": 2}, id="zarr-v2"),
    ],
)
@pytest.mark.parametrize("ndim", [1, 2, 4])
@pytest.mark.parametrize("path", ["", "group/arr%d"])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_store_keys_equal_zarrs_encoder(kwargs: dict, ndim: int, path: str, data: st.DataObject) -> None:
    arr = zarr.create_array(zarr.storage.MemoryStore(), shape=(10**12,) * ndim, chunks=(3,) * ndim, dtype="u1",
                            **kwargs)
    reader = ChunkReader(None, arr.metadata, path, "keys")  # type: ignore[arg-type]
    coords = np.asarray(data.draw(st.lists(st.lists(st.integers(0, 10**11), min_size=ndim, max_size=ndim),
                                           min_size=1, max_size=5)), dtype=np.int64)
    prefix = f"{path}/" if path else ""
    want = [prefix + arr.metadata.encode_chunk_key(tuple(int(c) for c in row)) for row in coords]
    assert reader.store_keys(coords) == want
    assert [reader._store_key(row) for row in coords.tolist()] == want


def test_chunk_keys_are_lazy_and_equal_the_eager_ones(tmp_path: Path) -> None:
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(40, 40), chunks=(4, 4), shards=(8, 8), dtype="u1")
    handle = gpuzarr.open_array(str(tmp_path / "a.zarr"))
    coords = np.array([[0, 0], [3, 5], [9, 9]], dtype=np.int64)
    eager = handle.reader.chunk_keys(coords)
    lazy = handle.reader.lazy_chunk_keys(coords)
    assert isinstance(lazy, ChunkKeys)
    assert len(lazy) == 3 and list(lazy) == eager and [lazy[i] for i in range(3)] == eager
    assert lazy[-1] == eager[-1] and lazy[1:] == eager[1:]
    assert eager[1] == "c/1/2[inner (1, 1)]"
    with pytest.raises(IndexError):
        lazy[3]
    assert arr.shape == (40, 40)


def test_deferred_reads_load_what_the_fetcher_reads(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"hello world")
    fetcher = LocalFileFetcher(tmp_path, use_kvikio=False)
    batch = DeferredReads(fetcher, ["x", "missing"])
    assert len(batch) == 2 and isinstance(batch[0], DeferredRead) and batch[0].key == "x"

    def buffer_for(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.uint8)

    assert bytes(batch.load(0, buffer_for)) == b"hello world"
    assert batch.load(1, buffer_for) is None
    assert bytes(batch[0].load(buffer_for)) == b"hello world"


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_ranges_of_one_file_read_through_one_open_equal_single_reads(tmp_path_factory: pytest.TempPathFactory,
                                                                      data: st.DataObject) -> None:
    root = tmp_path_factory.mktemp("ranges")
    blobs = {name: bytes(np.random.default_rng(i).integers(0, 256, size=n, dtype=np.uint8))
             for i, (name, n) in enumerate([("a", 300), ("b", 50), ("c", 1)])}
    for name, blob in blobs.items():
        (root / name).write_bytes(blob)
    fetcher = LocalFileFetcher(root, use_kvikio=False, max_workers=data.draw(st.integers(1, 3)))
    keys, ranges, want = [], [], []
    for _ in range(data.draw(st.integers(1, 12))):
        name = data.draw(st.sampled_from(["a", "b", "c", "gone"]))
        blob = blobs.get(name, b"")
        kind = data.draw(st.sampled_from(["whole", "range", "suffix"]))
        if kind == "range" and blob:
            a = data.draw(st.integers(0, len(blob)))
            b = data.draw(st.integers(a, len(blob)))
            rng, part = ByteRange(a, b - a), blob[a:b]
        elif kind == "suffix" and blob:
            n = data.draw(st.integers(0, len(blob)))
            rng, part = SuffixRange(n), blob[len(blob) - n:]
        else:
            rng, part = None, blob
        keys.append(name)
        ranges.append(rng)
        want.append(None if name == "gone" else part)
    got = fetcher.fetch(keys, ranges)
    assert [None if g is None else bytes(g) for g in got] == want
    fetcher.close()
