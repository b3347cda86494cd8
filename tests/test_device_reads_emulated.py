"""Chunks read straight into device memory (kvikio) and decoded there, run under the GPU emulation.

With kvikio emulated (:func:`gpu_emulation.gpu_emulation` ``kvikio=True``), a local array
read with ``device="cuda"`` goes ``LocalFileFetcher.fetch_device`` → one ``DeviceBatch``
→ ``GpuEngine.decode_and_assemble`` for every chain the engine takes that way (no Blosc,
no cache, no sharding): the host only sees each chunk's first and last bytes. Values must
equal zarr-python's; a corrupt chunk must still be named; the other cases must keep
reading host bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from gpu_emulation import GpuEmulation, gpu_emulation
from s3_server import s3_server  # noqa: F401 - fixture
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

import gpuzarr
from gpuzarr.errors import CorruptChunkError
from gpuzarr.storage.buffers import BATCH_ALIGN, DeviceBatch
from gpuzarr.storage.local import LocalFileFetcher


@pytest.fixture
def emu() -> Iterator[GpuEmulation]:
    with gpu_emulation(kvikio=True) as emulation:
        yield emulation


def regions(shape: tuple[int, ...], extent: tuple[int, ...], n: int, seed: int) -> list[tuple[slice, ...]]:
    rng = np.random.default_rng(seed)
    starts = [rng.integers(0, s - e + 1, size=n) for s, e in zip(shape, extent, strict=True)]
    return [tuple(slice(int(st[i]), int(st[i]) + e) for st, e in zip(starts, extent, strict=True)) for i in range(n)]


CHAINS: dict[str, dict[str, Any]] = {
    "raw": {"compressors": None},
    "zstd": {"compressors": ZstdCodec(level=3)},
    "gzip": {"compressors": GzipCodec(level=5)},
    "crc32c+zstd": {"compressors": [ZstdCodec(), Crc32cCodec()]},
    "crc32c raw": {"compressors": Crc32cCodec()},
    "gzip big-endian": {"compressors": GzipCodec(), "serializer": BytesCodec(endian="big")},
    "transpose+zstd": {"compressors": ZstdCodec(), "filters": [TransposeCodec(order=(1, 0))]},
}


def write(tmp_path: Path, name: str, dtype: str, **codecs: Any) -> tuple[str, np.ndarray]:
    data = (np.arange(45 * 38).reshape(45, 38) % 251).astype(dtype)
    path = str(tmp_path / f"{name.replace(' ', '_')}.zarr")
    array = zarr.create_array(path, shape=data.shape, chunks=(8, 10), dtype=dtype, fill_value=7, **codecs)
    array[:] = data
    array[8:24, 10:20] = 7  # two chunks equal to the fill value: never written, read as missing
    return path, array[:]


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_device_batches_equal_zarr(emu: GpuEmulation, tmp_path: Path, name: str, dtype: str) -> None:
    path, expected = write(tmp_path, name, dtype, **CHAINS[name])
    with gpuzarr.open_array(path) as handle:
        assert handle.fetcher.reads_to_device
        host_fetches: list[Any] = []
        original_fetch = handle.fetcher.fetch
        handle.fetcher.fetch = lambda *a, **k: host_fetches.append(a) or original_fetch(*a, **k)  # type: ignore[method-assign]
        for seed in range(3):
            picked = regions(expected.shape, (13, 17), 5, seed) + [(slice(8, 21), slice(7, 24))]  # all missing + edges
            out = handle.read_batch(picked, device="cuda")
            np.testing.assert_array_equal(out.get(), np.stack([expected[r] for r in picked]))
    assert emu.kvikio_reads and set(emu.kvikio_reads) == {"device"}
    assert not host_fetches  # nothing went through host memory


def test_blosc_and_cached_arrays_keep_reading_host_bytes(emu: GpuEmulation, tmp_path: Path) -> None:
    path, expected = write(tmp_path, "blosc", "uint16", compressors=BloscCodec(cname="zstd", shuffle="bitshuffle"))
    picked = regions(expected.shape, (9, 9), 6, 1)
    with gpuzarr.open_array(path) as handle:  # Blosc: the host parses every block table first
        out = handle.read_batch(picked, device="cuda")
    np.testing.assert_array_equal(out.get(), np.stack([expected[r] for r in picked]))
    assert emu.kvikio_reads and set(emu.kvikio_reads) == {"host"}  # kvikio into pinned host memory
    emu.reset_logs()
    zpath, zexpected = write(tmp_path, "cached", "uint16", compressors=ZstdCodec())
    with gpuzarr.open_array(zpath, cache=gpuzarr.PinnedLRUCache(1 << 20)) as handle:  # the cache keeps host bytes
        out = handle.read_batch(picked, device="cuda")
        assert handle.reader.cache.stats().entries > 0
    np.testing.assert_array_equal(out.get(), np.stack([zexpected[r] for r in picked]))
    assert set(emu.kvikio_reads) == {"host"}


@pytest.mark.parametrize(("name", "damage"), [("zstd", "framing"), ("zstd", "payload"), ("gzip", "framing"),
                                             ("gzip", "payload"), ("crc32c+zstd", "payload"), ("raw", "length")])
def test_corrupt_chunk_read_to_device_is_named(emu: GpuEmulation, tmp_path: Path, name: str, damage: str) -> None:
    """Framing and lengths are checked on the host copy of heads and tails; a payload nvCOMP rejects
    is named by decoding the batch's chunks again on the CPU, copied back from the device one by one."""
    path, _ = write(tmp_path, name, "int16", **CHAINS[name])
    chunk_file = Path(path) / "c" / "3" / "2"
    blob = bytearray(chunk_file.read_bytes())
    if damage == "length":
        del blob[-3:]
    elif damage == "framing":
        blob[1] ^= 0x5A
    else:  # the middle of the compressed stream (for crc32c: of the checksummed body)
        blob[len(blob) // 2 : len(blob) // 2 + 4] = bytes(4)
    chunk_file.write_bytes(bytes(blob))
    with gpuzarr.open_array(path) as handle, pytest.raises(CorruptChunkError) as info:
        handle.read_batch([(slice(0, 45), slice(0, 38))], device="cuda")
    assert info.value.key == "c/3/2" and "'c/3/2'" in str(info.value)
    assert set(emu.kvikio_reads) == {"device"}


def _entry(batch: DeviceBatch, index: int) -> Any:
    """Device view of entry ``index`` of a batch (``None`` when its key is missing)."""
    if not batch.present[index]:
        return None
    start = int(batch.offsets[index])
    return batch.data[start : start + int(batch.lengths[index])]


def test_fetch_device_entries_are_aligned_and_exact(emu: GpuEmulation, tmp_path: Path) -> None:
    sizes = [1, 17, 0, 64, 333, 5]
    for i, n in enumerate(sizes):
        (tmp_path / f"k{i}").write_bytes(bytes((i * 31 + j) % 256 for j in range(n)))
    with LocalFileFetcher(tmp_path) as fetcher:
        batch = fetcher.fetch_device([f"k{i}" for i in range(len(sizes))] + ["missing"])
    assert isinstance(batch, DeviceBatch)
    assert (batch.offsets % BATCH_ALIGN == 0).all()
    assert batch.lengths.tolist() == [*sizes, 0] and batch.present.tolist() == [True] * len(sizes) + [False]
    for i, n in enumerate(sizes):
        assert _entry(batch, i).get().tobytes() == bytes((i * 31 + j) % 256 for j in range(n))
    assert _entry(batch, len(sizes)) is None


# ----------------------------------------------------------------------------- S3 (kvikio RemoteFile)


@pytest.fixture(scope="module")
def s3_arrays(s3_server: Any) -> dict[str, Any]:  # noqa: F811
    """A private and a public bucket on the loopback moto, each with a zstd array with unwritten chunks."""
    options = {"endpoint_url": s3_server.endpoint_url, "key": s3_server.key, "secret": s3_server.secret}
    data = (np.arange(45 * 38).reshape(45, 38) % 1000).astype("int16")
    urls = {}
    for kind, public in (("private", False), ("public", True)):
        bucket = s3_server.create_bucket(public_read=public)
        url = f"s3://{bucket}/a.zarr"
        array = zarr.create_array(url, shape=data.shape, chunks=(8, 10), dtype="int16", fill_value=7,
                                  compressors=ZstdCodec(), storage_options=options)
        array[:] = data
        array[8:24, 10:20] = 7
        urls[kind] = url
    return {"urls": urls, "options": options, "expected": array[:]}


@pytest.mark.parametrize("kind", ["private", "public", "http"])
def test_s3_chunks_read_by_kvikio_into_device_memory(emu: GpuEmulation, s3_arrays: dict[str, Any],
                                                      s3_server: Any, kind: str) -> None:  # noqa: F811
    """RemoteFetcher.fetch_device: kvikio RemoteFile.open_s3 with credentials; open_http for an anonymous
    s3:// URL and for the same bucket as a plain https-style URL."""
    url, options = s3_arrays["urls"]["private" if kind == "private" else "public"], s3_arrays["options"]
    if kind == "public":
        options = {"endpoint_url": s3_server.endpoint_url, "anon": True}
    elif kind == "http":
        url, options = url.replace("s3://", f"{s3_server.endpoint_url}/"), {}
    expected = s3_arrays["expected"]
    with gpuzarr.open_array(url, **options) as handle:
        assert handle.fetcher.reads_to_device
        picked = regions(expected.shape, (13, 17), 5, 4) + [(slice(8, 21), slice(7, 24))]
        out = handle.read_batch(picked, device="cuda")
    np.testing.assert_array_equal(out.get(), np.stack([expected[r] for r in picked]))
    assert emu.kvikio_reads and set(emu.kvikio_reads) == {"remote device"}


def test_remote_fetch_device_without_kvikio_stages_through_host(emu: GpuEmulation, s3_arrays: dict[str, Any]) -> None:
    """kvikio's RemoteFile unavailable: one host batch, packed aligned into the pinned arena, one async copy."""
    from gpuzarr.storage.remote import RemoteFetcher

    with RemoteFetcher(s3_arrays["urls"]["private"], s3_arrays["options"], use_kvikio=False) as fetcher:
        assert not fetcher.reads_to_device
        keys = ["zarr.json", "c/0/0", "c/1/1", "c/4/3", "no/such/key"]
        host = fetcher.fetch(keys)
        emu.reset_logs()
        batch = fetcher.fetch_device(keys)
    assert [u[0] for u in emu.uploads] == ["async pinned"]  # one copy, from page-locked memory, on a stream
    assert isinstance(batch, DeviceBatch) and (batch.offsets % BATCH_ALIGN == 0).all()
    assert batch.present.tolist() == [h is not None for h in host] == [True, True, False, True, False]
    for i, h in enumerate(host):
        assert (_entry(batch, i) is None) if h is None else _entry(batch, i).get().tobytes() == bytes(h)
    assert not emu.kvikio_reads
