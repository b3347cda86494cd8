"""Region normalisation accepts what NumPy/zarr accept for basic indexing, and names the array otherwise.

The oracle is zarr-python: for hypothesis-generated regions (bools, floats, NumPy integer
types, ``...``, ``None``, negative and reversed bounds, steps, too many indices) gpuzarr
returns zarr's values, shape and dtype where zarr reads the region, and raises
:class:`RegionError` (a ``GpuzarrError`` and an ``IndexError``) naming the array and the
region where zarr raises. The only deliberate differences, each a ``RegionError`` too: a
slice reaching past the array (zarr clips it; a clipped crop could not be stacked with the
others), a step other than 1 (zarr reads strided slices; gpuzarr reads contiguous crops) and an
array as an index (zarr's fancy indexing on 1-D arrays).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import event, given, settings
from hypothesis import strategies as st

import gpuzarr
from gpuzarr.errors import GpuzarrError, RegionError
from gpuzarr.plan.planner import plan_batch

ARRAYS: dict[int, tuple[zarr.Array, gpuzarr.ArrayHandle]] = {}


def arrays(ndim: int) -> tuple[zarr.Array, gpuzarr.ArrayHandle]:
    if ndim not in ARRAYS:
        shape = (6, 5, 3)[:ndim]
        arr = zarr.create_array(zarr.storage.MemoryStore(), shape=shape, chunks=(2, 2, 2)[:ndim], dtype="int16")
        arr[:] = np.arange(int(np.prod(shape)), dtype="int16").reshape(shape) - 7
        ARRAYS[ndim] = (arr, gpuzarr.open_array(arr))
    return ARRAYS[ndim]


NUMPY_INTS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.intp)


@st.composite
def integers(draw: st.DrawFn, lo: int = -8, hi: int = 8) -> Any:
    value = draw(st.integers(lo, hi))
    kind = draw(st.sampled_from(NUMPY_INTS + (int,)))
    if kind is not int and value < 0 and np.dtype(kind).kind == "u":
        kind = int
    return kind(value)


bound = st.one_of(st.none(), integers(), st.booleans(), st.floats(-3, 8).map(float), st.just(np.float32(1.0)))
step = st.sampled_from([None, 1, np.int64(1), 2, -1, 0, 1.0])
item = st.one_of(
    integers(),
    st.builds(slice, bound, bound, step),
    st.booleans(),
    st.sampled_from([np.True_, np.False_, None, Ellipsis, 1.0, np.float64(2.0), np.array(1), np.array(True), "a"]),
)


@st.composite
def regions(draw: st.DrawFn) -> tuple[int, Any]:
    ndim = draw(st.integers(1, 3))
    items = tuple(draw(st.lists(item, min_size=0, max_size=ndim + 1)))
    if len(items) == 1 and draw(st.booleans()):
        return ndim, items[0]  # a bare item, as in h[3] or h[True]
    return ndim, items


def deliberate_difference(region: Any, shape: tuple[int, ...]) -> str | None:
    """What gpuzarr refuses on purpose though zarr reads it: a clipped slice, a step other than 1, an array index."""
    items = region if isinstance(region, tuple) else (region,)
    if any(isinstance(it, np.ndarray) for it in items):
        return "unsupported index|boolean"  # zarr's fancy (orthogonal) indexing: gpuzarr reads basic regions only
    if any(it is Ellipsis for it in items):
        at = next(i for i, it in enumerate(items) if it is Ellipsis)
        items = items[:at] + (slice(None),) * (len(shape) - len(items) + 1) + items[at + 1 :]
    for it, size in zip(items, shape, strict=False):
        if not isinstance(it, slice):
            continue
        if it.step is not None and operator.index(it.step) != 1:
            return "step"
        for b in (it.start, it.stop):
            if b is not None and not -size <= operator.index(b) <= size:
                return "out of bounds"
    return None


def assert_region_error(exc: BaseException, handle: gpuzarr.ArrayHandle) -> None:
    assert isinstance(exc, RegionError) and isinstance(exc, GpuzarrError) and isinstance(exc, IndexError), repr(exc)
    assert handle.name in str(exc), f"the array is not named: {exc}"
    assert "region" in str(exc), f"the region is not named: {exc}"


@settings(max_examples=400)
@given(regions())
def test_region_forms_match_zarr(case: tuple[int, Any]) -> None:
    ndim, region = case
    arr, handle = arrays(ndim)
    try:
        expected = arr[region]
    except Exception as zarr_error:  # noqa: BLE001 - zarr raises many kinds: the point is that it raises
        with pytest.raises(RegionError) as info:
            handle[region]
        assert_region_error(info.value, handle)
        assert not isinstance(zarr_error, GpuzarrError)
        event(f"zarr raises {type(zarr_error).__name__}")
        return
    difference = deliberate_difference(region, arr.shape)
    if difference is not None:
        with pytest.raises(RegionError, match=difference) as info:
            handle[region]
        assert_region_error(info.value, handle)
        event(f"deliberate difference: {difference}")
        return
    event("same values as zarr")
    got = handle[region]
    expected = np.asarray(expected)
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=60)
@given(st.lists(st.tuples(integers(-6, 5), integers(0, 3)), min_size=1, max_size=5))
def test_batches_of_numpy_integer_regions_match_zarr(rows: list[tuple[Any, Any]]) -> None:
    arr, handle = arrays(2)
    batch = [(r, slice(c, c + 2)) for r, c in rows]
    np.testing.assert_array_equal(handle.read_batch(batch, device="cpu"), np.stack([arr[b] for b in batch]))


@pytest.mark.parametrize("region", [True, False, (slice(None), False), (np.True_, 0), (0, ..., True)])
def test_bools_never_read_as_rows(region: Any) -> None:
    arr, handle = arrays(2)
    with pytest.raises(IndexError):
        arr[region]
    with pytest.raises(RegionError, match="boolean") as info:
        handle[region]
    assert_region_error(info.value, handle)


def test_float_bounds_name_array_and_region() -> None:
    _, handle = arrays(2)
    with pytest.raises(RegionError, match=r"\[1\.0:3\].*slice bound 1\.0") as info:
        handle[1.0:3]
    assert_region_error(info.value, handle)


@pytest.mark.parametrize("single", [(0, slice(None)), (slice(0, 2), slice(1, 3)), slice(0, 2), 3, ..., np.int64(1)])
def test_one_region_without_its_list(single: Any) -> None:
    _, handle = arrays(2)
    with pytest.raises(RegionError, match="pass a list of region tuples") as info:
        handle.read_batch(single, device="cpu")
    assert handle.name in str(info.value)


def test_empty_batch_is_a_documented_empty_result() -> None:
    """``read_batch([])`` reads nothing and returns shape (0,) of the array's dtype (no region gives a shape)."""
    _, handle = arrays(2)
    got = handle.read_batch([], device="cpu")
    assert got.shape == (0,) and got.dtype == handle.dtype
    assert plan_batch([], (6, 5), (2, 2)).n_regions == 0


def test_other_batch_containers() -> None:
    arr, handle = arrays(2)
    batch = [(0, slice(0, 2)), (np.int32(3), slice(1, 3))]
    expected = np.stack([arr[b] for b in batch])
    np.testing.assert_array_equal(handle.read_batch(tuple(batch), device="cpu"), expected)  # a tuple of regions
    np.testing.assert_array_equal(handle.read_batch(iter(batch), device="cpu"), expected)  # any iterable
    for bad in ("0:2", np.zeros((2, 2), dtype=np.int64), 1.5):
        with pytest.raises(RegionError, match="list of region tuples"):
            handle.read_batch(bad, device="cpu")
