"""Parse and validate a whole batch of Blosc1 chunks into flat tables, for the GPU engine.

:func:`parse_blosc_batch` turns a whole batch of chunks into flat NumPy tables (one
row per chunk, per block, per stream) with whole-array operations, checking every
header field, every block start and every stream size against the buffer first —
nvCOMP assumes valid input, so nothing unchecked may reach it. The GPU engine uploads
``blob`` once and drives nvCOMP and the unshuffle kernel from these tables. The format
rules themselves (header, flags, split and shuffle rules, block-table walk) live in
:mod:`gpuzarr.codecs.blosc.format`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuzarr.codecs.blosc.format import (
    FLAG_MEMCPYED,
    FLAG_RESERVED,
    FORMAT_NAMES,
    HEADER_BYTES,
    HEADER_DTYPE,
    KNOWN_FORMATS,
    MAX_BLOCKSIZE,
    MAX_TYPESIZE,
    MODE_NONE,
    NATIVE_FORMATS,
    STREAM_COMPRESSED,
    STREAM_RAW,
    VERSION_FORMAT,
    block_count,
    block_sizes,
    inner_format,
    read_i32,
    shuffle_mode,
    split_count,
    walk_streams,
)
from gpuzarr.errors import CorruptChunkError
from gpuzarr.storage.buffers import concatenate_aligned


@dataclass(frozen=True)
class BloscBatch:
    """Flat tables describing every chunk, block and stream of one batch.

    ``blob`` holds the chunks back to back, chunk ``c`` starting at ``chunk_base[c]``
    (a multiple of 16). All ``*_offset`` columns of streams are absolute offsets into
    ``blob``. A memcpyed chunk is described as one block with one raw stream, so every
    consumer handles every chunk the same way. Blocks are grouped by chunk, in
    order (``block_chunk``), streams of a block
    ``block_stream_start[b]:block_stream_start[b+1]`` (``j``-th stream = ``j``-th byte
    plane when the block is split).
    """

    keys: tuple[str, ...]
    blob: np.ndarray  # uint8
    chunk_base: np.ndarray  # (C,) int64
    chunk_nbytes: np.ndarray  # (C,) int64 decoded size
    chunk_flags: np.ndarray  # (C,) uint8
    block_chunk: np.ndarray  # (B,) int64
    block_size: np.ndarray  # (B,) int64 decoded bytes of the block
    block_typesize: np.ndarray  # (B,) int64
    block_mode: np.ndarray  # (B,) int64 MODE_*
    block_nsplits: np.ndarray  # (B,) int64
    block_out_offset: np.ndarray  # (B,) int64 offset of the block inside its decoded chunk
    block_stream_start: np.ndarray  # (B+1,) int64
    stream_block: np.ndarray  # (S,) int64
    stream_offset: np.ndarray  # (S,) int64 first payload byte in blob
    stream_csize: np.ndarray  # (S,) int64 stored bytes
    stream_usize: np.ndarray  # (S,) int64 decoded bytes
    stream_kind: np.ndarray  # (S,) int64 STREAM_RAW / STREAM_COMPRESSED
    stream_format: np.ndarray  # (S,) int64 FORMAT_* of the chunk

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_base)

    @property
    def n_blocks(self) -> int:
        return len(self.block_chunk)

    @property
    def n_streams(self) -> int:
        return len(self.stream_block)

    @property
    def stream_chunk(self) -> np.ndarray:
        return self.block_chunk[self.stream_block]

    @property
    def chunk_memcpyed(self) -> np.ndarray:
        return (self.chunk_flags & FLAG_MEMCPYED) != 0

    def chunks_needing_cpu(self) -> np.ndarray:
        """Chunks with a compressed stream in a format no GPU decoder exists for (blosclz)."""
        compressed = self.stream_kind == STREAM_COMPRESSED
        bad = compressed & ~np.isin(self.stream_format, NATIVE_FORMATS)
        mask = np.zeros(self.n_chunks, dtype=bool)
        mask[self.stream_chunk[bad]] = True
        return mask


@dataclass(frozen=True)
class BloscCheck:
    """Per-chunk verdict of :func:`check_blosc_batch`: ``ok[c]`` or ``reasons[c]``."""

    ok: np.ndarray  # (C,) bool
    reasons: tuple[str, ...]  # "" where ok



class _Verdicts:
    """Collects the first failure reason per chunk while checks run as whole-array masks."""

    def __init__(self, n: int) -> None:
        self.ok = np.ones(n, dtype=bool)
        self.reasons: list[str] = [""] * n

    def fail(self, mask: np.ndarray, describe: Any) -> None:
        new = np.flatnonzero(mask & self.ok)
        for c in new.tolist():
            self.reasons[c] = describe(c)
        self.ok[new] = False


def _analyse(chunks: Sequence[Any], expected_nbytes: int | Sequence[int] | None, align: int,
             packed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[
        _Verdicts, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Run every check; returns the verdicts, the tables (rows of bad chunks included), blob, base."""
    blob, base, length = packed if packed is not None else concatenate_aligned(chunks, align)
    n = len(length)
    v = _Verdicts(n)

    short = length < HEADER_BYTES
    v.fail(short, lambda c: f"{int(length[c])} bytes is shorter than the 16-byte Blosc header")
    safe_base = np.where(short, 0, base)
    if n and blob.size >= HEADER_BYTES:
        hdr = blob[np.where(short, 0, safe_base)[:, None] + np.arange(HEADER_BYTES)]
    else:
        hdr = np.zeros((n, HEADER_BYTES), dtype=np.uint8)
    hdr = np.where(short[:, None], 0, hdr).astype(np.uint8)
    h = np.ascontiguousarray(hdr).view(HEADER_DTYPE).reshape(n)
    version = h["version"].astype(np.int64)
    versionlz = h["versionlz"].astype(np.int64)
    flags = h["flags"]
    typesize = h["typesize"].astype(np.int64)
    nbytes, blocksize, cbytes = (h[f].astype(np.int64) for f in ("nbytes", "blocksize", "cbytes"))
    fmt = inner_format(flags)
    memcpyed = (flags & FLAG_MEMCPYED) != 0

    v.fail(version != VERSION_FORMAT, lambda c: f"Blosc format version {int(version[c])} (only 2 is readable)")
    v.fail(nbytes < 0, lambda c: f"negative decoded size {int(nbytes[c])}")
    if expected_nbytes is not None:
        exp = np.broadcast_to(np.asarray(expected_nbytes, dtype=np.int64), (n,))
        v.fail(nbytes != exp, lambda c: f"header says {int(nbytes[c])} decoded bytes, the chunk has {int(exp[c])}")
    v.fail((cbytes < HEADER_BYTES) | (cbytes > length),
           lambda c: f"header compressed size {int(cbytes[c])} does not fit the {int(length[c])}-byte buffer")
    nonempty = nbytes > 0
    v.fail(nonempty & ((typesize < 1) | (typesize > MAX_TYPESIZE)), lambda c: f"typesize {int(typesize[c])}")
    v.fail(nonempty & ((blocksize <= 0) | (blocksize > nbytes) | (blocksize > MAX_BLOCKSIZE)),
           lambda c: f"block size {int(blocksize[c])} for {int(nbytes[c])} decoded bytes")
    v.fail(nonempty & ((flags & FLAG_RESERVED) != 0), lambda c: f"reserved flag bit set (flags 0x{int(flags[c]):02x})")
    v.fail(nonempty & memcpyed & (nbytes + HEADER_BYTES != cbytes),
           lambda c: f"memcpyed chunk of {int(nbytes[c])} bytes with compressed size {int(cbytes[c])}")
    compressed_chunk = nonempty & ~memcpyed
    v.fail(compressed_chunk & ~np.isin(fmt, KNOWN_FORMATS),
           lambda c: f"inner compressor format {int(fmt[c])} ({FORMAT_NAMES.get(int(fmt[c]), 'unknown')}) cannot be decoded")
    v.fail(compressed_chunk & (versionlz != 1),
           lambda c: f"{FORMAT_NAMES.get(int(fmt[c]), 'unknown')} format version {int(versionlz[c])} (only 1 is readable)")

    # ---- blocks (only chunks that passed so far and hold compressed blocks)
    nblocks = block_count(nbytes, blocksize)
    v.fail(compressed_chunk & (nblocks > (cbytes - HEADER_BYTES) // 4),
           lambda c: f"{int(nblocks[c])} block starts do not fit compressed size {int(cbytes[c])}")
    blocked = v.ok & compressed_chunk
    copied = v.ok & nonempty & memcpyed
    # memcpyed chunks: one block, one raw stream; blocked chunks: nblocks blocks
    n_rows = np.where(blocked, nblocks, np.where(copied, 1, 0)).astype(np.int64)
    block_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(n_rows, out=block_start[1:])
    n_blk = int(block_start[-1])
    block_chunk = np.repeat(np.arange(n, dtype=np.int64), n_rows)
    block_index = np.arange(n_blk, dtype=np.int64) - block_start[:-1][block_chunk]
    bc_blocked = blocked[block_chunk]
    bsz = blocksize[block_chunk]
    size, leftover = block_sizes(block_index, nbytes[block_chunk], bsz)
    leftover &= bc_blocked
    block_size = np.where(bc_blocked, size, nbytes[block_chunk])
    block_out = np.where(bc_blocked, block_index * bsz, 0)
    ts = typesize[block_chunk]
    bflags = flags[block_chunk]
    nsplits = np.where(bc_blocked, split_count(bflags, ts, block_size, leftover), 1)
    mode = np.where(bc_blocked, shuffle_mode(bflags, ts, block_size), MODE_NONE)

    bad_split = (nsplits > 1) & (block_size % np.maximum(ts, 1) != 0)
    v.fail(np.isin(np.arange(n), block_chunk[bad_split]),
           lambda c: "split block whose size is not a multiple of the typesize")

    # block starts (relative to the chunk), then every block's stream table
    bstart_pos = base[block_chunk] + HEADER_BYTES + 4 * block_index
    bstart = np.where(bc_blocked, read_i32(blob, np.where(bc_blocked, bstart_pos, 0)), HEADER_BYTES)
    stream_start, stream_offset, stream_csize, block_bad = walk_streams(
        blob, base[block_chunk], bstart, nsplits, cbytes[block_chunk], HEADER_BYTES + 4 * nblocks[block_chunk],
        bc_blocked)
    stream_block = np.repeat(np.arange(n_blk, dtype=np.int64), nsplits)
    neblock = block_size // np.maximum(nsplits, 1)
    bad_chunks = np.unique(block_chunk[block_bad])
    if bad_chunks.size:
        first_bad = {}
        for b in np.flatnonzero(block_bad).tolist():
            first_bad.setdefault(int(block_chunk[b]), b)
        mask = np.zeros(n, dtype=bool)
        mask[bad_chunks] = True
        v.fail(mask, lambda c: (f"block {int(block_index[first_bad[c]])} (start {int(bstart[first_bad[c]])}) starts inside the "
                                f"block table or has a stream outside the {int(cbytes[c])}-byte chunk"))

    # memcpyed chunks: the raw bytes right after the header
    copied_rows = ~bc_blocked
    s_copy = stream_start[:-1][copied_rows]
    stream_offset[s_copy] = base[block_chunk[copied_rows]] + HEADER_BYTES
    stream_csize[s_copy] = block_size[copied_rows]

    stream_usize = neblock[stream_block]
    stream_kind = np.where(stream_csize == stream_usize, STREAM_RAW, STREAM_COMPRESSED).astype(np.int64)
    stream_format = fmt[block_chunk[stream_block]]

    tables = {
        "chunk_base": base, "chunk_nbytes": np.maximum(nbytes, 0), "chunk_flags": flags.copy(),
        "block_chunk": block_chunk, "block_size": block_size,
        "block_typesize": ts, "block_mode": mode, "block_nsplits": nsplits, "block_out_offset": block_out,
        "block_stream_start": stream_start, "stream_block": stream_block, "stream_offset": stream_offset,
        "stream_csize": stream_csize, "stream_usize": stream_usize, "stream_kind": stream_kind,
        "stream_format": stream_format,
    }
    return v, tables, blob, base


def _keys_for(n: int, keys: Sequence[str] | None) -> tuple[str, ...]:
    if keys is None:
        return tuple(f"<chunk {i}>" for i in range(n))
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} chunks")
    return tuple(str(k) for k in keys)


def check_blosc_batch(chunks: Sequence[Any], *, expected_nbytes: int | Sequence[int] | None = None) -> BloscCheck:
    """Validate every chunk of a batch without raising: which chunks are well-formed, and why not.

    Well-formed means every header field is consistent and every block start and
    stream (size word and payload) lies inside the chunk's compressed size, which
    itself lies inside the buffer. Streams are not decoded.
    """
    v, _, _, _ = _analyse(chunks, expected_nbytes, 16)
    return BloscCheck(ok=v.ok, reasons=tuple(v.reasons))


def parse_blosc_batch(
    chunks: Sequence[Any],
    *,
    keys: Sequence[str] | None = None,
    array_name: str = "",
    expected_nbytes: int | Sequence[int] | None = None,
    align: int = 16,
    packed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> BloscBatch:
    """Parse and validate a batch of Blosc1 chunks into flat tables (see :class:`BloscBatch`).

    Raises :class:`CorruptChunkError` naming the array and the key of the first chunk
    that fails any check. ``expected_nbytes`` (one int for all chunks, or one per
    chunk) makes a header that disagrees with the array's chunk size an error too.
    ``packed``: ``(blob, base, length)`` of the chunks already laid out back to back
    (what :func:`concatenate_aligned` returns, e.g. the image the GPU engine uploaded to
    check crc32c; ``length`` may stop short of a trailer), used instead of
    concatenating ``chunks`` again, so offsets refer to that image.
    """
    if align < 1 or align & (align - 1):
        raise ValueError(f"align must be a power of two, not {align}")
    key_t = _keys_for(len(chunks), keys)
    v, t, blob, _ = _analyse(chunks, expected_nbytes, max(align, 16), packed)
    bad = np.flatnonzero(~v.ok)
    if bad.size:
        c = int(bad[0])
        more = f" (and {bad.size - 1} more chunks)" if bad.size > 1 else ""
        raise CorruptChunkError.of_chunk(array_name, key_t[c], f"is not a valid Blosc chunk: {v.reasons[c]}{more}")
    return BloscBatch(keys=key_t, blob=blob, **t)


