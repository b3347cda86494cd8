"""RegionTable: samplers' start tables reach the planner as tables, and still behave as lists of region tuples."""

from __future__ import annotations

import pickle

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuzarr.loading.samplers import GridPatches, RandomCrops
from gpuzarr.plan.planner import RegionTable, normalize_regions, plan_batch


@settings(max_examples=80, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), crop_axes=st.integers(1, 4),
       seed=st.integers(0, 99), grid=st.booleans())
def test_sampler_tables_plan_like_their_tuples(shape: list[int], crop_axes: int, seed: int, grid: bool) -> None:
    crop_axes = min(crop_axes, len(shape))
    size = tuple(max(1, s // 2) for s in shape[len(shape) - crop_axes:])
    sampler = GridPatches(size, shuffle=True, seed=seed) if grid else RandomCrops(size, seed=seed, samples_per_epoch=7)
    table = sampler.regions(tuple(shape))
    assert isinstance(table, RegionTable)
    tuples = [tuple(r) for r in table]
    assert table == tuples and list(table[1:3]) == tuples[1:3]
    a, b = normalize_regions(table, shape, "a"), normalize_regions(tuples, shape, "a")
    np.testing.assert_array_equal(a.starts, b.starts)
    np.testing.assert_array_equal(a.stops, b.stops)
    assert a.squeeze_axes == b.squeeze_axes
    chunks = tuple(max(1, s // 3) for s in shape)
    pa, pb = plan_batch(table, shape, chunks), plan_batch(tuples, shape, chunks)
    assert pa.out_shape == pb.out_shape
    np.testing.assert_array_equal(pa.chunk_coords, pb.chunk_coords)
    np.testing.assert_array_equal(pa.piece_src_start, pb.piece_src_start)
    again = pickle.loads(pickle.dumps(table))
    assert again == table and list(again) == tuples
    picked = table[np.array([len(table) - 1, 0])]
    assert list(picked) == [tuples[-1], tuples[0]]
