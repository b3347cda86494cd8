"""The planner: regions of an array → the chunks a batch needs and where each piece goes.

Device-free and vectorised: every step after parsing the regions runs as whole-array
NumPy operations over all (region, chunk) pairs of the batch, so planning a batch of
hundreds of crops costs the same handful of NumPy calls as planning one (or one compiled
call, below).

The plan is the contract between the planner and both engines:

* ``chunk_coords`` — the distinct chunks of the batch (each fetched and decoded once,
  however many regions share it), in lexicographic order;
* one *piece* per (region, chunk) intersection: which chunk (``piece_chunk``), which
  output slot (``piece_region``), where it starts inside the decoded chunk
  (``piece_src_start``), where it lands inside the region (``piece_dst_start``) and its
  extent (``piece_extent``). Pieces are sorted by chunk, so the pieces of chunk ``u``
  are ``chunk_piece_offsets[u]:chunk_piece_offsets[u+1]``.

Integer indices select a single element along an axis and drop that axis from the
output, exactly as NumPy and zarr do; they are planned as length-1 slices and listed
in ``squeeze_axes``.

With Numba installed, :func:`plan_batch` and :func:`unique_rows` run their compiled
twins (:mod:`gpuzarr.plan._compiled_plan`) where the twins' int64 sort keys fit; the
NumPy steps here are the reference they are tested against, and the path otherwise.
The twins are built by the planner itself, under the same ``cpu.compiled`` and
``cpu.compile_after_chunks`` settings as the CPU engine's compiled lane but
independently of it, so a process that plans for the GPU engine (and never builds the
CPU lane) plans with them too.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuzarr.errors import RegionError
from gpuzarr.settings import config
from gpuzarr.threads import BackgroundBuild


class RegionTable(Sequence[tuple[Any, ...]]):
    """Equal-shape regions held as a start table: what samplers produce, read by the planner as it is.

    ``starts`` is (n, ndim) integer starts, ``extent`` the one region shape (ndim,),
    ``squeeze_axes`` the axes indexed by an integer (extent 1, dropped from the batch),
    ``whole_axes`` axes shown as ``slice(None)`` in the tuples (their start is 0 and
    extent the axis length). It is a sequence of region tuples for any code that wants them (``table[i]``,
    iteration, ``==`` with a list of tuples), but :func:`normalize_regions` takes the
    table straight to :func:`bounds_from_tables`: no tuple is built and parsed back.
    Slicing it, or indexing it with an integer array, gives another table.
    """

    __slots__ = ("extent", "squeeze_axes", "starts", "whole_axes")

    def __init__(self, starts: np.ndarray, extent: Sequence[int], squeeze_axes: Sequence[int] = (),
                 whole_axes: Sequence[int] = ()) -> None:
        self.starts = np.asarray(starts, dtype=np.int64).reshape(len(starts), -1) if len(starts) else \
            np.zeros((0, len(extent)), dtype=np.int64)
        self.extent = tuple(int(e) for e in extent)
        self.squeeze_axes = tuple(int(a) for a in squeeze_axes)
        self.whole_axes = tuple(int(a) for a in whole_axes)

    def __len__(self) -> int:
        return len(self.starts)

    def _region(self, row: list[int]) -> tuple[Any, ...]:
        squeeze, whole = self.squeeze_axes, self.whole_axes
        return tuple(s if d in squeeze else slice(None) if d in whole else slice(s, s + e)
                     for d, (s, e) in enumerate(zip(row, self.extent, strict=True)))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (slice, np.ndarray, list)):
            return RegionTable(self.starts[index], self.extent, self.squeeze_axes, self.whole_axes)
        return self._region(self.starts[index].tolist())

    def __iter__(self) -> Any:
        return map(self._region, self.starts.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RegionTable):
            return (self.extent, self.squeeze_axes, self.whole_axes) == (
                other.extent, other.squeeze_axes, other.whole_axes) and np.array_equal(self.starts, other.starts)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RegionTable({len(self)} regions of extent {self.extent}, squeezed axes {self.squeeze_axes})"

    def __getstate__(self) -> tuple[Any, ...]:
        return self.starts, self.extent, self.squeeze_axes, self.whole_axes

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.starts, self.extent, self.squeeze_axes, self.whole_axes = state


@dataclass(frozen=True, slots=True)
class RegionBounds:
    """Regions as arrays: ``starts``/``stops`` of shape (R, ndim) plus the integer-indexed axes."""

    starts: np.ndarray
    stops: np.ndarray
    squeeze_axes: tuple[int, ...]

    @property
    def region_shape(self) -> tuple[int, ...]:
        """Shape of every region before integer axes are dropped."""
        if len(self.starts) == 0:
            return ()
        return tuple(int(x) for x in self.stops[0] - self.starts[0])


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Which chunks a batch needs and which piece of each goes where (see module docstring)."""

    array_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    region_shape: tuple[int, ...]
    squeeze_axes: tuple[int, ...]
    n_regions: int
    chunk_coords: np.ndarray  # (U, ndim) int64
    chunk_piece_offsets: np.ndarray  # (U + 1,) int64
    piece_chunk: np.ndarray  # (P,) int64
    piece_region: np.ndarray  # (P,) int64
    piece_src_start: np.ndarray  # (P, ndim) int64
    piece_dst_start: np.ndarray  # (P, ndim) int64
    piece_extent: np.ndarray  # (P, ndim) int64

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of the stacked batch: (n_regions, *region shape without integer axes)."""
        kept = tuple(n for i, n in enumerate(self.region_shape) if i not in self.squeeze_axes)
        return (self.n_regions, *kept)

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_coords)

    @property
    def n_pieces(self) -> int:
        return len(self.piece_chunk)


def _describe(region: object) -> str:
    if isinstance(region, tuple):
        parts = []
        for item in region:
            if isinstance(item, slice):
                a = "" if item.start is None else item.start
                b = "" if item.stop is None else item.stop
                parts.append(f"{a}:{b}" + ("" if item.step in (None, 1) else f":{item.step}"))
            elif item is Ellipsis:
                parts.append("...")
            else:
                parts.append(repr(item))
        return "[" + ", ".join(parts) + "]"
    if isinstance(region, slice):
        return _describe((region,))
    return repr(region)


def _is_bool(item: object) -> bool:
    return isinstance(item, (bool, np.bool_)) or (isinstance(item, np.ndarray) and item.dtype == bool)


def _as_region_list(regions: object, array_name: str) -> Sequence[object]:
    """The batch as a sequence of regions; a single region passed without its list is an error saying so.

    A batch is a list (or tuple) of regions, each region a tuple with one item per axis.
    ``read_batch((0, slice(None)))`` would otherwise be read as two regions, ``0`` and
    ``:``, and fail with a confusing message about shapes.
    """
    single = isinstance(regions, (slice, int, np.integer, np.bool_)) or regions is Ellipsis or (
        isinstance(regions, tuple) and any(not isinstance(r, tuple) for r in regions))
    if single:
        raise RegionError(
            f"{array_name}: got {_describe(regions)}, which is one region, not a batch; pass a list of region "
            f"tuples, e.g. read_batch([{regions!r}]) (or handle[region] for one region)"
        )
    if isinstance(regions, Sequence) and not isinstance(regions, (str, bytes)):
        return regions
    if isinstance(regions, (str, bytes, np.ndarray)) or not hasattr(regions, "__iter__"):
        raise RegionError(
            f"{array_name}: a batch is a list of region tuples, got {type(regions).__name__} {regions!r:.80}; "
            "pass e.g. [(slice(0, 64), slice(0, 64))]"
        )
    return list(regions)  # type: ignore[call-overload]


def _expand_region(region: object, ndim: int, array_name: str) -> tuple[Any, ...]:
    """Turn a user region into exactly ``ndim`` items (slices or ints); expands ``...``."""
    items = region if isinstance(region, tuple) else (region,)
    n_ellipsis = sum(1 for it in items if it is Ellipsis)
    if n_ellipsis > 1:
        raise RegionError(f"{array_name}: region {_describe(region)} has more than one '...'")
    if n_ellipsis == 1:
        at = next(i for i, it in enumerate(items) if it is Ellipsis)
        fill = ndim - (len(items) - 1)
        items = items[:at] + (slice(None),) * max(fill, 0) + items[at + 1 :]
    if len(items) > ndim:
        raise RegionError(
            f"{array_name}: region {_describe(region)} has {len(items)} indices "
            f"but the array has {ndim} dimensions"
        )
    return tuple(items) + (slice(None),) * (ndim - len(items))


def _slice_bound(value: object, region: object, d: int, array_name: str) -> int | None:
    """A slice bound as an int, as NumPy takes it (``None``, ints, NumPy ints, ``bool``); RegionError otherwise."""
    if value is None:
        return None
    try:
        return operator.index(value)
    except TypeError:
        raise RegionError(
            f"{array_name}: region {_describe(region)} has a slice bound {value!r} ({type(value).__name__}) on "
            f"axis {d}; slice bounds must be integers or None"
        ) from None


def normalize_regions(regions: Sequence[object], shape: Sequence[int], array_name: str) -> RegionBounds:
    """Check every region against ``shape`` and return them as start/stop arrays.

    Accepts exactly NumPy's basic indexing without new axes, per axis: a ``slice`` with
    step 1 (bounds ``None``, Python or NumPy integers, negative from the end; a reversed
    slice is empty), an integer (Python or NumPy; negative counts from the end), and one
    ``...``. Fewer items than axes mean ``:`` for the rest. Unlike NumPy, a slice that
    reaches past the array is an error, not silently clipped: a crop that falls off the
    array is almost always a bug in the sampler, and a silently smaller crop could not be
    stacked with the others. Rejected like zarr-python does: a ``bool`` (NumPy reads
    ``a[True]`` as a new axis and a mask, never as row 1), floats, ``None``, lists and
    arrays, steps other than 1, more indices than axes.

    Raises :class:`RegionError` naming the array, the region and the bounds.
    """
    if isinstance(regions, RegionTable):
        return bounds_from_tables(regions.starts, regions.extent, regions.squeeze_axes, shape, array_name)
    regions = _as_region_list(regions, array_name)
    shape = tuple(int(s) for s in shape)
    fast = _plain_bounds(regions, shape)
    return fast if fast is not None else _careful_bounds(regions, shape, array_name)


def _careful_bounds(regions: Sequence[object], shape: tuple[int, ...], array_name: str) -> RegionBounds:
    """:func:`normalize_regions` item by item: every accepted form, every refusal named."""
    ndim = len(shape)
    n = len(regions)
    starts = np.zeros((n, ndim), dtype=np.int64)
    stops = np.zeros((n, ndim), dtype=np.int64)
    int_axes: tuple[int, ...] | None = None
    for r, region in enumerate(regions):
        items = _expand_region(region, ndim, array_name)
        axes = []
        for d, (item, size) in enumerate(zip(items, shape, strict=True)):
            if isinstance(item, slice):
                step = _slice_bound(item.step, region, d, array_name)
                if step not in (None, 1):
                    raise RegionError(
                        f"{array_name}: region {_describe(region)} has step {item.step} on axis {d}; "
                        "only contiguous regions (step 1) are supported"
                    )
                lo = _slice_bound(item.start, region, d, array_name)
                hi = _slice_bound(item.stop, region, d, array_name)
                lo = 0 if lo is None else lo
                hi = size if hi is None else hi
                lo_n = lo + size if lo < 0 else lo
                hi_n = hi + size if hi < 0 else hi
                if not (0 <= lo_n <= size and 0 <= hi_n <= size):
                    raise RegionError(
                        f"{array_name}: region {_describe(region)} is out of bounds on axis {d}: "
                        f"{lo}:{hi} for an axis of length {size} (array shape {shape})"
                    )
                starts[r, d] = lo_n
                stops[r, d] = max(hi_n, lo_n)
            else:
                if _is_bool(item):
                    raise RegionError(
                        f"{array_name}: region {_describe(region)} has the boolean {item!r} on axis {d}; a bool is "
                        "not a row number (NumPy reads it as a mask, zarr refuses it); use an integer or a slice"
                    )
                try:
                    if isinstance(item, np.ndarray):  # zarr refuses 0-d arrays too: only scalars index one element
                        raise TypeError
                    idx = operator.index(item)
                except TypeError:
                    raise RegionError(
                        f"{array_name}: region {_describe(region)} has an unsupported index "
                        f"{item!r} ({type(item).__name__}) on axis {d}; use slices with step 1 or integers"
                    ) from None
                idx_n = idx + size if idx < 0 else idx
                if not 0 <= idx_n < size:
                    raise RegionError(
                        f"{array_name}: region {_describe(region)} is out of bounds on axis {d}: "
                        f"index {idx} for an axis of length {size} (array shape {shape})"
                    )
                starts[r, d] = idx_n
                stops[r, d] = idx_n + 1
                axes.append(d)
        if int_axes is None:
            int_axes = tuple(axes)
        elif tuple(axes) != int_axes:
            raise RegionError(
                f"{array_name}: region {r} {_describe(region)} indexes axes {tuple(axes)} with integers "
                f"but region 0 indexes {int_axes}; all regions of a batch must have one shape"
            )
    _check_one_shape(starts, stops, regions, array_name)
    return RegionBounds(starts=starts, stops=stops, squeeze_axes=int_axes or ())


def _check_one_shape(starts: np.ndarray, stops: np.ndarray, regions: Sequence[object], array_name: str) -> None:
    if len(starts):
        extents = stops - starts
        bad = np.flatnonzero((extents != extents[0]).any(axis=1))
        if bad.size:
            r = int(bad[0])
            raise RegionError(
                f"{array_name}: region {r} {_describe(regions[r])} has shape {tuple(extents[r].tolist())} "
                f"but region 0 {_describe(regions[0])} has shape {tuple(extents[0].tolist())}; "
                "all regions of a batch must have one shape"
            )


def _plain_bounds(regions: Sequence[object], shape: tuple[int, ...]) -> RegionBounds | None:
    """:func:`normalize_regions` for the common batch, or None to take the careful path.

    The common batch: every region a tuple of one item per axis, each a Python ``int``
    or a ``slice`` of ints/None with no step, the same kind on each axis in every
    region, all in bounds. The regions are read column by column (one axis of every
    region at a time) by C-level ``zip``/``map``/``set``, with no Python statement per
    region; NumPy checks the numbers. Anything else (NumPy ints, ``...``, steps, bad
    bounds, mixed kinds) returns None and the careful path accepts it or names the problem.
    """
    ndim = len(shape)
    if not regions or type(regions[0]) is not tuple or len(regions[0]) != ndim:
        return None
    kinds = tuple(map(type, regions[0]))
    if any(k is not int and k is not slice for k in kinds):
        return None
    if set(map(type, regions)) != {tuple} or set(map(len, regions)) != {ndim}:
        return None
    n = len(regions)
    lows: list[Any] = []
    highs: list[Any] = []
    for kind, column, size in zip(kinds, zip(*regions), shape, strict=True):  # an empty shape: no columns
        if set(map(type, column)) != {kind}:
            return None
        if kind is int:
            lows.append(column)
            highs.append(column)  # replaced by start + 1 once negative indices are resolved
            continue
        if set(map(_slice_step, column)) != {None}:
            return None
        start = list(map(_slice_start, column))
        stop = list(map(_slice_stop, column))
        for bounds, default in ((start, 0), (stop, size)):
            types = set(map(type, bounds))
            if not types <= _INT_OR_NONE:
                return None
            if _NONE_TYPE in types:
                bounds[:] = [default if b is None else b for b in bounds]
        lows.append(start)
        highs.append(stop)
    size = np.asarray(shape, dtype=np.int64)
    try:
        lo = np.array(lows, dtype=np.int64).reshape(ndim, n).T
        hi = np.array(highs, dtype=np.int64).reshape(ndim, n).T
    except OverflowError:  # a bound beyond int64: the careful path names it
        return None
    is_int = np.asarray([k is int for k in kinds])
    lo = np.where(lo < 0, lo + size, lo)
    hi = np.where(hi < 0, hi + size, hi)
    ok = np.where(is_int, (lo >= 0) & (lo < size), (lo >= 0) & (lo <= size) & (hi >= 0) & (hi <= size))
    if not ok.all():
        return None
    hi = np.where(is_int, lo + 1, np.maximum(hi, lo))
    extents = hi - lo
    if (extents != extents[0]).any():
        return None
    return RegionBounds(starts=np.ascontiguousarray(lo), stops=hi, squeeze_axes=tuple(np.flatnonzero(is_int).tolist()))


_slice_start = operator.attrgetter("start")
_slice_stop = operator.attrgetter("stop")
_slice_step = operator.attrgetter("step")
_NONE_TYPE = type(None)
_INT_OR_NONE = frozenset((int, _NONE_TYPE))


def bounds_from_tables(
    starts: np.ndarray, extent: Sequence[int] | np.ndarray, squeeze_axes: Sequence[int], shape: Sequence[int],
    array_name: str = "<array>",
) -> RegionBounds:
    """Regions given as tables — what samplers produce — checked against ``shape``, without parsing tuples.

    ``starts`` is (n, ndim) integer starts, ``extent`` the one region shape (ndim,)
    shared by every region, ``squeeze_axes`` the axes indexed by an integer (extent 1,
    dropped from the output). The fast twin of :func:`normalize_regions` for regions that
    already are arrays; raises :class:`RegionError` naming the array and the first
    region that falls off the array.
    """
    shape_a = np.asarray(tuple(int(s) for s in shape), dtype=np.int64)
    ndim = len(shape_a)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1, ndim)
    ext = np.asarray(extent, dtype=np.int64).reshape(ndim)
    squeeze = tuple(sorted(int(a) for a in squeeze_axes))
    if any(not 0 <= a < ndim for a in squeeze) or any(ext[a] != 1 for a in squeeze):
        raise RegionError(f"{array_name}: integer-indexed axes {squeeze} must be axes of extent 1 "
                          f"(region shape {tuple(ext.tolist())})")
    if (ext < 0).any():
        raise RegionError(f"{array_name}: negative region shape {tuple(ext.tolist())}")
    stops = starts + ext
    bad = np.flatnonzero(((starts < 0) | (stops > shape_a)).any(axis=1))
    if bad.size:
        r = int(bad[0])
        lo, hi = starts[r].tolist(), stops[r].tolist()
        raise RegionError(f"{array_name}: region {r} (starts {tuple(lo)}, stops {tuple(hi)}) is out of bounds "
                          f"for array shape {tuple(shape_a.tolist())}")
    return RegionBounds(starts=starts, stops=stops, squeeze_axes=squeeze)


def plan_batch(
    regions: Sequence[object] | RegionBounds,
    shape: Sequence[int],
    chunk_shape: Sequence[int],
    array_name: str = "<array>",
) -> BatchPlan:
    """Plan a batch: the distinct chunks it touches and every (region, chunk) piece."""
    shape = tuple(int(s) for s in shape)
    cs_t = tuple(int(c) for c in chunk_shape)
    bounds = regions if isinstance(regions, RegionBounds) else normalize_regions(regions, shape, array_name)
    ndim = len(shape)
    starts, stops = bounds.starts, bounds.stops
    n_regions = len(starts)
    cs = np.asarray(cs_t, dtype=np.int64).reshape(ndim)
    shp = np.asarray(shape, dtype=np.int64).reshape(ndim)

    per_axis = [-(-size // max(c, 1)) for size, c in zip(shape, cs_t, strict=True)]  # chunks along each axis
    compiled = _compiled_pieces if _twins_installed(n_regions) else None  # the same pieces in one compiled pass
    if compiled is not None and math.prod(per_axis) * n_regions < 2**63:
        coords_u, offsets, piece_chunk, piece_region, src_start, dst_start, extent = compiled(
            np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(stops, dtype=np.int64), cs, shp,
            np.asarray(per_axis, dtype=np.int64))
        return BatchPlan(shape, cs_t, bounds.region_shape, bounds.squeeze_axes, n_regions, coords_u, offsets,
                         piece_chunk, piece_region, src_start, dst_start, extent)

    nonempty = (stops > starts).all(axis=1) if ndim else np.ones(n_regions, dtype=bool)
    c_lo = starts // np.maximum(cs, 1)
    c_hi = (stops - 1) // np.maximum(cs, 1)
    n_per_axis = np.where(nonempty[:, None], c_hi - c_lo + 1, 0)  # (R, ndim)
    if n_regions == 0 or not nonempty.any():
        empty2 = np.zeros((0, ndim), dtype=np.int64)
        empty1 = np.zeros(0, dtype=np.int64)
        return BatchPlan(shape, cs_t, bounds.region_shape, bounds.squeeze_axes, n_regions,
                         empty2, np.zeros(1, dtype=np.int64), empty1, empty1, empty2, empty2, empty2)

    max_n = n_per_axis.max(axis=0)
    grid = np.indices(tuple(int(m) for m in max_n), dtype=np.int64).reshape(ndim, math.prod(max_n.tolist())).T  # (G, ndim)
    valid = (grid[None, :, :] < n_per_axis[:, None, :]).all(axis=2)  # (R, G)
    r_idx, g_idx = np.nonzero(valid)
    coords = c_lo[r_idx] + grid[g_idx]  # (P, ndim)

    chunk_lo = coords * cs
    lo = np.maximum(starts[r_idx], chunk_lo)
    hi = np.minimum(stops[r_idx], np.minimum(chunk_lo + cs, shp))
    src_start = lo - chunk_lo
    dst_start = lo - starts[r_idx]
    extent = hi - lo

    # pieces sorted by chunk coordinates (lexicographic), then region, in one sort; the distinct
    # chunks are where the sorted coordinates change. Rows are never linearised, so a grid of
    # more than 2**63 chunks (a huge, mostly unwritten volume) plans like any other
    order, ordered, new = sorted_rows(coords, then=r_idx)
    chunk_coords = np.ascontiguousarray(ordered[new], dtype=np.int64)
    piece_chunk = np.cumsum(new) - 1
    offsets = np.zeros(len(chunk_coords) + 1, dtype=np.int64)
    offsets[:-1] = np.flatnonzero(new)
    offsets[-1] = len(order)
    return BatchPlan(
        array_shape=shape,
        chunk_shape=cs_t,
        region_shape=bounds.region_shape,
        squeeze_axes=bounds.squeeze_axes,
        n_regions=n_regions,
        chunk_coords=chunk_coords,
        chunk_piece_offsets=offsets,
        piece_chunk=piece_chunk,
        piece_region=r_idx[order].astype(np.int64),
        piece_src_start=src_start[order],
        piece_dst_start=dst_start[order],
        piece_extent=extent[order],
    )


#: the compiled twins (:mod:`gpuzarr.plan._compiled_plan`) of plan_batch's pieces and of unique_rows, once installed
_compiled_pieces: Any = None
_compiled_unique_rows: Any = None
#: ``cpu.compiled`` values that keep every compiled path off
_OFF = ("off", False)


def install_compiled(twins: Any) -> None:
    """Let :func:`plan_batch` and :func:`unique_rows` run the compiled twins of module ``twins``.

    ``twins`` is :mod:`gpuzarr.plan._compiled_plan`, installed by the planner's own build
    (:func:`twins_ready`) once it has compiled it; ``None`` goes back to NumPy for the rest
    of the process. The NumPy steps stay the reference, and the path whenever the
    ``cpu.compiled`` setting is ``"off"`` or a sort key could overflow int64.
    """
    global _compiled_pieces, _compiled_unique_rows
    _compiled_pieces = None if twins is None else twins.plan_pieces
    _compiled_unique_rows = None if twins is None else twins.unique_rows


def _build_twins() -> Any:
    """Compile (or load from Numba's cache) the twins and install them; returns their module."""
    from gpuzarr.plan import _compiled_plan

    _compiled_plan.warm_up()
    install_compiled(_compiled_plan)
    return _compiled_plan


_twins: BackgroundBuild[Any] = BackgroundBuild(_build_twins, what="the planner's compiled twins",
                                               instead="planning with NumPy")


def twins_ready(wait: bool = False) -> bool:
    """Whether the compiled twins plan in this process (``wait``: build them now, or wait for the background build).

    Always ``False`` while ``cpu.compiled`` is ``"off"`` or where Numba is not installed.
    """
    return _twins_installed(0, now=wait)


def _twins_installed(items: int, *, now: bool | None = None) -> bool:
    """Whether a plan of ``items`` regions (or rows) runs the compiled twins; builds them when due.

    ``cpu.compiled`` ``"eager"`` builds them before the first plan and waits; ``"background"``
    starts their build in a thread once ``cpu.compile_after_chunks`` regions and rows in all
    have been planned in this process (a script planning a few reads never imports Numba),
    and plans with NumPy until it is done; ``"off"`` never. ``now`` (:func:`twins_ready`)
    starts the build whatever the count, and ``True`` waits for it.
    """
    mode = config.get("cpu.compiled")
    if mode in _OFF:
        return False
    if _compiled_pieces is None:
        if now is not None:
            _twins.get(now)
        else:
            _twins.when_due(items, eager=mode in ("eager", True), after=config.get("cpu.compile_after_chunks"))
    return _compiled_pieces is not None


def sorted_rows(rows: np.ndarray, then: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The order that sorts an (n, k) table's rows lexicographically (ties by ``then``, then stably),
    the rows in that order, and a mask of where a row differs from the one before it.

    One stable sort of the rows, never turned into one linear index that could overflow int64.
    """
    if then is not None:
        order = np.lexsort((then, *rows.T[::-1]))
    elif rows.shape[1]:
        order = np.lexsort(rows.T[::-1])  # the key table as one array: cheaper than a tuple of columns
    else:
        order = np.arange(len(rows))
    ordered = rows[order]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    return order, ordered, new


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of an (n, k) int64 table in lexicographic order, and each row's index among them.

    Like ``np.unique(rows, axis=0, return_inverse=True)``, through :func:`sorted_rows`.
    """
    compiled = _compiled_unique_rows if _twins_installed(len(rows)) else None
    if compiled is not None:
        distinct, inverse, fits = compiled(np.ascontiguousarray(rows, dtype=np.int64))
        if fits:
            return distinct, inverse
    order, ordered, new = sorted_rows(rows)
    inverse = np.empty(len(rows), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return np.ascontiguousarray(ordered[new], dtype=np.int64), inverse


def piece_intervals(
    chunk_shape: Sequence[int], itemsize: int, src_start: np.ndarray, extent: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Byte intervals of a C-order chunk covering each piece, for all pieces at once.

    Returns ``(intervals, piece)``: ``intervals`` (m, 2) int64 ``[start, stop)`` byte
    offsets, ``piece`` (m,) the row of ``src_start``/``extent`` each belongs to. Each
    piece is widened to whole rows of the last axis: one interval per index of the
    axes before the last two (one per piece for 1-D and 2-D chunks), exact enough for
    choosing which compressed blocks to decode, since blocks are far larger than a row.
    Pieces of zero extent have none.
    """
    shape = np.asarray(chunk_shape, dtype=np.int64)
    ndim = len(shape)
    src_start = np.asarray(src_start, dtype=np.int64).reshape(-1, ndim)
    extent = np.asarray(extent, dtype=np.int64).reshape(-1, ndim)
    n_pieces = len(src_start)
    if ndim == 0:
        return np.zeros((n_pieces, 2), dtype=np.int64) + [0, itemsize], np.arange(n_pieces, dtype=np.int64)
    strides = np.ones(ndim, dtype=np.int64)
    strides[:-1] = np.cumprod(shape[::-1])[::-1][1:]
    strides *= itemsize
    nonempty = (extent > 0).all(axis=1)
    if ndim == 1:
        piece = np.flatnonzero(nonempty)
        lo = src_start[piece, 0] * itemsize
        return np.stack([lo, lo + extent[piece, 0] * itemsize], axis=1), piece
    row = ndim - 2
    # one interval per index of the leading axes: a mixed-radix counter over each piece's box
    n_iv = np.where(nonempty, np.prod(extent[:, :row], axis=1), 0)
    piece = np.repeat(np.arange(n_pieces, dtype=np.int64), n_iv)
    base = np.zeros(len(piece), dtype=np.int64)
    if row:
        first = np.cumsum(n_iv) - n_iv
        local = np.arange(len(piece), dtype=np.int64) - first[piece]
        for d in range(row - 1, -1, -1):
            e = extent[piece, d]
            base += (src_start[piece, d] + local % e) * strides[d]
            local //= e
    lo = base + src_start[piece, row] * strides[row]
    hi = base + (src_start[piece, row] + extent[piece, row]) * strides[row]
    return np.stack([lo, hi], axis=1), piece


def piece_byte_intervals(
    chunk_shape: Sequence[int], itemsize: int, src_start: np.ndarray, extent: np.ndarray
) -> np.ndarray:
    """Byte intervals ``(m, 2)`` of a C-order chunk that cover the given pieces (see :func:`piece_intervals`)."""
    return piece_intervals(chunk_shape, itemsize, src_start, extent)[0]


def chunk_byte_intervals(plan: BatchPlan, chunk_shape: Sequence[int], itemsize: int) -> tuple[np.ndarray, np.ndarray]:
    """For every chunk of ``plan``, the merged byte intervals its pieces read, for the whole batch at once.

    Returns ``(intervals, offsets)``: the intervals of chunk ``u`` are
    ``intervals[offsets[u]:offsets[u+1]]``, sorted and disjoint (overlapping or touching
    intervals merged), so the Blosc blocks a chunk needs follow from a short walk.
    """
    n_chunks = plan.n_chunks
    iv, piece = piece_intervals(chunk_shape, itemsize, plan.piece_src_start, plan.piece_extent)
    offsets = np.zeros(n_chunks + 1, dtype=np.int64)
    if len(iv) == 0:
        return iv, offsets
    chunk = plan.piece_chunk[piece]
    order = np.lexsort((iv[:, 0], chunk))
    iv, chunk = iv[order], chunk[order]
    # merge within each chunk: a new interval starts past the furthest end seen so far;
    # shifting each chunk by its index times the chunk size keeps chunks from merging
    span = int(np.prod(np.asarray(chunk_shape, dtype=np.int64))) * itemsize + 1
    shift = chunk * span
    hi_run = np.maximum.accumulate(iv[:, 1] + shift)
    new = np.ones(len(iv), dtype=bool)
    new[1:] = iv[1:, 0] + shift[1:] > hi_run[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(iv)) - 1
    merged = np.stack([iv[starts, 0], hi_run[ends] - shift[starts]], axis=1)
    np.cumsum(np.bincount(chunk[starts], minlength=n_chunks), out=offsets[1:])
    return merged, offsets


def chunk_byte_limits(plan: BatchPlan, chunk_shape: Sequence[int], itemsize: int) -> np.ndarray:
    """For every chunk of ``plan``, one past the last byte (C order) any of its pieces reads.

    A decoder that produces a chunk front to back (Zstd) can stop there. Pieces are
    grouped by chunk (``chunk_piece_offsets``), so one ``reduceat`` per batch.
    """
    n_chunks = plan.n_chunks
    if n_chunks == 0 or plan.n_pieces == 0:
        return np.zeros(n_chunks, dtype=np.int64)
    if len(chunk_shape) == 0:  # a 0-d array: its one element
        return np.full(n_chunks, itemsize, dtype=np.int64)
    last = plan.piece_src_start + np.maximum(plan.piece_extent, 1) - 1
    stop = (np.ravel_multi_index(tuple(last.T), tuple(int(c) for c in chunk_shape)) + 1) * itemsize
    stop = np.where((plan.piece_extent > 0).all(axis=1), stop, 0)
    return np.maximum.reduceat(stop, plan.chunk_piece_offsets[:-1].astype(np.intp))
