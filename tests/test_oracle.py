"""gpuzarr's reads equal zarr-python's, value for value (the backbone's correctness proof).

Every test builds an array with zarr-python, reads a batch of regions with
``gpuzarr.open_array(...).read_batch(regions, device="cpu")`` and compares it with
``np.stack([zarr_array[r] for r in regions])``: same shape, same dtype, same values
(NaN equal to NaN). Hypothesis draws the dtypes, shapes, chunk shapes that do not
divide the shape, codec pipelines (Blosc in every cname/shuffle, Zstd, Gzip, CRC32C,
transpose, big-endian bytes, sharding with the index at either end), fill values
with chunks never written, and regions in every spelling NumPy allows.
Arrays live both in local directories and in ``zarr.storage.MemoryStore``.
"""

from __future__ import annotations

import itertools
import pickle
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    BLOSC_CNAMES,
    BLOSC_SHUFFLES,
    DTYPES,
    FLOAT_DTYPES,
    MULTIBYTE_DTYPES,
    ArraySpec,
    CodecSpec,
    array_specs,
    arrays_with_batches,
    assert_same_batch,
    batches,
    compressor_chains,
    create_zarr_array,
    large_chunk_specs,
    make_data,
    scaled,
    zarr_reference,
)
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

import gpuzarr
from gpuzarr.plan.planner import bounds_from_tables

HYPOTHESIS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def examples(n: int) -> settings:
    """The module's Hypothesis settings with ``n`` examples."""
    return settings(HYPOTHESIS, max_examples=scaled(n))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the module; every example makes (and removes) its own sub-directory."""
    return tmp_path_factory.mktemp("oracle")


class LocalArray:
    """A fresh ``.zarr`` directory under ``root`` that is removed again on exit."""

    def __init__(self, root: Path) -> None:
        self.path = root / f"{uuid.uuid4().hex}.zarr"

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def read_and_compare(handle: gpuzarr.ArrayHandle, zarr_array: zarr.Array, regions: Any, context: str) -> None:
    """``handle.read_batch(regions)`` must equal zarr-python's regions stacked."""
    expected = zarr_reference(zarr_array, regions)
    got = handle.read_batch(list(regions), device="cpu")
    assert_same_batch(got, expected, context=context)


def check_spec_local(scratch: Path, spec: ArraySpec, regions: Any) -> None:
    with LocalArray(scratch) as path:
        zarr_array = create_zarr_array(spec, str(path))
        with gpuzarr.open_array(str(path)) as handle:
            read_and_compare(handle, zarr_array, regions, f"{spec} regions={regions}")


# --------------------------------------------------------------------------- broad properties
@examples(500)
@given(case=arrays_with_batches())
def test_read_batch_matches_zarr_local_store(scratch: Path, case: tuple[ArraySpec, Any]) -> None:
    spec, batch = case
    check_spec_local(scratch, spec, batch.regions)


@examples(250)
@given(case=arrays_with_batches())
def test_read_batch_matches_zarr_memory_store(case: tuple[ArraySpec, Any]) -> None:
    spec, batch = case
    zarr_array = create_zarr_array(spec, zarr.storage.MemoryStore())
    handle = gpuzarr.open_array(zarr_array)
    read_and_compare(handle, zarr_array, batch.regions, f"{spec} regions={batch.regions}")


@examples(100)
@given(data=st.data())
def test_getitem_matches_zarr(scratch: Path, data: st.DataObject) -> None:
    spec = data.draw(array_specs(max_dims=3))
    region = data.draw(batches(spec.shape, min_regions=1, max_regions=1)).regions[0]
    with LocalArray(scratch) as path:
        zarr_array = create_zarr_array(spec, str(path))
        handle = gpuzarr.open_array(str(path))
        got = handle[region]
        expected = np.asarray(zarr_array[region])
        assert_same_batch(np.asarray(got), expected, context=f"{spec} region={region}")


# --------------------------------------------------------------------------- codecs, one by one
@pytest.mark.parametrize(("cname", "shuffle"), list(itertools.product(BLOSC_CNAMES, BLOSC_SHUFFLES)))
@examples(12)
@given(data=st.data())
def test_blosc_every_cname_and_shuffle(scratch: Path, cname: str, shuffle: str, data: st.DataObject) -> None:
    codecs = st.builds(
        CodecSpec,
        compressors=st.integers(1, 9).map(lambda level: (BloscCodec(cname=cname, shuffle=shuffle, clevel=level),)),
        serializer_endian=st.sampled_from(("little", "big")),
    )
    spec = data.draw(array_specs(codecs=codecs, max_dims=3))
    batch = data.draw(batches(spec.shape))
    check_spec_local(scratch, spec, batch.regions)


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@examples(10)
@given(data=st.data())
def test_blosc_chunks_above_partial_decode_threshold(scratch: Path, ndim: int, data: st.DataObject) -> None:
    """Chunks of 256 KiB and more take the partial-decode path (only the needed Blosc blocks): 2-D included."""
    spec = data.draw(large_chunk_specs(ndim=ndim))
    batch = data.draw(batches(spec.shape, max_regions=4))
    check_spec_local(scratch, spec, batch.regions)


@pytest.mark.parametrize(
    "compressors",
    [
        pytest.param((ZstdCodec(level=3),), id="zstd"),
        pytest.param((ZstdCodec(level=1, checksum=True),), id="zstd-checksum"),
        pytest.param((GzipCodec(level=5),), id="gzip"),
        pytest.param((Crc32cCodec(),), id="crc32c"),
        pytest.param((ZstdCodec(level=1), Crc32cCodec()), id="zstd+crc32c"),
        pytest.param((GzipCodec(level=1), Crc32cCodec()), id="gzip+crc32c"),
        pytest.param((), id="uncompressed"),
    ],
)
@examples(15)
@given(data=st.data())
def test_each_bytes_codec(scratch: Path, compressors: tuple[Any, ...], data: st.DataObject) -> None:
    codecs = st.builds(
        CodecSpec, compressors=st.just(compressors), serializer_endian=st.sampled_from(("little", "big"))
    )
    spec = data.draw(array_specs(codecs=codecs))
    batch = data.draw(batches(spec.shape))
    check_spec_local(scratch, spec, batch.regions)


@pytest.mark.parametrize("endian", ["little", "big"])
@pytest.mark.parametrize("dtype", MULTIBYTE_DTYPES)
def test_bytes_codec_both_endians(scratch: Path, endian: str, dtype: str) -> None:
    spec = ArraySpec(
        dtype=dtype,
        shape=(13, 9),
        chunks=(4, 5),
        codecs=CodecSpec(serializer_endian=endian, compressors=(ZstdCodec(level=1),)),
        fill_value=0,
        writes=(((0, 13), (0, 9)),),
        data_seed=7,
    )
    regions = [(slice(0, 6), slice(2, 9)), (slice(7, 13), slice(0, 7)), (slice(-6, None), slice(None, -2))]
    check_spec_local(scratch, spec, regions)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_transpose_codec_every_order(scratch: Path, order: tuple[int, ...]) -> None:
    spec = ArraySpec(
        dtype="int32",
        shape=(7, 6, 5),
        chunks=(3, 4, 2),
        codecs=CodecSpec(
            filters=(TransposeCodec(order=order),), compressors=(BloscCodec(cname="lz4", shuffle="shuffle"),)
        ),
        fill_value=-1,
        writes=(((1, 7), (0, 5), (1, 5)),),
        data_seed=3,
    )
    check_spec_local(scratch, spec, [(slice(0, 5), slice(1, 5), slice(0, 3)), (slice(2, 7), slice(2, 6), slice(2, 5))])
    check_spec_local(scratch, spec, [(slice(None, 5), 0, slice(None)), (slice(2, None), -1, slice(None))])


# --------------------------------------------------------------------------- sharding
INNER_CODECS = {
    "raw": (),
    "blosc": (BloscCodec(cname="zstd", shuffle="bitshuffle"),),
    "blosc-lz4": (BloscCodec(cname="lz4", shuffle="shuffle"),),
    "zstd+crc32c": (ZstdCodec(level=1), Crc32cCodec()),
    "gzip": (GzipCodec(level=1),),
}


@pytest.mark.parametrize("index_location", ["start", "end"])
@pytest.mark.parametrize("inner", list(INNER_CODECS))
@examples(15)
@given(data=st.data())
def test_sharded_arrays(scratch: Path, index_location: str, inner: str, data: st.DataObject) -> None:
    @st.composite
    def sharded(draw: st.DrawFn, chunks: tuple[int, ...]) -> CodecSpec:
        factors = draw(st.lists(st.integers(1, 3), min_size=len(chunks), max_size=len(chunks)))
        return CodecSpec(
            compressors=INNER_CODECS[inner],
            serializer_endian=draw(st.sampled_from(("little", "big"))),
            shards=tuple(c * f for c, f in zip(chunks, factors, strict=True)),
            index_location=index_location,
        )

    dtype = data.draw(st.sampled_from(DTYPES))
    ndim = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.lists(st.integers(1, {1: 40, 2: 14, 3: 8}[ndim]), min_size=ndim, max_size=ndim)))
    chunks = tuple(data.draw(st.integers(1, s + 1)) for s in shape)
    writes_full = data.draw(st.booleans())
    spec = ArraySpec(
        dtype=dtype,
        shape=shape,
        chunks=chunks,
        codecs=data.draw(sharded(chunks)),
        fill_value=data.draw(st.sampled_from([0, 1])) if dtype != "bool" else False,
        writes=((tuple((0, s) for s in shape),) if writes_full else (tuple((s // 3, s // 3 + 1) for s in shape),)),
        data_seed=data.draw(st.integers(0, 1000)),
    )
    batch = data.draw(batches(shape))
    check_spec_local(scratch, spec, batch.regions)


def test_sharded_memory_store_partially_written_shards() -> None:
    store = zarr.storage.MemoryStore()
    arr = zarr.create_array(
        store, shape=(30, 22), chunks=(4, 5), shards={"shape": (8, 10), "index_location": "start"},
        dtype="float32", fill_value=np.nan, compressors=[BloscCodec(cname="lz4hc", shuffle="bitshuffle")],
    )
    arr[5:9, 3:12] = make_data("float32", (4, 9), 1)  # a few inner chunks of a few shards
    arr[28:, 21:] = 5.0
    handle = gpuzarr.open_array(arr)
    assert handle.shards == (8, 10)
    assert handle.chunks == (4, 5)
    regions = [(slice(0, 30), slice(0, 22))]
    read_and_compare(handle, arr, regions, "whole array")
    crops = [(slice(a, a + 7), slice(b, b + 9)) for a in (0, 4, 5, 23) for b in (0, 3, 13)]
    read_and_compare(handle, arr, crops, "crops")


# --------------------------------------------------------------------------- fill values
@pytest.mark.parametrize("dtype", DTYPES)
def test_never_written_chunks_read_as_fill(scratch: Path, dtype: str) -> None:
    fill = float("nan") if dtype in FLOAT_DTYPES else (True if dtype == "bool" else 3)
    with LocalArray(scratch) as path:
        arr = zarr.create_array(str(path), shape=(20, 15), chunks=(6, 4), dtype=dtype, fill_value=fill,
                                compressors=[ZstdCodec(level=1)])
        arr[7:10, 5:7] = make_data(dtype, (3, 2), 11)
        stored = [p for p in (path / "c").rglob("*") if p.is_file()]
        assert 0 < len(stored) < 4 * 4, "the test needs chunks that were never written"
        handle = gpuzarr.open_array(str(path))
        read_and_compare(handle, arr, [(slice(None), slice(None))], "whole array")
        read_and_compare(handle, arr, [(slice(0, 6), slice(0, 4)), (slice(14, 20), slice(11, 15))], "unwritten only")
        read_and_compare(handle, arr, [(slice(5, 11), slice(4, 8)), (slice(0, 6), slice(11, 15))], "mixed")
        if dtype in FLOAT_DTYPES:
            assert np.isnan(handle.read_batch([(slice(0, 2), slice(0, 2))], device="cpu")).all()
        assert handle.fill_value == arr.fill_value or (np.isnan(handle.fill_value) and np.isnan(arr.fill_value))


def test_nothing_written_at_all(scratch: Path) -> None:
    with LocalArray(scratch) as path:
        arr = zarr.create_array(str(path), shape=(9, 9), chunks=(4, 4), dtype="float64", fill_value=np.nan)
        handle = gpuzarr.open_array(str(path))
        read_and_compare(handle, arr, [(slice(0, 9), slice(0, 9)), (slice(0, 9), slice(0, 9))], "empty array")


@examples(60)
@given(case=arrays_with_batches(max_dims=4))
def test_read_batch_from_start_extent_tables(scratch: Path, case: tuple[ArraySpec, Any]) -> None:
    """Regions handed over as tables (the samplers' form, no tuples) read the same as zarr-python."""
    spec, batch = case
    if not batch.regions:
        return
    with LocalArray(scratch) as path:
        zarr_array = create_zarr_array(spec, str(path))
        with gpuzarr.open_array(str(path)) as handle:
            bounds = bounds_from_tables(batch.starts, batch.stops[0] - batch.starts[0], batch.int_axes, spec.shape,
                                        handle.name)
            got = handle.read_batch(bounds, device="cpu")
            assert_same_batch(got, zarr_reference(zarr_array, batch.regions), context=f"{spec} tables {batch}")


@examples(15)
@given(data=st.data())
def test_huge_sparse_array_of_more_than_2_63_chunks(scratch: Path, data: st.DataObject) -> None:
    """A grid of up to 2**120 chunks, a few written near a far-out corner: reads equal zarr's, readahead included."""
    ndim = data.draw(st.integers(2, 3))
    chunks = tuple(data.draw(st.integers(1, 4)) for _ in range(ndim))
    shape = tuple(data.draw(st.sampled_from((2**40, 2**62 - 3))) for _ in range(ndim))
    corner = tuple(data.draw(st.integers(0, s - 30)) for s in shape)
    with LocalArray(scratch) as path:
        arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="int32", fill_value=-5,
                                compressors=[ZstdCodec(level=1)])
        box = tuple(slice(c + 2, c + 9) for c in corner)
        arr[box] = make_data("int32", (7,) * ndim, data.draw(st.integers(0, 99)))
        extent = tuple(data.draw(st.integers(1, 6)) for _ in range(ndim))
        regions = [tuple(slice(c + o, c + o + e) for c, o, e in
                         zip(corner, (data.draw(st.integers(0, 12 - e)) for e in extent), extent, strict=True))
                   for _ in range(data.draw(st.integers(1, 4)))]
        read_and_compare(gpuzarr.open_array(str(path)), arr, regions, f"huge {shape} {chunks} {regions}")
        cache = gpuzarr.PinnedLRUCache(1 << 20)
        with gpuzarr.open_array(str(path), cache=cache, readahead=2) as handle:
            for step in range(4):  # a constant-stride scan along the last axis: the detector fires
                moved = [(*r[:-1], slice(r[-1].start + step * chunks[-1], r[-1].stop + step * chunks[-1]))
                         for r in regions]
                read_and_compare(handle, arr, moved, f"huge readahead step {step}")


# --------------------------------------------------------------------------- regions
@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> tuple[zarr.Array, gpuzarr.ArrayHandle]:
    """An (11, 7, 5) int32 array in (4, 3, 2) chunks (no chunk shape divides the shape)."""
    path = tmp_path_factory.mktemp("cube") / "cube.zarr"
    arr = zarr.create_array(str(path), shape=(11, 7, 5), chunks=(4, 3, 2), dtype="int32", fill_value=-9,
                            compressors=[BloscCodec(cname="zstd", shuffle="shuffle")])
    arr[:] = np.arange(11 * 7 * 5, dtype=np.int32).reshape(11, 7, 5)
    return arr, gpuzarr.open_array(str(path))


def test_regions_touching_every_corner(cube: tuple[zarr.Array, gpuzarr.ArrayHandle]) -> None:
    arr, handle = cube
    size = (3, 3, 3)
    regions = []
    for corner in itertools.product((0, 1), repeat=3):
        starts = [0 if c == 0 else arr.shape[d] - size[d] for d, c in enumerate(corner)]
        regions.append(tuple(slice(s, s + size[d]) for d, s in enumerate(starts)))
    read_and_compare(handle, arr, regions, "corners")


@pytest.mark.parametrize(
    "regions",
    [
        pytest.param([(0,), (-1,), (5,)], id="int-first-axis"),
        pytest.param([(3, slice(None), 1), (-2, slice(None), -1)], id="ints-around-slice"),
        pytest.param([(slice(-4, None), slice(None, 2), slice(-5, -2))] * 2, id="negative-and-none"),
        pytest.param([(slice(None), 2, slice(None))], id="int-middle"),
        pytest.param([(-11, -7, -5), (10, 6, 4)], id="all-ints"),
        pytest.param([(..., slice(1, 3)), (..., slice(3, 5))], id="ellipsis-first"),
        pytest.param([(2, ...), (8, ...)], id="ellipsis-last"),
        pytest.param([slice(0, 3), slice(8, 11)], id="bare-slice"),
        pytest.param([4, -4], id="bare-int"),
        pytest.param([(np.int64(2), slice(np.int64(1), np.int64(4)))], id="numpy-ints"),
        pytest.param([(1, ..., 2, 3), (-1, ..., -2, -3)], id="ellipsis-of-no-axes"),
        pytest.param([(...,)], id="ellipsis-alone"),
        pytest.param([(slice(None), slice(None), slice(None))], id="whole-array"),
        pytest.param([()], id="empty-tuple"),
    ],
)
def test_region_spellings(cube: tuple[zarr.Array, gpuzarr.ArrayHandle], regions: list[Any]) -> None:
    arr, handle = cube
    read_and_compare(handle, arr, regions, f"regions={regions}")


@pytest.mark.parametrize(
    "regions",
    [
        pytest.param([(slice(3, 3), slice(None), slice(None))], id="empty-first-axis"),
        pytest.param([(slice(0, 2), slice(7, 7), 1), (slice(9, 11), slice(0, 0), 4)], id="empty-with-int"),
        pytest.param([(slice(11, None),), (slice(-3, -3),)], id="empty-at-end"),
    ],
)
def test_zero_extent_regions(cube: tuple[zarr.Array, gpuzarr.ArrayHandle], regions: list[Any]) -> None:
    arr, handle = cube
    read_and_compare(handle, arr, regions, f"regions={regions}")


def test_batch_of_one(cube: tuple[zarr.Array, gpuzarr.ArrayHandle]) -> None:
    arr, handle = cube
    got = handle.read_batch([(slice(2, 9), slice(1, 6), slice(0, 5))], device="cpu")
    assert got.shape == (1, 7, 5, 5)
    read_and_compare(handle, arr, [(slice(2, 9), slice(1, 6), slice(0, 5))], "batch of one")


def test_empty_batch(cube: tuple[zarr.Array, gpuzarr.ArrayHandle]) -> None:
    _, handle = cube
    got = handle.read_batch([], device="cpu")
    assert len(got) == 0


@pytest.fixture
def counting_fetches(cube: tuple[zarr.Array, gpuzarr.ArrayHandle]) -> Iterator[list[str]]:
    """Record every key the cube's fetcher reads, batched or into a buffer (instance-level wrappers)."""
    _, handle = cube
    fetcher = handle.reader.fetcher
    original_fetch, original_read_into = fetcher.fetch, fetcher.read_into
    seen: list[str] = []

    def fetch(keys: Any, ranges: Any = None) -> Any:
        seen.extend(keys)
        return original_fetch(keys, ranges)

    def read_into(key: str, buffer_for: Any) -> Any:
        seen.append(key)
        return original_read_into(key, buffer_for)

    fetcher.fetch, fetcher.read_into = fetch, read_into
    try:
        yield seen
    finally:
        del fetcher.fetch, fetcher.read_into


def test_regions_sharing_chunks_fetch_each_chunk_once(
    cube: tuple[zarr.Array, gpuzarr.ArrayHandle], counting_fetches: list[str]
) -> None:
    arr, handle = cube
    regions = [(slice(a, a + 5), slice(b, b + 4), slice(1, 4)) for a in (0, 1, 2, 3, 6) for b in (0, 1, 3)] * 2
    read_and_compare(handle, arr, regions, "overlapping crops")
    plan = handle.plan(regions)
    assert len(counting_fetches) == len(set(counting_fetches)) == plan.n_chunks
    touched = {tuple(c) for c in plan.chunk_coords.tolist()}
    expected = {
        (i, j, k)
        for (a, b) in itertools.product((0, 1, 2, 3, 6), (0, 1, 3))
        for i in range(a // 4, (a + 4) // 4 + 1)
        for j in range(b // 3, (b + 3) // 3 + 1)
        for k in range(2)
    }
    assert touched == expected


def test_concurrent_reads_of_one_handle(scratch: Path) -> None:
    """Several threads reading one (sharded) handle at once get zarr's values (the Loader reads off-thread)."""
    with LocalArray(scratch) as path:
        arr = zarr.create_array(str(path), shape=(40, 40), chunks=(4, 4), shards=(8, 12), dtype="uint16",
                                fill_value=0, compressors=[BloscCodec(cname="zstd", shuffle="bitshuffle")])
        arr[:] = make_data("uint16", (40, 40), 4)
        handle = gpuzarr.open_array(str(path))
        rng = np.random.default_rng(0)
        batches_to_read = [
            [(slice(int(a), int(a) + 9), slice(int(b), int(b) + 7)) for a, b in rng.integers(0, 31, size=(6, 2))]
            for _ in range(24)
        ]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda regions: handle.read_batch(regions, device="cpu"), batches_to_read))
        for regions, got in zip(batches_to_read, results, strict=True):
            assert_same_batch(got, zarr_reference(arr, regions), context=f"regions={regions}")


# --------------------------------------------------------------------------- handles
def test_open_group_member_matches_zarr(scratch: Path) -> None:
    with LocalArray(scratch) as path:
        root = zarr.open_group(str(path), mode="w")
        raw = root.create_array("raw", shape=(12, 10), chunks=(5, 3), dtype="uint16", fill_value=1)
        raw[:] = make_data("uint16", (12, 10), 5)
        sub = root.create_group("lr").create_array("2x", shape=(6, 5), chunks=(4, 4), dtype="float32", fill_value=0)
        sub[:4, :] = make_data("float32", (4, 5), 6)
        group = gpuzarr.open_group(str(path))
        read_and_compare(group["raw"], raw, [(slice(0, 7), slice(2, 10)), (slice(5, 12), slice(0, 8))], "raw")
        read_and_compare(group["lr/2x"], sub, [(slice(None), slice(None))], "lr/2x")
        read_and_compare(group["lr"]["2x"], sub, [(slice(2, 6), 1)], "lr then 2x")


def test_pickled_handle_reads_the_same(scratch: Path) -> None:
    with LocalArray(scratch) as path:
        arr = zarr.create_array(str(path), shape=(16, 16), chunks=(5, 7), dtype="int64", fill_value=0,
                                shards=(10, 14), compressors=[GzipCodec()])
        arr[:] = make_data("int64", (16, 16), 9)
        handle = pickle.loads(pickle.dumps(gpuzarr.open_array(str(path))))
        read_and_compare(handle, arr, [(slice(1, 12), slice(3, 16)), (slice(5, 16), slice(0, 13))], "unpickled")


def test_handle_metadata_matches_zarr(scratch: Path) -> None:
    with LocalArray(scratch) as path:
        arr = zarr.create_array(str(path), shape=(20, 9, 4), chunks=(3, 3, 2), shards=(6, 9, 4), dtype="float16",
                                fill_value=np.nan, serializer=BytesCodec(endian="big"))
        handle = gpuzarr.open_array(str(path))
        assert handle.shape == arr.shape
        assert handle.chunks == arr.chunks
        assert handle.shards == arr.shards
        assert handle.dtype == np.dtype("float16")
        assert np.isnan(handle.fill_value)
        assert handle.ndim == 3


# --------------------------------------------------------------------------- the loader
@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize(
    "sampler",
    [
        pytest.param(gpuzarr.RandomCrops((4, 3), seed=1, samples_per_epoch=11), id="random-crops-lead-axis"),
        pytest.param(gpuzarr.RandomCrops((5, 4, 3), seed=2, samples_per_epoch=7), id="random-crops-every-axis"),
        pytest.param(gpuzarr.GridPatches((3, 2), stride=(2, 2), shuffle=True, seed=3), id="grid-shuffled"),
        pytest.param(gpuzarr.GridPatches((None, 3)), id="grid-whole-axis"),
    ],
)
def test_loader_yields_zarr_values(
    cube: tuple[zarr.Array, gpuzarr.ArrayHandle], sampler: Any, prefetch: int
) -> None:
    arr, handle = cube
    loader = gpuzarr.Loader(handle, sampler, batch_size=4, epochs=2, device="cpu", prefetch_batches=prefetch,
                            rank=0, world_size=1)
    expected_batches = []
    for epoch in range(2):
        regions = sampler.regions(arr.shape, epoch, 0, 1)
        expected_batches += [regions[i : i + 4] for i in range(0, len(regions), 4)]
    got = list(loader)
    assert len(got) == len(expected_batches) == len(loader)
    for i, (batch, regions) in enumerate(zip(got, expected_batches, strict=True)):
        assert_same_batch(batch, zarr_reference(arr, regions), context=f"batch {i}")


@examples(40)
@given(case=array_specs(min_dims=2, max_dims=3, allow_sharding=True), data=st.data())
def test_loader_random_arrays(case: ArraySpec, data: st.DataObject) -> None:
    zarr_array = create_zarr_array(case, zarr.storage.MemoryStore())
    handle = gpuzarr.open_array(zarr_array)
    size = tuple(data.draw(st.integers(1, s)) for s in case.shape[1:])
    sampler = gpuzarr.RandomCrops(
        size, seed=data.draw(st.integers(0, 99)), samples_per_epoch=data.draw(st.integers(1, 9))
    )
    batch_size = data.draw(st.integers(1, 4))
    loader = gpuzarr.Loader(handle, sampler, batch_size=batch_size, device="cpu", prefetch_batches=1, rank=0,
                            world_size=1)
    regions = sampler.regions(case.shape, 0, 0, 1)
    expected = [zarr_reference(zarr_array, regions[i : i + batch_size]) for i in range(0, len(regions), batch_size)]
    got = list(loader)
    assert len(got) == len(expected)
    for batch, want in zip(got, expected, strict=True):
        assert_same_batch(batch, want)


def test_compressor_chain_strategy_draws_valid_pipelines() -> None:
    """Guard for the strategies themselves: zarr accepts every drawn bytes→bytes chain."""

    @examples(20)
    @given(chain=compressor_chains())
    def check(chain: tuple[Any, ...]) -> None:
        zarr.create_array(zarr.storage.MemoryStore(), shape=(4,), chunks=(2,), dtype="int16",
                          compressors=list(chain) or None)

    check()
