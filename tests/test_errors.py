"""Clear, typed errors: each failure mode raises its :mod:`gpuzarr.errors` class and names its subject.

One test per failure mode: a missing path, something that is not a Zarr array, bad
regions (out of bounds, unequal shapes, steps, too many indices), corrupt or
truncated chunks for every bytes codec and for shard indexes, unsupported data
types, and ``device="cuda"`` without a GPU. Each asserts the exception class, its
built-in base class, and that the message names the array / chunk key / region.
A corrupt chunk must not poison the batches read after it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

import gpuzarr
from gpuzarr import _optional
from gpuzarr.errors import (
    ArrayNotFoundError,
    CorruptChunkError,
    DeviceUnavailableError,
    GpuzarrError,
    NotAZarrArrayError,
    RegionError,
    UnsupportedCodecError,
)

CHUNK_KEY = "c/0/1"  # the chunk (rows 0:4, columns 4:8) every corruption test damages


def make_array(path: Path, **codecs: Any) -> zarr.Array:
    """An (8, 8) float32 array in (4, 4) chunks, fully written, with the given codecs."""
    arr = zarr.create_array(str(path), shape=(8, 8), chunks=(4, 4), dtype="float32", fill_value=0, **codecs)
    arr[:] = np.arange(64, dtype=np.float32).reshape(8, 8)
    return arr


def rewrite(file: Path, change: Callable[[bytes], bytes]) -> None:
    file.write_bytes(change(file.read_bytes()))


def garbage(data: bytes) -> bytes:
    return bytes(np.random.default_rng(0).integers(0, 256, size=len(data), dtype=np.uint8))


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_middle_byte(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


def assert_names_chunk(exc: CorruptChunkError, array_path: Path, key: str) -> None:
    assert exc.key.endswith(key), f"key {exc.key!r} does not name {key!r}"
    assert key in str(exc), f"message does not name the chunk {key!r}: {exc}"
    assert str(array_path) in str(exc), f"message does not name the array {array_path}: {exc}"
    assert str(array_path) in exc.array


# --------------------------------------------------------------------------- opening
def test_missing_path_is_array_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.zarr"
    with pytest.raises(ArrayNotFoundError, match=re.escape(str(missing))) as info:
        gpuzarr.open_array(str(missing))
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, GpuzarrError)


def test_missing_group_member_is_array_not_found(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    root.create_array("raw", shape=(2,), dtype="int8")
    group = gpuzarr.open_group(str(tmp_path / "g.zarr"))
    with pytest.raises(ArrayNotFoundError, match="'labels'"):
        group["labels"]


def test_group_is_not_an_array(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    root.create_array("raw", shape=(2,), dtype="int8")
    with pytest.raises(NotAZarrArrayError, match="group") as info:
        gpuzarr.open_array(str(tmp_path / "g.zarr"))
    assert str(tmp_path / "g.zarr") in str(info.value)
    assert "raw" in str(info.value), "the message should list the group's members"


def test_array_is_not_a_group(tmp_path: Path) -> None:
    make_array(tmp_path / "a.zarr")
    with pytest.raises(NotAZarrArrayError, match="not a group"):
        gpuzarr.open_group(str(tmp_path / "a.zarr"))


def test_directory_of_junk_is_not_a_zarr_array(tmp_path: Path) -> None:
    junk = tmp_path / "photos"
    junk.mkdir()
    (junk / "holiday.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(NotAZarrArrayError) as info:
        gpuzarr.open_array(str(junk))
    assert str(junk) in str(info.value)


def test_plain_file_is_not_a_zarr_array(tmp_path: Path) -> None:
    plain = tmp_path / "data.bin"
    plain.write_bytes(b"\x00\x01\x02 junk")
    with pytest.raises(NotAZarrArrayError) as info:
        gpuzarr.open_array(str(plain))
    assert str(plain) in str(info.value)


def test_unparseable_metadata_is_not_a_zarr_array(tmp_path: Path) -> None:
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{{{ not json")
    with pytest.raises(NotAZarrArrayError, match=re.escape(str(broken))):
        gpuzarr.open_array(str(broken))


def test_incomplete_array_metadata_is_not_a_zarr_array(tmp_path: Path) -> None:
    """Array metadata missing ``data_type``: the path exists and holds a (broken) node, it is not 'not found'."""
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array"}')
    with pytest.raises(NotAZarrArrayError, match=re.escape(str(broken))):
        gpuzarr.open_array(str(broken))


# --------------------------------------------------------------------------- regions
@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, gpuzarr.ArrayHandle]:
    path = tmp_path / "small.zarr"
    make_array(path, compressors=[ZstdCodec(level=1)])
    return path, gpuzarr.open_array(str(path))


def test_region_out_of_bounds_names_array_region_and_bounds(small: tuple[Path, gpuzarr.ArrayHandle]) -> None:
    path, handle = small
    with pytest.raises(RegionError) as info:
        handle.read_batch([(slice(0, 4), slice(6, 10))], device="cpu")
    message = str(info.value)
    assert isinstance(info.value, IndexError)
    assert str(path) in message
    assert "[0:4, 6:10]" in message, "the region is named"
    assert "axis 1" in message and "8" in message and "(8, 8)" in message, "the bounds are named"


def test_integer_index_out_of_bounds(small: tuple[Path, gpuzarr.ArrayHandle]) -> None:
    path, handle = small
    with pytest.raises(RegionError, match=r"index -9 .*length 8") as info:
        handle.read_batch([(-9, slice(None))], device="cpu")
    assert str(path) in str(info.value)


def test_regions_of_unequal_shapes(small: tuple[Path, gpuzarr.ArrayHandle]) -> None:
    path, handle = small
    with pytest.raises(RegionError, match="one shape") as info:
        handle.read_batch([(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(0, 5))], device="cpu")
    message = str(info.value)
    assert str(path) in message
    assert "(4, 5)" in message and "(4, 4)" in message
    assert "region 1" in message


def test_regions_with_integers_on_different_axes(small: tuple[Path, gpuzarr.ArrayHandle]) -> None:
    _, handle = small
    with pytest.raises(RegionError, match="one shape"):
        handle.read_batch([(0, slice(0, 4)), (slice(0, 1), slice(0, 4))], device="cpu")


def test_step_other_than_one(small: tuple[Path, gpuzarr.ArrayHandle]) -> None:
    path, handle = small
    with pytest.raises(RegionError, match=r"step 2 on axis 1") as info:
        handle.read_batch([(slice(0, 4), slice(0, 8, 2))], device="cpu")
    assert str(path) in str(info.value)
    with pytest.raises(RegionError, match=r"step -1"):
        handle.read_batch([(slice(None, None, -1),)], device="cpu")


def test_too_many_indices(small: tuple[Path, gpuzarr.ArrayHandle]) -> None:
    path, handle = small
    with pytest.raises(RegionError, match=r"3 indices but the array has 2 dimensions") as info:
        handle.read_batch([(0, 1, 2)], device="cpu")
    assert str(path) in str(info.value)


def test_unsupported_index_types(small: tuple[Path, gpuzarr.ArrayHandle]) -> None:
    _, handle = small
    for bad in ([1, 2], None, 1.5, "a"):
        with pytest.raises(RegionError, match="unsupported index"):
            handle.read_batch([(slice(0, 2), bad)], device="cpu")


# --------------------------------------------------------------------------- corrupt chunks
CORRUPTIONS = {
    "blosc-garbage": ({"compressors": [BloscCodec()]}, garbage),
    "blosc-truncated": ({"compressors": [BloscCodec()]}, truncate),
    "blosc-empty": ({"compressors": [BloscCodec()]}, lambda data: b""),
    "zstd-garbage": ({"compressors": [ZstdCodec()]}, garbage),
    "zstd-truncated": ({"compressors": [ZstdCodec()]}, truncate),
    "gzip-garbage": ({"compressors": [GzipCodec()]}, garbage),
    "gzip-truncated": ({"compressors": [GzipCodec()]}, truncate),
    "gzip-bitflip": ({"compressors": [GzipCodec()]}, flip_middle_byte),
    "crc32c-mismatch": ({"compressors": [Crc32cCodec()]}, flip_middle_byte),
    "zstd+crc32c-mismatch": ({"compressors": [ZstdCodec(), Crc32cCodec()]}, flip_middle_byte),
    "uncompressed-truncated": ({"compressors": None}, truncate),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_chunk_names_its_key(tmp_path: Path, case: str) -> None:
    codecs, damage = CORRUPTIONS[case]
    path = tmp_path / "a.zarr"
    make_array(path, **codecs)
    rewrite(path / CHUNK_KEY, damage)
    handle = gpuzarr.open_array(str(path))
    with pytest.raises(CorruptChunkError) as info:
        handle.read_batch([(slice(0, 4), slice(2, 6))], device="cpu")
    assert isinstance(info.value, ValueError)
    assert_names_chunk(info.value, path, CHUNK_KEY)


def test_corrupt_chunk_does_not_poison_the_next_batch(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    arr = make_array(path, compressors=[ZstdCodec(), Crc32cCodec()])
    rewrite(path / CHUNK_KEY, flip_middle_byte)
    handle = gpuzarr.open_array(str(path))
    bad = [(slice(0, 4), slice(0, 8)), (slice(4, 8), slice(0, 8))]
    good = [(slice(4, 8), slice(0, 4)), (slice(0, 4), slice(0, 4))]
    with pytest.raises(CorruptChunkError):
        handle.read_batch(bad, device="cpu")
    np.testing.assert_array_equal(handle.read_batch(good, device="cpu"), np.stack([arr[r] for r in good]))
    with pytest.raises(CorruptChunkError):  # still detected, not remembered as good or missing
        handle.read_batch(bad, device="cpu")
    np.testing.assert_array_equal(handle.read_batch(good, device="cpu"), np.stack([arr[r] for r in good]))


# --------------------------------------------------------------------------- corrupt shards
SHARD_KEY = "c/0/1"  # the shard holding rows 0:4, columns 4:8
INDEX_BYTES = 4 * 16 + 4  # 4 inner chunks x (offset, length) uint64 + crc32c


def make_sharded(path: Path, index_location: str) -> zarr.Array:
    arr = zarr.create_array(
        str(path), shape=(8, 8), chunks=(2, 2), shards={"shape": (4, 4), "index_location": index_location},
        dtype="int32", fill_value=0, compressors=[BloscCodec()],
    )
    arr[:] = np.arange(64, dtype=np.int32).reshape(8, 8)
    return arr


def read_shard(handle: gpuzarr.ArrayHandle) -> Any:
    return handle.read_batch([(slice(0, 4), slice(4, 8))], device="cpu")


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_corrupt_shard_index_names_the_shard(tmp_path: Path, index_location: str) -> None:
    path = tmp_path / "s.zarr"
    make_sharded(path, index_location)

    def damage_index(data: bytes) -> bytes:
        out = bytearray(data)
        out[3 if index_location == "start" else len(out) - INDEX_BYTES + 3] ^= 0xFF
        return bytes(out)

    rewrite(path / SHARD_KEY, damage_index)
    with pytest.raises(CorruptChunkError, match="index") as info:
        read_shard(gpuzarr.open_array(str(path)))
    assert_names_chunk(info.value, path, SHARD_KEY)


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_truncated_shard_is_a_corrupt_chunk(tmp_path: Path, index_location: str) -> None:
    """Cut the shard after its first inner chunk: the index (or the data it points at) is gone."""
    path = tmp_path / "s.zarr"
    make_sharded(path, index_location)
    cut_at = INDEX_BYTES + 5 if index_location == "start" else (path / SHARD_KEY).stat().st_size // 2
    rewrite(path / SHARD_KEY, lambda data: data[:cut_at])
    with pytest.raises(CorruptChunkError) as info:
        read_shard(gpuzarr.open_array(str(path)))
    assert_names_chunk(info.value, path, SHARD_KEY)


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_empty_shard_file_is_a_corrupt_chunk(tmp_path: Path, index_location: str) -> None:
    path = tmp_path / "s.zarr"
    make_sharded(path, index_location)
    rewrite(path / SHARD_KEY, lambda data: b"")
    with pytest.raises(CorruptChunkError) as info:
        read_shard(gpuzarr.open_array(str(path)))
    assert_names_chunk(info.value, path, SHARD_KEY)


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_shard_index_pointing_past_the_shard_is_a_corrupt_chunk(tmp_path: Path, index_location: str) -> None:
    """A well-formed index (valid checksum) whose first entry points beyond the end of the shard."""
    from crc32c import crc32c

    path = tmp_path / "s.zarr"
    make_sharded(path, index_location)

    def bad_offset(data: bytes) -> bytes:
        out = bytearray(data)
        at = 0 if index_location == "start" else len(out) - INDEX_BYTES
        entries = np.frombuffer(bytes(out[at : at + INDEX_BYTES - 4]), dtype="<u8").copy().reshape(-1, 2)
        entries[0, 0] = 10**6
        body = entries.tobytes()
        out[at : at + INDEX_BYTES] = body + int(crc32c(body)).to_bytes(4, "little")
        return bytes(out)

    rewrite(path / SHARD_KEY, bad_offset)
    with pytest.raises(CorruptChunkError) as info:
        read_shard(gpuzarr.open_array(str(path)))
    assert_names_chunk(info.value, path, SHARD_KEY)


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_truncated_shard_in_a_memory_store_is_a_corrupt_chunk(index_location: str) -> None:
    """The same through zarr's store API (``ZarrStoreFetcher``) instead of direct file reads."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store = zarr.storage.MemoryStore()
    arr = zarr.create_array(
        store, shape=(8, 8), chunks=(2, 2), shards={"shape": (4, 4), "index_location": index_location},
        dtype="int32", fill_value=0, compressors=[BloscCodec()],
    )
    arr[:] = np.arange(64, dtype=np.int32).reshape(8, 8)
    data = sync(store.get(SHARD_KEY, prototype=default_buffer_prototype())).to_bytes()
    cut = data[: INDEX_BYTES + 5] if index_location == "start" else data[:10]
    sync(store.set(SHARD_KEY, default_buffer_prototype().buffer.from_bytes(cut)))
    handle = gpuzarr.open_array(arr)
    with pytest.raises(CorruptChunkError) as info:
        read_shard(handle)
    assert info.value.key.endswith(SHARD_KEY)
    assert SHARD_KEY in str(info.value)


def test_corrupt_shard_does_not_poison_other_shards(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    arr = make_sharded(path, "end")
    rewrite(path / SHARD_KEY, garbage)
    handle = gpuzarr.open_array(str(path))
    with pytest.raises(CorruptChunkError):
        read_shard(handle)
    good = [(slice(4, 8), slice(0, 8))]
    np.testing.assert_array_equal(handle.read_batch(good, device="cpu"), np.stack([arr[r] for r in good]))
    with pytest.raises(CorruptChunkError):
        read_shard(handle)


# --------------------------------------------------------------------------- unsupported inputs
@pytest.mark.filterwarnings("ignore::FutureWarning")  # zarr: these dtypes have no v3 spec yet
@pytest.mark.parametrize("dtype", [str, "bytes"], ids=["vlen-string", "vlen-bytes"])
def test_variable_length_dtype_is_unsupported(tmp_path: Path, dtype: Any) -> None:
    path = tmp_path / "text.zarr"
    zarr.create_array(str(path), shape=(4,), chunks=(2,), dtype=dtype)
    with pytest.raises(UnsupportedCodecError, match="data type") as info:
        gpuzarr.open_array(str(path))
    assert isinstance(info.value, NotImplementedError)
    assert str(path) in str(info.value)


def test_fixed_length_string_dtype_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "fixed.zarr"
    zarr.create_array(str(path), shape=(4,), chunks=(2,), dtype="U3")
    with pytest.raises(UnsupportedCodecError, match="data type"):
        gpuzarr.open_array(str(path))


@pytest.mark.filterwarnings("ignore::UserWarning")  # zarr: v2 string dtype warnings
def test_zarr_v2_unsupported_dtype_names_the_array(tmp_path: Path) -> None:
    """Zarr v2 is read (see test_corpus.py); a v2 data type gpuzarr cannot produce is refused by name."""
    path = tmp_path / "v2.zarr"
    zarr.create_array(str(path), shape=(4,), chunks=(2,), dtype="U3", zarr_format=2)
    with pytest.raises(UnsupportedCodecError, match="data type") as info:
        gpuzarr.open_array(str(path))
    assert str(path) in str(info.value)


def test_zero_dimensional_array_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "scalar.zarr"
    zarr.create_array(str(path), shape=(), dtype="int32")
    with pytest.raises(UnsupportedCodecError, match="0-dimensional"):
        gpuzarr.open_array(str(path))


# --------------------------------------------------------------------------- devices
@pytest.mark.skipif(bool(_optional.gpu_engine()), reason="a usable GPU is present")
def test_cuda_without_a_gpu_is_device_unavailable(small: tuple[Path, gpuzarr.ArrayHandle]) -> None:
    _, handle = small
    with pytest.raises(DeviceUnavailableError, match="cuda") as info:
        handle.read_batch([(slice(0, 2), slice(0, 2))], device="cuda")
    assert isinstance(info.value, RuntimeError)
    assert str(_optional.gpu_engine().reason) in str(info.value), "the message says what is missing"


def test_unknown_device_is_rejected(small: tuple[Path, gpuzarr.ArrayHandle]) -> None:
    _, handle = small
    with pytest.raises(ValueError, match="'tpu'"):
        handle.read_batch([(slice(0, 2), slice(0, 2))], device="tpu")


def test_every_error_is_a_gpuzarr_error() -> None:
    for cls in (ArrayNotFoundError, NotAZarrArrayError, RegionError, CorruptChunkError, UnsupportedCodecError,
                DeviceUnavailableError):
        assert issubclass(cls, GpuzarrError)


def test_corrupt_deflate_payload_in_gzip_chunk_is_corrupt_chunk_error(tmp_path: Path) -> None:
    """zlib.error (not a ValueError/OSError) from a damaged deflate stream is still a CorruptChunkError."""
    arr = zarr.create_array(str(tmp_path / "g.zarr"), shape=(2000,), chunks=(1000,), dtype="int32",
                            compressors=zarr.codecs.GzipCodec())
    arr[:] = np.arange(2000, dtype="int32")
    chunk = tmp_path / "g.zarr" / "c" / "1"
    data = bytearray(chunk.read_bytes())
    data[10] = 0xFF  # first byte of the deflate stream: an invalid block type
    chunk.write_bytes(bytes(data))
    with pytest.raises(gpuzarr.CorruptChunkError) as info:
        gpuzarr.open_array(str(tmp_path / "g.zarr")).read_batch([(slice(500, 1500),)], device="cpu")
    assert info.value.key.endswith("c/1") and "c/1" in str(info.value)
