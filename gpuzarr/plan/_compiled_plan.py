"""The planner's compiled twins: a batch's pieces, and distinct rows, each in one Numba call (imported only to compile).

:func:`plan_pieces` computes exactly what :func:`gpuzarr.plan.planner.plan_batch` computes
with NumPy after the regions are parsed — every (region, chunk) piece, sorted by chunk
then region, the distinct chunks and where each chunk's pieces start — in one pass with
no intermediate arrays: about 15 µs for 64 crops where the NumPy steps take 150–200 µs.
The NumPy planner stays the reference and the path whenever this is not compiled (Numba
missing, ``cpu.compiled`` off, not compiled yet) or a batch's sort key could overflow; tests
hold the two equal on random shapes, chunks and regions. :func:`unique_rows` is
:func:`gpuzarr.plan.planner.unique_rows` (the shard reader's grouping of inner chunks by
shard) the same way.

It is compiled with the CPU engine's compiled lane (:mod:`gpuzarr.engines.compiled`),
which installs it in the planner once built.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def plan_pieces(starts, stops, chunk_shape, shape, grid):
    """Pieces of regions ``starts``/``stops`` (R, ndim) over chunks of ``chunk_shape`` in an array of ``shape``.

    ``grid`` is the number of chunks along each axis; the caller checks that
    ``prod(grid) * R`` fits in int64 (the sort key is a chunk's linear index times R plus
    the region). Returns ``(chunk_coords, chunk_piece_offsets, piece_chunk, piece_region,
    piece_src_start, piece_dst_start, piece_extent)`` as :class:`BatchPlan` holds them.
    """
    n, ndim = starts.shape
    first = np.empty((n, ndim), np.int64)  # each region's first chunk along each axis
    count = np.empty((n, ndim), np.int64)  # and how many chunks it spans (0: the region is empty)
    total = 0
    for r in range(n):
        pieces = 1
        for d in range(ndim):
            step = max(chunk_shape[d], 1)
            lo = starts[r, d] // step
            first[r, d] = lo
            count[r, d] = (stops[r, d] - 1) // step - lo + 1 if stops[r, d] > starts[r, d] else 0
            pieces *= count[r, d]
        total += pieces
    coords = np.empty((total, ndim), np.int64)
    region = np.empty(total, np.int64)
    key = np.empty(total, np.int64)
    odometer = np.zeros(ndim, np.int64)
    p = 0
    for r in range(n):
        pieces = 1
        for d in range(ndim):
            pieces *= count[r, d]
        odometer[:] = 0
        for _ in range(pieces):
            linear = 0
            for d in range(ndim):
                c = first[r, d] + odometer[d]
                coords[p, d] = c
                linear = linear * grid[d] + c
            region[p] = r
            key[p] = linear * n + r
            p += 1
            # the next chunk of the region's box, the last axis fastest (the compiled lane walks a piece's
            # rows the same way; not shared with it: Numba's on-disk cache of a function only notices
            # edits to its own file, so a helper inlined from another file could run stale)
            d = ndim - 1
            while d >= 0:
                odometer[d] += 1
                if odometer[d] < count[r, d]:
                    break
                odometer[d] = 0
                d -= 1
    order = np.argsort(key)  # keys are distinct: a region meets a chunk once
    piece_chunk = np.empty(total, np.int64)
    piece_region = np.empty(total, np.int64)
    src = np.empty((total, ndim), np.int64)
    dst = np.empty((total, ndim), np.int64)
    extent = np.empty((total, ndim), np.int64)
    n_chunks = 0
    previous = -1
    for q in range(total):
        i = order[q]
        r = region[i]
        chunk = key[i] // n
        if q == 0 or chunk != previous:
            n_chunks += 1
            previous = chunk
        piece_chunk[q] = n_chunks - 1
        piece_region[q] = r
        for d in range(ndim):
            chunk_lo = coords[i, d] * chunk_shape[d]
            lo = max(starts[r, d], chunk_lo)
            hi = min(stops[r, d], min(chunk_lo + chunk_shape[d], shape[d]))
            src[q, d] = lo - chunk_lo
            dst[q, d] = lo - starts[r, d]
            extent[q, d] = hi - lo
    chunk_coords = np.empty((n_chunks, ndim), np.int64)
    offsets = np.empty(n_chunks + 1, np.int64)
    u = -1
    for q in range(total):
        if piece_chunk[q] != u:
            u = piece_chunk[q]
            offsets[u] = q
            chunk_coords[u, :] = coords[order[q], :]
    offsets[n_chunks] = total
    return chunk_coords, offsets, piece_chunk, piece_region, src, dst, extent


@njit(nogil=True, cache=True)
def unique_rows(rows):
    """:func:`gpuzarr.plan.planner.unique_rows` in one pass: ``(distinct rows, inverse, True)``.

    The rows are sorted by one linear key (each column offset by its minimum, in mixed
    radix), which orders them lexicographically; ``(…, False)`` when that key could
    overflow int64, and the caller takes the NumPy steps.
    """
    n, k = rows.shape
    low = np.zeros(k, np.int64)
    weight = np.ones(k, np.int64)
    if n:
        for d in range(k):
            low[d] = rows[0, d]
            high = rows[0, d]
            for i in range(1, n):
                low[d] = min(low[d], rows[i, d])
                high = max(high, rows[i, d])
            span = high - low[d] + 1
            if span <= 0:  # the column's range overflowed
                return rows[:0].copy(), np.empty(0, np.int64), False
            weight[d] = span
        total = 1
        for d in range(k - 1, -1, -1):  # mixed radix: the last column varies fastest
            span = weight[d]
            weight[d] = total
            if total > (2**62) // span:
                return rows[:0].copy(), np.empty(0, np.int64), False
            total *= span
    key = np.empty(n, np.int64)
    for i in range(n):
        value = 0
        for d in range(k):
            value += (rows[i, d] - low[d]) * weight[d]
        key[i] = value
    order = np.argsort(key)
    inverse = np.empty(n, np.int64)
    distinct = 0
    for q in range(n):
        if q == 0 or key[order[q]] != key[order[q - 1]]:
            distinct += 1
        inverse[order[q]] = distinct - 1
    out = np.empty((distinct, k), np.int64)
    for q in range(n):
        out[inverse[order[q]], :] = rows[order[q], :]
    return out, inverse, True


def warm_up() -> None:
    """Compile (or load) the one specialisation of each that the planner calls."""
    bounds = np.zeros((1, 1), dtype=np.int64)
    one = np.ones(1, dtype=np.int64)
    plan_pieces(bounds, bounds + 1, one, one, one)
    unique_rows(bounds)
