"""Blosc1 containers on the host: parse and validate a whole batch, and the NumPy reference decoder.

A Blosc1 chunk (what numcodecs/c-blosc 1.x writes, and zarr's ``blosc`` codec) is::

    16-byte header   version(=2) versionlz flags typesize | nbytes | blocksize | cbytes
    int32 bstarts[nblocks]          block starts, relative to the chunk start
    per block: nsplits × (int32 csize, csize bytes)   one stream per byte plane or one

unless the ``MEMCPYED`` flag (0x02) is set, in which case the ``nbytes`` raw bytes
follow the header directly. A stream whose ``csize`` equals its uncompressed size is
stored raw; any other is an LZ4 block (lz4 and lz4hc), a Zstd frame, a zlib stream or
a BloscLZ stream, by the format in the top three flag bits.

:func:`parse_blosc_batch` turns a whole batch of chunks into flat NumPy tables (one
row per chunk, per block, per stream) with whole-array operations, checking every
header field, every block start and every stream size against the buffer first —
nvCOMP assumes valid input, so nothing unchecked may reach it. The GPU engine uploads
``blob`` once and drives nvCOMP and the unshuffle kernel from these tables.
:func:`decode_blosc_reference` is the same path on the CPU (python-lz4, zstd, zlib and
the NumPy kernel mirrors), checked against numcodecs on every test run.

Split rule and shuffle rules follow c-blosc 1.21 ``blosc_d`` exactly: a block is split
into ``typesize`` streams when the DONT_SPLIT flag (0x10) is clear, ``typesize <= 16``,
``blocksize // typesize >= 128`` and it is not the leftover (last, partial) block.
Byte shuffle applies when flag 0x01 is set and ``typesize > 1``; otherwise bit shuffle
applies when flag 0x04 is set and ``blocksize >= typesize`` (see
:func:`gpuzarr.engines.gpu.mirrors.unshuffle_blocks` for the leftover rules).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuzarr.errors import CorruptChunkError
from gpuzarr.storage.base import concatenate_aligned

HEADER_BYTES = 16
VERSION_FORMAT = 2
MIN_BUFFERSIZE = 128
MAX_SPLITS = 16
MAX_TYPESIZE = 255
MAX_BLOCKSIZE = (2**31 - 1 - MAX_TYPESIZE * 4) // 3  # c-blosc's BLOSC_MAX_BLOCKSIZE

FLAG_SHUFFLE = 0x01
FLAG_MEMCPYED = 0x02
FLAG_BITSHUFFLE = 0x04
FLAG_RESERVED = 0x08
FLAG_DONT_SPLIT = 0x10

FORMAT_BLOSCLZ = 0
FORMAT_LZ4 = 1
FORMAT_SNAPPY = 2
FORMAT_ZLIB = 3
FORMAT_ZSTD = 4
FORMAT_NAMES = {FORMAT_BLOSCLZ: "blosclz", FORMAT_LZ4: "lz4", FORMAT_SNAPPY: "snappy",
                FORMAT_ZLIB: "zlib", FORMAT_ZSTD: "zstd"}
#: inner formats gpuzarr decodes itself (on the GPU with nvCOMP, on the CPU in the reference)
NATIVE_FORMATS = (FORMAT_LZ4, FORMAT_ZLIB, FORMAT_ZSTD)
#: formats numcodecs can still decode: blosclz chunks fall back to the CPU
KNOWN_FORMATS = (FORMAT_BLOSCLZ, FORMAT_LZ4, FORMAT_ZLIB, FORMAT_ZSTD)

STREAM_RAW = 0
STREAM_COMPRESSED = 1

MODE_NONE = 0
MODE_SHUFFLE = 1
MODE_BITSHUFFLE = 2

_ZSTD_MAGIC = 0xFD2FB528


@dataclass(frozen=True)
class BloscBatch:
    """Flat tables describing every chunk, block and stream of one batch.

    ``blob`` holds the chunks back to back, chunk ``c`` starting at ``chunk_base[c]``
    (a multiple of 16). All ``*_offset`` columns of streams are absolute offsets into
    ``blob``. A memcpyed chunk is described as one block with one raw stream, so every
    consumer handles every chunk the same way. Blocks of a chunk are
    ``chunk_block_start[c]:chunk_block_start[c+1]``, streams of a block
    ``block_stream_start[b]:block_stream_start[b+1]`` (``j``-th stream = ``j``-th byte
    plane when the block is split).
    """

    keys: tuple[str, ...]
    blob: np.ndarray  # uint8
    chunk_base: np.ndarray  # (C,) int64
    chunk_nbytes: np.ndarray  # (C,) int64 decoded size
    chunk_typesize: np.ndarray  # (C,) int64
    chunk_blocksize: np.ndarray  # (C,) int64
    chunk_flags: np.ndarray  # (C,) uint8
    chunk_format: np.ndarray  # (C,) int64
    chunk_block_start: np.ndarray  # (C+1,) int64
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

    def first_error(self) -> int | None:
        bad = np.flatnonzero(~self.ok)
        return int(bad[0]) if bad.size else None


# ----------------------------------------------------------------------------- helpers


def _read_i32(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Little-endian int32 at each (already bounds-checked) offset of ``blob``."""
    if offsets.size == 0:
        return np.zeros(0, dtype=np.int64)
    idx = offsets.astype(np.int64)[:, None] + np.arange(4, dtype=np.int64)
    return np.ascontiguousarray(blob[idx]).view("<i4").reshape(-1).astype(np.int64)


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


# ----------------------------------------------------------------------------- parsing


def _split_rule(nsplits_allowed: np.ndarray, typesize: np.ndarray, bsize: np.ndarray,
                leftover: np.ndarray) -> np.ndarray:
    """c-blosc 1.21 ``blosc_d``: streams per block."""
    split = (nsplits_allowed & (typesize <= MAX_SPLITS)
             & ((bsize // np.maximum(typesize, 1)) >= MIN_BUFFERSIZE) & ~leftover)
    return np.where(split, typesize, 1).astype(np.int64)


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
    version = hdr[:, 0].astype(np.int64)
    versionlz = hdr[:, 1].astype(np.int64)
    flags = hdr[:, 2]
    typesize = hdr[:, 3].astype(np.int64)
    words = np.ascontiguousarray(hdr[:, 4:16]).view("<i4").reshape(n, 3).astype(np.int64)
    nbytes, blocksize, cbytes = words[:, 0], words[:, 1], words[:, 2]
    fmt = (flags.astype(np.int64) >> 5) & 0x7
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
    safe_bs = np.where(blocksize > 0, blocksize, 1)
    nblocks = np.where(nbytes > 0, nbytes // safe_bs + (nbytes % safe_bs > 0), 0)
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
    chunk_leftover = nbytes % safe_bs
    is_last = block_index == nblocks[block_chunk] - 1
    leftover = bc_blocked & is_last & (chunk_leftover[block_chunk] > 0)
    block_size = np.where(bc_blocked, np.where(leftover, chunk_leftover[block_chunk], bsz), nbytes[block_chunk])
    block_out = np.where(bc_blocked, block_index * bsz, 0)
    ts = typesize[block_chunk]
    bflags = flags[block_chunk]
    dont_split = (bflags & FLAG_DONT_SPLIT) != 0
    nsplits = np.where(bc_blocked, _split_rule(~dont_split, ts, block_size, leftover), 1)
    doshuffle = bc_blocked & ((bflags & FLAG_SHUFFLE) != 0) & (ts > 1)
    dobitshuffle = bc_blocked & ~doshuffle & ((bflags & FLAG_BITSHUFFLE) != 0) & (block_size >= ts)
    mode = np.where(doshuffle, MODE_SHUFFLE, np.where(dobitshuffle, MODE_BITSHUFFLE, MODE_NONE)).astype(np.int64)

    bad_split = (nsplits > 1) & (block_size % np.maximum(ts, 1) != 0)
    v.fail(np.isin(np.arange(n), block_chunk[bad_split]),
           lambda c: "split block whose size is not a multiple of the typesize")

    # block starts, relative to the chunk
    chunk_cbytes = cbytes[block_chunk]
    bstart_pos = base[block_chunk] + HEADER_BYTES + 4 * block_index
    bstart = np.where(bc_blocked, _read_i32(blob, np.where(bc_blocked, bstart_pos, 0)), HEADER_BYTES)

    # ---- streams: one pass per split index (at most 16), vectorised over blocks
    stream_start = np.zeros(n_blk + 1, dtype=np.int64)
    np.cumsum(nsplits, out=stream_start[1:])
    n_str = int(stream_start[-1])
    stream_block = np.repeat(np.arange(n_blk, dtype=np.int64), nsplits)
    stream_offset = np.zeros(n_str, dtype=np.int64)
    stream_csize = np.zeros(n_str, dtype=np.int64)
    neblock = block_size // np.maximum(nsplits, 1)
    cursor = bstart.copy()  # relative to chunk start: position of the next int32 size
    block_bad = np.zeros(n_blk, dtype=bool)
    max_splits = int(nsplits.max()) if n_blk else 0
    for j in range(max_splits):
        active = (nsplits > j) & bc_blocked & ~block_bad
        head_ok = (cursor >= 0) & (cursor <= chunk_cbytes - 4)
        block_bad |= active & ~head_ok
        active &= head_ok
        idx = np.flatnonzero(active)
        csize = _read_i32(blob, base[block_chunk[idx]] + cursor[idx])
        payload = cursor[idx] + 4
        size_ok = (csize >= 0) & (csize <= chunk_cbytes[idx] - payload)
        block_bad[idx[~size_ok]] = True
        good = idx[size_ok]
        s = stream_start[good] + j
        stream_offset[s] = base[block_chunk[good]] + payload[size_ok]
        stream_csize[s] = csize[size_ok]
        cursor[good] = payload[size_ok] + csize[size_ok]
    bad_chunks = np.unique(block_chunk[block_bad])
    if bad_chunks.size:
        first_bad = {}
        for b in np.flatnonzero(block_bad).tolist():
            first_bad.setdefault(int(block_chunk[b]), b)
        mask = np.zeros(n, dtype=bool)
        mask[bad_chunks] = True
        v.fail(mask, lambda c: (f"block {int(block_index[first_bad[c]])} (start {int(bstart[first_bad[c]])}) has a "
                                f"stream offset or size outside the {int(cbytes[c])}-byte chunk"))

    # memcpyed chunks: the raw bytes right after the header
    copied_rows = ~bc_blocked
    s_copy = stream_start[:-1][copied_rows]
    stream_offset[s_copy] = base[block_chunk[copied_rows]] + HEADER_BYTES
    stream_csize[s_copy] = block_size[copied_rows]

    stream_usize = neblock[stream_block]
    stream_kind = np.where(stream_csize == stream_usize, STREAM_RAW, STREAM_COMPRESSED).astype(np.int64)
    stream_format = fmt[block_chunk[stream_block]]

    tables = {
        "chunk_base": base, "chunk_nbytes": np.maximum(nbytes, 0), "chunk_typesize": typesize,
        "chunk_blocksize": blocksize, "chunk_flags": flags.copy(), "chunk_format": fmt,
        "chunk_block_start": block_start, "block_chunk": block_chunk, "block_size": block_size,
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
        raise CorruptChunkError(f"{array_name}: chunk {key_t[c]!r} is not a valid Blosc chunk: {v.reasons[c]}{more}",
                                array=array_name, key=key_t[c])
    return BloscBatch(keys=key_t, blob=blob, **t)


# ----------------------------------------------------------------------------- CPU reference


def _zstd_content_size(frame: memoryview) -> int | None:
    """Frame_Content_Size of a Zstd frame header, ``None`` when absent; raises ValueError if malformed."""
    if len(frame) < 5 or int.from_bytes(frame[:4], "little") != _ZSTD_MAGIC:
        raise ValueError("not a Zstd frame")
    fhd = frame[4]
    fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
    dict_bytes = (0, 1, 2, 4)[fhd & 3]
    fcs_bytes = (1 if single else 0, 2, 4, 8)[fcs_flag]
    pos = 5 + (0 if single else 1) + dict_bytes
    if fcs_bytes == 0:
        return None
    if len(frame) < pos + fcs_bytes:
        raise ValueError("truncated Zstd frame header")
    value = int.from_bytes(frame[pos:pos + fcs_bytes], "little")
    return value + 256 if fcs_bytes == 2 else value


def decode_stream_cpu(fmt: int, data: memoryview, usize: int) -> bytes | bytearray:
    """Decode one inner stream to exactly ``usize`` bytes, as c-blosc does; raises ValueError."""
    if fmt == FORMAT_LZ4:
        import lz4.block

        try:
            out = lz4.block.decompress(data, uncompressed_size=usize)
        except lz4.block.LZ4BlockError as exc:
            raise ValueError(f"LZ4 stream cannot be decoded: {exc}") from None
    elif fmt == FORMAT_ZSTD:
        from numcodecs import zstd as _zstd

        declared = _zstd_content_size(data)
        if declared is not None and declared != usize:
            raise ValueError(f"Zstd frame declares {declared} bytes, the block needs {usize}")
        out = bytearray(usize)
        try:
            _zstd.decompress(data, out)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"Zstd stream cannot be decoded: {exc}") from None
    elif fmt == FORMAT_ZLIB:
        d = zlib.decompressobj()
        try:
            out = d.decompress(data, usize + 1)
        except zlib.error as exc:
            raise ValueError(f"zlib stream cannot be decoded: {exc}") from None
        if not d.eof:
            raise ValueError("zlib stream is truncated or longer than the block")
    else:
        raise ValueError(f"no CPU decoder for inner format {FORMAT_NAMES.get(fmt, fmt)}")
    if len(out) != usize:
        raise ValueError(f"stream decoded to {len(out)} bytes, the block needs {usize}")
    return out


def decode_blosc_reference(
    chunks: Sequence[Any],
    *,
    keys: Sequence[str] | None = None,
    array_name: str = "",
    expected_nbytes: int | Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Decode a batch of Blosc1 chunks on the CPU along the GPU engine's path.

    Host parse → each compressed stream decoded by python-lz4 / numcodecs' Zstd / zlib
    into an aligned scratch area of one arena (as nvCOMP does on the GPU) → the NumPy
    mirror of the unshuffle kernel builds every block. BloscLZ chunks, which have no
    GPU decoder, are decoded by numcodecs as the GPU engine's fallback does. Returns one
    uint8 array per chunk; raises :class:`CorruptChunkError` naming the key on any failure.
    """
    from gpuzarr.engines.gpu.mirrors import unshuffle_blocks

    batch = parse_blosc_batch(chunks, keys=keys, array_name=array_name, expected_nbytes=expected_nbytes)
    arena, stream_arena_offset = _decode_streams_cpu(batch, array_name)
    cpu_only = batch.chunks_needing_cpu()
    out_base = np.zeros(batch.n_chunks + 1, dtype=np.int64)
    np.cumsum(batch.chunk_nbytes, out=out_base[1:])
    out = np.zeros(int(out_base[-1]), dtype=np.uint8)
    run = ~cpu_only[batch.block_chunk]
    unshuffle_blocks(
        arena, stream_arena_offset, batch.block_stream_start, batch.block_nsplits, batch.block_size,
        batch.block_typesize, batch.block_mode, out_base[batch.block_chunk] + batch.block_out_offset, out,
        block_mask=run,
    )
    results = [out[out_base[c]:out_base[c + 1]] for c in range(batch.n_chunks)]
    for c in np.flatnonzero(cpu_only).tolist():
        results[c] = decode_blosc_chunk_numcodecs(chunks[c], key=batch.keys[c], array_name=array_name,
                                                  nbytes=int(batch.chunk_nbytes[c]))
    return results


def decode_blosc_chunk_numcodecs(chunk: Any, *, key: str, array_name: str, nbytes: int) -> np.ndarray:
    """One chunk through numcodecs (the fallback for blosclz), errors as CorruptChunkError."""
    import numcodecs.blosc

    try:
        raw = numcodecs.blosc.decompress(chunk)
    except (RuntimeError, ValueError) as exc:
        raise CorruptChunkError(f"{array_name}: chunk {key!r} cannot be decoded by Blosc: {exc}",
                                array=array_name, key=key) from exc
    arr = np.frombuffer(raw, dtype=np.uint8)
    if arr.size != nbytes:
        raise CorruptChunkError(f"{array_name}: chunk {key!r} decoded to {arr.size} bytes, expected {nbytes}",
                                array=array_name, key=key)
    return arr


def _decode_streams_cpu(batch: BloscBatch, array_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Arena = blob + aligned scratch holding every decoded compressed stream; per-stream offsets into it."""
    compressed = (batch.stream_kind == STREAM_COMPRESSED) & np.isin(batch.stream_format, NATIVE_FORMATS)
    sizes = np.where(compressed, batch.stream_usize, 0)
    slot = (sizes + 15) // 16 * 16
    scratch_off = np.zeros(batch.n_streams, dtype=np.int64)
    if batch.n_streams:
        np.cumsum(slot[:-1], out=scratch_off[1:])
    blob_len = (batch.blob.size + 15) // 16 * 16
    arena = np.zeros(blob_len + int(slot.sum()), dtype=np.uint8)
    arena[: batch.blob.size] = batch.blob
    blob_bytes = batch.blob.tobytes() if batch.blob.size else b""
    view = memoryview(blob_bytes)
    stream_chunk = batch.stream_chunk
    for s in np.flatnonzero(compressed).tolist():
        lo = int(batch.stream_offset[s])
        data = view[lo:lo + int(batch.stream_csize[s])]
        try:
            decoded = decode_stream_cpu(int(batch.stream_format[s]), data, int(batch.stream_usize[s]))
        except ValueError as exc:
            key = batch.keys[int(stream_chunk[s])]
            raise CorruptChunkError(f"{array_name}: chunk {key!r} has a corrupt inner stream: {exc}",
                                    array=array_name, key=key) from exc
        at = blob_len + int(scratch_off[s])
        arena[at:at + len(decoded)] = np.frombuffer(decoded, dtype=np.uint8)
    stream_arena_offset = np.where(compressed, blob_len + scratch_off, batch.stream_offset)
    return arena, stream_arena_offset
