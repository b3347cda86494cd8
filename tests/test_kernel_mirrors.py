"""The NumPy kernel mirrors against straightforward NumPy (and numcodecs / google-crc32c)."""

from __future__ import annotations

import google_crc32c
import numcodecs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuzarr.engines.gpu import mirrors as km
from gpuzarr.plan.planner import plan_batch
from gpuzarr.plan.transform import OutputTransform


def _one_block(stored: bytes, typesize: int, mode: int, nsplits: int = 1) -> bytes:
    """Run the unshuffle mirror on one block whose streams are scattered (with gaps) in an arena."""
    size = len(stored)
    neblock = size // nsplits
    arena = np.full(size + 64 * nsplits, 0xAB, dtype=np.uint8)
    offsets = np.arange(nsplits, dtype=np.int64)[::-1] * (neblock + 64) + 7  # reversed order, unaligned
    for s in range(nsplits):
        arena[offsets[s]: offsets[s] + neblock] = np.frombuffer(stored[s * neblock:(s + 1) * neblock], np.uint8)
    out = np.zeros(size + 5, dtype=np.uint8)
    km.unshuffle_blocks(arena, offsets, np.array([0, nsplits]), np.array([nsplits]), np.array([size]),
                        np.array([typesize]), np.array([mode]), np.array([3]), out)
    return out[3:3 + size].tobytes()


@settings(max_examples=150, deadline=None)
@given(typesize=st.sampled_from((1, 2, 3, 4, 8, 16)), n=st.integers(1, 300), tail=st.integers(0, 15),
       seed=st.integers(0, 1000))
def test_byte_unshuffle_matches_numpy_transpose(typesize: int, n: int, tail: int, seed: int) -> None:
    tail %= typesize
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, n * typesize + tail, dtype=np.uint8)
    body = data[: n * typesize].reshape(n, typesize)
    stored = np.concatenate([body.T.reshape(-1), data[n * typesize:]]).tobytes()  # what shuffle writes
    assert _one_block(stored, typesize, km.MODE_SHUFFLE) == data.tobytes()
    if tail == 0:
        assert numcodecs.Shuffle(elementsize=typesize).decode(stored).tobytes() == data.tobytes()
        # the same bytes split into typesize streams (one per byte plane) give the same block
        assert _one_block(stored, typesize, km.MODE_SHUFFLE, nsplits=typesize) == data.tobytes()


def _bitshuffle_reference(data: np.ndarray, typesize: int) -> bytes:
    """Bit plane (byte j, bit k) of n elements → n/8 bytes, element i at bit i%8 (LSB first)."""
    n = data.size // typesize
    body = data[: n * typesize].reshape(n, typesize)
    bits = np.unpackbits(body[:, :, None], axis=2, bitorder="little")  # (n, typesize, 8)
    planes = bits.transpose(1, 2, 0).reshape(typesize * 8, n)
    return np.packbits(planes, axis=1, bitorder="little").reshape(-1).tobytes() + data[n * typesize:].tobytes()


@settings(max_examples=150, deadline=None)
@given(typesize=st.sampled_from((1, 2, 4, 8)), n8=st.integers(1, 40), tail=st.integers(0, 7), seed=st.integers(0, 999))
def test_bit_unshuffle_inverts_bitshuffle(typesize: int, n8: int, tail: int, seed: int) -> None:
    tail %= typesize
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, n8 * 8 * typesize + tail, dtype=np.uint8)
    stored = _bitshuffle_reference(data, typesize)
    assert _one_block(stored, typesize, km.MODE_BITSHUFFLE) == data.tobytes()
    if tail == 0 and typesize > 1:
        assert _one_block(stored, typesize, km.MODE_BITSHUFFLE, nsplits=typesize) == data.tobytes()


def test_bit_unshuffle_copies_when_elements_not_multiple_of_8() -> None:
    data = np.arange(4 * 13, dtype=np.uint8).tobytes()  # 13 elements of 4 bytes: c-blosc 1.x copies the block
    assert _one_block(data, 4, km.MODE_BITSHUFFLE) == data
    assert _one_block(data, 4, km.MODE_NONE) == data


def test_copy_segments_matches_slicing() -> None:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, 10_000, dtype=np.uint8)
    size = rng.integers(0, 300, 20)
    src_off = rng.integers(0, 9_000, 20)
    dst_off = np.concatenate([[0], np.cumsum(size[:-1] + 16)])
    dst = np.zeros(int(dst_off[-1] + size[-1]), dtype=np.uint8)
    km.copy_segments(src, src_off, dst, dst_off, size)
    for k in range(20):
        assert (dst[dst_off[k]: dst_off[k] + size[k]] == src[src_off[k]: src_off[k] + size[k]]).all()


def _chunks_for(arr: np.ndarray, chunk_shape: tuple[int, ...], plan, order=None, swap=False, missing=()):
    """Decoded chunks (edge chunks padded to full chunk shape, as zarr stores them) in one byte buffer."""
    bufs, offsets, at = [], [], 0
    for u, coords in enumerate(plan.chunk_coords.tolist()):
        lo = [c * s for c, s in zip(coords, chunk_shape, strict=True)]
        block = np.zeros(chunk_shape, dtype=arr.dtype)
        part = arr[tuple(slice(a, a + s) for a, s in zip(lo, chunk_shape, strict=True))]
        block[tuple(slice(0, n) for n in part.shape)] = part
        if order is not None:
            block = block.transpose(order)
        if swap:
            block = block.astype(block.dtype.newbyteorder("S"))
        raw = np.ascontiguousarray(block).view(np.uint8).reshape(-1)
        if u in missing:
            offsets.append(-1)
            continue
        bufs.append(raw)
        offsets.append(at)
        at += raw.size
    return (np.concatenate(bufs) if bufs else np.zeros(0, np.uint8)), np.array(offsets)


@pytest.mark.parametrize("dtype", ["u1", "<i2", "<f4", "<u8", "<c8", "?"])
@pytest.mark.parametrize("order", [None, (1, 0, 2), (2, 0, 1)])
def test_gather_matches_numpy_slicing(dtype: str, order) -> None:
    rng = np.random.default_rng(1)
    shape, chunk_shape = (23, 17, 5), (6, 4, 3)
    arr = rng.integers(0, 200, shape).astype(dtype)
    regions = [(slice(a, a + 9), slice(b, b + 7), slice(0, 5)) for a, b in rng.integers(0, 8, (6, 2)).tolist()]
    regions.append((slice(2, 11), slice(3, 10), slice(0, 5)))
    plan = plan_batch(regions, shape, chunk_shape)
    swap = np.dtype(dtype).itemsize > 1 and np.dtype(dtype).kind != "c"
    chunks, offsets = _chunks_for(arr, chunk_shape, plan, order=order, swap=swap)
    got = km.gather_pieces(plan, chunks, offsets, km.chunk_strides(chunk_shape, order), np.dtype(dtype),
                           swap_bytes=swap)
    expected = np.stack([arr[r] for r in regions])
    np.testing.assert_array_equal(got, expected)


def test_gather_integer_axes_missing_chunks_and_fill() -> None:
    shape, chunk_shape = (10, 12), (4, 5)
    arr = np.arange(120, dtype=np.int32).reshape(shape)
    regions = [(3, slice(1, 9)), (7, slice(2, 10))]
    plan = plan_batch(regions, shape, chunk_shape)
    missing = {0}
    chunks, offsets = _chunks_for(arr, chunk_shape, plan, missing=missing)
    got = km.gather_pieces(plan, chunks, offsets, km.chunk_strides(chunk_shape), np.dtype(np.int32), fill_value=-5)
    expected = np.stack([arr[r] for r in regions])
    lo = plan.chunk_coords[0] * np.array(chunk_shape)
    for r, reg in enumerate(regions):  # elements of the missing chunk read as the fill value
        cols = np.arange(reg[1].start, reg[1].stop)
        in_missing = (lo[0] <= reg[0] < lo[0] + 4) & (cols >= lo[1]) & (cols < lo[1] + 5)
        expected[r, in_missing] = -5
    assert got.shape == (2, 8)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("transform", [
    OutputTransform(dtype=np.float16),
    OutputTransform(dtype=np.float32, mean=[10.0, 20.0, 30.0], std=[2.0, 4.0, 8.0], channel_axis=-1),
    OutputTransform(mean=[1.0, 2.0, 3.0], std=3.0, channel_axis=2, layout="CHW"),
    OutputTransform(dtype=np.float64, channel_axis=2, layout="CHW"),
    OutputTransform(channel_axis=0, layout="HWC"),
])
def test_gather_with_transform_matches_apply_reference(transform: OutputTransform) -> None:
    rng = np.random.default_rng(2)
    shape, chunk_shape = (30, 31, 3), (8, 8, 3)
    arr = rng.integers(0, 256, shape).astype(np.uint8)
    regions = [(slice(a, a + 12), slice(b, b + 10), slice(None)) for a, b in rng.integers(0, 18, (5, 2)).tolist()]
    plan = plan_batch(regions, shape, chunk_shape)
    chunks, offsets = _chunks_for(arr, chunk_shape, plan)
    got = km.gather_pieces(plan, chunks, offsets, km.chunk_strides(chunk_shape), np.dtype(np.uint8),
                           transform=transform)
    expected = transform.apply_reference(np.stack([arr[r] for r in regions]))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_chunk_strides_of_transpose() -> None:
    stored = np.arange(24).reshape(4, 2, 3)  # stored = a.transpose(order) with order (2, 0, 1)
    a = stored.transpose(np.argsort((2, 0, 1)))
    strides = km.chunk_strides(a.shape, (2, 0, 1))
    idx = (1, 2, 1)
    assert stored.reshape(-1)[int(np.dot(idx, strides))] == a[idx]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 9000), min_size=1, max_size=6), seed=st.integers(0, 99))
def test_crc32c_mirror_matches_google_crc32c(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, sum(sizes) + 3 * len(sizes), dtype=np.uint8)
    offsets = np.cumsum([0] + [s + 3 for s in sizes[:-1]])
    got = km.crc32c_batch(data, offsets, np.array(sizes), segment=1024)
    for o, s, c in zip(offsets.tolist(), sizes, got.tolist(), strict=True):
        assert c == google_crc32c.value(data[o:o + s].tobytes())


def test_crc32c_combine() -> None:
    a, b = b"hello, ", b"crc32c world"
    ca, cb = google_crc32c.value(a), google_crc32c.value(b)
    assert km.crc32c_combine(ca, cb, len(b)) == google_crc32c.value(a + b)
