"""The planner: regions of an array → the chunks a batch needs and where each piece goes.

Device-free and vectorised: every step after parsing the regions runs as whole-array
NumPy operations over all (region, chunk) pairs of the batch, so planning a batch of
hundreds of crops costs the same handful of NumPy calls as planning one.

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
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuzarr.errors import RegionError

Region = tuple[Any, ...]


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
            else:
                parts.append(repr(item))
        return "[" + ", ".join(parts) + "]"
    return repr(region)


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


def normalize_regions(regions: Sequence[object], shape: Sequence[int], array_name: str) -> RegionBounds:
    """Check every region against ``shape`` and return them as start/stop arrays.

    Accepts per axis a ``slice`` with step 1 (``None`` and negative bounds as in
    Python) or an integer (negative counts from the end). Unlike NumPy, a slice that
    reaches past the array is an error, not silently clipped: a crop that falls off
    the array is almost always a bug in the sampler, and a silently smaller crop
    could not be stacked with the others.

    Raises :class:`RegionError` naming the array, the region and the bounds.
    """
    shape = tuple(int(s) for s in shape)
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
                if item.step not in (None, 1):
                    raise RegionError(
                        f"{array_name}: region {_describe(region)} has step {item.step} on axis {d}; "
                        "only contiguous regions (step 1) are supported"
                    )
                lo = 0 if item.start is None else operator.index(item.start)
                hi = size if item.stop is None else operator.index(item.stop)
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
                try:
                    idx = operator.index(item)
                except TypeError:
                    raise RegionError(
                        f"{array_name}: region {_describe(region)} has an unsupported index "
                        f"{item!r} on axis {d}; use slices or integers"
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
    if n:
        extents = stops - starts
        bad = np.flatnonzero((extents != extents[0]).any(axis=1))
        if bad.size:
            r = int(bad[0])
            raise RegionError(
                f"{array_name}: region {r} {_describe(regions[r])} has shape {tuple(extents[r].tolist())} "
                f"but region 0 {_describe(regions[0])} has shape {tuple(extents[0].tolist())}; "
                "all regions of a batch must have one shape"
            )
    return RegionBounds(starts=starts, stops=stops, squeeze_axes=int_axes or ())


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
    grid = np.indices(tuple(int(m) for m in max_n), dtype=np.int64).reshape(ndim, -1).T  # (G, ndim)
    valid = (grid[None, :, :] < n_per_axis[:, None, :]).all(axis=2)  # (R, G)
    r_idx, g_idx = np.nonzero(valid)
    coords = c_lo[r_idx] + grid[g_idx]  # (P, ndim)

    chunk_lo = coords * cs
    lo = np.maximum(starts[r_idx], chunk_lo)
    hi = np.minimum(stops[r_idx], np.minimum(chunk_lo + cs, shp))
    src_start = lo - chunk_lo
    dst_start = lo - starts[r_idx]
    extent = hi - lo

    grid_shape = tuple(int(x) for x in -(-shp // cs))
    linear = np.ravel_multi_index(tuple(coords.T), grid_shape) if ndim else np.zeros(len(coords), np.int64)
    uniq, inverse = np.unique(linear, return_inverse=True)
    chunk_coords = np.stack(np.unravel_index(uniq, grid_shape), axis=1).astype(np.int64) if ndim else (
        np.zeros((1, 0), dtype=np.int64))
    order = np.lexsort((r_idx, inverse))
    piece_chunk = inverse[order].astype(np.int64)
    offsets = np.zeros(len(uniq) + 1, dtype=np.int64)
    np.cumsum(np.bincount(piece_chunk, minlength=len(uniq)), out=offsets[1:])
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


def piece_byte_intervals(
    chunk_shape: Sequence[int], itemsize: int, src_start: np.ndarray, extent: np.ndarray
) -> np.ndarray:
    """Byte intervals ``(m, 2)`` of a C-order chunk that cover the given pieces.

    Each piece is widened to whole rows of the last axis (one interval per index of the
    leading axes), which is exact enough for choosing which compressed blocks of the
    chunk to decode: blocks are far larger than one row.
    """
    shape = np.asarray(chunk_shape, dtype=np.int64)
    ndim = len(shape)
    src_start = np.asarray(src_start, dtype=np.int64).reshape(-1, ndim)
    extent = np.asarray(extent, dtype=np.int64).reshape(-1, ndim)
    strides = itemsize * np.concatenate([np.cumprod(shape[::-1])[::-1][1:], [1]]).astype(np.int64)
    if ndim == 1:
        return np.stack([src_start[:, 0] * itemsize, (src_start[:, 0] + extent[:, 0]) * itemsize], axis=1)
    row = ndim - 2
    parts = []
    for lo, ext in zip(src_start, extent, strict=True):
        lead = np.indices(tuple(int(e) for e in ext[:row]), dtype=np.int64).reshape(row, -1).T + lo[:row]
        base = lead @ strides[:row] if row else np.zeros(1, dtype=np.int64)
        parts.append(np.stack([base + lo[row] * strides[row], base + (lo[row] + ext[row]) * strides[row]], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
