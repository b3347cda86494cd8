"""numcodecs' C decoders called through ctypes (gpuzarr.codecs.native) against numcodecs' Python API.

Zstd prefix decode, whole-frame decode, checksummed frames, truncated and oversized
frames; Blosc whole-chunk decode; and the CPU engine's use of the Zstd prefix against
zarr-python on random crops.
"""

from __future__ import annotations

from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
import zstandard
from hypothesis import example, given, settings
from hypothesis import strategies as st

import gpuzarr
from gpuzarr.codecs import native
from gpuzarr.codecs.chain import ZstdStep
from gpuzarr.errors import CorruptChunkError
from gpuzarr.plan.planner import _careful_bounds, _plain_bounds

pytestmark = pytest.mark.skipif(not native.available(), reason="numcodecs built without exported C symbols")


def _data(seed: int, n: int) -> bytes:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.integers(-3, 4, n)).astype(np.int16).tobytes()[:n]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300_000), level=st.integers(1, 19),
       frac=st.floats(0.0, 1.0), checksum=st.booleans())
@example(seed=0, n=131072, level=1, frac=0.0, checksum=False)  # one whole block, nothing asked: decoded whole
@example(seed=0, n=131073, level=1, frac=0.0, checksum=False)  # a 1-byte second block is left
@example(seed=0, n=262144, level=1, frac=0.6, checksum=False)  # the limit inside the second (last) block
def test_zstd_prefix_equals_the_front_of_the_whole_frame(seed: int, n: int, level: int, frac: float,
                                                         checksum: bool) -> None:
    raw = _data(seed, n)
    frame = zstandard.ZstdCompressor(level=level, write_checksum=checksum).compress(raw)
    limit = int(frac * n)
    dest = np.full(n, 0xAB, dtype=np.uint8)
    ZstdStep(cap=n, exact=True).decode_into(frame, dest, limit)
    got = dest.tobytes()
    assert got[:limit] == raw[:limit]
    # a checksummed frame is always decoded whole (its checksum verified), and so is one whose
    # prefix would not skip a whole Zstd block (a block decodes whole anyway)
    if checksum or not native.prefix_skips_a_block(n, limit):
        assert got == raw
    else:
        assert got[-1000:] != raw[-1000:]  # the tail was never decoded
    whole = np.empty(n, dtype=np.uint8)
    native.zstd_decompress_into(frame, whole)
    assert whole.tobytes() == raw


def test_zstd_checksummed_frame_with_a_bad_checksum_fails_even_when_a_prefix_is_asked() -> None:
    raw = _data(1, 50_000)
    frame = bytearray(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw))
    frame[-1] ^= 0xFF
    with pytest.raises(ValueError, match="zstd"):
        ZstdStep(cap=len(raw), exact=True).decode_into(bytes(frame), np.empty(len(raw), np.uint8), 10)


@pytest.mark.parametrize("limit", [None, 1000, 49_999])
def test_zstd_frames_of_the_wrong_size_or_truncated_are_errors(limit: int | None) -> None:
    raw = _data(2, 50_000)
    frame = zstandard.ZstdCompressor(level=3).compress(raw)
    with pytest.raises(ValueError, match="zstd"):  # decodes to more than the destination holds
        native.zstd_decompress_into(frame, np.empty(40_000, np.uint8), None if limit is None else min(limit, 39_999))
    with pytest.raises(ValueError, match="zstd"):  # fewer bytes than the destination
        native.zstd_decompress_into(frame, np.empty(60_000, np.uint8), limit)
    if limit is None or limit > 40_000:
        with pytest.raises(ValueError, match="zstd"):  # cut off
            native.zstd_decompress_into(frame[: len(frame) // 2], np.empty(50_000, np.uint8), limit)


def test_blosc_whole_chunk_matches_numcodecs() -> None:
    rng = np.random.default_rng(3)
    for cname in ("lz4", "zstd", "zlib", "blosclz"):
        for shuffle in (0, 1, 2):
            arr = np.cumsum(rng.normal(size=70_001)).astype(np.float32)
            enc = numcodecs.Blosc(cname=cname, shuffle=shuffle, blocksize=1 << 14).encode(arr)
            dest = np.empty(arr.nbytes, np.uint8)
            native.blosc_decompress_into(enc, arr.nbytes, dest)
            np.testing.assert_array_equal(dest.view(np.float32), arr)
    with pytest.raises(ValueError, match="blosc"):
        native.blosc_decompress_into(enc, arr.nbytes + 4, np.empty(arr.nbytes + 4, np.uint8))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), shards=st.booleans(), checksum=st.booleans())
def test_zstd_crops_read_with_prefix_decode_equal_zarr(tmp_path_factory: pytest.TempPathFactory, seed: int,
                                                      shards: bool, checksum: bool) -> None:
    # chunks of 256 KiB (two Zstd blocks and more): a crop in a chunk's top rows stops the frame early
    path = Path(tmp_path_factory.mktemp("prefix")) / "a.zarr"
    rng = np.random.default_rng(seed)
    arr = zarr.create_array(str(path), shape=(3, 300, 600), chunks=(1, 256, 256), dtype="int32",
                            shards=(1, 256, 512) if shards else None, fill_value=-5,
                            compressors=zarr.codecs.ZstdCodec(level=3, checksum=checksum))
    arr[:2] = rng.integers(-1000, 1000, size=(2, 300, 600))
    handle = gpuzarr.open_array(str(path))
    assert handle.chain.supports_prefix_decode
    # the top rows of a chunk no other crop touches (the others are on t = 1, 2): its prefix is enough
    regions = [(0, slice(0, 20), slice(0, 25))]
    for _ in range(11):
        y, x = int(rng.integers(0, 300 - 20)), int(rng.integers(0, 600 - 25))
        regions.append((int(rng.integers(1, 3)), slice(y, y + 20), slice(x, x + 25)))
    real, prefixes = native._zstd_prefix, []

    def counting(*args: object) -> bool:
        prefixes.append(args[-1])
        return real(*args)

    native._zstd_prefix = counting
    try:
        got = handle.read_batch(regions, device="cpu")
    finally:
        native._zstd_prefix = real
    np.testing.assert_array_equal(got, np.stack([arr[r] for r in regions]))
    assert bool(prefixes) != checksum  # prefixes streamed, except of checksummed frames (decoded whole)


def test_truncated_zstd_chunk_is_named_on_the_prefix_path(tmp_path: Path) -> None:
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(64, 64), chunks=(64, 64), dtype="int32",
                            compressors=zarr.codecs.ZstdCodec(level=3))
    arr[:] = np.arange(64 * 64).reshape(64, 64)
    chunk = tmp_path / "a.zarr" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:40])
    with pytest.raises(CorruptChunkError, match="c/0/0"):
        gpuzarr.open_array(str(tmp_path / "a.zarr")).read_batch([(slice(0, 2), slice(0, 5))], device="cpu")


_item = st.one_of(
    st.integers(-12, 12),
    st.builds(slice, st.one_of(st.none(), st.integers(-12, 12)), st.one_of(st.none(), st.integers(-12, 12))),
)


@settings(max_examples=300, deadline=None)
@given(shape=st.lists(st.integers(1, 10), min_size=1, max_size=4), data=st.data())
def test_plain_bounds_fast_path_agrees_with_the_careful_path(shape: list[int], data: st.DataObject) -> None:
    first = tuple(data.draw(_item) for _ in shape)
    kinds = [type(x) for x in first]
    n = data.draw(st.integers(1, 4))
    regions = [first] + [tuple(data.draw(st.integers(-12, 12)) if k is int else data.draw(_item) for k in kinds)
                         for _ in range(n - 1)]
    fast = _plain_bounds(regions, tuple(shape))
    try:
        careful = _careful_bounds(regions, tuple(shape), "a")
    except gpuzarr.RegionError:
        assert fast is None  # the fast path never accepts what the careful path refuses
        return
    if fast is not None:
        np.testing.assert_array_equal(fast.starts, careful.starts)
        np.testing.assert_array_equal(fast.stops, careful.stops)
        assert fast.squeeze_axes == careful.squeeze_axes
        expect = np.zeros(shape)[first]
        assert tuple(int(e) for d, e in enumerate(careful.stops[0] - careful.starts[0])
                     if d not in careful.squeeze_axes) == expect.shape


def test_prefixes_stay_prefixes_across_frames_of_different_sizes() -> None:
    """A thread's decoder context left inside a frame by one prefix still streams the next frame's prefix.

    (Its window limit can only change between frames: set before ending the previous session,
    it failed, and every later prefix silently decoded whole.)
    """
    for n in (300_000, 200_000, 450_000, 300_000, 140_000):
        raw = _data(n, n)
        frame = zstandard.ZstdCompressor(level=3).compress(raw)
        dest = np.full(n, 0xAB, dtype=np.uint8)
        ZstdStep(cap=n, exact=True).decode_into(frame, dest, 1000)
        got = dest.tobytes()
        assert got[:1000] == raw[:1000]
        assert got[-1000:] == b"\xab" * 1000, f"frame of {n} bytes was decoded whole"
