"""Partial Blosc decode on the CPU (only the blocks a batch needs) equals zarr-python."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec

import gpuzarr
from gpuzarr.codecs.blosc.partial import decode_blocks_into, needed_blocks, partial_decode_available
from gpuzarr.plan.planner import piece_byte_intervals

pytestmark = pytest.mark.skipif(not partial_decode_available(), reason="numcodecs exports no blosc_getitem")


def test_needed_blocks_marks_exactly_the_overlapped_blocks() -> None:
    iv = np.array([[0, 1], [250, 260], [999, 1000], [500, 500]])
    mask = needed_blocks(iv, blocksize=100, nblocks=10)
    assert np.flatnonzero(mask).tolist() == [0, 2, 9]


def test_piece_byte_intervals_cover_the_box() -> None:
    shape, item = (2, 3, 5, 7), 2
    lo, ext = np.array([[1, 0, 2, 3]]), np.array([[1, 2, 2, 4]])
    iv = piece_byte_intervals(shape, item, lo, ext)
    covered = np.zeros(np.prod(shape) * item, bool)
    for a, b in iv:
        covered[a:b] = True
    box = np.zeros(shape, bool)
    box[1:2, 0:2, 2:4, 3:7] = True
    need = np.repeat(box.ravel(), item)
    assert covered[need].all()


@settings(max_examples=60, deadline=None)
@given(
    cname=st.sampled_from(["lz4", "zstd", "zlib", "blosclz"]),
    shuffle=st.sampled_from(["noshuffle", "shuffle", "bitshuffle"]),
    dtype=st.sampled_from(["uint8", "uint16", "int32", "float64"]),
    blocksize=st.sampled_from([4096, 8192, 20000]),
    data=st.data(),
)
def test_partial_decode_equals_zarr(cname: str, shuffle: str, dtype: str, blocksize: int, data: st.DataObject,
                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    shape, chunks = (3, 300, 257), (2, 256, 256)
    arr = zarr.create_array(str(tmp_path_factory.mktemp("p") / "a.zarr"), shape=shape, chunks=chunks, dtype=dtype,
                            compressors=BloscCodec(cname=cname, clevel=3, shuffle=shuffle, blocksize=blocksize),
                            fill_value=0)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    values = (np.cumsum(rng.integers(-3, 4, size=shape), axis=2) + rng.integers(0, 5, size=shape)).astype(dtype)
    arr[...] = values
    h = gpuzarr.open_array(arr)
    size = (data.draw(st.integers(1, 40)), data.draw(st.integers(1, 257)))
    n = data.draw(st.integers(1, 6))
    regions = [(data.draw(st.integers(0, 2)), slice(y := data.draw(st.integers(0, 300 - size[0])), y + size[0]),
                slice(x := data.draw(st.integers(0, 257 - size[1])), x + size[1])) for _ in range(n)]
    with gpuzarr.config.set({"partial_decode.min_chunk_bytes": 0}):  # the partial path for these small chunks too
        got = h.read_batch(regions, device="cpu")
    want = np.stack([arr[r] for r in regions])
    np.testing.assert_array_equal(got, want)


def test_partial_path_is_taken_and_leaves_other_blocks_alone() -> None:
    raw = np.arange(1 << 18, dtype=np.uint32)  # 1 MiB
    import numcodecs

    enc = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE, blocksize=1 << 16).encode(raw)
    dest = np.full(raw.nbytes, 0xAB, dtype=np.uint8)
    assert decode_blocks_into(memoryview(enc), dest, np.array([[70_000, 70_004]]))
    got = dest.view(np.uint32)
    np.testing.assert_array_equal(got[1 << 14 : 1 << 15], raw[1 << 14 : 1 << 15])  # block 1 decoded
    assert (dest[: 1 << 16] == 0xAB).all()  # block 0 untouched


def test_corrupt_block_table_is_an_error_not_a_crash() -> None:
    import numcodecs

    raw = np.arange(1 << 18, dtype=np.uint32)
    enc = bytearray(numcodecs.Blosc(cname="zstd", clevel=1, shuffle=1, blocksize=1 << 16).encode(raw))
    assert int.from_bytes(enc[8:12], "little") == 1 << 16  # 16 blocks
    enc[16 + 4 * 3 : 16 + 4 * 4] = (len(enc) + 100).to_bytes(4, "little")  # block 3 starts past the end
    dest = np.zeros(raw.nbytes, dtype=np.uint8)
    with pytest.raises(ValueError, match="block 3"):
        decode_blocks_into(memoryview(bytes(enc)), dest, np.array([[3 << 16, (3 << 16) + 10]]))
