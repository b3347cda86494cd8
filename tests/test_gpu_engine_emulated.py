"""The GPU engine's host orchestration, run on the CPU with the device emulated (no GPU needed).

With :mod:`gpu_emulation` installed, ``read_batch(..., device="cuda")`` runs the real
:class:`gpuzarr.engines.gpu.engine.GpuEngine` — arena layout, Blosc stream tables, nvCOMP
batching, size checks, fallback, crc32c, gather arguments — against a NumPy-backed CuPy,
a CPU-decoding nvCOMP and the NumPy kernel mirrors, and must equal zarr-python over the
codec matrix. It proves the host logic, not the CUDA kernels or nvCOMP themselves
(``tests/test_gpu_engine.py``, ``pytest -m gpu``, checks those on a GPU).
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
from gpu_emulation import FakeDeviceArray, GpuEmulation, gpu_emulation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

import gpuzarr
from gpuzarr.codecs import blosc
from gpuzarr.errors import CorruptChunkError, CpuFallbackWarning, GpuFallbackError
from gpuzarr.plan.transform import OutputTransform


@pytest.fixture
def emu() -> Iterator[GpuEmulation]:
    """The GPU engine runs emulated for the test (see :mod:`gpu_emulation`; libnvcomp 5.x, or
    6.x with ``GPUZARR_EMULATE_NVCOMP_API=6``)."""
    with gpu_emulation(nvcomp_api=int(os.environ.get("GPUZARR_EMULATE_NVCOMP_API", "5"))) as emulation:
        yield emulation


NVCOMP_ALGORITHM = {"lz4": "LZ4", "lz4hc": "LZ4", "zstd": "Zstd", "zlib": "Deflate"}


# ----------------------------------------------------------------------------- helpers


def _make(tmp: Path, name: str, data: np.ndarray, chunks, fill_value=0, **kwargs) -> zarr.Array:
    arr = zarr.create_array(str(tmp / name), shape=data.shape, chunks=chunks, dtype=data.dtype,
                            fill_value=fill_value, **kwargs)
    arr[...] = data
    return arr


def _regions(shape, size, n, rng):
    starts = [rng.integers(0, s - k + 1, n) for s, k in zip(shape, size, strict=True)]
    return [tuple(slice(int(st_[i]), int(st_[i]) + k) for st_, k in zip(starts, size, strict=True)) for i in range(n)]


def _read_gpu(arr: zarr.Array, regions, **kwargs) -> np.ndarray:
    got = gpuzarr.open_array(arr).read_batch(regions, device="cuda", **kwargs)
    assert isinstance(got, FakeDeviceArray), type(got)
    return got.get()


def _check(arr: zarr.Array, regions, strict: bool = True) -> np.ndarray:
    got = _read_gpu(arr, regions, strict=strict)
    expected = np.stack([arr[r] for r in regions])
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    return got


def _mixed_data(shape, dtype, rng) -> np.ndarray:
    """Half compressible, half noise: Blosc blocks then hold compressed and raw streams."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        data = (rng.standard_normal(shape) * 50).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    data[: shape[0] // 2] = (np.arange(np.prod(shape[1:])).reshape(shape[1:]) % 7).astype(dtype)
    return data


def _chunk_file(arr: zarr.Array, tmp: Path, name: str, *coords: int) -> Path:
    path = tmp / name / "c" / Path(*[str(c) for c in coords])
    assert path.exists(), path
    return path


# ----------------------------------------------------------------------------- Blosc matrix


def _auto_blocksize(cname: str, dtype: str) -> int:
    """c-blosc's automatic block size at clevel 1 (numcodecs 0.17 ignores a forced ``blocksize``)."""
    probe = np.zeros(1 << 20, dtype=np.uint8).view(dtype)
    enc = numcodecs.Blosc(cname=cname, clevel=1, shuffle=numcodecs.Blosc.SHUFFLE).encode(probe)
    return int.from_bytes(enc[8:12], "little")


@pytest.mark.parametrize("cname", ["lz4", "lz4hc", "zstd", "zlib"])
@pytest.mark.parametrize("shuffle", ["noshuffle", "shuffle", "bitshuffle"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32", "float64"])
def test_blosc_matrix(emu: GpuEmulation, tmp_path: Path, cname: str, shuffle: str, dtype: str) -> None:
    rng = np.random.default_rng(abs(hash((cname, shuffle, dtype))) % 2**32)
    itemsize = np.dtype(dtype).itemsize
    block = _auto_blocksize(cname, dtype)
    rows = 3 * block // (2 * 64 * itemsize) + 1  # chunks of about 1.5 blocks: one full block + a leftover
    data = _mixed_data((rows + 9, 100), dtype, rng)
    arr = _make(tmp_path, "a", data, (rows, 64), compressors=[
        BloscCodec(cname=cname, clevel=1, shuffle=shuffle, typesize=itemsize)])
    batch = blosc.parse_blosc_batch([(tmp_path / "a" / "c" / "0" / "0").read_bytes()])
    assert batch.n_blocks == 2 and batch.block_size[1] < batch.block_size[0]  # a leftover block
    _check(arr, _regions(data.shape, (rows // 2, 40), 6, rng))
    _check(arr, [(slice(0, rows + 9), slice(0, 100))])
    algorithms = {c.algorithm for c in emu.decode_calls}
    assert algorithms <= {NVCOMP_ALGORITHM[cname]}
    assert algorithms, "the compressible half must reach nvCOMP"
    assert "blosc_unshuffle_blocks" in emu.kernel_launches


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cname=st.sampled_from(["lz4", "lz4hc", "zstd", "zlib"]),
       shuffle=st.sampled_from(["noshuffle", "shuffle", "bitshuffle"]),
       dtype=st.sampled_from(["uint8", "int16", "uint32", "float32", "float64"]),
       chunk=st.tuples(st.integers(3, 24), st.integers(5, 40)),
       block_elems=st.sampled_from([0, 64, 128, 200, 512]),
       region=st.tuples(st.integers(1, 30), st.integers(1, 45)),
       n_regions=st.integers(1, 5),
       seed=st.integers(0, 2**32 - 1))
def test_blosc_random_geometry(emu: GpuEmulation, cname, shuffle, dtype, chunk, block_elems, region,
                               n_regions, seed) -> None:
    rng = np.random.default_rng(seed)
    itemsize = np.dtype(dtype).itemsize
    data = _mixed_data((30, 45), dtype, rng)
    with tempfile.TemporaryDirectory() as tmp:
        arr = _make(Path(tmp), "a", data, chunk, compressors=[
            BloscCodec(cname=cname, shuffle=shuffle, typesize=itemsize, blocksize=block_elems * itemsize)])
        _check(arr, _regions(data.shape, region, n_regions, rng))


def test_blosc_memcpyed_raw_and_compressed_in_one_batch(emu: GpuEmulation, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = np.zeros((64, 64), dtype="float64")
    data[:32] = rng.standard_normal((32, 64))  # noise: memcpyed chunks / raw streams
    data[32:48] = np.arange(16 * 64).reshape(16, 64) % 5
    arr = _make(tmp_path, "m", data, (16, 64), compressors=[
        BloscCodec(cname="lz4", shuffle="noshuffle", typesize=8, blocksize=1024)])
    _check(arr, [(slice(0, 64), slice(0, 64))])
    _check(arr, [(slice(10, 50), slice(3, 60)), (slice(0, 40), slice(7, 64))])


# ----------------------------------------------------------------------------- fallback


def test_blosclz_falls_back_with_one_warning(emu: GpuEmulation, tmp_path: Path) -> None:
    data = np.arange(50 * 50, dtype="int32").reshape(50, 50) % 17
    arr = _make(tmp_path, "b", data, (20, 20), compressors=[BloscCodec(cname="blosclz", shuffle="shuffle")])
    handle = gpuzarr.open_array(arr)
    region = [(slice(0, 30), slice(0, 30)), (slice(20, 50), slice(5, 35))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            got = handle.read_batch(region, device="cuda")
    assert sum(issubclass(w.category, CpuFallbackWarning) for w in caught) == 1
    np.testing.assert_array_equal(got.get(), np.stack([data[r] for r in region]))
    assert emu.decode_calls == []  # blosclz streams never reach nvCOMP
    assert emu.uploads and {kind for kind, _, _ in emu.uploads} == {"async pinned"}  # decoded chunks too
    with pytest.raises(GpuFallbackError):
        handle.read_batch(region, device="cuda", strict=True)


def test_unsupported_chain_falls_back_whole_chunks(emu: GpuEmulation, tmp_path: Path) -> None:
    data = np.arange(40 * 30, dtype="int32").reshape(40, 30)
    arr = _make(tmp_path, "d", data, (16, 16), filters=[zarr.codecs.numcodecs.Delta(dtype="int32")],
                compressors=[ZstdCodec()])
    with pytest.warns(CpuFallbackWarning):
        _check(arr, [(slice(3, 33), slice(2, 28))], strict=False)
    with pytest.raises(GpuFallbackError):
        _read_gpu(arr, [(slice(3, 33), slice(2, 28))], strict=True)


# ----------------------------------------------------------------------------- plain codecs, crc32c


@pytest.mark.parametrize("compressors", [[ZstdCodec(level=3)], [GzipCodec(level=5)], [ZstdCodec(), Crc32cCodec()],
                                         [Crc32cCodec()], [BloscCodec(cname="zstd", shuffle="bitshuffle"),
                                                           Crc32cCodec()],
                                         [GzipCodec(), Crc32cCodec()], None],
                         ids=["zstd", "gzip", "zstd+crc", "crc", "blosc+crc", "gzip+crc", "none"])
def test_plain_codecs(emu: GpuEmulation, tmp_path: Path, compressors) -> None:
    rng = np.random.default_rng(6)
    data = rng.integers(0, 1000, (64, 50, 3)).astype("int32")
    arr = _make(tmp_path, "a", data, (16, 16, 3), compressors=compressors)
    _check(arr, _regions(data.shape, (20, 20, 3), 9, rng))


def test_crc32c_and_blosc_upload_the_chunks_once(emu: GpuEmulation, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The crc32c check uploads the encoded chunks; Blosc then decodes from that device copy."""
    rng = np.random.default_rng(9)
    data = rng.integers(0, 1000, (64, 50)).astype("int32")
    arr = _make(tmp_path, "a", data, (16, 16), compressors=[BloscCodec(cname="lz4", shuffle="shuffle"), Crc32cCodec()])
    encoded = sum(p.stat().st_size for p in (tmp_path / "a" / "c").rglob("*") if p.is_file())
    uploads: list[int] = []
    original_set = FakeDeviceArray.set
    monkeypatch.setattr(FakeDeviceArray, "set", lambda self, a, stream=None: uploads.append(a.nbytes) or
                        original_set(self, a, stream))
    _check(arr, [(slice(0, 64), slice(0, 50))])  # every chunk
    big = [n for n in uploads if n >= encoded // 2]
    assert len(big) == 1 and encoded <= big[0] < encoded + 16 * 20, (uploads, encoded)


def test_gzip_members_with_optional_header_fields(emu: GpuEmulation, tmp_path: Path) -> None:
    data = np.arange(32 * 32, dtype="uint16").reshape(32, 32)
    arr = _make(tmp_path, "g", data, (16, 16), compressors=[GzipCodec()])
    for flags, (i, j) in zip((0x04 | 0x08 | 0x10 | 0x02, 0x08, 0x04, 0x10), [(0, 0), (0, 1), (1, 0), (1, 1)],
                             strict=True):
        raw = np.ascontiguousarray(data[16 * i:16 * i + 16, 16 * j:16 * j + 16]).astype("<u2").tobytes()
        head = bytearray(b"\x1f\x8b\x08" + bytes([flags]) + bytes(6))
        if flags & 0x04:
            head += struct.pack("<H", 5) + b"extra"
        if flags & 0x08:
            head += b"name.bin\x00"
        if flags & 0x10:
            head += b"a comment\x00"
        if flags & 0x02:
            head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        member = bytes(head) + comp.compress(raw) + comp.flush() + struct.pack("<II", zlib.crc32(raw), len(raw))
        assert gzip.decompress(member) == raw
        _chunk_file(arr, tmp_path, "g", i, j).write_bytes(member)
    _check(arr, [(slice(0, 32), slice(0, 32))])
    _check(arr, [(slice(5, 25), slice(9, 30)), (slice(12, 32), slice(0, 21))])


def test_corrupt_crc32c_is_named_before_nvcomp(emu: GpuEmulation, tmp_path: Path) -> None:
    data = np.arange(40 * 40, dtype="float32").reshape(40, 40)
    arr = _make(tmp_path, "k", data, (20, 20), compressors=[ZstdCodec(), Crc32cCodec()])
    path = _chunk_file(arr, tmp_path, "k", 1, 0)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    emu.reset_logs()
    with pytest.raises(CorruptChunkError, match="crc32c") as info:
        _read_gpu(arr, [(slice(0, 40), slice(0, 40))])
    assert "1/0" in info.value.key
    assert emu.decode_calls == []


@pytest.mark.parametrize("codec,truncate", [(ZstdCodec(level=3), True), (GzipCodec(), False)], ids=["zstd", "gzip"])
def test_corrupt_plain_payload_names_the_chunk(emu: GpuEmulation, tmp_path: Path, codec, truncate) -> None:
    data = np.arange(64 * 64, dtype="int32").reshape(64, 64) % 1000
    arr = _make(tmp_path, "z", data, (32, 32), compressors=[codec])
    path = _chunk_file(arr, tmp_path, "z", 1, 1)  # the last chunk of the batch, not the first
    raw = bytearray(path.read_bytes())
    if truncate:
        del raw[len(raw) // 2:]  # the frame header still declares the full size
    else:
        raw[12:len(raw) - 8] = bytes(len(raw) - 20)  # garbage deflate payload, framing intact
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError) as info:
        _read_gpu(arr, [(slice(0, 64), slice(0, 64))])
    assert info.value.key.endswith("1/1"), info.value.key


# ----------------------------------------------------------------------------- corrupt Blosc


def test_corrupt_blosc_header_never_reaches_nvcomp(emu: GpuEmulation, tmp_path: Path) -> None:
    data = np.arange(40 * 40, dtype="float32").reshape(40, 40)
    arr = _make(tmp_path, "c", data, (20, 20), compressors=[BloscCodec(cname="lz4")])
    path = _chunk_file(arr, tmp_path, "c", 1, 0)
    raw = bytearray(path.read_bytes())
    raw[16:20] = (10**9).to_bytes(4, "little")  # first block start far outside the chunk
    path.write_bytes(bytes(raw))
    emu.reset_logs()
    with pytest.raises(CorruptChunkError) as info:
        _read_gpu(arr, [(slice(0, 40), slice(0, 40))])
    assert "1/0" in info.value.key
    assert emu.decode_calls == []


def test_corrupt_blosc_stream_is_named(emu: GpuEmulation, tmp_path: Path) -> None:
    data = (np.arange(40 * 40, dtype="int32").reshape(40, 40) % 9).astype("int32")
    arr = _make(tmp_path, "s", data, (20, 20), compressors=[BloscCodec(cname="lz4", shuffle="noshuffle",
                                                                       blocksize=0)])
    path = _chunk_file(arr, tmp_path, "s", 1, 1)
    raw = bytearray(path.read_bytes())
    bstart = int.from_bytes(raw[16:20], "little")
    csize = int.from_bytes(raw[bstart:bstart + 4], "little")
    assert 0 < csize < 400  # a compressed (not raw) first stream
    raw[bstart + 4:bstart + 4 + csize] = b"\xff" * csize  # header and sizes intact, LZ4 payload garbage
    path.write_bytes(bytes(raw))
    emu.reset_logs()
    with pytest.raises(CorruptChunkError) as info:
        _read_gpu(arr, [(slice(0, 40), slice(0, 40))])
    assert info.value.key.endswith("1/1"), info.value.key
    assert emu.decode_calls  # this one passes the host checks and fails in nvCOMP


# ----------------------------------------------------------------------------- layout: bytes, transpose, shards


@pytest.mark.parametrize("endian", ["big", "little"])
@pytest.mark.parametrize("order", [(1, 0, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)])
@pytest.mark.parametrize("compressed", [True, False])
def test_bytes_endianness_and_transpose(emu: GpuEmulation, tmp_path: Path, endian, order, compressed) -> None:
    rng = np.random.default_rng(7)
    data = rng.standard_normal((30, 20, 4)).astype("float32")
    arr = _make(tmp_path, "a", data, (8, 8, 4), filters=[TransposeCodec(order=order)],
                serializer=BytesCodec(endian=endian),
                compressors=[BloscCodec(cname="lz4", shuffle="shuffle")] if compressed else None)
    _check(arr, _regions(data.shape, (10, 9, 4), 7, rng))
    _check(arr, [(3, slice(1, 9), slice(None)), (29, slice(0, 8), slice(None))])  # integer axis
    _check(arr, [(slice(2, 12), 5, 1), (slice(20, 30), 19, 3)])  # two integer axes


def test_big_endian_int16_zstd(emu: GpuEmulation, tmp_path: Path) -> None:
    data = np.arange(-600, 600, dtype="int16").reshape(40, 30)
    arr = _make(tmp_path, "e", data, (16, 16), serializer=BytesCodec(endian="big"), compressors=[ZstdCodec()])
    _check(arr, [(slice(0, 40), slice(0, 30))])
    _check(arr, [(slice(3, 33), slice(1, 29)), (slice(10, 40), slice(2, 30))])


@pytest.mark.parametrize("fill", [np.nan, -2.5])
def test_sharding_with_missing_inner_chunks(emu: GpuEmulation, tmp_path: Path, fill) -> None:
    rng = np.random.default_rng(9)
    arr = zarr.create_array(str(tmp_path / "sh"), shape=(80, 60), chunks=(10, 15), shards=(40, 30),
                            dtype="float32", fill_value=fill,
                            compressors=[BloscCodec(cname="zstd", shuffle="shuffle")])
    arr[0:40, 0:30] = rng.standard_normal((40, 30)).astype("float32")  # one full shard
    arr[45:55, 30:45] = 1.5  # one inner chunk of another shard; the rest stays missing
    _check(arr, _regions(arr.shape, (30, 25), 8, rng))
    got = _check(arr, [(slice(0, 80), slice(0, 60))])
    assert np.isnan(got).any() == np.isnan(fill)


@pytest.mark.parametrize("dtype,fill", [("int16", -3), ("float64", np.nan), ("uint8", 7), ("float32", np.inf)])
def test_missing_chunks_read_fill(emu: GpuEmulation, tmp_path: Path, dtype, fill) -> None:
    arr = zarr.create_array(str(tmp_path / "f"), shape=(40, 40), chunks=(10, 10), dtype=dtype, fill_value=fill,
                            compressors=[BloscCodec(cname="lz4")])
    arr[:10, :10] = 5
    _check(arr, [(slice(0, 20), slice(0, 20)), (slice(15, 35), slice(5, 25))])
    _check(arr, [(slice(20, 40), slice(20, 40))])  # no chunk of the batch exists


# ----------------------------------------------------------------------------- output transform and out=


TRANSFORMS = [
    OutputTransform(dtype=np.float16),
    OutputTransform(dtype=np.float64, mean=3.0, std=2.0),
    OutputTransform(mean=[120.0, 115.0, 100.0], std=[60.0, 61.0, 62.0], channel_axis=-1, layout="CHW"),
    OutputTransform(dtype=np.float16, mean=[1.0, 2.0, 3.0], std=[3.0, 4.0, 5.0], channel_axis=-1),
    OutputTransform(channel_axis=-1, layout="CHW"),  # layout only: the copy kernel with permuted strides
]


@pytest.mark.parametrize("transform", TRANSFORMS, ids=["f16", "scalar-norm", "chw-norm", "f16-norm", "chw-only"])
@pytest.mark.parametrize("squeeze", [False, True])
def test_output_transform_matches_cpu_engine(emu: GpuEmulation, tmp_path: Path, transform,
                                             squeeze: bool) -> None:
    rng = np.random.default_rng(8)
    data = rng.integers(0, 256, (60, 50, 3)).astype("uint8")
    arr = _make(tmp_path, "img", data, (32, 32, 3), compressors=[BloscCodec(cname="zstd", shuffle="bitshuffle")])
    if squeeze:
        regions = [(int(i), slice(int(j), int(j) + 20), slice(None)) for i, j in rng.integers(0, 30, (5, 2))]
    else:
        regions = _regions(data.shape, (25, 20, 3), 5, rng)
    handle = gpuzarr.open_array(arr)
    got = handle.read_batch(regions, device="cuda", transform=transform, strict=True).get()
    expected = handle.read_batch(regions, device="cpu", transform=transform)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_layout_hwc_moves_a_leading_channel_axis(emu: GpuEmulation, tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    data = rng.standard_normal((3, 40, 30)).astype("float32")
    arr = _make(tmp_path, "chw", data, (3, 16, 16), compressors=[BloscCodec(cname="lz4", shuffle="shuffle")])
    t = OutputTransform(mean=[0.1, 0.2, 0.3], std=[1.0, 2.0, 4.0], channel_axis=0, layout="HWC")
    regions = _regions(data.shape, (3, 20, 17), 4, rng)
    handle = gpuzarr.open_array(arr)
    got = handle.read_batch(regions, device="cuda", transform=t).get()
    np.testing.assert_array_equal(got, handle.read_batch(regions, device="cpu", transform=t))
    assert got.shape == (4, 20, 17, 3)


def test_out_buffer_is_filled_in_place(emu: GpuEmulation, tmp_path: Path) -> None:
    cp = sys.modules["cupy"]
    data = np.arange(30 * 30, dtype="float32").reshape(30, 30)
    arr = _make(tmp_path, "o", data, (8, 8), compressors=[BloscCodec(cname="zlib", shuffle="shuffle")])
    regions = [(slice(1, 11), slice(2, 12)), (slice(19, 29), slice(0, 10))]
    out = cp.empty((2, 10, 10), dtype=cp.float32)
    got = gpuzarr.open_array(arr).read_batch(regions, device="cuda", out=out)
    assert got is out
    np.testing.assert_array_equal(out.get(), np.stack([data[r] for r in regions]))


def test_concurrent_batches_from_threads(emu: GpuEmulation, tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    data = rng.integers(0, 1000, (96, 96)).astype("int32")
    arr = _make(tmp_path, "t", data, (32, 32), compressors=[BloscCodec(cname="zstd", shuffle="shuffle")])
    handle = gpuzarr.open_array(arr)
    batches = [_regions(data.shape, (40, 40), 4, np.random.default_rng(s)) for s in range(6)]
    results: dict[int, np.ndarray] = {}

    def read(i: int) -> None:
        results[i] = handle.read_batch(batches[i], device="cuda").get()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, rs in enumerate(batches):
        np.testing.assert_array_equal(results[i], np.stack([data[r] for r in rs]))


# ----------------------------------------------------------------------------- Zarr v2 and other chains


def _check_native(arr: zarr.Array, regions, **kwargs) -> None:
    """Like :func:`_check`, for arrays zarr returns in a non-native byte order (v2 ``>i4``)."""
    got = _read_gpu(arr, regions, **kwargs)
    expected = np.stack([arr[r] for r in regions])
    assert got.dtype == expected.dtype.newbyteorder("=") and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


V2_GPU_COMPRESSORS = {
    "blosc-lz4-shuffle": numcodecs.Blosc(cname="lz4", shuffle=numcodecs.Blosc.SHUFFLE),
    "blosc-zstd-bitshuffle": numcodecs.Blosc(cname="zstd", shuffle=numcodecs.Blosc.BITSHUFFLE),
    "blosc-zlib-noshuffle": numcodecs.Blosc(cname="zlib", shuffle=numcodecs.Blosc.NOSHUFFLE),
    "zstd": numcodecs.Zstd(level=3),
    "gzip": numcodecs.GZip(level=5),
    "none": None,
}


@pytest.mark.parametrize("compressor", list(V2_GPU_COMPRESSORS), ids=list(V2_GPU_COMPRESSORS))
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype,separator", [(">i4", "/"), ("<f8", "."), ("|u1", "/")])
def test_zarr_v2_decodes_on_the_gpu(emu: GpuEmulation, tmp_path: Path, compressor: str, order: str, dtype: str,
                                    separator: str) -> None:
    """v2 chunks take the same GPU path as v3 ones (strict: no CPU fallback); F order is a transposed gather."""
    rng = np.random.default_rng(21)
    data = (rng.standard_normal((40, 30, 3)) * 100).astype(dtype)
    arr = zarr.create_array(str(tmp_path / "v2"), shape=data.shape, chunks=(16, 12, 3), dtype=dtype, zarr_format=2,
                            order=order, compressors=V2_GPU_COMPRESSORS[compressor], fill_value=0,
                            chunk_key_encoding={"name": "v2", "separator": separator})
    arr[:30] = data[:30]  # rows 32.. are never written: fill value
    _check_native(arr, _regions(data.shape, (20, 15, 3), 8, rng), strict=True)
    _check_native(arr, [(slice(0, 40), 4, slice(None))], strict=True)
    if V2_GPU_COMPRESSORS[compressor] is not None:
        assert emu.decode_calls, "the v2 chunks must reach nvCOMP"
    if order == "F":
        assert gpuzarr.open_array(arr).chain.array_steps, "order F is a transpose step"


@pytest.mark.parametrize("filters,compressor", [
    ([numcodecs.Delta(dtype="<i4")], numcodecs.Blosc()),
    ([numcodecs.FixedScaleOffset(offset=5, scale=10, dtype="<f8", astype="<i4")], numcodecs.Zstd()),
    (None, numcodecs.Zlib()),
    (None, numcodecs.LZ4()),
], ids=["delta", "fixedscaleoffset", "zlib", "lz4"])
def test_zarr_v2_chains_without_a_gpu_path_fall_back(emu: GpuEmulation, tmp_path: Path, filters, compressor) -> None:
    rng = np.random.default_rng(22)
    dtype = filters[0].dtype if filters else np.dtype("int32")
    data = (rng.integers(0, 1000, (30, 20)) / (10 if dtype.kind == "f" else 1)).astype(dtype)
    arr = zarr.create_array(str(tmp_path / "v2f"), shape=data.shape, chunks=(8, 8), dtype=dtype, zarr_format=2,
                            filters=filters, compressors=compressor, order="F")
    arr[...] = data
    with pytest.warns(CpuFallbackWarning):
        _check_native(arr, _regions(data.shape, (10, 10), 6, rng), strict=False)
    with pytest.raises(GpuFallbackError):
        _read_gpu(arr, [(slice(0, 5), slice(0, 5))], strict=True)


@pytest.mark.parametrize("kwargs", [
    {"serializer": zarr.codecs.numcodecs.PCodec()},
    {"filters": [zarr.codecs.numcodecs.AsType(encode_dtype="float32", decode_dtype="float64")]},
    {"filters": [TransposeCodec(order=(1, 0)), zarr.codecs.numcodecs.BitRound(keepbits=52)]},
], ids=["pcodec", "astype", "transpose+bitround"])
def test_v3_codecs_without_a_gpu_path_fall_back(emu: GpuEmulation, tmp_path: Path, kwargs) -> None:
    rng = np.random.default_rng(23)
    data = rng.standard_normal((30, 20))
    arr = _make(tmp_path, "x", data, (8, 8), **kwargs)
    with pytest.warns(CpuFallbackWarning):
        _check(arr, _regions(data.shape, (10, 10), 6, rng), strict=False)


def test_datetime_arrays_read_on_the_cpu_under_auto(emu: GpuEmulation, tmp_path: Path) -> None:
    """CuPy has no datetime64: ``auto`` reads such arrays on the CPU, ``cuda`` says why it cannot."""
    data = np.arange(60, dtype="int64").reshape(10, 6).astype("M8[s]")
    arr = _make(tmp_path, "t", data, (4, 4), fill_value=None)
    handle = gpuzarr.open_array(arr)
    got = handle.read_batch([(slice(1, 9), slice(0, 6))], device="auto")
    assert isinstance(got, np.ndarray) and got.dtype == data.dtype
    np.testing.assert_array_equal(got[0], data[1:9])
    with pytest.raises(gpuzarr.errors.UnsupportedCodecError, match="datetime64"):
        handle.read_batch([(slice(1, 9), slice(0, 6))], device="cuda")


# ----------------------------------------------------------------------------- nvCOMP call layer


def _encode_raw(algorithm: str, raw: bytes) -> bytes:
    import lz4.block

    if algorithm == "Zstd":
        return bytes(numcodecs.Zstd(level=3).encode(raw))
    if algorithm == "LZ4":
        return lz4.block.compress(raw, store_size=False)
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    return comp.compress(raw) + comp.flush()


def _raw_batch(algorithm: str, sizes, odd: bool = True, seed: int = 11, slack=0):
    """Encoded streams at deliberately odd offsets of one device buffer, and 16-byte slots for the output."""
    cp = sys.modules["cupy"]
    rng = np.random.default_rng(seed)
    raws = [rng.integers(0, 4, n, dtype=np.uint8).tobytes() for n in sizes]
    encs = [_encode_raw(algorithm, r) for r in raws]
    gaps = np.array([3, 5, 1, 7] * len(encs))[: len(encs)] if odd else np.zeros(len(encs), np.int64)
    lens = np.array([len(e) for e in encs], dtype=np.int64)
    src_off = np.cumsum(gaps) + np.concatenate([[0], np.cumsum(lens)[:-1]])
    host = np.zeros(int(src_off[-1] + lens[-1]), np.uint8)
    for e, o in zip(encs, src_off.tolist(), strict=True):
        host[o:o + len(e)] = np.frombuffer(e, np.uint8)
    dst_size = np.array([len(r) for r in raws], dtype=np.int64) + slack
    dst_off = np.concatenate([[0], np.cumsum((dst_size + 15) // 16 * 16)[:-1]]).astype(np.int64)
    out = cp.zeros(int(dst_off[-1] + dst_size[-1]), dtype=cp.uint8)
    return raws, cp.asarray(host), src_off.astype(np.int64), lens, out, dst_off, dst_size


def _run_raw(algorithm, src, src_off, lens, out, dst_off, dst_size, keys):
    from gpuzarr.engines.gpu.engine import GpuEngine, _NvcompBatch

    cp = sys.modules["cupy"]
    io = _NvcompBatch(cp.cuda.get_current_stream())
    io.reserve(len(src_off))
    GpuEngine()._nvcomp_decode(io, algorithm, src, src_off, lens, out, dst_off, dst_size,
                               np.arange(len(src_off), dtype=np.int64))
    io.verify(keys, "arr")


@pytest.mark.parametrize("api", [5, 6])
@pytest.mark.parametrize("algorithm", ["Zstd", "Deflate", "LZ4"])
def test_nvcomp_decode_repacks_unaligned_inputs_one_call_and_checks_sizes(algorithm, api) -> None:
    """Unaligned inputs are repacked; one C call decodes the batch; a slot that decodes short is named."""
    with gpu_emulation(nvcomp_api=api) as emu:
        raws, src, src_off, lens, out, dst_off, dst_size = _raw_batch(algorithm, (1, 7000, 70_000))
        _run_raw(algorithm, src, src_off, lens, out, dst_off, dst_size, ["c/0", "c/1", "c/2"])
        assert "copy_segments" in emu.kernel_launches  # unaligned inputs were repacked first
        assert [(c.algorithm, c.n, c.error) for c in emu.decode_calls] == [(algorithm, 3, None)]
        got = out.get()
        for r, o in zip(raws, dst_off, strict=True):
            assert got[o:o + len(r)].tobytes() == r
        # the last slot 64 bytes larger than its stream decodes to: the size check names that chunk
        raws, src, src_off, lens, out, dst_off, dst_size = _raw_batch(algorithm, (1, 7000, 70_000),
                                                                      slack=np.array([0, 0, 64]))
        with pytest.raises(CorruptChunkError, match=r"c/2.*decoded to 70000 bytes, expected 70064"):
            _run_raw(algorithm, src, src_off, lens, out, dst_off, dst_size, ["c/0", "c/1", "c/2"])


@pytest.mark.parametrize("api", [5, 6])
def test_nvcomp_tables_come_from_numpy_without_per_stream_python(api, monkeypatch) -> None:
    """20 000 streams: one DecompressAsync call, and no Python-level work per stream on the way there."""
    with gpu_emulation(nvcomp_api=api) as emu:
        _raws, src, src_off, lens, out, dst_off, dst_size = _raw_batch("LZ4", [64 + (i % 7) for i in range(20_000)],
                                                                      odd=False)
        calls = {"int": 0}
        real_int = int

        class CountingInt(int):  # any per-stream int(...) conversion in the engine shows up here
            def __new__(cls, *a):
                calls["int"] += 1
                return real_int(*a)

        import gpuzarr.engines.gpu.engine as engine_module

        monkeypatch.setattr(engine_module, "int", CountingInt, raising=False)
        _run_raw("LZ4", src, src_off, lens, out, dst_off, dst_size, [f"c/{i}" for i in range(20_000)])
        monkeypatch.undo()
        assert [c.n for c in emu.decode_calls] == [20_000]
        assert calls["int"] < 50, f"{calls['int']} int() calls for one batch: per-stream Python on the decode path"


@pytest.mark.parametrize("api", [5, 6])
def test_scratch_budget_splits_a_batch_and_equals_the_unsplit_result(api, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = (rng.standard_normal((64, 256)) * 3).round(1).astype("float32")
    arr = _make(tmp_path, "s", data, (8, 256), compressors=[BloscCodec(cname="zstd", shuffle="bitshuffle",
                                                                     blocksize=1024)])
    regions = [(slice(0, 64), slice(0, 256))]
    with gpu_emulation(nvcomp_api=api) as emu:
        whole = gpuzarr.open_array(arr).read_batch(regions, device="cuda").get()
        unsplit = [c for c in emu.decode_calls]
        emu.reset_logs()
        per_stream = max(c.temp_bytes // c.n for c in unsplit)
        with gpuzarr.config.set({"gpu.scratch_bytes": 3 * per_stream}):  # at most 3 streams a call
            split = gpuzarr.open_array(arr).read_batch(regions, device="cuda").get()
        assert len(unsplit) == 1 and unsplit[0].n == 64  # 8 chunks of 8 blocks
        assert len(emu.decode_calls) >= 64 // 3 and all(c.n <= 3 and c.temp_bytes <= 3 * per_stream
                                                  for c in emu.decode_calls)
        assert sum(c.n for c in emu.decode_calls) == unsplit[0].n
    np.testing.assert_array_equal(split, whole)
    np.testing.assert_array_equal(whole[0], data)


@pytest.mark.parametrize("api", [5, 6])
@pytest.mark.parametrize("silent", [False, True])
@pytest.mark.parametrize("cname", ["zstd", "zlib"])
def test_corrupt_stream_nvcomp_reports_is_named(api, silent, cname, tmp_path: Path) -> None:
    """A stream that passes the host checks but not nvCOMP: CorruptChunkError names its chunk, whether
    nvCOMP reports a status or (Zstd/Deflate do not promise to detect corruption) a wrong size."""
    rng = np.random.default_rng(8)
    data = rng.integers(0, 50, (32, 64)).astype("int32")
    arr = _make(tmp_path, "c", data, (8, 64), compressors=[BloscCodec(cname=cname, shuffle="noshuffle",
                                                                     blocksize=0)])
    path = tmp_path / "c" / "c" / "2" / "0"
    raw = bytearray(path.read_bytes())
    raw[-6:] = bytes([0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00])  # mangle the end of the (last) stream
    path.write_bytes(bytes(raw))
    with gpu_emulation(nvcomp_api=api) as emu:
        emu.libnvcomp.silent_corruption = silent
        with pytest.raises(CorruptChunkError, match=r"c/2/0.*nvCOMP") as info:
            gpuzarr.open_array(arr).read_batch([(slice(0, 32), slice(0, 64))], device="cuda")
        assert info.value.key.endswith("c/2/0")
        assert any(c.statuses and (any(c.statuses) or c.decoded_sizes != c.input_sizes) for c in emu.decode_calls)


def test_results_are_read_only_after_the_batchs_one_event(emu: GpuEmulation, tmp_path: Path) -> None:
    """nvCOMP's statuses and sizes come back by an async copy and one event wait; no stream or device sync;
    the second batch of a thread allocates no pinned memory."""
    rng = np.random.default_rng(9)
    data = rng.integers(0, 1000, (64, 64)).astype("int32")
    arr = _make(tmp_path, "e", data, (16, 16), compressors=[BloscCodec(cname="lz4", shuffle="shuffle")])
    handle = gpuzarr.open_array(arr)
    handle.read_batch([(slice(0, 64), slice(0, 64))], device="cuda")  # warm: arenas allocated
    cp = sys.modules["cupy"]
    cupyx = sys.modules["cupyx"]
    stream = cp.cuda.Stream()
    emu.reset_logs()
    pinned = {"allocations": 0}
    real_empty_pinned = cupyx.empty_pinned

    def counting_empty_pinned(*args, **kwargs):
        pinned["allocations"] += 1
        return real_empty_pinned(*args, **kwargs)

    cupyx.empty_pinned = counting_empty_pinned
    try:
        got = handle.read_batch([(slice(0, 64), slice(0, 64))], device="cuda", stream=stream)
    finally:
        cupyx.empty_pinned = real_empty_pinned
    assert pinned["allocations"] == 0  # the thread's arenas (upload, tables, results) are reused
    np.testing.assert_array_equal(got.get()[0], data)
    assert len(emu.event_syncs) == 1 and stream.synchronize_calls == 0 and emu.device_syncs == []
    assert {s for c in emu.decode_calls for s in [c.stream]} == {stream.ptr}
    assert {k for _, k in emu.kernel_streams} == {stream.ptr}
    assert [u[0] for u in emu.uploads if u[1] > 64] == ["async pinned"] * len([u for u in emu.uploads if u[1] > 64])


# ----------------------------------------------------------------------------- the emulation itself


def test_emulation_is_strict_where_the_real_stack_is() -> None:
    with gpu_emulation():
        import cupy as cp

        dev = cp.zeros(64, dtype=cp.uint8)
        with pytest.raises(TypeError, match="Implicit conversion"):
            np.asarray(dev)
        with pytest.raises(TypeError):
            dev + np.zeros(64, np.uint8)
        with pytest.raises(TypeError):
            dev[:8].set(np.zeros(8, np.int32))
        with pytest.raises(ValueError, match="Shape mismatch"):
            dev[:8].set(np.zeros(9, np.uint8))
        assert (cp.empty(4, dtype=cp.uint8).get() == 0xA5).all()
        from gpuzarr.engines.gpu import kernels as K

        with pytest.raises(TypeError, match="host array"):
            K._function("gather.cu", "copy_segments")((1,), (256,), (dev, np.zeros(1, np.int64), dev,
                                                                     cp.zeros(1, dtype=cp.int64),
                                                                     cp.zeros(1, dtype=cp.int64),
                                                                     cp.zeros(2, dtype=cp.int64),
                                                                     np.int64(1), np.int64(16384)))


def test_emulation_leaves_nothing_behind() -> None:
    from gpuzarr import _optional
    from gpuzarr.engines.base import resolve_device

    before_cupy = sys.modules.get("cupy")
    before = _optional.gpu_engine()
    with gpu_emulation():
        assert _optional.gpu_engine()
        assert resolve_device("auto") == "cuda"
    assert sys.modules.get("cupy") is before_cupy
    assert bool(_optional.gpu_engine()) == bool(before)
    from gpuzarr.engines.gpu import nvcomp as nvc

    assert hasattr(nvc.library, "cache_clear")  # the real loader is back, not the emulation's


def test_engine_never_synchronises_the_whole_device(emu: GpuEmulation, tmp_path: Path) -> None:
    """Reads over every codec path leave no device-wide synchronisation (streams and events only)."""
    rng = np.random.default_rng(12)
    data = rng.integers(0, 1000, (40, 30)).astype("int32")
    for name, codecs in (("b", [BloscCodec(cname="zstd", shuffle="bitshuffle")]), ("z", [ZstdCodec()]),
                         ("g", [GzipCodec(), Crc32cCodec()])):
        _check(_make(tmp_path, name, data, (16, 16), compressors=codecs), [(slice(0, 40), slice(0, 30))])
    assert emu.device_syncs == []
