"""GPU engine and kernels (``pytest -m gpu``; skipped without CuPy + nvCOMP + a device).

Every kernel is compared with its NumPy mirror on random tables, and the engine with
zarr-python over the codec matrix (Blosc cnames × shuffles × dtypes, zstd, gzip,
crc32c, transpose, big-endian bytes), corrupt chunks and the CPU fallback.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numcodecs
import numpy as np
import pytest

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")

import zarr
from zarr.codecs import (
    BloscCodec,
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    TransposeCodec,
    ZstdCodec,
)

import gpuzarr
from gpuzarr.codecs import blosc
from gpuzarr.engines.gpu import kernels as K
from gpuzarr.engines.gpu import mirrors as km
from gpuzarr.errors import CorruptChunkError, CpuFallbackWarning, GpuFallbackError
from gpuzarr.plan.planner import plan_batch
from gpuzarr.plan.transform import OutputTransform

# ----------------------------------------------------------------------------- kernels vs mirrors


def _blosc_batch(rng: np.random.Generator, n: int = 24) -> list[bytes]:
    encs = []
    for i in range(n):
        size = int(rng.integers(1, 200_000))
        raw = np.concatenate([np.repeat(rng.integers(0, 4, size // 8 + 1, dtype=np.uint8), 8)[: size // 2],
                              rng.integers(0, 256, size - size // 2, dtype=np.uint8)]).tobytes()
        encs.append(numcodecs.Blosc(("lz4", "zstd", "zlib", "lz4hc")[i % 4], 1 + i % 9, i % 3,
                                    blocksize=(0, 256, 4096)[i % 3], typesize=(1, 2, 4, 8)[i % 4]).encode(raw))
    return encs


def test_unshuffle_kernel_matches_mirror() -> None:
    rng = np.random.default_rng(0)
    encs = _blosc_batch(rng)
    batch = blosc.parse_blosc_batch(encs)
    arena, stream_at = blosc.decode_streams_cpu(batch, "t")
    out_base = np.concatenate([[0], np.cumsum(batch.chunk_nbytes)])
    block_out = out_base[batch.block_chunk] + batch.block_out_offset
    expected = np.zeros(int(out_base[-1]), dtype=np.uint8)
    km.unshuffle_blocks(arena, stream_at, batch.block_stream_start, batch.block_nsplits, batch.block_size,
                        batch.block_typesize, batch.block_mode, block_out, expected)
    got = cp.zeros(expected.size, dtype=cp.uint8)
    K.launch_unshuffle(cp.asarray(arena), stream_at, batch.block_stream_start, batch.block_nsplits,
                       batch.block_size, batch.block_typesize, batch.block_mode, block_out, got)
    np.testing.assert_array_equal(got.get(), expected)
    assert [expected[out_base[c]:out_base[c + 1]].tobytes() for c in range(len(encs))] == [
        numcodecs.blosc.decompress(e) for e in encs]


def test_copy_segments_kernel_matches_mirror() -> None:
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    size = rng.integers(0, 50_000, 40)
    src_off = rng.integers(0, (1 << 20) - 50_000, 40)
    dst_off = np.concatenate([[0], np.cumsum((size[:-1] + 15) // 16 * 16)])
    expected = np.zeros(int(dst_off[-1] + size[-1]), dtype=np.uint8)
    km.copy_segments(src, src_off, expected, dst_off, size)
    got = cp.zeros_like(cp.asarray(expected))
    K.launch_copy_segments(cp.asarray(src), src_off, got, dst_off, size)
    np.testing.assert_array_equal(got.get(), expected)


def test_crc32c_kernel_matches_mirror() -> None:
    rng = np.random.default_rng(2)
    sizes = np.array([0, 1, 4095, 4096, 4097, 100_000, 1 << 20])
    data = rng.integers(0, 256, int(sizes.sum()) + 7, dtype=np.uint8)
    offsets = np.concatenate([[3], 3 + np.cumsum(sizes[:-1])])
    got = K.launch_crc32c(cp.asarray(data), offsets, sizes).get()
    np.testing.assert_array_equal(got, km.crc32c_batch(data, offsets, sizes))


@pytest.mark.parametrize("transform", [None, OutputTransform(dtype=np.float16),
                                       OutputTransform(mean=[1.0, 2.0, 3.0], std=[2.0, 3.0, 4.0], channel_axis=-1,
                                                       layout="CHW")])
@pytest.mark.parametrize("dtype,swap,order", [("u1", False, None), ("<i4", True, (2, 0, 1)), ("<f8", False, (1, 0, 2)),
                                              ("<f2", True, None)])
def test_gather_kernel_matches_mirror(transform, dtype: str, swap: bool, order) -> None:
    rng = np.random.default_rng(3)
    shape, chunk_shape = (40, 37, 3), (16, 16, 3)
    plan = plan_batch([(slice(a, a + 20), slice(b, b + 15), slice(None)) for a, b in rng.integers(0, 17, (8, 2))],
                      shape, chunk_shape)
    itemsize = np.dtype(dtype).itemsize
    n_el = int(np.prod(chunk_shape))
    chunks = rng.integers(0, 256, plan.n_chunks * n_el * itemsize, dtype=np.uint8)
    if np.dtype(dtype).kind == "f":  # keep floats finite
        vals = rng.standard_normal(plan.n_chunks * n_el).astype(np.dtype(dtype).newbyteorder("S" if swap else "="))
        chunks = vals.view(np.uint8)
    offsets = np.arange(plan.n_chunks, dtype=np.int64) * n_el * itemsize
    offsets[0] = -1  # one chunk never written
    strides = km.chunk_strides(chunk_shape, order)
    expected = km.gather_pieces(plan, chunks, offsets, strides, np.dtype(dtype), swap_bytes=swap, fill_value=7,
                                transform=transform)
    sample_shape, out_strides, ch = km.gather_layout(plan, transform)
    got = cp.empty(expected.shape, dtype=expected.dtype)
    convert = transform is not None and (transform.normalises or expected.dtype != np.dtype(dtype))
    mean = inv = None
    if convert and transform.normalises:
        mean, inv = transform.channel_tables(plan.region_shape[ch])
    K.launch_gather(plan, cp.asarray(chunks), offsets, strides, np.dtype(dtype), got.reshape(-1),
                    sample_size=int(np.prod(sample_shape)), out_strides=out_strides, swap_bytes=swap, fill_value=7,
                    convert_to=expected.dtype if convert else None, channel_axis=ch if convert else None,
                    mean=mean, inv_std=inv)
    np.testing.assert_array_equal(got.get(), expected)


def test_half_conversion_rounds_like_numpy() -> None:
    values = np.concatenate([np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e-8, 2.0**-25, 2.0**-24 * 1.5,
                                       np.inf, -np.inf, 1 / 3]), np.random.default_rng(4).standard_normal(10_000) * 1e3])
    plan = plan_batch([(slice(0, values.size),)], values.shape, values.shape)
    chunks = values.view(np.uint8)
    got = cp.empty((1, values.size), dtype=cp.float16)
    K.launch_gather(plan, cp.asarray(chunks), np.array([0]), np.array([1]), np.dtype(np.float64), got.reshape(-1),
                    sample_size=values.size, out_strides=np.array([1]), convert_to=np.float16)
    np.testing.assert_array_equal(got.get()[0].view(np.uint16), values.astype(np.float16).view(np.uint16))


# ----------------------------------------------------------------------------- engine vs zarr-python


def _make(tmp: Path, name: str, data: np.ndarray, chunks, **kwargs) -> zarr.Array:
    arr = zarr.create_array(str(tmp / name), shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=0, **kwargs)
    arr[...] = data
    return arr


def _regions(shape, size, n, rng):
    starts = [rng.integers(0, s - k + 1, n) for s, k in zip(shape, size, strict=True)]
    return [tuple(slice(int(st[i]), int(st[i]) + k) for st, k in zip(starts, size, strict=True)) for i in range(n)]


def _check(arr: zarr.Array, regions, transform=None, strict=True) -> None:
    handle = gpuzarr.open_array(arr)
    got = handle.read_batch(regions, device="cuda", transform=transform, strict=strict)
    expected = np.stack([arr[r] for r in regions])
    if transform is not None:
        expected = transform.apply_reference(expected)
    assert isinstance(got, cp.ndarray)
    np.testing.assert_array_equal(got.get(), expected)


@pytest.mark.parametrize("cname", ["lz4", "lz4hc", "zstd", "zlib"])
@pytest.mark.parametrize("shuffle", ["noshuffle", "shuffle", "bitshuffle"])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32", "float64"])
def test_blosc_matrix(tmp_path: Path, cname: str, shuffle: str, dtype: str) -> None:
    rng = np.random.default_rng(5)
    data = (rng.standard_normal((97, 83)) * 50).astype(dtype)
    data[:40] = np.round(data[:40] / 8) * 8  # compressible part
    arr = _make(tmp_path, "a", data, (32, 29),
                compressors=[BloscCodec(cname=cname, clevel=5, shuffle=shuffle, typesize=np.dtype(dtype).itemsize,
                                        blocksize=1024)])
    _check(arr, _regions(data.shape, (40, 30), 12, rng))


@pytest.mark.parametrize("compressors", [[ZstdCodec(level=3)], [GzipCodec(level=5)], [ZstdCodec(), Crc32cCodec()],
                                         [Crc32cCodec()], [BloscCodec(cname="zstd"), Crc32cCodec()]])
def test_plain_codecs(tmp_path: Path, compressors) -> None:
    rng = np.random.default_rng(6)
    data = rng.integers(0, 1000, (64, 50, 3)).astype("int32")
    arr = _make(tmp_path, "a", data, (16, 16, 3), compressors=compressors)
    _check(arr, _regions(data.shape, (20, 20, 3), 9, rng))


@pytest.mark.parametrize("endian", ["big", "little"])
@pytest.mark.parametrize("order", [(1, 0, 2), (2, 1, 0)])
def test_bytes_endianness_and_transpose(tmp_path: Path, endian: str, order) -> None:
    rng = np.random.default_rng(7)
    data = rng.standard_normal((30, 20, 4)).astype("float32")
    arr = _make(tmp_path, "a", data, (8, 8, 4), filters=[TransposeCodec(order=order)],
                serializer=BytesCodec(endian=endian), compressors=[BloscCodec(cname="lz4", shuffle="shuffle")])
    _check(arr, _regions(data.shape, (10, 9, 4), 7, rng))
    _check(arr, [(3, slice(1, 9), slice(None)), (29, slice(0, 8), slice(None))])  # integer axis


def test_transform_fused(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    data = rng.integers(0, 256, (100, 90, 3)).astype("uint8")
    arr = _make(tmp_path, "img", data, (32, 32, 3), compressors=[BloscCodec(cname="zstd", shuffle="bitshuffle")])
    t = OutputTransform(dtype=np.float16, mean=[120.0, 115.0, 100.0], std=[60.0, 61.0, 62.0], channel_axis=-1,
                        layout="CHW")
    _check(arr, _regions(data.shape, (40, 40, 3), 6, rng), transform=t)


def test_missing_chunks_read_fill(tmp_path: Path) -> None:
    arr = zarr.create_array(str(tmp_path / "f"), shape=(40, 40), chunks=(10, 10), dtype="int16", fill_value=-3,
                            compressors=[BloscCodec(cname="lz4")])
    arr[:10, :10] = 5
    _check(arr, [(slice(0, 20), slice(0, 20)), (slice(15, 35), slice(5, 25))])


def test_blosclz_falls_back_with_one_warning(tmp_path: Path) -> None:
    data = np.arange(50 * 50, dtype="int32").reshape(50, 50) % 17
    arr = _make(tmp_path, "b", data, (20, 20), compressors=[BloscCodec(cname="blosclz", shuffle="shuffle")])
    handle = gpuzarr.open_array(arr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from gpuzarr.engines.gpu.engine import GpuEngine

        engine = GpuEngine()
        plan = handle.plan([(slice(0, 30), slice(0, 30))])
        encoded = handle.reader.read(plan.chunk_coords)
        keys = handle.reader.chunk_keys(plan.chunk_coords)
        for _ in range(2):
            got = engine.decode_and_assemble(plan, encoded, handle.chain, handle.fill_value, keys=keys,
                                             array_name=handle.name)
    assert sum(issubclass(w.category, CpuFallbackWarning) for w in caught) == 1
    np.testing.assert_array_equal(got.get()[0], data[:30, :30])
    with pytest.raises(GpuFallbackError):
        handle.read_batch([(slice(0, 30), slice(0, 30))], device="cuda", strict=True)


def test_corrupt_chunk_named_and_never_reaches_nvcomp(tmp_path: Path) -> None:
    data = np.arange(40 * 40, dtype="float32").reshape(40, 40)
    arr = _make(tmp_path, "c", data, (20, 20), compressors=[BloscCodec(cname="lz4")])
    chunk = tmp_path / "c" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[16:20] = (10**9).to_bytes(4, "little")  # first block start far outside the chunk
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError) as info:
        gpuzarr.open_array(arr).read_batch([(slice(0, 40), slice(0, 40))], device="cuda")
    assert "1/0" in info.value.key


# ----------------------------------------------------------------------------- nvCOMP assumptions
# What the engine assumes of nvCOMP's batched C API and could only be checked against its
# headers when written: decode of a RAW batch from pointer tables built by NumPy, a status
# and the decoded size of each entry reported (the engine's corruption check), chunks far
# above 64 KiB, thread safety.


def _engine():
    from gpuzarr.engines.gpu.engine import GpuEngine

    return GpuEngine()


def _slots(sizes, align=16):
    sizes = np.asarray(sizes, dtype=np.int64)
    padded = (sizes + align - 1) // align * align
    return np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64), int(padded.sum())


@pytest.mark.parametrize("algorithm", ["Zstd", "Deflate"])
def test_nvcomp_raw_batch_reports_decoded_sizes(algorithm: str) -> None:
    import zlib

    rng = np.random.default_rng(11)
    raws = [rng.integers(0, 4, n, dtype=np.uint8).tobytes() for n in (1, 70_000, 3 << 20)]
    if algorithm == "Zstd":
        encs = [numcodecs.Zstd(level=3).encode(r) for r in raws]
    else:
        encs = []
        for r in raws:  # raw deflate (no zlib header): what the engine hands nvCOMP's Deflate
            comp = zlib.compressobj(6, zlib.DEFLATED, -15)
            encs.append(comp.compress(r) + comp.flush())
    src_off, total = _slots([len(e) for e in encs])
    host = np.zeros(total, np.uint8)
    for e, o in zip(encs, src_off, strict=True):
        host[o:o + len(e)] = np.frombuffer(e, np.uint8)
    from gpuzarr.engines.gpu.engine import _NvcompBatch

    for slack in (0, 64):  # then the last slot is 64 bytes larger than its stream decodes to: named
        dst_size = np.array([len(r) for r in raws], dtype=np.int64) + np.array([0, 0, slack])
        dst_off, dst_total = _slots(dst_size)
        out = cp.zeros(dst_total, dtype=cp.uint8)
        io = _NvcompBatch(cp.cuda.get_current_stream())
        io.reserve(3)
        _engine()._nvcomp_decode(io, algorithm, cp.asarray(host), src_off, np.array([len(e) for e in encs]),
                                 out, dst_off, dst_size, np.arange(3))
        if slack:
            with pytest.raises(CorruptChunkError, match=r"k2.*decoded to"):
                io.verify(["k0", "k1", "k2"], "a")
            continue
        io.verify(["k0", "k1", "k2"], "a")
        got = out.get()
        for r, o in zip(raws, dst_off, strict=True):
            assert got[o:o + len(r)].tobytes() == r


@pytest.mark.parametrize("compressors", [[ZstdCodec(level=1)], [GzipCodec(level=1)],
                                         [BloscCodec(cname="lz4", shuffle="shuffle", typesize=4)],
                                         [BloscCodec(cname="zlib", shuffle="bitshuffle", typesize=4)]])
def test_large_chunks(tmp_path: Path, compressors) -> None:
    """Chunks of 4 MiB: far above nvCOMP's default 64 KiB uncomp_chunk_size."""
    rng = np.random.default_rng(12)
    data = rng.integers(0, 50, (2048, 1024)).astype("int32")
    arr = _make(tmp_path, "big", data, (1024, 1024), compressors=compressors)
    _check(arr, [(slice(0, 1024), slice(0, 1024)), (slice(500, 1524), slice(0, 1024))])


def test_corrupt_zstd_payload_is_detected(tmp_path: Path) -> None:
    data = np.arange(64 * 64, dtype="int32").reshape(64, 64)
    arr = _make(tmp_path, "z", data, (32, 32), compressors=[ZstdCodec(level=3)])
    chunk = tmp_path / "z" / "c" / "0" / "1"
    raw = bytearray(chunk.read_bytes())
    del raw[len(raw) // 2:]  # truncated frame: the header still declares the full size
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError):
        gpuzarr.open_array(arr).read_batch([(slice(0, 64), slice(0, 64))], device="cuda")


def test_concurrent_batches_from_threads(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(13)
    data = rng.integers(0, 1000, (256, 256)).astype("int32")
    arr = _make(tmp_path, "t", data, (32, 32), compressors=[BloscCodec(cname="zstd", shuffle="shuffle")])
    handle = gpuzarr.open_array(arr)
    regions = [_regions(data.shape, (64, 64), 8, np.random.default_rng(s)) for s in range(8)]

    def read(rs):
        return handle.read_batch(rs, device="cuda").get()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(read, regions))
    for rs, got in zip(regions, results, strict=True):
        np.testing.assert_array_equal(got, np.stack([data[r] for r in rs]))


@pytest.mark.parametrize("compressors", [[ZstdCodec(level=3)], [GzipCodec(level=5)], [ZstdCodec(), Crc32cCodec()], None])
def test_kvikio_reads_straight_into_device_memory(tmp_path: Path, compressors) -> None:
    """Local chunks read by kvikio into one device buffer (GDS or compat mode) decode like zarr's."""
    from gpuzarr.storage.buffers import DeviceBatch

    rng = np.random.default_rng(11)
    data = rng.integers(0, 1000, (70, 45)).astype("uint16")
    data[16:32] = 0  # chunks equal to the fill value: missing
    arr = _make(tmp_path, "a", data, (16, 15), compressors=compressors)
    with gpuzarr.open_array(str(tmp_path / "a")) as handle:
        if not handle.fetcher.reads_to_device:
            pytest.skip(f"kvikio cannot read into device memory here ({handle.fetcher!r})")
        regions = _regions(data.shape, (20, 20), 6, rng) + [(slice(10, 30), slice(5, 25))]
        plan = handle.plan(regions)
        batch = handle.reader.read(plan.chunk_coords, to_device=True)
        assert isinstance(batch, DeviceBatch) and isinstance(batch.data, cp.ndarray)
        assert not batch.present.all() and (batch.offsets % 16 == 0).all()
        got = handle.read_plan(plan, device="cuda")
    np.testing.assert_array_equal(got.get(), np.stack([arr[r] for r in regions]))
