"""Shard indexes are checked entry by entry: only both fields 2**64-1 means an empty inner chunk.

Each test rewrites one entry of a real shard's index (written by zarr-python, index at
the start and at the end) and re-seals the index with a *valid* crc32c, so the checksum
cannot catch the damage. A corrupt entry must raise :class:`CorruptChunkError` naming the
array, the shard key and the inner chunk; it must never read as fill values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from crc32c import crc32c
from hypothesis import example, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec

import gpuzarr
from gpuzarr.errors import CorruptChunkError

MAX = 2**64 - 1
SHARD_KEY = "c/0/1"  # rows 0:4, columns 4:8: inner chunks (0, 0) .. (1, 1) of 2x2 each
N_INNER = 4
INDEX_BYTES = N_INNER * 16 + 4
VALUES = np.arange(64, dtype=np.int32).reshape(8, 8) + 1  # no zeros: a fill value (0) cannot pass for data


def make_sharded(path: Path, index_location: str) -> None:
    arr = zarr.create_array(
        str(path), shape=(8, 8), chunks=(2, 2), shards={"shape": (4, 4), "index_location": index_location},
        dtype="int32", fill_value=0, compressors=[BloscCodec()],
    )
    arr[:] = VALUES


def set_entry(path: Path, index_location: str, inner: int, offset: int, length: int) -> int:
    """Rewrite entry ``inner`` of the shard's index (valid crc32c); returns the shard's size."""
    file = path / SHARD_KEY
    data = bytearray(file.read_bytes())
    at = 0 if index_location == "start" else len(data) - INDEX_BYTES
    entries = np.frombuffer(bytes(data[at : at + INDEX_BYTES - 4]), dtype="<u8").copy().reshape(-1, 2)
    entries[inner] = (offset, length)
    body = entries.tobytes()
    data[at : at + INDEX_BYTES] = body + int(crc32c(body)).to_bytes(4, "little")
    file.write_bytes(bytes(data))
    return len(data)


def read_shard(path: Path) -> np.ndarray:
    return gpuzarr.open_array(str(path)).read_batch([(slice(0, 4), slice(4, 8))], device="cpu")[0]


def assert_names_inner(exc: CorruptChunkError, path: Path, inner: int) -> None:
    where = str(tuple(int(i) for i in np.unravel_index(inner, (2, 2))))
    assert exc.key.endswith(SHARD_KEY)
    for part in (str(path), SHARD_KEY, f"inner chunk {where}"):
        assert part in str(exc), f"{part!r} not in {exc}"
    assert str(path) in exc.array


@pytest.mark.parametrize("index_location", ["start", "end"])
@pytest.mark.parametrize("field", ["offset", "length"])
def test_one_field_at_max_is_corrupt_not_empty(tmp_path: Path, index_location: str, field: str) -> None:
    path = tmp_path / "s.zarr"
    make_sharded(path, index_location)
    file = path / SHARD_KEY
    at = 0 if index_location == "start" else file.stat().st_size - INDEX_BYTES
    real = np.frombuffer(file.read_bytes()[at : at + 32], dtype="<u8").reshape(-1, 2)[1]
    offset, length = (MAX, int(real[1])) if field == "offset" else (int(real[0]), MAX)
    set_entry(path, index_location, 1, offset, length)
    with pytest.raises(CorruptChunkError, match="only one of its fields") as info:
        read_shard(path)
    assert_names_inner(info.value, path, 1)


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_both_fields_at_max_is_an_empty_inner_chunk(tmp_path: Path, index_location: str) -> None:
    path = tmp_path / "s.zarr"
    make_sharded(path, index_location)
    set_entry(path, index_location, 1, MAX, MAX)
    expected = zarr.open_array(str(path), mode="r")[0:4, 4:8]
    assert (expected[0:2, 2:4] == 0).all() and (expected[2:4] == VALUES[2:4, 4:8]).all()
    np.testing.assert_array_equal(read_shard(path), expected)


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_range_past_the_end_of_the_shard_names_the_inner_chunk(tmp_path: Path, index_location: str) -> None:
    path = tmp_path / "s.zarr"
    make_sharded(path, index_location)
    size = (path / SHARD_KEY).stat().st_size
    set_entry(path, index_location, 2, size - 8, 100)
    with pytest.raises(CorruptChunkError, match="past its end") as info:
        read_shard(path)
    assert_names_inner(info.value, path, 2)


@pytest.mark.parametrize("index_location", ["start", "end"])
@pytest.mark.parametrize(("offset", "length"), [(2**63, 16), (16, 2**63), (2**63 - 8, 16), (MAX - 1, MAX - 1)])
def test_range_beyond_any_shard_is_corrupt(tmp_path: Path, index_location: str, offset: int, length: int) -> None:
    path = tmp_path / "s.zarr"
    make_sharded(path, index_location)
    set_entry(path, index_location, 3, offset, length)
    with pytest.raises(CorruptChunkError, match="beyond any possible shard") as info:
        read_shard(path)
    assert_names_inner(info.value, path, 3)


def test_range_inside_an_index_at_the_start_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    make_sharded(path, "start")
    set_entry(path, "start", 0, 4, 20)
    with pytest.raises(CorruptChunkError, match="overlaps the shard index") as info:
        read_shard(path)
    assert_names_inner(info.value, path, 0)


@settings(max_examples=40)
@given(index_location=st.sampled_from(["start", "end"]), inner=st.integers(0, N_INNER - 1),
       offset=st.sampled_from([MAX, MAX - 1, 2**63, 2**63 - 1, "real"]),
       length=st.sampled_from([MAX, MAX - 1, 2**63, 2**63 - 1, "real", 1 << 20]))
@example(index_location="end", inner=0, offset="real", length=2**63 - 1)  # a range from 0 that fits an int64
def test_crafted_entries_read_as_zarr_or_raise_named(tmp_path_factory: pytest.TempPathFactory, index_location: str,
                                                      inner: int, offset: int | str, length: int | str) -> None:
    """Any entry: the shard reads exactly as zarr-python does, or raises naming the array, shard and inner chunk."""
    path = tmp_path_factory.mktemp("shard") / "s.zarr"
    make_sharded(path, index_location)
    file = path / SHARD_KEY
    at = 0 if index_location == "start" else file.stat().st_size - INDEX_BYTES
    real = np.frombuffer(file.read_bytes()[at : at + INDEX_BYTES - 4], dtype="<u8").reshape(-1, 2)[inner]
    o = int(real[0]) if offset == "real" else int(offset)
    n = int(real[1]) if length == "real" else int(length)
    set_entry(path, index_location, inner, o, n)
    if (o, n) == tuple(int(x) for x in real) or (o, n) == (MAX, MAX):
        np.testing.assert_array_equal(read_shard(path), zarr.open_array(str(path), mode="r")[0:4, 4:8])
        return
    with pytest.raises(CorruptChunkError) as info:
        read_shard(path)
    assert_names_inner(info.value, path, inner)


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_zarr_pipeline_plugin_checks_the_index_too(tmp_path: Path, index_location: str) -> None:
    """zarr reading through gpuzarr's codec pipeline uses the same index check: one field at max is corrupt."""
    path = tmp_path / "s.zarr"
    make_sharded(path, index_location)
    file = path / SHARD_KEY
    at = 0 if index_location == "start" else file.stat().st_size - INDEX_BYTES
    real = np.frombuffer(file.read_bytes()[at : at + 32], dtype="<u8").reshape(-1, 2)[1]
    set_entry(path, index_location, 1, MAX, int(real[1]))
    with zarr.config.set({"codec_pipeline.path": "gpuzarr.GpuzarrCodecPipeline"}):
        arr = zarr.open_array(str(path), mode="r")
        with pytest.raises(CorruptChunkError, match=r"inner chunk \(0, 1\).*only one of its fields"):
            arr[0:4, 4:8]


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_garbage_index_without_checksum_names_array_and_shard(index_location: str) -> None:
    """An index with no crc32c (index_codecs=[bytes]) filled with garbage: a CorruptChunkError, not a FetchError."""
    from zarr.codecs import BytesCodec, ShardingCodec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store = zarr.storage.MemoryStore()
    arr = zarr.create_array(store, shape=(8, 8), chunks=(4, 4), dtype="int32", compressors=None,
                            serializer=ShardingCodec(chunk_shape=(2, 2), index_codecs=[BytesCodec()],
                                                     index_location=index_location))
    arr[:] = VALUES
    data = bytearray(sync(store.get("c/0/0", prototype=default_buffer_prototype())).to_bytes())
    at = 0 if index_location == "start" else len(data) - 4 * 16
    data[at : at + 64] = np.random.default_rng(3).integers(0, 256, 64, dtype=np.uint8).tobytes()
    sync(store.set("c/0/0", default_buffer_prototype().buffer.from_bytes(bytes(data))))
    handle = gpuzarr.open_array(arr)
    with pytest.raises(CorruptChunkError) as info:
        handle[0:4, 0:4]
    assert handle.name in str(info.value) and "c/0/0" in str(info.value) and "inner chunk" in str(info.value)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_a_shard_index_cache_smaller_than_a_batch_reads_right(tmp_path: Path, size: int) -> None:
    """A batch over more shards than the index cache holds: indexes evicted by the batch's own reads still serve it.

    Batches mix shards whose index is cached with shards read now, in both orders, and
    repeat; every value equals zarr-python's, and the cache never holds more than its size.
    """
    make_sharded(tmp_path / "a.zarr", "end")
    handle = gpuzarr.open_array(str(tmp_path / "a.zarr"))
    handle.reader._index_cache_size = size
    regions = [(slice(0, 4), slice(0, 4)), (slice(4, 8), slice(4, 8)), (slice(0, 4), slice(4, 8)),
               (slice(4, 8), slice(0, 4)), (slice(2, 6), slice(2, 6))]
    for batch in (regions, regions[::-1], regions[1:3], regions, regions[2:]):
        got = handle.read_batch(batch, device="cpu")
        for region, crop in zip(batch, got, strict=True):
            np.testing.assert_array_equal(crop, VALUES[region])
        assert len(handle.reader._index_cache) <= size
