"""The planner alone (no I/O): plans tile every region exactly once from the right chunks.

Hypothesis draws shapes, chunk shapes (dividing the shape or not, larger than the
shape or not) and batches of regions in every spelling, and checks the invariants
the engines rely on: the pieces of each region cover every output element exactly
once, every distinct chunk appears once in ``chunk_coords`` (sorted) and has at
least one piece, each piece lies inside its chunk (edge chunks included) and maps
to the same global coordinates on both sides, integer axes are squeezed, and a
brute-force NumPy assembly from a chunked copy of the data equals direct slicing.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import Batch, batches, scaled

from gpuzarr.errors import RegionError
from gpuzarr.plan.planner import BatchPlan, bounds_from_tables, chunk_byte_intervals, normalize_regions, plan_batch

PLANNING = settings(
    max_examples=scaled(400),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def planning_cases(draw: st.DrawFn, max_regions: int = 8) -> tuple[tuple[int, ...], tuple[int, ...], Batch]:
    """A shape (up to 4-D, larger than the oracle's since no data is stored), chunks and a batch."""
    ndim = draw(st.integers(1, 4))
    max_side = {1: 200, 2: 40, 3: 16, 4: 8}[ndim]
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, s + 3)) for s in shape)
    batch = draw(batches(shape, max_regions=max_regions))
    return shape, chunks, batch


def chunk_box(coords: np.ndarray, chunks: tuple[int, ...], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Global (lo, hi) of the chunk at ``coords``, clipped to the array (edge chunks are smaller)."""
    lo = coords * np.asarray(chunks)
    hi = np.minimum(lo + np.asarray(chunks), np.asarray(shape))
    return lo, hi


def brute_force_chunks(batch: Batch, chunks: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Every chunk that intersects a non-empty region, by enumeration."""
    touched: set[tuple[int, ...]] = set()
    for lo, hi in zip(batch.starts.tolist(), batch.stops.tolist(), strict=True):
        if any(high <= low for low, high in zip(lo, hi, strict=True)):
            continue
        ranges = [range(low // c, (high - 1) // c + 1) for low, high, c in zip(lo, hi, chunks, strict=True)]
        touched.update(itertools.product(*ranges))
    return touched


def assemble_from_chunks(plan: BatchPlan, data: np.ndarray) -> np.ndarray:
    """Build the batch the way an engine does, from a chunk-by-chunk copy of ``data``."""
    chunked = {}
    for coords in plan.chunk_coords:
        lo, hi = chunk_box(coords, plan.chunk_shape, plan.array_shape)
        chunked[tuple(coords.tolist())] = data[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].copy()
    sentinel = np.iinfo(data.dtype).min
    full = np.full((plan.n_regions, *plan.region_shape), sentinel, dtype=data.dtype)
    for p in range(plan.n_pieces):
        chunk = chunked[tuple(plan.chunk_coords[plan.piece_chunk[p]].tolist())]
        src = tuple(slice(s, s + e) for s, e in zip(plan.piece_src_start[p], plan.piece_extent[p], strict=True))
        dst = tuple(slice(d, d + e) for d, e in zip(plan.piece_dst_start[p], plan.piece_extent[p], strict=True))
        full[(plan.piece_region[p], *dst)] = chunk[src]
    return full.reshape(plan.out_shape)


@PLANNING
@given(case=planning_cases())
def test_pieces_tile_every_region_exactly_once(case: tuple[tuple[int, ...], tuple[int, ...], Batch]) -> None:
    shape, chunks, batch = case
    plan = plan_batch(list(batch.regions), shape, chunks, "tiling")
    assert plan.region_shape == batch.region_shape
    coverage = np.zeros((len(batch.regions), *batch.region_shape), dtype=np.int32)
    for p in range(plan.n_pieces):
        dst = tuple(slice(d, d + e) for d, e in zip(plan.piece_dst_start[p], plan.piece_extent[p], strict=True))
        coverage[(plan.piece_region[p], *dst)] += 1
    assert (coverage == 1).all(), f"covered {np.unique(coverage)} times"


@PLANNING
@given(case=planning_cases())
def test_chunk_coords_are_the_distinct_touched_chunks(case: tuple[tuple[int, ...], tuple[int, ...], Batch]) -> None:
    shape, chunks, batch = case
    plan = plan_batch(list(batch.regions), shape, chunks, "chunks")
    listed = [tuple(c) for c in plan.chunk_coords.tolist()]
    assert len(listed) == len(set(listed)), "a chunk is listed twice"
    assert listed == sorted(listed), "chunk_coords are not in lexicographic order"
    assert set(listed) == brute_force_chunks(batch, chunks)
    assert plan.chunk_coords.dtype == np.int64
    assert plan.chunk_coords.shape == (len(listed), len(shape))
    # pieces sorted by chunk; offsets delimit each chunk's pieces; every chunk is used
    assert (np.diff(plan.piece_chunk) >= 0).all()
    assert plan.chunk_piece_offsets[0] == 0 and plan.chunk_piece_offsets[-1] == plan.n_pieces
    counts = np.diff(plan.chunk_piece_offsets)
    assert (counts >= 1).all()
    np.testing.assert_array_equal(counts, np.bincount(plan.piece_chunk, minlength=plan.n_chunks))
    # one piece per (region, chunk) pair at most
    pairs = list(zip(plan.piece_region.tolist(), plan.piece_chunk.tolist(), strict=True))
    assert len(pairs) == len(set(pairs))


@PLANNING
@given(case=planning_cases())
def test_pieces_lie_inside_their_chunk_and_region(case: tuple[tuple[int, ...], tuple[int, ...], Batch]) -> None:
    shape, chunks, batch = case
    plan = plan_batch(list(batch.regions), shape, chunks, "inside")
    if plan.n_pieces == 0:
        return
    coords = plan.chunk_coords[plan.piece_chunk]
    lo, hi = chunk_box(coords, chunks, shape)
    extent = plan.piece_extent
    assert (extent >= 1).all(), "a piece is empty"
    assert (plan.piece_src_start >= 0).all()
    assert (plan.piece_src_start + extent <= hi - lo).all(), "a piece reaches past its (edge) chunk"
    region_shape = np.asarray(batch.region_shape)
    assert (plan.piece_dst_start >= 0).all()
    assert (plan.piece_dst_start + extent <= region_shape).all(), "a piece reaches past its region"
    # both sides name the same global element
    region_starts = batch.starts[plan.piece_region]
    np.testing.assert_array_equal(lo + plan.piece_src_start, region_starts + plan.piece_dst_start)


@PLANNING
@given(case=planning_cases())
def test_integer_axes_are_squeezed(case: tuple[tuple[int, ...], tuple[int, ...], Batch]) -> None:
    shape, chunks, batch = case
    plan = plan_batch(list(batch.regions), shape, chunks, "squeeze")
    assert plan.squeeze_axes == batch.int_axes
    reference = np.empty(shape, dtype=np.uint8)
    assert plan.out_shape == (len(batch.regions), *reference[batch.regions[0]].shape)
    assert plan.n_regions == len(batch.regions)


@PLANNING
@given(case=planning_cases())
def test_assembly_from_a_chunked_copy_equals_direct_slicing(
    case: tuple[tuple[int, ...], tuple[int, ...], Batch],
) -> None:
    shape, chunks, batch = case
    data = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    plan = plan_batch(list(batch.regions), shape, chunks, "assembly")
    expected = np.stack([data[region] for region in batch.regions])
    got = assemble_from_chunks(plan, data)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@settings(PLANNING, max_examples=scaled(200))
@given(case=planning_cases())
def test_normalize_regions_matches_python_slicing(case: tuple[tuple[int, ...], tuple[int, ...], Batch]) -> None:
    shape, _, batch = case
    bounds = normalize_regions(list(batch.regions), shape, "normalize")
    np.testing.assert_array_equal(bounds.starts, batch.starts)
    np.testing.assert_array_equal(bounds.stops, batch.stops)
    assert bounds.squeeze_axes == batch.int_axes


def test_plan_of_many_regions_uses_each_chunk_once() -> None:
    shape, chunks = (64, 64, 64), (16, 16, 16)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 64 - 20 + 1, size=(500, 3))
    regions = [tuple(slice(int(s), int(s) + 20) for s in row) for row in starts]
    plan = plan_batch(regions, shape, chunks, "many")
    assert plan.n_chunks <= 4**3
    assert plan.n_pieces == sum(
        int(np.prod([(s + 19) // 16 - s // 16 + 1 for s in row])) for row in starts.tolist()
    )
    assert plan.out_shape == (500, 20, 20, 20)


@pytest.mark.parametrize(
    ("regions", "out_shape", "n_chunks"),
    [
        pytest.param([], (0,), 0, id="no-regions"),
        pytest.param([(slice(3, 3), slice(None))], (1, 0, 10), 0, id="zero-extent"),
        pytest.param([(slice(0, 0), 2), (slice(5, 5), 9)], (2, 0), 0, id="zero-extent-with-int"),
        pytest.param([(4, 4)], (1,), 1, id="single-element"),
        pytest.param([(slice(None), slice(None))], (1, 10, 10), 9, id="whole-array"),
        pytest.param([(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(0, 4))], (2, 4, 4), 1, id="same-chunk-twice"),
    ],
)
def test_plan_edge_cases(regions: list[Any], out_shape: tuple[int, ...], n_chunks: int) -> None:
    plan = plan_batch(regions, (10, 10), (4, 4), "edges")
    assert plan.out_shape == out_shape
    assert plan.n_chunks == n_chunks
    assert len(plan.chunk_piece_offsets) == n_chunks + 1


def test_chunk_larger_than_array_is_one_chunk() -> None:
    plan = plan_batch([(slice(0, 5), slice(2, 7))] * 3, (5, 7), (8, 100), "big-chunk")
    assert plan.chunk_coords.tolist() == [[0, 0]]
    assert plan.n_pieces == 3
    np.testing.assert_array_equal(plan.piece_src_start, [[0, 2]] * 3)
    np.testing.assert_array_equal(plan.piece_extent, [[5, 5]] * 3)


@PLANNING
@given(case=planning_cases())
def test_table_entry_plans_like_region_tuples(case: tuple[tuple[int, ...], tuple[int, ...], Batch]) -> None:
    """Start/extent tables (what samplers hand over) plan exactly like the same regions as tuples."""
    shape, chunks, batch = case
    from_tuples = plan_batch(list(batch.regions), shape, chunks, "tuples")
    bounds = bounds_from_tables(batch.starts, np.asarray(batch.region_shape, dtype=np.int64).reshape(len(shape))
                                if len(batch.starts) else np.zeros(len(shape), np.int64), batch.int_axes, shape, "tables")
    from_tables = plan_batch(bounds, shape, chunks, "tables")
    for field in BatchPlan.__dataclass_fields__:
        a, b = getattr(from_tuples, field), getattr(from_tables, field)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=field)
        else:
            assert a == b, field


def test_table_entry_names_the_region_that_falls_off() -> None:
    with pytest.raises(RegionError, match=r"tbl: region 1 \(starts \(5, 8\), stops \(7, 11\)\) is out of bounds"):
        bounds_from_tables(np.array([[0, 0], [5, 8]]), (2, 3), (), (10, 10), "tbl")
    with pytest.raises(RegionError, match="extent 1"):
        bounds_from_tables(np.array([[0, 0]]), (2, 3), (0,), (10, 10), "tbl")


@PLANNING
@given(case=planning_cases(), scale=st.sampled_from([2**21, 2**40, 2**61]))
def test_grids_of_more_than_2_63_chunks_plan_like_small_ones(
    case: tuple[tuple[int, ...], tuple[int, ...], Batch], scale: int,
) -> None:
    """A huge, sparse array (more chunks than int64 can count) plans by sorting coordinate rows.

    The same batch placed far out in a grid of up to 2**244 chunks gives the same plan,
    shifted by the offset, as in the small array.
    """
    shape, chunks, batch = case
    if not batch.regions or len(batch.starts) == 0:
        return
    small = plan_batch(list(batch.regions), shape, chunks, "small")
    offset = np.asarray([c * (scale // c if c <= scale else 1) for c in chunks], dtype=np.int64)
    huge_shape = tuple(int(s + o) for s, o in zip(shape, offset, strict=True))
    ext = batch.stops[0] - batch.starts[0]
    bounds = bounds_from_tables(batch.starts + offset, ext, batch.int_axes, huge_shape, "huge")
    huge = plan_batch(bounds, huge_shape, chunks, "huge")
    np.testing.assert_array_equal(huge.chunk_coords, small.chunk_coords + offset // np.asarray(chunks))
    for field in ("chunk_piece_offsets", "piece_chunk", "piece_region", "piece_src_start", "piece_dst_start",
                  "piece_extent"):
        np.testing.assert_array_equal(getattr(huge, field), getattr(small, field), err_msg=field)


def test_chunk_byte_intervals_cover_every_piece_and_are_merged() -> None:
    """Per chunk, sorted disjoint byte intervals covering exactly the rows each piece reads (2-D included)."""
    rng = np.random.default_rng(3)
    for shape, chunks in (((50,), (16,)), ((30, 41), (8, 16)), ((9, 30, 41), (3, 8, 16)), ((4, 5, 12, 13), (2, 3, 5, 7))):
        starts = np.stack([rng.integers(0, s - s // 2 + 1, size=12) for s in shape], axis=1)
        plan = plan_batch(bounds_from_tables(starts, [s // 2 for s in shape], (), shape), shape, chunks)
        iv, off = chunk_byte_intervals(plan, chunks, 2)
        assert off[0] == 0 and off[-1] == len(iv) and (np.diff(off) >= 1).all()
        for u in range(plan.n_chunks):
            mine = iv[off[u]:off[u + 1]]
            assert (mine[:, 1] > mine[:, 0]).all() and (mine[1:, 0] > mine[:-1, 1]).all(), "not sorted and merged"
            covered = np.zeros(int(np.prod(chunks)) * 2, dtype=bool)
            for a, b in mine.tolist():
                covered[a:b] = True
            need = np.zeros(chunks, dtype=bool)
            for p in range(plan.chunk_piece_offsets[u], plan.chunk_piece_offsets[u + 1]):
                lo, ext = plan.piece_src_start[p], plan.piece_extent[p]
                need[tuple(slice(a, a + e) for a, e in zip(lo, ext, strict=True))] = True
            need_bytes = np.repeat(need.ravel(), 2)
            assert covered[need_bytes].all(), "a byte a piece reads is not covered"
            # widened to whole rows at most: nothing outside the rows of the pieces' boxes
            rows = need.reshape(-1, chunks[-1]).any(axis=1) if len(chunks) > 1 else need
            allowed = np.repeat(rows, 2 * (chunks[-1] if len(chunks) > 1 else 1))
            assert not (covered & ~allowed).any(), "an interval covers a row no piece reads"


@pytest.mark.parametrize("path", ["numpy", "compiled"])
@given(rows=st.lists(st.lists(st.integers(-2**63, 2**63 - 1), min_size=3, max_size=3), max_size=40),
       spread=st.sampled_from([5, 2**20, 2**40, None]))
def test_unique_rows_equals_numpy_unique_along_rows(path: str, rows: list[list[int]], spread: int | None) -> None:
    """The planner's row unique (used by the shard reader too) gives np.unique(axis=0)'s rows and inverse.

    On both paths: the compiled twin where its linear key fits (small spreads, many repeats),
    the NumPy steps where it would overflow (any int64 at all).
    """
    import gpuzarr
    from gpuzarr.plan.planner import twins_ready, unique_rows

    if path == "compiled" and not twins_ready(wait=True):
        pytest.skip("the compiled twins (Numba) are not available here")
    table = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    if spread is not None:
        table %= spread  # many repeats when small
    with gpuzarr.config.set({"cpu.compiled": "off" if path == "numpy" else "eager"}):
        uniq, inverse = unique_rows(table)
    want, want_inverse = np.unique(table, axis=0, return_inverse=True)
    assert uniq.dtype == inverse.dtype == np.int64
    np.testing.assert_array_equal(uniq, want.reshape(-1, 3))
    np.testing.assert_array_equal(inverse, want_inverse.reshape(-1))


PLAN_FIELDS = ("chunk_coords", "chunk_piece_offsets", "piece_chunk", "piece_region", "piece_src_start",
               "piece_dst_start", "piece_extent")


@pytest.fixture(scope="module")
def compiled_planner() -> None:
    """The compiled planner installed (built by the planner itself; skipped without Numba)."""
    from gpuzarr.plan import planner

    if not planner.twins_ready(wait=True):
        pytest.skip("the compiled twins (Numba) are not available here")
    assert planner._compiled_pieces is not None


_PLANS_ONLY = """
import sys
import gpuzarr
from gpuzarr.engines import compiled
from gpuzarr.plan import planner
regions = [(slice(i, i + 40), slice(2 * i, 2 * i + 50)) for i in range(%d)]
with gpuzarr.config.set({%s}):
    for _ in range(%d):
        plan = planner.plan_batch(regions, (500, 600), (32, 48))
    planner._twins.join()  # a background build started by planning: wait for it (starts none)
    print(planner._compiled_pieces is not None, compiled.built(), "numba" in sys.modules)
"""


@pytest.mark.parametrize(("settings_", "n_regions", "rounds", "want"), [
    ("'cpu.compiled': 'eager'", 1, 1, "True False True"),  # built before the first plan
    ("'cpu.compile_after_chunks': 64", 16, 4, "True False True"),  # 64 regions planned: built in the background
    ("'cpu.compile_after_chunks': 64", 16, 3, "False False False"),  # 48: nothing imported
    ("'cpu.compiled': 'off'", 100, 2, "False False False"),
])
def test_twins_build_on_their_own_without_the_cpu_lane(settings_: str, n_regions: int, rounds: int, want: str) -> None:
    """A process that only plans (as one reading through the GPU engine does) gets the compiled twins when due,
    without building the CPU engine's compiled lane; a script planning little never imports Numba."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("numba") is None:
        pytest.skip("Numba is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUZARR_CPU__")}
    code = _PLANS_ONLY % (n_regions, settings_, rounds)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == want, proc.stdout + proc.stderr


def _both_paths(regions: Any, shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[BatchPlan, BatchPlan]:
    import gpuzarr

    with gpuzarr.config.set({"cpu.compiled": "off"}):
        reference = plan_batch(regions, shape, chunks, "numpy")
    return reference, plan_batch(regions, shape, chunks, "compiled")


def _assert_same_plan(got: BatchPlan, want: BatchPlan) -> None:
    for field in PLAN_FIELDS:
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype == np.int64 and a.shape == b.shape, field
        np.testing.assert_array_equal(a, b, err_msg=field)
    assert (got.out_shape, got.region_shape, got.squeeze_axes, got.n_regions) == (
        want.out_shape, want.region_shape, want.squeeze_axes, want.n_regions)


@PLANNING
@given(case=planning_cases(max_regions=12), scale=st.sampled_from([0, 2**21, 2**40, 2**61]))
def test_compiled_planner_equals_the_numpy_planner(
    compiled_planner: None, case: tuple[tuple[int, ...], tuple[int, ...], Batch], scale: int,
) -> None:
    """Every array the compiled planner returns equals the NumPy planner's, field by field, dtype and shape.

    Including empty regions and batches, integer axes, edge chunks, chunks larger than the
    array, and grids far out (``scale``) whose sort key would overflow int64: those take
    the NumPy steps, the rest the compiled pass.
    """
    shape, chunks, batch = case
    if scale == 0:
        _assert_same_plan(*reversed(_both_paths(list(batch.regions), shape, chunks)))
        return
    if len(batch.starts) == 0:
        return
    offset = np.asarray([c * (scale // c if c <= scale else 1) for c in chunks], dtype=np.int64)
    huge_shape = tuple(int(s + o) for s, o in zip(shape, offset, strict=True))
    bounds = bounds_from_tables(batch.starts + offset, batch.stops[0] - batch.starts[0], batch.int_axes, huge_shape)
    _assert_same_plan(*reversed(_both_paths(bounds, huge_shape, chunks)))


def test_compiled_planner_takes_batches_whose_key_fits(compiled_planner: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled pass runs when prod(chunks per axis) * regions < 2**63, the NumPy steps otherwise."""
    from gpuzarr.plan import planner

    calls: list[int] = []
    real = planner._compiled_pieces

    def counting(*args: Any) -> Any:
        calls.append(len(args[0]))
        return real(*args)

    monkeypatch.setattr(planner, "_compiled_pieces", counting)
    plan_batch([(slice(0, 3), slice(2, 9))] * 2, (10, 20), (4, 4))
    assert calls == [2]
    side = 2**31  # 2**62 chunks of one element: times 2 regions is 2**63, one past what fits
    plan_batch([(slice(0, 1), slice(0, 1))] * 2, (side, side), (1, 1))
    assert calls == [2]
    plan_batch([(slice(0, 1), slice(0, 1))], (side, side), (1, 1))
    assert calls == [2, 1]
    import gpuzarr

    with gpuzarr.config.set({"cpu.compiled": "off"}):
        plan_batch([(slice(0, 3), slice(2, 9))], (10, 20), (4, 4))
    assert calls == [2, 1]


def test_both_planners_plan_a_zero_dimensional_array(compiled_planner: None) -> None:
    """Shape ``()``: every region is the one element, one chunk with no coordinates (``open_array`` refuses 0-d
    arrays, but the planner is public and both of its paths agree)."""
    for regions in ([()], [(), (Ellipsis,)]):
        reference, got = _both_paths(regions, (), ())
        _assert_same_plan(got, reference)
        assert got.chunk_coords.shape == (1, 0) and got.piece_region.tolist() == list(range(len(regions)))
