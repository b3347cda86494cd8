"""Decode only the Blosc blocks a batch needs, on the CPU, with c-blosc itself.

A crop rarely needs a whole chunk: with the demo's 960×960 crops over 960×960 chunks a
chunk's pieces cover on average well under its full area. A Blosc1 chunk is made of
independently compressed blocks (256 KiB for the demo data), so the CPU engine decodes
only the blocks its pieces touch. The decoder is c-blosc's ``blosc_getitem``, the same
library numcodecs ships, reached through the C symbols its extension module exports
(ctypes releases the GIL for the call). ``blosc_getitem`` trusts the block table, so the
blocks to be decoded are checked first: every block start and stream size must lie
inside the chunk, by the same rules (:mod:`gpuzarr.codecs.blosc.format`) the batch
parser applies for the GPU path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuzarr.codecs import native
from gpuzarr.codecs.blosc.format import (
    FLAG_MEMCPYED,
    HEADER_BYTES,
    block_sizes,
    header_fields,
    read_i32,
    split_count,
    walk_streams,
)
from gpuzarr.settings import config


def _getitem() -> Any:
    """c-blosc's ``blosc_getitem`` (through :mod:`gpuzarr.codecs.native`), or None when it cannot be called."""
    return native.blosc_getitem_into if native.available() else None


def partial_decode_available() -> bool:
    return _getitem() is not None


def needed_blocks(intervals: np.ndarray, blocksize: int, nblocks: int) -> np.ndarray:
    """Boolean mask of the blocks that the byte ``intervals`` (m, 2) overlap."""
    mask = np.zeros(nblocks + 1, dtype=np.int64)
    iv = intervals[intervals[:, 1] > intervals[:, 0]]
    np.add.at(mask, iv[:, 0] // blocksize, 1)
    np.add.at(mask, (iv[:, 1] - 1) // blocksize + 1, -1)
    return np.cumsum(mask[:nblocks]) > 0


def block_runs(intervals: Any, blocksize: int, nblocks: int) -> list[list[int]]:
    """Runs ``[first, stop)`` of consecutive blocks that byte ``intervals`` overlap.

    ``intervals``: ``[start, stop)`` pairs sorted by start (a list, as the CPU engine
    passes them, or an (m, 2) array, sorted here). A short walk in Python: a chunk's
    pieces give it a handful of merged intervals (see
    :func:`gpuzarr.plan.planner.chunk_byte_intervals`).
    """
    if isinstance(intervals, np.ndarray):
        iv = np.asarray(intervals, dtype=np.int64).reshape(-1, 2)
        intervals = iv[np.argsort(iv[:, 0], kind="stable")].tolist()
    runs: list[list[int]] = []
    for lo, hi in intervals:
        if hi <= lo:
            continue
        b0 = lo // blocksize
        if b0 >= nblocks:
            continue
        b1 = min((hi - 1) // blocksize + 1, nblocks)
        if runs and b0 <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], b1)
        else:
            runs.append([b0, b1])
    return runs


def _check_blocks(src: np.ndarray, blocks: np.ndarray, *, nblocks: int, blocksize: int, nbytes: int,
                  typesize: int, flags: int, cbytes: int) -> None:
    """Raise ValueError unless every stream of the given blocks lies inside the chunk."""
    table_end = HEADER_BYTES + 4 * nblocks
    if table_end > cbytes:
        raise ValueError(f"blosc: {nblocks} block starts do not fit {cbytes} compressed bytes")
    n = len(blocks)
    size, leftover = block_sizes(blocks, np.full(n, nbytes), np.full(n, blocksize))
    nsplits = split_count(np.full(n, flags), np.full(n, typesize), size, leftover)
    bstart = read_i32(src, HEADER_BYTES + 4 * blocks)
    *_, bad = walk_streams(src, np.zeros(n, dtype=np.int64), bstart, nsplits, np.full(n, cbytes),
                           np.full(n, table_end), np.ones(n, dtype=bool))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"blosc: block {int(blocks[i])} (start {int(bstart[i])}) starts inside the block table "
                         f"or has a stream outside the {cbytes}-byte chunk")


def decode_blocks_into(view: memoryview, dest: np.ndarray, intervals: Any,
                       header: tuple[int, ...] | None = None) -> bool:
    """Decode the blocks of Blosc chunk ``view`` that ``intervals`` need into ``dest``.

    ``dest`` is the whole decoded chunk (uint8, header-checked size); ``header`` the
    chunk's header fields ``(version, versionlz, flags, typesize, nbytes, blocksize,
    cbytes)`` as the caller checked them (read here when not given); ``intervals`` as for :func:`block_runs`. Bytes
    outside the decoded blocks are left as they were. Returns False, having written
    nothing, when decoding the whole chunk is the better (or only) option: partial
    decode unavailable, a memcpyed chunk, sizes that are not whole items, or more than
    the ``partial_decode.max_fraction`` setting of its blocks needed.
    """
    getitem = _getitem()
    if getitem is None:
        return False
    if header is None:
        header = header_fields(view)
    _, _, flags, typesize, nbytes, blocksize, cbytes = header
    if (flags & FLAG_MEMCPYED or typesize < 1 or blocksize <= 0 or nbytes <= 0
            or blocksize % typesize or nbytes % typesize):
        return False
    nblocks = -(-nbytes // blocksize)
    if nblocks < 2:
        return False
    runs = block_runs(intervals, blocksize, nblocks)
    n_needed = sum(b1 - b0 for b0, b1 in runs)
    if n_needed >= config.get("partial_decode.max_fraction") * nblocks:  # then the whole chunk is cheaper
        return False
    src = np.frombuffer(view, dtype=np.uint8)
    blocks = np.fromiter((b for b0, b1 in runs for b in range(b0, b1)), dtype=np.int64)
    _check_blocks(src, blocks, nblocks=nblocks, blocksize=blocksize, nbytes=nbytes, typesize=typesize,
                  flags=flags, cbytes=cbytes)
    src_ptr = native.address(src)
    dest_ptr = native.address(dest)
    for b0, b1 in runs:
        lo = b0 * blocksize
        hi = min(b1 * blocksize, nbytes)
        n_items = (hi - lo) // typesize
        got = getitem(src_ptr, lo // typesize, n_items, dest_ptr + lo)
        if got != hi - lo:
            raise ValueError(f"blosc: decoding blocks {b0}..{b1 - 1} failed (c-blosc returned {got})")
    return True
