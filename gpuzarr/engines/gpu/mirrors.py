"""NumPy mirrors of every CUDA kernel in ``kernels/``, with the kernels' exact semantics.

Each function here takes the same tables as its kernel and computes the same bytes
with the same index arithmetic, vectorised over all elements. They serve two
purposes: the CPU reference decoder of the Blosc path runs on them (so the logic of
the GPU path is checked against numcodecs on every CI run, GPU or not), and the
``gpu``-marked tests compare each kernel to its mirror on random tables.

=================================  =======================================
kernel (``kernels/*.cu``)          mirror
=================================  =======================================
``blosc_unshuffle_blocks``         :func:`unshuffle_blocks`
``copy_segments``                  :func:`copy_segments`
``gather_pieces_copy``             :func:`gather_pieces` (``transform=None``)
``gather_pieces_convert``          :func:`gather_pieces` (cast/normalise)
``crc32c_segments`` + ``combine``  :func:`crc32c_batch`
=================================  =======================================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuzarr.plan.layout import chunk_strides, gather_layout

__all__ = ["chunk_strides", "copy_segments", "crc32c_batch", "gather_layout", "gather_pieces", "unshuffle_blocks"]

MODE_NONE = 0
MODE_SHUFFLE = 1
MODE_BITSHUFFLE = 2

#: bytes per slab when a mirror materialises index arrays (bounds its memory)
_SLAB_BYTES = 1 << 22


# ----------------------------------------------------------------------------- shuffle.cu


def _slabs(sizes: np.ndarray, limit: int = _SLAB_BYTES) -> list[np.ndarray]:
    """Split row indices into consecutive groups whose sizes add up to about ``limit``."""
    if sizes.size == 0:
        return []
    ends = np.cumsum(sizes)
    group = ends // max(limit, 1)
    cuts = np.flatnonzero(np.diff(group)) + 1
    return np.split(np.arange(sizes.size), cuts)


def unshuffle_blocks(
    arena: np.ndarray,
    stream_offset: np.ndarray,
    block_stream_start: np.ndarray,
    block_nsplits: np.ndarray,
    block_size: np.ndarray,
    block_typesize: np.ndarray,
    block_mode: np.ndarray,
    block_out_offset: np.ndarray,
    out: np.ndarray,
    *,
    block_mask: np.ndarray | None = None,
) -> None:
    """Mirror of ``blosc_unshuffle_blocks``: build every Blosc block from its decoded streams.

    Block ``b`` is ``block_size[b]`` bytes whose stored (shuffled) form is the
    concatenation of its ``block_nsplits[b]`` streams, each ``block_size // nsplits``
    bytes at ``arena[stream_offset[s]:]``. Output byte ``p`` of the block goes to
    ``out[block_out_offset[b] + p]`` and comes from stored byte ``q``:

    * ``MODE_NONE``: ``q = p``;
    * ``MODE_SHUFFLE`` (c-blosc ``unshuffle``): with ``n = size // typesize`` and
      ``p < n * typesize``: ``q = (p % typesize) * n + p // typesize``; the tail
      ``size % typesize`` bytes are copied (``q = p``);
    * ``MODE_BITSHUFFLE`` (c-blosc 1.x ``bitunshuffle``): when ``n % 8 == 0``, bit ``k``
      of output byte ``p = i * typesize + j`` is bit ``i % 8`` of stored byte
      ``(j * 8 + k) * (n // 8) + i // 8``, and the tail bytes are copied; when
      ``n % 8 != 0`` the whole block is copied (c-blosc 1.x does not bit-shuffle it).
    """
    n_blocks = len(block_size)
    rows = np.arange(n_blocks) if block_mask is None else np.flatnonzero(block_mask)
    if rows.size == 0:
        return
    sizes = block_size[rows].astype(np.int64)
    for group in _slabs(sizes):
        blk = rows[group]
        bsize = block_size[blk].astype(np.int64)
        b = np.repeat(blk, bsize)
        starts = np.zeros(len(blk), dtype=np.int64)
        np.cumsum(bsize[:-1], out=starts[1:])
        p = np.arange(int(bsize.sum()), dtype=np.int64) - np.repeat(starts, bsize)
        size = block_size[b].astype(np.int64)
        ts = np.maximum(block_typesize[b].astype(np.int64), 1)
        mode = block_mode[b]
        nsplits = np.maximum(block_nsplits[b].astype(np.int64), 1)
        neblock = np.maximum(size // nsplits, 1)
        first = block_stream_start[b].astype(np.int64)
        n = size // ts
        body = p < n * ts
        i = p // ts
        j = p - i * ts

        def stored(q: np.ndarray, sel: np.ndarray, first=first, nsplits=nsplits, neblock=neblock) -> np.ndarray:
            ne, ns = neblock[sel], nsplits[sel]
            s = np.minimum(q // ne, ns - 1)
            return arena[stream_offset[first[sel] + s] + (q - s * ne)]

        value = np.empty(p.size, dtype=np.uint8)
        copy = (mode == MODE_NONE) | ~body | ((mode == MODE_BITSHUFFLE) & (n % 8 != 0))
        value[copy] = stored(p[copy], copy)
        shuf = ~copy & (mode == MODE_SHUFFLE)
        value[shuf] = stored(j[shuf] * n[shuf] + i[shuf], shuf)
        bits = ~copy & (mode == MODE_BITSHUFFLE)
        if bits.any():
            ib, jb, nb = i[bits], j[bits], n[bits] // 8
            acc = np.zeros(ib.size, dtype=np.uint8)
            shift = (ib % 8).astype(np.uint8)
            for k in range(8):
                byte = stored((jb * 8 + k) * nb + ib // 8, bits)
                acc |= ((byte >> shift) & 1).astype(np.uint8) << np.uint8(k)
            value[bits] = acc
        out[block_out_offset[b] + p] = value


def copy_segments(src: np.ndarray, src_offset: np.ndarray, dst: np.ndarray, dst_offset: np.ndarray,
                  size: np.ndarray) -> None:
    """Mirror of ``copy_segments``: ``dst[dst_offset[k]:+size[k]] = src[src_offset[k]:+size[k]]`` for all k."""
    size = np.asarray(size, dtype=np.int64)
    for group in _slabs(size):
        n = size[group]
        starts = np.zeros(len(group), dtype=np.int64)
        np.cumsum(n[:-1], out=starts[1:])
        k = np.repeat(group, n)
        local = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(starts, n)
        dst[dst_offset[k] + local] = src[src_offset[k] + local]


# ----------------------------------------------------------------------------- gather.cu


def gather_pieces(
    plan: Any,
    chunks: np.ndarray,
    chunk_offset: np.ndarray,
    src_strides: np.ndarray,
    src_dtype: np.dtype,
    *,
    swap_bytes: bool = False,
    fill_value: Any = 0,
    transform: Any = None,
) -> np.ndarray:
    """Mirror of the gather kernels: build the whole batch from decoded chunks in one pass.

    ``chunks`` is one uint8 buffer holding every decoded chunk; chunk ``u`` starts at
    byte ``chunk_offset[u]`` (``-1``: never written, its pieces get ``fill_value``) and
    element ``idx`` of it sits at ``sum(idx * src_strides)`` elements of ``src_dtype``
    stored with the opposite byte order when ``swap_bytes``. Returns the batch of shape
    ``(n_regions, *sample_shape)``: without ``transform`` in ``src_dtype``; with one,
    every element goes through float64, ``(x - mean[c]) / std[c]`` and is stored as the
    transform's dtype (exactly what the ``convert`` kernel does).
    """
    src_dtype = np.dtype(src_dtype)
    sample_shape, out_stride, channel_axis = gather_layout(plan, transform)
    out_dtype = src_dtype if transform is None else transform.output_dtype(src_dtype)
    sample_size = int(np.prod(sample_shape, dtype=np.int64))
    out = np.empty(plan.n_regions * sample_size, dtype=out_dtype)
    itemsize = src_dtype.itemsize
    stored_dtype = src_dtype.newbyteorder("S") if swap_bytes and itemsize > 1 else src_dtype
    fill = np.asarray(fill_value, dtype=src_dtype).reshape(())
    mean, inv_std = (None, None) if transform is None else transform.channel_tables(
        plan.region_shape[channel_axis] if channel_axis is not None else 1)
    extent = plan.piece_extent
    counts = np.prod(extent, axis=1, dtype=np.int64) if plan.n_pieces else np.zeros(0, np.int64)
    chunk_offset = np.asarray(chunk_offset, dtype=np.int64)
    for group in _slabs(counts * max(itemsize, 1)):
        n = counts[group]
        piece = np.repeat(group, n)
        starts = np.zeros(len(group), dtype=np.int64)
        np.cumsum(n[:-1], out=starts[1:])
        local = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(starts, n)
        ndim = extent.shape[1]
        coord = np.empty((local.size, ndim), dtype=np.int64)
        rem = local.copy()
        for d in range(ndim - 1, -1, -1):
            e = extent[piece, d]
            coord[:, d] = rem % e
            rem //= e
        u = plan.piece_chunk[piece]
        src_el = ((plan.piece_src_start[piece] + coord) * src_strides).sum(axis=1)
        dst = plan.piece_region[piece] * sample_size + ((plan.piece_dst_start[piece] + coord) * out_stride).sum(axis=1)
        base = chunk_offset[u]
        missing = base < 0
        byte_pos = np.where(missing, 0, base + src_el * itemsize)
        raw = chunks[byte_pos[:, None] + np.arange(itemsize)] if chunks.size else np.zeros((len(local), itemsize), np.uint8)
        values = np.ascontiguousarray(raw).view(stored_dtype).reshape(-1).astype(src_dtype)
        values = np.where(missing, fill, values)
        if transform is None or (not transform.normalises and out_dtype == src_dtype):
            out[dst] = values
        else:
            x = values.astype(np.float64)
            if mean is not None:
                c = np.zeros(local.size, dtype=np.int64) if channel_axis is None else (
                    plan.piece_dst_start[piece, channel_axis] + coord[:, channel_axis])
                x = (x - mean[c]) * inv_std[c]
            out[dst] = x.astype(out_dtype)
    return out.reshape((plan.n_regions, *sample_shape))


# ----------------------------------------------------------------------------- crc32c.cu

CRC32C_POLY_REFLECTED = 0x82F63B78
#: bytes per thread in ``crc32c_segments``
CRC32C_SEGMENT = 4096


def _crc32c_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(CRC32C_POLY_REFLECTED), table >> 1).astype(np.uint32)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c_multmodp(a: int, b: int) -> int:
    """``a * b`` modulo the CRC-32C polynomial, bit-reflected (zlib's ``multmodp``)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ CRC32C_POLY_REFLECTED if b & 1 else b >> 1
    return p


def crc32c_x8n(n: int) -> int:
    """``x^(8 n)`` modulo the polynomial: the operator that appends ``n`` zero bytes."""
    p = 1 << 31  # x^0
    square = 1 << 30  # x^1
    bits = 3  # 8 n = n << 3: start at x^(2^3)
    for _ in range(bits):
        square = crc32c_multmodp(square, square)
    while n:
        if n & 1:
            p = crc32c_multmodp(square, p)
        n >>= 1
        square = crc32c_multmodp(square, square)
    return p


def crc32c_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """CRC-32C of ``A + B`` from ``crc(A)``, ``crc(B)`` and ``len(B)``."""
    return crc32c_multmodp(crc32c_x8n(len_b), crc_a) ^ crc_b


def crc32c_batch(data: np.ndarray, offset: np.ndarray, size: np.ndarray, segment: int = CRC32C_SEGMENT) -> np.ndarray:
    """Mirror of ``crc32c_segments`` + ``crc32c_combine_segments``: CRC-32C of every buffer.

    Each buffer is cut into ``segment``-byte pieces whose CRCs are computed
    independently (one GPU thread each: table-driven, byte at a time), then folded left
    to right with :func:`crc32c_combine` (one GPU block per buffer). Returns uint32 CRCs.
    """
    offset = np.asarray(offset, dtype=np.int64)
    size = np.asarray(size, dtype=np.int64)
    nseg = np.maximum((size + segment - 1) // segment, 0)
    seg_buf = np.repeat(np.arange(len(size)), nseg)
    seg_start_of_buf = np.zeros(len(size) + 1, dtype=np.int64)
    np.cumsum(nseg, out=seg_start_of_buf[1:])
    seg_index = np.arange(int(nseg.sum()), dtype=np.int64) - seg_start_of_buf[:-1][seg_buf]
    seg_lo = offset[seg_buf] + seg_index * segment
    seg_len = np.minimum(segment, size[seg_buf] - seg_index * segment)
    crc = np.full(seg_lo.size, 0xFFFFFFFF, dtype=np.uint32)
    for k in range(segment):
        live = k < seg_len
        if not live.any():
            break
        byte = np.where(live, data[np.where(live, seg_lo + k, 0)], 0).astype(np.uint32)
        nxt = CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        crc = np.where(live, nxt, crc)
    crc ^= np.uint32(0xFFFFFFFF)
    result = np.zeros(len(size), dtype=np.uint32)
    full_op = crc32c_x8n(segment)
    for u in range(len(size)):
        acc = 0
        for s in range(int(seg_start_of_buf[u]), int(seg_start_of_buf[u + 1])):
            n = int(seg_len[s])
            op = full_op if n == segment else crc32c_x8n(n)
            acc = crc32c_multmodp(op, acc) ^ int(crc[s])
        result[u] = acc
    return result
