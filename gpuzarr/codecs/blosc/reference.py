"""The CPU reference of the GPU engine's Blosc path: same tables, same arena, NumPy kernel mirrors.

:func:`decode_blosc_reference` parses a batch (:mod:`gpuzarr.codecs.blosc.parse`),
decodes every compressed stream with python-lz4, numcodecs' Zstd or zlib into an
aligned scratch area of one arena (as nvCOMP does on the GPU), and rebuilds the blocks
with the NumPy mirror of the unshuffle kernel. It is checked against numcodecs on every
test run. :func:`zstd_content_size` and :func:`decode_blosc_chunk_numcodecs` are shared
with the GPU engine (declared-size check, blosclz fallback).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpuzarr.codecs.blosc.format import (
    FORMAT_LZ4,
    FORMAT_NAMES,
    FORMAT_ZLIB,
    FORMAT_ZSTD,
    NATIVE_FORMATS,
    STREAM_COMPRESSED,
)
from gpuzarr.codecs.blosc.parse import BloscBatch, parse_blosc_batch
from gpuzarr.errors import CorruptChunkError

_ZSTD_MAGIC = 0xFD2FB528


def zstd_content_size(frame: memoryview) -> int | None:
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

        declared = zstd_content_size(data)
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
    arena, stream_arena_offset = decode_streams_cpu(batch, array_name)
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
        raise CorruptChunkError.of_chunk(array_name, key, f"cannot be decoded by Blosc: {exc}") from exc
    arr = np.frombuffer(raw, dtype=np.uint8)
    if arr.size != nbytes:
        raise CorruptChunkError.of_chunk(array_name, key, f"decoded to {arr.size} bytes, expected {nbytes}")
    return arr


def decode_streams_cpu(batch: BloscBatch, array_name: str) -> tuple[np.ndarray, np.ndarray]:
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
            raise CorruptChunkError.of_chunk(array_name, key, f"has a corrupt inner stream: {exc}") from exc
        at = blob_len + int(scratch_off[s])
        arena[at:at + len(decoded)] = np.frombuffer(decoded, dtype=np.uint8)
    stream_arena_offset = np.where(compressed, blob_len + scratch_off, batch.stream_offset)
    return arena, stream_arena_offset
