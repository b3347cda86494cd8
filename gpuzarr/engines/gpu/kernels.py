"""CuPy launchers for the CUDA kernels in ``kernels/``: load, compile once per device, validate, launch.

Sources are read with ``importlib.resources`` from ``gpuzarr._kernels`` (the top-level
``kernels/`` directory installed as a package), falling back to the repository's
``kernels/`` directory in a checkout. Each ``.cu`` file becomes one
``cupy.RawModule``, memoised per (file, device); ``_get_*_kernel`` factories return the
functions. Every ``launch_*`` function checks its tables (dtypes, lengths, bounds) in
Python before anything is launched, since a bad offset in a kernel is a memory fault,
not an exception. Kernels run on CuPy's current stream (the engine makes a caller's
stream current for a whole batch). CuPy is imported lazily: importing this module
never needs a GPU.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

#: dtype codes of ``gather_pieces_convert`` (keep in sync with kernels/gather.cu)
DTYPE_CODES = {
    np.dtype(np.bool_): 0, np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.uint16): 3,
    np.dtype(np.int16): 4, np.dtype(np.uint32): 5, np.dtype(np.int32): 6, np.dtype(np.uint64): 7,
    np.dtype(np.int64): 8, np.dtype(np.float16): 9, np.dtype(np.float32): 10, np.dtype(np.float64): 11,
}
FLOAT_OUTPUT_CODES = {np.dtype(np.float16): 9, np.dtype(np.float32): 10, np.dtype(np.float64): 11}
COPY_ITEMSIZES = (1, 2, 4, 8, 16)
MAX_NDIM = 16
THREADS = 256
UNSHUFFLE_TILE_BYTES = 16384
COPY_TILE_BYTES = 16384
GATHER_TILE_ELEMS = 4096
CRC32C_SEGMENT = 4096

_lock = threading.Lock()


_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.]+)"\s*$', re.MULTILINE)


def _raw_kernel_source(name: str) -> str:
    try:
        return importlib.resources.files("gpuzarr._kernels").joinpath(name).read_text()
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        repo = Path(__file__).resolve().parents[3] / "kernels" / name
        return repo.read_text()


def kernel_source(name: str) -> str:
    """Text of ``kernels/<name>`` (installed package, else the checkout) with local includes inlined.

    NVRTC has no include path to the package directory, so ``#include "common.cuh"``
    is replaced by that file's text here; nvcc (``scripts/compile_kernels.sh``) finds
    it beside the source.
    """
    return _LOCAL_INCLUDE.sub(lambda m: _raw_kernel_source(m.group(1)), _raw_kernel_source(name))


def _cupy() -> Any:
    import cupy

    return cupy


@functools.cache
def _module(name: str, device_id: int) -> Any:
    cp = _cupy()
    with cp.cuda.Device(device_id):
        module = cp.RawModule(code=kernel_source(name), options=("--std=c++17",))
        module.compile()
        return module


def _function(file: str, function: str) -> Any:
    cp = _cupy()
    device_id = cp.cuda.Device().id
    with _lock:
        return _module(file, device_id).get_function(function)


def _get_unshuffle_kernel() -> Any:
    return _function("shuffle.cu", "blosc_unshuffle_blocks")


def _get_copy_segments_kernel() -> Any:
    return _function("gather.cu", "copy_segments")


def _get_gather_copy_kernel(itemsize: int) -> Any:
    if itemsize not in COPY_ITEMSIZES:
        raise ValueError(f"no gather kernel for itemsize {itemsize}")
    return _function("gather.cu", f"gather_pieces_copy_{itemsize}")


def _get_gather_convert_kernel() -> Any:
    return _function("gather.cu", "gather_pieces_convert")


def _get_crc32c_segments_kernel() -> Any:
    return _function("crc32c.cu", "crc32c_segments")


def _get_crc32c_combine_kernel() -> Any:
    return _function("crc32c.cu", "crc32c_combine_segments")


# ----------------------------------------------------------------------------- helpers


def _i64(name: str, value: Any, length: int | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(value, dtype=np.int64).reshape(-1))
    if length is not None and arr.size != length:
        raise ValueError(f"{name} has {arr.size} entries, expected {length}")
    return arr


def _tile_prefix(work: np.ndarray, tile: int) -> np.ndarray:
    tiles = (work + tile - 1) // tile
    prefix = np.zeros(work.size + 1, dtype=np.int64)
    np.cumsum(tiles, out=prefix[1:])
    return prefix


def _device(*arrays: np.ndarray) -> list[Any]:
    """Upload host tables in one transfer (one concatenated int64 buffer, sliced on the device)."""
    cp = _cupy()
    sizes = [a.size for a in arrays]
    joined = np.concatenate([a.astype(np.int64, copy=False) for a in arrays]) if arrays else np.zeros(0, np.int64)
    dev = cp.asarray(joined)
    views, at = [], 0
    for n in sizes:
        views.append(dev[at:at + n])
        at += n
    return views


def _check_buffer(name: str, buf: Any) -> None:
    if buf.dtype != np.uint8 or buf.ndim != 1 or not buf.flags.c_contiguous:
        raise ValueError(f"{name} must be a contiguous 1-D uint8 device array")


# ----------------------------------------------------------------------------- launchers


def launch_unshuffle(
    arena: Any,
    stream_offset: np.ndarray,
    block_stream_start: np.ndarray,
    block_nsplits: np.ndarray,
    block_size: np.ndarray,
    block_typesize: np.ndarray,
    block_mode: np.ndarray,
    block_out_offset: np.ndarray,
    out: Any,
) -> None:
    """One launch of ``blosc_unshuffle_blocks`` over every block (see the kernel's header comment)."""
    _check_buffer("arena", arena)
    _check_buffer("out", out)
    n_blocks = len(block_size)
    if n_blocks == 0:
        return
    size = _i64("block_size", block_size)
    nsplits = _i64("block_nsplits", block_nsplits, n_blocks)
    ts = _i64("block_typesize", block_typesize, n_blocks)
    mode = _i64("block_mode", block_mode, n_blocks)
    out_off = _i64("block_out_offset", block_out_offset, n_blocks)
    first = _i64("block_stream_start", block_stream_start)
    if first.size < n_blocks + 1:
        raise ValueError("block_stream_start needs n_blocks + 1 entries")
    s_off = _i64("stream_offset", stream_offset)
    if (size < 0).any() or (nsplits < 1).any() or (ts < 1).any() or not np.isin(mode, (0, 1, 2)).all():
        raise ValueError("block table has a negative size, a split count or typesize below 1, or an unknown mode")
    if (first[1:n_blocks + 1] - first[:n_blocks] != nsplits).any() or first[n_blocks] > s_off.size:
        raise ValueError("block_stream_start does not match block_nsplits and the stream table")
    neblock = size // nsplits
    used = s_off[first[0]:first[n_blocks]]
    live = np.repeat(size > 0, nsplits)
    stream_bytes = np.repeat(neblock, nsplits)
    if (((used < 0) | (used + stream_bytes > arena.size)) & live).any():
        raise ValueError("a stream lies outside the arena")
    if ((out_off < 0) | (out_off + size > out.size)).any():
        raise ValueError("a block lies outside the output buffer")
    tile_start = _tile_prefix(size, UNSHUFFLE_TILE_BYTES)
    n_tiles = int(tile_start[-1])
    if n_tiles == 0:
        return
    d_soff, d_first, d_ns, d_size, d_ts, d_mode, d_out, d_tiles = _device(
        s_off, first, nsplits, size, ts, mode, out_off, tile_start)
    kernel = _get_unshuffle_kernel()
    kernel((n_tiles,), (THREADS,), (arena, d_soff, d_first, d_ns, d_size, d_ts, d_mode, d_out, d_tiles,
                                     np.int64(n_blocks), np.int64(UNSHUFFLE_TILE_BYTES), out))


def launch_copy_segments(src: Any, src_offset: np.ndarray, dst: Any, dst_offset: np.ndarray,
                         size: np.ndarray) -> None:
    """One launch of ``copy_segments``."""
    _check_buffer("src", src)
    _check_buffer("dst", dst)
    size = _i64("size", size)
    so = _i64("src_offset", src_offset, size.size)
    do = _i64("dst_offset", dst_offset, size.size)
    if size.size == 0:
        return
    if (size < 0).any() or (so < 0).any() or (do < 0).any() or (so + size > src.size).any() or (
            do + size > dst.size).any():
        raise ValueError("a segment lies outside its buffer")
    tiles = _tile_prefix(size, COPY_TILE_BYTES)
    n_tiles = int(tiles[-1])
    if n_tiles == 0:
        return
    d_so, d_do, d_size, d_tiles = _device(so, do, size, tiles)
    _get_copy_segments_kernel()((n_tiles,), (THREADS,), (src, d_so, dst, d_do, d_size, d_tiles,
                                                         np.int64(size.size), np.int64(COPY_TILE_BYTES)))


def launch_gather(
    plan: Any,
    chunks: Any,
    chunk_offset: np.ndarray,
    src_strides: np.ndarray,
    src_dtype: Any,
    out: Any,
    *,
    sample_size: int,
    out_strides: np.ndarray,
    swap_bytes: bool = False,
    fill_value: Any = 0,
    convert_to: Any = None,
    channel_axis: int | None = None,
    mean: np.ndarray | None = None,
    inv_std: np.ndarray | None = None,
) -> None:
    """One launch of a gather kernel for every piece of ``plan`` into ``out`` (a flat device buffer).

    ``convert_to`` = a float dtype selects ``gather_pieces_convert`` (with optional
    ``mean``/``inv_std`` per channel along region axis ``channel_axis``); otherwise the
    itemsize-specialised byte copy runs.
    """
    cp = _cupy()
    src_dtype = np.dtype(src_dtype)
    ndim = len(plan.region_shape)
    if ndim > MAX_NDIM:
        raise ValueError(f"the gather kernels support at most {MAX_NDIM} dimensions, not {ndim}")
    _check_buffer("chunks", chunks)
    if swap_bytes and src_dtype.kind == "c":
        raise ValueError("the gather kernels swap whole elements: byte-swapped complex data has no GPU path")
    n_pieces = plan.n_pieces
    if n_pieces == 0:
        return
    c_off = _i64("chunk_offset", chunk_offset, plan.n_chunks)
    s_str = _i64("src_strides", src_strides, ndim)
    o_str = _i64("out_strides", out_strides, ndim)
    extent = plan.piece_extent.astype(np.int64)
    counts = np.prod(extent, axis=1, dtype=np.int64)
    # bounds: the last element of every piece must lie inside its chunk and the output
    last_src = ((plan.piece_src_start + np.maximum(extent - 1, 0)) * s_str).sum(axis=1)
    base = c_off[plan.piece_chunk]
    live = (base >= 0) & (counts > 0)
    if ((base + (last_src + 1) * src_dtype.itemsize > chunks.size) & live).any():
        raise ValueError("a piece reads past the end of its decoded chunk")
    out_itemsize = src_dtype.itemsize if convert_to is None else np.dtype(convert_to).itemsize
    last_dst = plan.piece_region * sample_size + ((plan.piece_dst_start + np.maximum(extent - 1, 0)) * o_str).sum(axis=1)
    if (((last_dst + 1) * out_itemsize > out.nbytes) & (counts > 0)).any():
        raise ValueError("a piece writes past the end of the output")
    tiles = _tile_prefix(counts, GATHER_TILE_ELEMS)
    n_tiles = int(tiles[-1])
    if n_tiles == 0:
        return
    d_coff, d_chunk, d_region, d_src, d_dst, d_ext, d_tiles, d_sstr, d_ostr = _device(
        c_off, plan.piece_chunk, plan.piece_region, plan.piece_src_start.reshape(-1),
        plan.piece_dst_start.reshape(-1), extent.reshape(-1), tiles, s_str, o_str)
    out_bytes = out.view(cp.uint8).reshape(-1) if out.dtype != np.uint8 else out
    common = (chunks, d_coff, d_chunk, d_region, d_src, d_dst, d_ext, d_tiles, np.int64(n_pieces), np.int32(ndim),
              d_sstr, d_ostr, np.int64(sample_size), np.int64(GATHER_TILE_ELEMS), np.int32(bool(swap_bytes)))
    if convert_to is None:
        if src_dtype.itemsize not in COPY_ITEMSIZES:
            raise ValueError(f"no gather kernel for {src_dtype}")
        fill = np.zeros(16, dtype=np.uint8)
        fill[: src_dtype.itemsize] = np.frombuffer(np.asarray(fill_value, dtype=src_dtype).tobytes(), np.uint8)
        d_fill = cp.asarray(fill)
        _get_gather_copy_kernel(src_dtype.itemsize)((n_tiles,), (THREADS,), (*common, d_fill, out_bytes))
        return
    dst = np.dtype(convert_to)
    if dst not in FLOAT_OUTPUT_CODES or src_dtype not in DTYPE_CODES:
        raise ValueError(f"gather_pieces_convert cannot convert {src_dtype} to {dst}")
    normalise = mean is not None
    n_ch = 1
    if channel_axis is not None:
        if not 0 <= channel_axis < ndim:
            raise ValueError(f"channel axis {channel_axis} out of range")
        n_ch = int(plan.region_shape[channel_axis])
    mean_a = np.zeros(1) if mean is None else np.asarray(mean, dtype=np.float64)
    inv_a = np.ones(1) if inv_std is None else np.asarray(inv_std, dtype=np.float64)
    if normalise and (mean_a.size != n_ch or inv_a.size != n_ch):
        raise ValueError(f"mean/inv_std need {n_ch} entries")
    d_mean = cp.asarray(mean_a)
    d_inv = cp.asarray(inv_a)
    fill_d = float(np.asarray(fill_value, dtype=src_dtype).astype(np.float64))
    _get_gather_convert_kernel()(
        (n_tiles,), (THREADS,),
        (*common, np.int32(DTYPE_CODES[src_dtype]), np.int32(src_dtype.itemsize), np.float64(fill_d),
         np.int32(FLOAT_OUTPUT_CODES[dst]), np.int32(normalise), np.int32(-1 if channel_axis is None else channel_axis),
         d_mean, d_inv, out_bytes))


def launch_crc32c(data: Any, offset: np.ndarray, size: np.ndarray) -> Any:
    """CRC-32C of every ``data[offset[k]:offset[k]+size[k]]``: two launches; returns a uint32 device array."""
    cp = _cupy()
    _check_buffer("data", data)
    size = _i64("size", size)
    off = _i64("offset", offset, size.size)
    if ((off < 0) | (size < 0) | (off + size > data.size)).any():
        raise ValueError("a buffer lies outside the data")
    nseg = (size + CRC32C_SEGMENT - 1) // CRC32C_SEGMENT
    seg_start = np.zeros(size.size + 1, dtype=np.int64)
    np.cumsum(nseg, out=seg_start[1:])
    seg_buf = np.repeat(np.arange(size.size), nseg)
    seg_idx = np.arange(int(seg_start[-1]), dtype=np.int64) - seg_start[:-1][seg_buf]
    seg_off = off[seg_buf] + seg_idx * CRC32C_SEGMENT
    seg_len = np.minimum(CRC32C_SEGMENT, size[seg_buf] - seg_idx * CRC32C_SEGMENT)
    result = cp.zeros(size.size, dtype=cp.uint32)
    if size.size == 0:
        return result
    n_segs = int(seg_off.size)
    d_off, d_len, d_start = _device(seg_off, seg_len, seg_start)
    seg_crc = cp.zeros(max(n_segs, 1), dtype=cp.uint32)
    if n_segs:
        _get_crc32c_segments_kernel()(((n_segs + THREADS - 1) // THREADS,), (THREADS,),
                                      (data, d_off, d_len, np.int64(n_segs), seg_crc))
    _get_crc32c_combine_kernel()((size.size,), (THREADS,), (seg_crc, d_len, d_start, np.int64(size.size), result))
    return result
