"""The CPU engine's compiled lane (:mod:`gpuzarr.engines.compiled`) equals the Python path and zarr-python.

The whole suite already reads through the lane wherever it applies (``conftest`` sets
``cpu.compiled`` to ``"eager"``). Here: property tests that read the same batches with
the lane on and off and compare both with zarr-python, with a check that the lane really
took the chunks it should (local files, shards, bytes in memory); and the cases it must
hand back to the Python path — missing chunks, corrupt bytes, truncated shards,
multi-block Blosc chunks read in part, chains it does not decode — each still giving the
Python path's values or its typed error naming the chunk.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest
import zarr
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import (
    ArraySpec,
    CodecSpec,
    array_specs,
    assert_same_batch,
    batches,
    create_zarr_array,
    scaled,
    zarr_reference,
)
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

import gpuzarr
from gpuzarr.codecs import native
from gpuzarr.engines import compiled
from gpuzarr.engines.cpu import CpuEngine
from gpuzarr.errors import ConfigurationError, CorruptChunkError

pytestmark = pytest.mark.skipif(not compiled.available(), reason="numba is not installed (the 'fast' extra)")

#: the chains the lane decodes: raw, Blosc or Zstd bytes, with or without a CRC32C, little-endian or single-byte
LANE_CODECS = st.builds(
    CodecSpec,
    compressors=st.sampled_from(((), (ZstdCodec(level=1),), (ZstdCodec(level=2, checksum=True),), (BloscCodec(cname="lz4", shuffle="shuffle"),),
                                 (BloscCodec(cname="zstd", shuffle="bitshuffle", clevel=3),),
                                 (BloscCodec(cname="blosclz", shuffle="noshuffle"),),
                                 (ZstdCodec(level=3), Crc32cCodec()), (Crc32cCodec(),),
                                 (BloscCodec(cname="lz4hc", shuffle="shuffle"), Crc32cCodec()))),
    serializer_endian=st.just("little"),
    shards=st.sampled_from((None, None, "whole")),
)


def _lane_statuses(handle: gpuzarr.ArrayHandle, regions: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Run the lane alone on one batch: (its statuses, the batch array it filled); None when it does not apply."""
    plan = handle.plan(regions)
    encoded = handle.reader.read(plan.chunk_coords, deferred=True)
    full = np.zeros((plan.n_regions, *plan.region_shape), dtype=handle.chain.dtype)
    fast = compiled.lane(plan, encoded, handle.chain, full, partial=False)
    if fast is None:
        return None
    engine = CpuEngine(workers=1)
    try:
        status = np.zeros(plan.n_chunks, dtype=np.int8)
        fast.run(0, plan.n_chunks, status, full.reshape(-1).view(np.uint8), engine._input_for(fast.input_bytes),
                 engine._scratch_for(handle.chain.stored_nbytes), native.zstd_context())
    finally:
        engine.close()
    return status, full


def _shard_spec(spec: ArraySpec) -> ArraySpec:
    """``spec`` with ``shards="whole"`` turned into a shard shape of two chunks per axis (or the spec unchanged)."""
    if spec.codecs.shards != "whole":
        return spec
    codecs = CodecSpec(compressors=spec.codecs.compressors, serializer_endian=spec.codecs.serializer_endian,
                       shards=tuple(2 * c for c in spec.chunks))
    return ArraySpec(spec.dtype, spec.shape, spec.chunks, codecs, spec.fill_value, spec.writes, spec.data_seed)


@settings(max_examples=scaled(60))
@given(data=st.data())
def test_lane_equals_the_python_path_and_zarr_on_local_files(tmp_path_factory: pytest.TempPathFactory,
                                                             data: st.DataObject) -> None:
    spec = _shard_spec(data.draw(array_specs(codecs=LANE_CODECS, allow_sharding=False)))
    path = tmp_path_factory.mktemp("lane") / "a.zarr"
    arr = create_zarr_array(spec, str(path))
    batch = data.draw(batches(spec.shape, max_regions=5))
    regions = list(batch.regions)
    handle = gpuzarr.open_array(str(path))
    # files read with pread, or mapped (every read: mapping is what large chunks get)
    with gpuzarr.config.set({"cpu.map_min_bytes": data.draw(st.sampled_from((0, 1)), label="map_min_bytes")}):
        _lane_equals_python_path_and_zarr(handle, arr, regions)


def _lane_equals_python_path_and_zarr(handle: gpuzarr.ArrayHandle, arr: zarr.Array, regions: list[Any]) -> None:
    expected = zarr_reference(arr, regions)
    with gpuzarr.config.set({"cpu.compiled": "off"}):
        assert_same_batch(handle.read_batch(regions, device="cpu"), expected, context="python path")
    assert_same_batch(handle.read_batch(regions, device="cpu"), expected, context="compiled lane")
    # the lane took every chunk that exists on disk, and left exactly the missing ones
    if handle.plan(regions).n_chunks == 0:
        return
    ran = _lane_statuses(handle, regions)
    plan = handle.plan(regions)
    present = np.array([k is not None for k in _present_keys(handle, plan)], dtype=bool)
    if ran is None:  # only when the reader knows nothing under this batch was written (shard indexes)
        assert not present.any(), f"the lane should decode {handle.chain.codec_names}"
        return
    status, _ = ran
    assert np.array_equal(status == compiled.DONE, present)


def _present_keys(handle: gpuzarr.ArrayHandle, plan: Any) -> list[Any]:
    encoded = handle.reader.read(plan.chunk_coords, deferred=True)
    if getattr(encoded, "starts", None) is not None:  # shards: None for an inner chunk never written
        return list(encoded.keys)
    root = Path(handle.reader.fetcher.local_paths([""])[0])
    return [k if (root / k).exists() else None for k in encoded.keys]


@settings(max_examples=scaled(40))
@given(case=st.data())
def test_lane_decodes_bytes_already_in_memory(case: st.DataObject) -> None:
    """Chunks from a MemoryStore (and from the encoded-chunk cache) arrive as bytes: decoded where they lie."""
    spec = _shard_spec(case.draw(array_specs(codecs=LANE_CODECS, allow_sharding=False)))
    arr = create_zarr_array(spec, zarr.storage.MemoryStore())
    regions = list(case.draw(batches(spec.shape, max_regions=4)).regions)
    handle = gpuzarr.open_array(arr)
    assert_same_batch(handle.read_batch(regions, device="cpu"), zarr_reference(arr, regions), context="memory")
    if handle.plan(regions).n_chunks == 0:
        return
    ran = _lane_statuses(handle, regions)
    if ran is None:  # only when no chunk of the batch was ever written
        assert all(x is None for x in handle.reader.read(handle.plan(regions).chunk_coords))
        return
    status, _ = ran
    assert set(np.unique(status).tolist()) <= {compiled.DONE, 0}  # 0: a chunk never written (no bytes)


def _array(path: Path, codecs: dict[str, Any], shape: tuple[int, ...] = (64, 96), chunks: tuple[int, ...] = (16, 32),
           dtype: str = "uint16", **kwargs: Any) -> tuple[zarr.Array, np.ndarray]:
    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=7, **codecs, **kwargs)
    data = (np.arange(int(np.prod(shape))) * 37 % 65521).astype(dtype).reshape(shape)
    arr[:] = data
    return arr, data


CROPS = [(slice(3, 40), slice(5, 90)), (slice(20, 57), slice(0, 85))]
CODECS = {
    "zstd+crc32c": {"compressors": (ZstdCodec(level=3), Crc32cCodec())},
    "zstd": {"compressors": (ZstdCodec(level=3),)},
    "blosc": {"compressors": (BloscCodec(cname="lz4", shuffle="shuffle"),)},
    "raw": {"compressors": ()},
}


def _outcome(handle: gpuzarr.ArrayHandle, mode: str) -> Any:
    """The batch, or the text of the CorruptChunkError (which must name the array)."""
    with gpuzarr.config.set({"cpu.compiled": mode}):
        try:
            return handle.read_batch(CROPS, device="cpu")
        except CorruptChunkError as exc:
            assert exc.array == handle.name
            return str(exc)


@pytest.mark.parametrize("map_min", [0, 1], ids=["pread", "mapped"])
@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_chunk_reads_as_the_python_path_reads_it(tmp_path: Path, name: str, damage: str, map_min: int) -> None:
    """Same error text (naming the chunk), or — where a flipped byte is undetectable — the same values."""
    path = tmp_path / "a.zarr"
    _array(path, CODECS[name])
    key = "c/0/0"
    raw = bytearray((path / key).read_bytes())
    if damage == "truncate":
        del raw[-3:]
    else:
        raw[len(raw) // 2] ^= 0xFF
    (path / key).write_bytes(bytes(raw))
    handle = gpuzarr.open_array(str(path))
    with gpuzarr.config.set({"cpu.map_min_bytes": map_min}):
        python, lane = _outcome(handle, "off"), _outcome(handle, "eager")
    if damage == "truncate" or name == "zstd+crc32c":
        assert isinstance(python, str) and key in python, python
    if isinstance(python, str):
        assert lane == python
    else:
        np.testing.assert_array_equal(lane, python)


@pytest.mark.parametrize("map_min", [0, 1], ids=["pread", "mapped"])
@pytest.mark.parametrize("name", sorted(CODECS))
def test_damaged_inner_chunk_reads_as_the_python_path_reads_it(tmp_path: Path, name: str, map_min: int) -> None:
    path = tmp_path / "a.zarr"
    _array(path, CODECS[name], shards=(32, 96))
    raw = bytearray((path / "c/0/0").read_bytes())
    raw[40] ^= 0xFF  # inside the first inner chunk
    (path / "c/0/0").write_bytes(bytes(raw))
    handle = gpuzarr.open_array(str(path))
    with gpuzarr.config.set({"cpu.map_min_bytes": map_min}):
        python, lane = _outcome(handle, "off"), _outcome(handle, "eager")
    if name == "zstd+crc32c":
        assert isinstance(python, str) and "c/0/0" in python and "inner" in python, python
    if isinstance(python, str):
        assert lane == python
    else:
        np.testing.assert_array_equal(lane, python)


@pytest.mark.parametrize("sharded", [False, True])
def test_missing_chunks_and_shards_read_as_fill(tmp_path: Path, sharded: bool) -> None:
    path = tmp_path / "a.zarr"
    _arr, _data = _array(path, CODECS["zstd+crc32c"], shards=(32, 96) if sharded else None)
    os.remove(path / "c/1/0")  # a chunk, or a whole shard
    expected = zarr_reference(zarr.open_array(str(path), mode="r"), CROPS)
    handle = gpuzarr.open_array(str(path))
    assert_same_batch(handle.read_batch(CROPS, device="cpu"), expected)
    assert (expected == 7).any()


def test_chunks_are_taken_shard_by_shard_front_to_back(tmp_path: Path) -> None:
    """The lane's order groups a shard's inner chunks (one open each) and reads them by rising offset."""
    path = tmp_path / "a.zarr"
    _array(path, CODECS["zstd+crc32c"], shards=(32, 32))
    handle = gpuzarr.open_array(str(path))
    regions = [(slice(a, a + 20), slice(b, b + 40)) for a in (0, 10, 30, 44) for b in (0, 25, 50)]
    plan = handle.plan(regions)
    full = np.zeros((plan.n_regions, *plan.region_shape), dtype=np.uint16)
    fast = compiled.lane(plan, handle.reader.read(plan.chunk_coords, deferred=True), handle.chain, full, partial=False)
    assert fast is not None
    files, offsets = fast.path_index[fast.order], fast.starts[fast.order]
    assert len(np.unique(files)) > 1 and (np.diff(files) >= 0).all()
    same = np.diff(files) == 0
    assert (np.diff(offsets)[same] > 0).all()


@settings(max_examples=50, deadline=None)
@given(names=st.lists(st.one_of(st.none(), st.sampled_from(("c/0", "c/1", "c/2"))), max_size=12))
def test_key_tables_name_each_entry_as_its_key(names: list[str | None]) -> None:
    """``key_table()`` (what the lane opens files by) says for every entry what ``keys`` says, each object once."""
    from gpuzarr.storage.base import DeferredReads

    distinct, index = DeferredReads(None, names).key_table()  # type: ignore[arg-type]
    assert len(set(distinct)) == len(distinct) and None not in distinct
    assert [distinct[i] if i >= 0 else None for i in index.tolist()] == names


def test_shard_reads_key_table_matches_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    _array(path, CODECS["zstd+crc32c"], shards=(32, 32))
    os.remove(path / "c/1/0")  # a missing shard: its inner chunks have no key
    handle = gpuzarr.open_array(str(path))
    plan = handle.plan([(slice(a, a + 20), slice(b, b + 40)) for a in (0, 30, 44) for b in (0, 50)])
    reads = handle.reader.read(plan.chunk_coords, deferred=True)
    distinct, index = reads.key_table()
    assert (index == -1).any() and (index >= 0).any()
    assert [distinct[i] if i >= 0 else None for i in index.tolist()] == list(reads.keys)


def test_a_key_with_a_nul_is_left_to_the_python_path(tmp_path: Path) -> None:
    """A NUL inside a path would end it early in ``open``: such a batch never reaches the lane's file reads."""
    from gpuzarr.storage.base import DeferredReads
    from gpuzarr.storage.local import LocalFileFetcher

    fetcher = LocalFileFetcher(str(tmp_path))
    assert compiled._sources(DeferredReads(fetcher, ["c/0", "c/1\0/x"]), 2) is None
    kinds, path_index, offsets, blob, *_ = compiled._sources(DeferredReads(fetcher, ["c/0", "c/1", "c/0"]), 3)
    assert path_index.tolist() == [0, 1, 0] and (kinds == compiled.WHOLE_FILE).all()
    assert [bytes(blob[o:]).split(b"\0")[0] for o in offsets.tolist()] == [os.fsencode(str(tmp_path / k)) for k in ("c/0", "c/1")]


@pytest.mark.parametrize("sharded", [False, True], ids=["chunks", "shards"])
@pytest.mark.parametrize("folder", ["ascii", "daten-\u00fc\u00df", "\u6570\u636e", os.fsdecode(b"raw-\xff\xfe")],
                         ids=["ascii", "latin", "cjk", "undecodable"])
def test_the_lane_opens_files_under_any_folder_name(tmp_path: Path, folder: str, sharded: bool) -> None:
    """Paths are handed to the kernel as one NUL-separated blob: every file opens, whatever its name's bytes.

    ASCII, multi-byte UTF-8 and bytes that are not UTF-8 at all (surrogate-escaped): the
    lane reads every chunk itself (no status left for the Python path) and the batch equals zarr's.
    """
    path = tmp_path / folder / "a.zarr"
    path.parent.mkdir()
    _, data = _array(path, CODECS["zstd+crc32c"], **({"shards": (32, 64)} if sharded else {}))
    handle = gpuzarr.open_array(str(path))
    outcome = _lane_statuses(handle, CROPS)
    assert outcome is not None
    status, full = outcome
    assert (status == compiled.DONE).all()
    for crop, region in zip(full, CROPS, strict=True):
        np.testing.assert_array_equal(crop, data[region])


def test_truncated_shard_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    _array(path, CODECS["zstd+crc32c"], shards=(32, 96))
    raw = (path / "c/0/0").read_bytes()
    index = raw[-(6 * 16 + 4):]
    (path / "c/0/0").write_bytes(raw[:100] + index)  # the index now points past the payload
    handle = gpuzarr.open_array(str(path))
    with pytest.raises(CorruptChunkError, match="c/0/0"):
        handle.read_batch(CROPS, device="cpu")
    # mapped, the ranges past the file's end must not be touched (a SIGBUS would end the process): in a
    # fresh process, so that a crash fails this test instead of the whole run
    _in_fresh_process(path, "", (
        "from gpuzarr.errors import CorruptChunkError\n"
        "assert compiled.ready(wait=True)\n"
        "with gpuzarr.config.set({'cpu.map_min_bytes': 1, 'cpu.compiled': 'eager'}):\n"
        "    try:\n"
        "        h.read_batch(regions, device='cpu')\n"
        "    except CorruptChunkError as exc:\n"
        "        assert 'c/0/0' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError('a truncated shard read without an error')"), check_want=False)


def test_mapped_shard_ranges_past_its_end_are_named(tmp_path: Path) -> None:
    """Inner chunks far past the end of their shard (a valid index): with every read mapped, the kernel must not
    touch them through the mapping (that would end the process); in a fresh process, so a crash fails this test."""
    path = tmp_path / "a.zarr"
    arr = zarr.create_array(str(path), shape=(128, 128), chunks=(64, 64), shards=(128, 128), dtype="uint16",
                            compressors=(ZstdCodec(level=1), Crc32cCodec()))
    arr[:] = np.random.default_rng(0).integers(0, 2**16, (128, 128), dtype=np.uint16)  # incompressible: 8 KiB each
    raw = (path / "c/0/0").read_bytes()
    index = np.frombuffer(raw[-(4 * 16 + 4):-4], dtype="<u8").reshape(4, 2).copy()
    index[:, 0] += 1 << 40  # every inner chunk a terabyte past the end: no mapping reaches that far by chance
    table = index.tobytes()
    (path / "c/0/0").write_bytes(raw[:-(4 * 16 + 4)] + table + google_crc32c.value(table).to_bytes(4, "little"))
    code = (
        "import gpuzarr\n"
        "from gpuzarr.engines import compiled\n"
        "from gpuzarr.errors import CorruptChunkError\n"
        "assert compiled.ready(wait=True)\n"
        f"h = gpuzarr.open_array({str(path)!r})\n"
        "with gpuzarr.config.set({'cpu.map_min_bytes': 1, 'cpu.compiled': 'eager'}):\n"
        "    try:\n"
        "        h.read_batch([(slice(70, 120), slice(70, 120))], device='cpu')\n"
        "    except CorruptChunkError as exc:\n"
        "        assert 'c/0/0' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError('ranges past the end of a shard read without an error')\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (proc.returncode, proc.stderr[-2000:])


@pytest.mark.skipif(not compiled._populate_read_works(), reason="needs madvise(MADV_POPULATE_READ), Linux 5.14+")
def test_large_reads_are_mapped_not_copied(tmp_path: Path) -> None:
    """At ``cpu.map_min_bytes`` and above, the kernel maps the file: its input buffer is never written."""
    path = tmp_path / "a.zarr"
    _array(path, CODECS["zstd+crc32c"], shards=(32, 96))
    handle = gpuzarr.open_array(str(path))
    plan = handle.plan(CROPS)
    expected = zarr_reference(zarr.open_array(str(path), mode="r"), CROPS)
    for map_min, mapped in ((0, False), (1, True), (1 << 30, False)):
        full = np.zeros((plan.n_regions, *plan.region_shape), dtype=handle.chain.dtype)
        fast = compiled.lane(plan, handle.reader.read(plan.chunk_coords, deferred=True), handle.chain, full,
                             partial=False)
        assert fast is not None
        inbuf = np.full(fast.input_bytes, 0xA5, dtype=np.uint8)
        status = np.zeros(plan.n_chunks, dtype=np.int8)
        with gpuzarr.config.set({"cpu.map_min_bytes": map_min}):
            fast.run(0, plan.n_chunks, status, full.reshape(-1).view(np.uint8), inbuf,
                     np.empty(handle.chain.stored_nbytes, dtype=np.uint8), native.zstd_context())
        assert (status == compiled.DONE).all()
        np.testing.assert_array_equal(full, expected)
        assert (inbuf == 0xA5).all() == mapped, map_min


def test_multi_block_blosc_chunks_read_in_part_decode_only_the_blocks_read(tmp_path: Path) -> None:
    """Zstd inside Blosc, read in part: the lane decodes only the blocks the pieces read (a damaged block no piece
    reads does not stop it), for every shuffle and item size."""
    for shuffle, dtype in (("bitshuffle", "float32"), ("shuffle", "uint16"), ("noshuffle", "int64"), ("bitshuffle", "uint8")):
        path = tmp_path / f"{shuffle}-{dtype}.zarr"
        codecs = {"compressors": (BloscCodec(cname="zstd", shuffle=shuffle, blocksize=16384),)}
        side = 400 if np.dtype(dtype).itemsize > 1 else 800  # chunks above partial_decode.min_chunk_bytes
        arr, _data = _array(path, codecs, shape=(side + 200, side + 200), chunks=(side, side), dtype=dtype)
        regions = [(slice(10, 50), slice(390, 420)), (slice(350, 390), slice(100, 130))]
        handle = gpuzarr.open_array(str(path))
        plan = handle.plan(regions)
        full = np.zeros((plan.n_regions, *plan.region_shape), dtype=dtype)
        fast = compiled.lane(plan, handle.reader.read(plan.chunk_coords, deferred=True), handle.chain, full,
                             partial=True)
        assert fast is not None and fast.partial
        status = np.zeros(plan.n_chunks, dtype=np.int8)
        fast.run(0, plan.n_chunks, status, full.reshape(-1).view(np.uint8), np.empty(fast.input_bytes, dtype=np.uint8),
                 np.empty(handle.chain.stored_nbytes, dtype=np.uint8), native.zstd_context())
        assert (status == compiled.DONE).all()
        expected = zarr_reference(arr, regions)
        assert_same_batch(full, expected)
        # damage the stream of the last block of chunk (0, 0): rows 10..50 never reach it
        chunk = path / "c" / "0" / "0"
        blob = bytearray(chunk.read_bytes())
        nblocks = -(-int.from_bytes(blob[4:8], "little") // int.from_bytes(blob[8:12], "little"))
        last = int.from_bytes(blob[16 + 4 * (nblocks - 1):20 + 4 * (nblocks - 1)], "little")
        blob[last + 8] ^= 0xFF
        chunk.write_bytes(bytes(blob))
        assert_same_batch(handle.read_batch(regions[:1], device="cpu"), expected[:1])
        assert handle.chain not in compiled._MULTI_BLOCK


@settings(max_examples=scaled(40), deadline=None)
@given(dtype=st.sampled_from(("uint8", "uint16", "float32", "int64", "complex128")),
       shuffle=st.sampled_from(("shuffle", "bitshuffle")), blocksize=st.sampled_from((0, 256, 1000, 4096)),
       partial=st.booleans(), data=st.data())
def test_shuffled_blosc_rows_unshuffled_straight_into_the_batch(tmp_path_factory: pytest.TempPathFactory, dtype: str,
                                                                 shuffle: str, blocksize: int, partial: bool,
                                                                 data: st.DataObject) -> None:
    """Shuffled Blosc-Zstd chunks whose piece rows are long enough are unshuffled row by row into the batch (rows
    across block and item bounds, pieces of several regions in one chunk, out of order, overlapping); the batch
    equals zarr's, whether the lane decodes every block or only those the rows reach."""
    itemsize = np.dtype(dtype).itemsize
    wide = -(-kernel_fuse_min_row() // itemsize)  # the fewest items of a row unshuffled straight into the batch
    chunks = (data.draw(st.integers(1, 9), label="chunk rows"), data.draw(st.integers(wide, 4 * wide), label="chunk cols"))
    shape = (data.draw(st.integers(chunks[0], 3 * chunks[0])), data.draw(st.integers(chunks[1], 3 * chunks[1])))
    planes = data.draw(st.sampled_from((0, 0, 1, 2)), label="leading axis chunk")  # 0: a 2-d array
    if planes:  # a 3-d array: rows of several planes per chunk, the odometer over two outer axes
        chunks = (planes, *chunks)
        shape = (data.draw(st.integers(planes, 3 * planes)), *shape)
    path = tmp_path_factory.mktemp("rows") / "a.zarr"
    codecs = {"compressors": (BloscCodec(cname="zstd", shuffle=shuffle, clevel=1, typesize=itemsize, blocksize=blocksize),)}
    arr, _data = _array(path, codecs, shape=shape, chunks=chunks, dtype=dtype)
    shape = shape[-2:]
    regions = []
    for _ in range(data.draw(st.integers(1, 5), label="regions")):
        w = data.draw(st.integers(1, shape[1]))
        h = data.draw(st.integers(1, shape[0]))
        y, x = data.draw(st.integers(0, shape[0] - h)), data.draw(st.integers(0, shape[1] - w))
        regions.append((slice(y, y + h), slice(x, x + w)))
    width = max(r[1].stop - r[1].start for r in regions)
    regions = [(r[0], slice(r[1].start, r[1].start + width)) if r[1].start + width <= shape[1] else
               (r[0], slice(shape[1] - width, shape[1])) for r in regions]  # one region shape for the batch
    height = max(r[0].stop - r[0].start for r in regions)
    regions = [(slice(min(r[0].start, shape[0] - height), min(r[0].start, shape[0] - height) + height), r[1])
               for r in regions]
    if planes:
        depth = data.draw(st.integers(1, arr.shape[0]), label="planes read")
        regions = [(slice(z, z + depth), *r) for z, r in
                   zip(data.draw(st.lists(st.integers(0, arr.shape[0] - depth), min_size=len(regions),
                                          max_size=len(regions))), regions, strict=True)]
    handle = gpuzarr.open_array(str(path))
    plan = handle.plan(regions)
    full = np.zeros((plan.n_regions, *plan.region_shape), dtype=dtype)
    fast = compiled.lane(plan, handle.reader.read(plan.chunk_coords, deferred=True), handle.chain, full,
                         partial=partial)
    assert fast is not None
    status = np.zeros(plan.n_chunks, dtype=np.int8)
    scratch = np.full(handle.chain.stored_nbytes, 0xA5, dtype=np.uint8)
    fast.run(0, plan.n_chunks, status, full.reshape(-1).view(np.uint8), np.empty(fast.input_bytes, dtype=np.uint8),
             scratch, native.zstd_context())
    expected = zarr_reference(arr, regions)
    # a chunk c-blosc stored unshuffled as it was (incompressible) and read in part is the Python path's
    assert (status == compiled.DONE).all() or (partial and set(status.tolist()) <= {compiled.DONE, compiled.PARTIAL})
    if (status == compiled.DONE).all():
        assert_same_batch(full, expected)
    assert_same_batch(handle.read_batch(regions, device="cpu"), expected)
    rows_fused = (fast.extents[:, -1] >= kernel_fuse_min_row()).all() and (shuffle == "bitshuffle" or itemsize > 1)
    stored_whole = any(f.read_bytes()[2] & 0x02 for f in (path / "c").rglob("*") if f.is_file())  # memcpyed: c-blosc's
    if rows_fused and blocksize == 0 and not stored_whole:  # one shuffled block per chunk: nothing in the scratch chunk
        assert (scratch == 0xA5).all()


def kernel_fuse_min_row() -> int:
    from gpuzarr.engines import _compiled_kernel

    return _compiled_kernel.FUSE_MIN_ROW


def test_multi_block_blosc_chunks_of_other_compressors_read_in_part_go_to_the_python_path(tmp_path: Path) -> None:
    """LZ4 inside Blosc, read in part: c-blosc decodes only whole chunks, so the lane leaves them (statuses say so)."""
    path = tmp_path / "a.zarr"
    codecs = {"compressors": (BloscCodec(cname="lz4", shuffle="bitshuffle", blocksize=16384),)}
    arr, _data = _array(path, codecs, shape=(600, 600), chunks=(400, 400), dtype="float32")
    regions = [(slice(10, 50), slice(390, 420)), (slice(350, 390), slice(100, 130))]
    handle = gpuzarr.open_array(str(path))
    assert_same_batch(handle.read_batch(regions, device="cpu"), zarr_reference(arr, regions))
    assert handle.chain in compiled._MULTI_BLOCK  # that batch taught the engine; forget it to look again
    compiled._MULTI_BLOCK.discard(handle.chain)
    plan = handle.plan(regions)
    full = np.zeros((plan.n_regions, *plan.region_shape), dtype=np.float32)
    fast = compiled.lane(plan, handle.reader.read(plan.chunk_coords, deferred=True), handle.chain, full, partial=True)
    assert fast is not None and fast.partial
    status = np.zeros(plan.n_chunks, dtype=np.int8)
    fast.run(0, plan.n_chunks, status, full.reshape(-1).view(np.uint8), np.empty(fast.input_bytes, dtype=np.uint8),
             np.empty(handle.chain.stored_nbytes, dtype=np.uint8), native.zstd_context())
    assert (status == compiled.PARTIAL).all() and not full.any()  # nothing written for chunks it left
    # the engine learns from these statuses: the lane then leaves this chain's batches to the Python path
    compiled.note_statuses(handle.chain, status)
    assert compiled.lane(plan, handle.reader.read(plan.chunk_coords, deferred=True), handle.chain, full,
                         partial=True) is None
    assert compiled.lane(plan, handle.reader.read(plan.chunk_coords, deferred=True), handle.chain, full,
                         partial=False) is not None


def test_chains_the_lane_does_not_decode_are_left_whole(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    arr, _ = _array(path, {"compressors": (ZstdCodec(),), "serializer": zarr.codecs.BytesCodec(endian="big")})
    handle = gpuzarr.open_array(str(path))
    assert compiled.chain_codec(handle.chain) is None
    assert_same_batch(handle.read_batch(CROPS, device="cpu"), zarr_reference(arr, CROPS))


def test_out_and_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    arr, _ = _array(path, CODECS["blosc"], shape=(256, 256), chunks=(8, 8))
    regions = [(slice(i, i + 40), slice(200 - i, 240 - i)) for i in range(0, 200, 7)]
    handle = gpuzarr.open_array(str(path))
    out = np.empty((len(regions), 40, 40), dtype=np.uint16)
    with gpuzarr.config.set({"threads": 4}):
        got = handle.read_batch(regions, device="cpu", out=out)
    assert got is out or np.shares_memory(got, out)
    assert_same_batch(out, zarr_reference(arr, regions))


def test_setting_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    _array(path, CODECS["blosc"])
    handle = gpuzarr.open_array(str(path))
    with gpuzarr.config.set({"cpu.compiled": "sometimes"}), pytest.raises(ConfigurationError, match="cpu.compiled"):
        handle.read_batch(CROPS, device="cpu")


def _in_fresh_process(path: Path, prelude: str, body: str, env: dict[str, str] | None = None,
                      check_want: bool = True) -> None:
    """Run ``prelude``, then ``body`` with ``h`` (gpuzarr), ``regions`` and ``want`` (zarr's batch), in a new Python."""
    code = (
        f"{prelude}\n"
        "import sys, numpy as np, zarr, gpuzarr\n"
        "from gpuzarr.engines import compiled\n"
        f"h = gpuzarr.open_array({str(path)!r}); z = zarr.open_array({str(path)!r}, mode='r')\n"
        f"regions = {CROPS!r}\n"
        + ("want = np.stack([z[r] for r in regions])\n" if check_want else "")
        + 
        f"{body}\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_background_compile_then_the_lane_runs(tmp_path: Path) -> None:
    """In a fresh process with the default setting, reads are right before, during and after the compile."""
    path = tmp_path / "a.zarr"
    _array(path, CODECS["zstd+crc32c"])
    env = {k: v for k, v in os.environ.items() if k != "GPUZARR_CPU__COMPILED"}
    _in_fresh_process(path, "", (
        "np.testing.assert_array_equal(h.read_batch(regions, device='cpu'), want)\n"
        "assert 'numba' not in sys.modules  # a few chunks: no compile started\n"
        "with gpuzarr.config.set({'cpu.compile_after_chunks': 1}):\n"
        "    np.testing.assert_array_equal(h.read_batch(regions, device='cpu'), want)  # starts it\n"
        "assert compiled.ready(wait=True)\n"
        "np.testing.assert_array_equal(h.read_batch(regions, device='cpu'), want)"), env=env)


def test_without_numba_the_python_path_reads(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    _array(path, CODECS["zstd+crc32c"])
    _in_fresh_process(path, "import sys; sys.modules['numba'] = None", (
        "assert not compiled.available() and not compiled.ready(wait=True)\n"
        "np.testing.assert_array_equal(h.read_batch(regions, device='cpu'), want)"))


@pytest.mark.parametrize("name", sorted(CODECS))
def test_zarr_plugin_reads_local_store_chunks_through_the_lane(tmp_path: Path, name: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The zarr codec-pipeline plug-in hands a LocalStore's unsharded chunk files to the lane; values equal zarr's."""
    path = tmp_path / "a.zarr"
    _array(path, CODECS[name])
    os.remove(path / "c/1/2")  # one chunk never written: fill value, and zarr learns it is missing
    ran: list[int] = []
    real_run = compiled.CompiledLane.run

    def counting_run(self: compiled.CompiledLane, first: int, stop: int, *args: Any) -> None:
        ran.append(stop - first)
        real_run(self, first, stop, *args)

    monkeypatch.setattr(compiled.CompiledLane, "run", counting_run)
    selections = [(slice(3, 40), slice(5, 90)), (slice(0, 64), slice(0, 96)), (7, slice(None))]
    expected = [zarr.open_array(str(path), mode="r")[s] for s in selections]
    with zarr.config.set({"codec_pipeline.path": "gpuzarr.GpuzarrCodecPipeline"}):
        arr = zarr.open_array(str(path), mode="r")
        for sel, want in zip(selections, expected, strict=True):
            np.testing.assert_array_equal(arr[sel], want)
    assert sum(ran) > 0


def test_large_zstd_chunks_whole_in_the_lane_prefixes_in_the_python_path(tmp_path: Path) -> None:
    """Chunks above one Zstd block: read whole → the lane; read only near the front → left for the prefix decode."""
    path = tmp_path / "a.zarr"
    arr, _ = _array(path, CODECS["zstd"], shape=(1024, 512), chunks=(512, 512))
    regions = [(slice(0, 512), slice(0, 512)), (slice(512, 1024), slice(0, 512)), (slice(512, 1024), slice(0, 512))]
    top_rows = [(slice(0, 40), slice(0, 512)), (slice(600, 640), slice(0, 512))]
    handle = gpuzarr.open_array(str(path))
    assert handle.chain.supports_prefix_decode
    for batch in (regions, top_rows, [*top_rows, (slice(470, 510), slice(0, 512))]):
        assert_same_batch(handle.read_batch(batch, device="cpu"), zarr_reference(arr, batch))
    plan = handle.plan(regions)
    full = np.zeros((plan.n_regions, *plan.region_shape), dtype=np.uint16)
    fast = compiled.lane(plan, handle.reader.read(plan.chunk_coords, deferred=True), handle.chain, full, partial=False)
    assert fast is not None and (fast.kinds == compiled.WHOLE_FILE).all()
    plan = handle.plan(top_rows)
    full = np.zeros((plan.n_regions, *plan.region_shape), dtype=np.uint16)
    assert compiled.lane(plan, handle.reader.read(plan.chunk_coords, deferred=True), handle.chain, full,
                         partial=False) is None  # both chunks are read only at their front


_NO_SEGMENTS = np.zeros((0, 3), dtype=np.int64)  # blosc_blocks decodes into its ``dst``
_NO_OUT = np.zeros(0, dtype=np.uint8)


def _blosc_encode(data: np.ndarray, shuffle: int, blocksize: int, typesize: int, split: bool) -> bytes:
    """numcodecs' c-blosc encoding of ``data`` (Zstd inside); ``split``: every block in byte-plane streams."""
    from numcodecs import blosc

    if not split:
        return blosc.compress(data, b"zstd", 3, shuffle, blocksize, typesize)
    os.environ["BLOSC_SPLITMODE"] = "ALWAYS"  # c-blosc reads it on each call and keeps it as its split mode
    try:
        return blosc.compress(data, b"zstd", 3, shuffle, blocksize, typesize)
    finally:
        os.environ["BLOSC_SPLITMODE"] = "FORWARD_COMPAT"  # c-blosc's default, set back the same way
        blosc.compress(b"x" * 64, b"zstd", 1, 0, 0, 1)
        del os.environ["BLOSC_SPLITMODE"]


@settings(max_examples=150, deadline=None)
@given(typesize=st.sampled_from((1, 2, 3, 4, 8, 16, 17)), items=st.integers(1, 9000),
       shuffle=st.sampled_from((0, 1, 2)), blocksize=st.sampled_from((0, 128, 1000, 4096, 16384)),
       split=st.booleans(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_blosc_block_decoder_equals_c_blosc(typesize: int, items: int, shuffle: int, blocksize: int, split: bool,
                                            seed: int, data: st.DataObject) -> None:
    """The lane's own Blosc decoder (Zstd inside; byte or bit shuffle, split streams, leftover blocks, tails) gives
    c-blosc's bytes for every block it is asked for, and leaves the others untouched."""
    from numcodecs import blosc

    from gpuzarr.engines import _compiled_kernel as kernel

    rng = np.random.default_rng(seed)
    raw = (np.cumsum(rng.integers(-3, 4, items * typesize)) % 251).astype(np.uint8)  # compressible, not constant
    enc = np.frombuffer(_blosc_encode(raw, shuffle, blocksize, typesize, split), dtype=np.uint8)
    expected = np.frombuffer(blosc.decompress(enc.tobytes()), dtype=np.uint8)
    nbytes, bsize = (int.from_bytes(enc[i:i + 4].tobytes(), "little") for i in (4, 8))
    nblocks = -(-nbytes // bsize)
    needed = np.asarray(data.draw(st.lists(st.booleans(), min_size=nblocks, max_size=nblocks)), dtype=bool)
    if needed.all():
        needed = np.zeros(0, dtype=bool)  # the "every block" form
    dst = np.full(nbytes, 0xA5, dtype=np.uint8)
    tmp, tmp2 = np.empty(bsize, dtype=np.uint8), np.empty(bsize, dtype=np.uint8)
    got = kernel.blosc_blocks(native.address(enc), enc.size, dst, needed, tmp, tmp2,
                              int(compiled.function_addresses()[5]), native.zstd_context(), _NO_SEGMENTS, _NO_OUT, _NO_OUT)
    if enc[2] & 0x02:  # memcpyed: c-blosc's own
        assert got == kernel._BLOSC_OTHER
        return
    assert got == kernel._BLOSC_OK
    owned = np.repeat(needed if needed.size else np.ones(nblocks, dtype=bool), bsize)[:nbytes]
    np.testing.assert_array_equal(dst[owned], expected[owned])
    assert (dst[~owned] == 0xA5).all()

    # the same blocks written as rows straight into an output: any row start and length (past block
    # and item bounds, overlapping, out of order before the sort the kernel does), each at its own place
    starts = np.asarray(data.draw(st.lists(st.integers(0, nbytes - 1), min_size=1, max_size=12)), dtype=np.int64)
    lengths = np.minimum(np.asarray(data.draw(st.lists(st.integers(1, 3 * bsize), min_size=starts.size,
                                                       max_size=starts.size)), dtype=np.int64), nbytes - starts)
    places = np.concatenate([[0], np.cumsum(lengths)[:-1]]) + 5
    segments = np.stack([starts, lengths, places], axis=1)[np.argsort(starts, kind="stable")]
    reached = np.zeros(nblocks, dtype=bool)
    for start, length, _ in segments:
        reached[start // bsize:(start + length - 1) // bsize + 1] = True
    out = np.full(int(lengths.sum()) + 10, 0x5A, dtype=np.uint8)
    dst[:] = 0xA5
    got = kernel.blosc_blocks(native.address(enc), enc.size, dst, reached, tmp, tmp2,
                              int(compiled.function_addresses()[5]), native.zstd_context(), segments, out,
                              np.empty(bsize, dtype=np.uint8))
    assert got == kernel._BLOSC_OK
    for start, length, place in segments:
        np.testing.assert_array_equal(out[place:place + length], expected[start:start + length])
    assert (out[:5] == 0x5A).all() and (out[-5:] == 0x5A).all()


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                                      min_size=1, max_size=4))
@example(seed=2922801, flips=[(0, 13)])  # the reserved flag 0x08 set: c-blosc refuses the chunk
def test_blosc_block_decoder_on_damaged_chunks_never_crashes(seed: int, flips: list[tuple[int, int]]) -> None:
    """Bytes changed in the header, block table, stream sizes or streams: the decoder says CORRUPT, leaves the
    chunk to c-blosc, or decodes exactly what c-blosc decodes; it never reads or writes outside its buffers."""
    from numcodecs import blosc

    from gpuzarr.engines import _compiled_kernel as kernel

    rng = np.random.default_rng(seed)
    raw = (np.cumsum(rng.integers(-3, 4, 20000)) % 251).astype(np.uint8)
    enc = bytearray(_blosc_encode(raw, int(rng.integers(0, 3)), 2048, int(rng.choice([1, 2, 4])), bool(seed % 2)))
    header = (2, 3, 8, 9, 10, 11)  # flags, typesize, blocksize; nbytes and cbytes the caller checks first
    for at, xor in flips:
        enc[header[at % 6] if at % 5 == 0 else 16 + at % (len(enc) - 16)] ^= xor
    src = np.frombuffer(bytes(enc), dtype=np.uint8)
    dst = np.zeros(raw.size, dtype=np.uint8)
    tmp, tmp2 = np.empty(raw.size, dtype=np.uint8), np.empty(raw.size, dtype=np.uint8)
    got = kernel.blosc_blocks(native.address(src), src.size, dst, np.zeros(0, dtype=bool), tmp, tmp2,
                              int(compiled.function_addresses()[5]), native.zstd_context(), _NO_SEGMENTS, _NO_OUT, _NO_OUT)
    assert got in (kernel._BLOSC_OK, kernel._BLOSC_OTHER, kernel._CORRUPT)
    if got == kernel._BLOSC_OK:  # then c-blosc decodes it too, to the same bytes (the lane says DONE for it)
        np.testing.assert_array_equal(dst, np.frombuffer(blosc.decompress(bytes(enc)), dtype=np.uint8))


def test_blosc_block_decoder_reads_nothing_past_the_chunk() -> None:
    """A stream size word that claims more bytes than the chunk holds: CORRUPT, without reading past the chunk
    (the chunk ends where an unreadable page starts, so a read past it would stop the process)."""
    import ctypes
    import mmap

    from gpuzarr.engines import _compiled_kernel as kernel

    raw = (np.cumsum(np.random.default_rng(3).integers(-3, 4, 20000)) % 251).astype(np.uint8)
    enc = bytearray(_blosc_encode(raw, 2, 2048, 1, False))
    nblocks = -(-raw.size // int.from_bytes(enc[8:12], "little"))
    last = int.from_bytes(enc[16 + 4 * (nblocks - 1):20 + 4 * (nblocks - 1)], "little")
    csize = int.from_bytes(enc[last:last + 4], "little")
    enc[last:last + 4] = (csize + (1 << 16)).to_bytes(4, "little")  # the last stream "runs on" past the chunk
    page = mmap.PAGESIZE
    size = -(-len(enc) // page) * page
    region = mmap.mmap(-1, size + page)
    buf = np.frombuffer(region, dtype=np.uint8)
    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    guard = native.address(buf) + size
    assert libc.mprotect(guard, page, 0) == 0  # PROT_NONE
    try:
        buf[size - len(enc):size] = np.frombuffer(bytes(enc), dtype=np.uint8)
        dst = np.zeros(raw.size, dtype=np.uint8)
        tmp, tmp2 = np.empty(raw.size, dtype=np.uint8), np.empty(raw.size, dtype=np.uint8)
        got = kernel.blosc_blocks(native.address(buf) + size - len(enc), len(enc), dst, np.zeros(0, dtype=bool), tmp,
                                  tmp2, int(compiled.function_addresses()[5]), native.zstd_context(), _NO_SEGMENTS, _NO_OUT, _NO_OUT)
        assert got == kernel._CORRUPT
    finally:
        libc.mprotect(guard, page, mmap.PROT_READ | mmap.PROT_WRITE)
