"""The Blosc1 container format, written down once: header, flags, inner formats, block table rules.

A Blosc1 chunk (what numcodecs/c-blosc 1.x writes, and zarr's ``blosc`` codec) is::

    16-byte header   version(=2) versionlz flags typesize | nbytes | blocksize | cbytes
    int32 bstarts[nblocks]          block starts, relative to the chunk start
    per block: nsplits × (int32 csize, csize bytes)   one stream per byte plane or one

unless the ``MEMCPYED`` flag (0x02) is set, in which case the ``nbytes`` raw bytes
follow the header directly. A stream whose ``csize`` equals its uncompressed size is
stored raw; any other is an LZ4 block (lz4 and lz4hc), a Zstd frame, a zlib stream or
a BloscLZ stream, by the format in the top three flag bits.

Split rule and shuffle rules follow c-blosc 1.21 ``blosc_d`` exactly: a block is split
into ``typesize`` streams when the DONT_SPLIT flag (0x10) is clear, ``typesize <= 16``,
``blocksize // typesize >= 128`` and it is not the leftover (last, partial) block.
Byte shuffle applies when flag 0x01 is set and ``typesize > 1``; otherwise bit shuffle
applies when flag 0x04 is set and ``blocksize >= typesize`` (see
:func:`gpuzarr.engines.gpu.mirrors.unshuffle_blocks` for the leftover rules).

Both readers of the format use these rules: the batch parser for the GPU engine
(:mod:`gpuzarr.codecs.blosc.parse`) and the partial decoder of the CPU engine
(:mod:`gpuzarr.codecs.blosc.partial`). Every function works on whole arrays (one row
per chunk or per block), so a batch is checked without per-block Python.
"""

from __future__ import annotations

import struct

import numpy as np

HEADER_BYTES = 16
VERSION_FORMAT = 2
MIN_BUFFERSIZE = 128
MAX_SPLITS = 16
MAX_TYPESIZE = 255
MAX_BLOCKSIZE = (2**31 - 1 - MAX_TYPESIZE * 4) // 3  # c-blosc's BLOSC_MAX_BLOCKSIZE

#: the 16-byte header as a NumPy record (little-endian)
HEADER_DTYPE = np.dtype([("version", "u1"), ("versionlz", "u1"), ("flags", "u1"), ("typesize", "u1"),
                         ("nbytes", "<i4"), ("blocksize", "<i4"), ("cbytes", "<i4")])

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


#: :data:`HEADER_DTYPE` as a ``struct`` layout, for reading one chunk's header without NumPy
_HEADER_STRUCT = struct.Struct("<BBBBiii")


def header_fields(buf: object) -> tuple[int, int, int, int, int, int, int]:
    """One chunk's header as ints ``(version, versionlz, flags, typesize, nbytes, blocksize, cbytes)``.

    ``buf`` holds at least 16 bytes; the fields of :data:`HEADER_DTYPE`, read with one
    ``struct`` unpack (the per-chunk path; batches read the record array instead).
    """
    return _HEADER_STRUCT.unpack_from(buf)  # type: ignore[return-value]


def inner_format(flags: np.ndarray) -> np.ndarray:
    """The inner compressor (``FORMAT_*``) of each chunk, from the top three flag bits."""
    return (np.asarray(flags).astype(np.int64) >> 5) & 0x7


def block_count(nbytes: np.ndarray, blocksize: np.ndarray) -> np.ndarray:
    """Blocks per chunk: ``ceil(nbytes / blocksize)``, 0 for an empty chunk (``blocksize <= 0`` safe)."""
    safe = np.where(blocksize > 0, blocksize, 1)
    return np.where(nbytes > 0, nbytes // safe + (nbytes % safe > 0), 0)


def block_sizes(block_index: np.ndarray, nbytes: np.ndarray, blocksize: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decoded size of each block and whether it is the leftover (last, partial) block.

    All arguments are per block (the chunk's ``nbytes`` and ``blocksize`` repeated).
    """
    safe = np.where(blocksize > 0, blocksize, 1)
    rest = nbytes % safe
    leftover = (block_index == block_count(nbytes, blocksize) - 1) & (rest > 0)
    return np.where(leftover, rest, blocksize), leftover


def split_count(flags: np.ndarray, typesize: np.ndarray, block_size: np.ndarray,
                leftover: np.ndarray) -> np.ndarray:
    """c-blosc 1.21 ``blosc_d``: streams per block (``typesize`` byte planes, or 1)."""
    may_split = (np.asarray(flags) & FLAG_DONT_SPLIT) == 0
    split = (may_split & (typesize <= MAX_SPLITS)
             & ((block_size // np.maximum(typesize, 1)) >= MIN_BUFFERSIZE) & ~leftover)
    return np.where(split, typesize, 1).astype(np.int64)


def shuffle_mode(flags: np.ndarray, typesize: np.ndarray, block_size: np.ndarray) -> np.ndarray:
    """``MODE_*`` of each block: byte shuffle, bit shuffle or none, by c-blosc 1.21's rules."""
    flags = np.asarray(flags)
    doshuffle = ((flags & FLAG_SHUFFLE) != 0) & (typesize > 1)
    dobitshuffle = ~doshuffle & ((flags & FLAG_BITSHUFFLE) != 0) & (block_size >= typesize)
    return np.where(doshuffle, MODE_SHUFFLE, np.where(dobitshuffle, MODE_BITSHUFFLE, MODE_NONE)).astype(np.int64)


def read_i32(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Little-endian int32 at each (already bounds-checked) offset of ``blob`` (uint8)."""
    if offsets.size == 0:
        return np.zeros(0, dtype=np.int64)
    idx = offsets.astype(np.int64)[:, None] + np.arange(4, dtype=np.int64)
    return np.ascontiguousarray(blob[idx]).view("<i4").reshape(-1).astype(np.int64)


def walk_streams(blob: np.ndarray, chunk_base: np.ndarray, bstart: np.ndarray, nsplits: np.ndarray,
                 cbytes: np.ndarray, table_end: np.ndarray, active: np.ndarray) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Follow the stream table of every active block, checking each size word and payload.

    Per block: ``chunk_base`` (where its chunk starts in ``blob``), ``bstart`` (the
    block start, relative to the chunk), ``nsplits``, the chunk's ``cbytes`` and
    ``table_end`` (end of its block-start table). A block is bad when it starts inside
    the header or block table, or when a size word or a payload leaves the chunk's
    compressed size. One pass per split index (at most 16), vectorised over blocks.

    Returns ``stream_start`` (B+1: streams of block ``b`` are
    ``stream_start[b]:stream_start[b+1]``), absolute ``stream_offset`` of each payload,
    ``stream_csize``, and the ``block_bad`` mask. Streams of inactive or bad blocks are 0.
    """
    n_blk = len(nsplits)
    stream_start = np.zeros(n_blk + 1, dtype=np.int64)
    np.cumsum(nsplits, out=stream_start[1:])
    n_str = int(stream_start[-1])
    stream_offset = np.zeros(n_str, dtype=np.int64)
    stream_csize = np.zeros(n_str, dtype=np.int64)
    cursor = bstart.copy()  # relative to the chunk start: position of the next int32 size
    block_bad = active & (bstart < table_end)
    max_splits = int(nsplits.max()) if n_blk else 0
    for j in range(max_splits):
        live = (nsplits > j) & active & ~block_bad
        head_ok = (cursor >= 0) & (cursor <= cbytes - 4)
        block_bad |= live & ~head_ok
        live &= head_ok
        idx = np.flatnonzero(live)
        csize = read_i32(blob, chunk_base[idx] + cursor[idx])
        payload = cursor[idx] + 4
        size_ok = (csize >= 0) & (csize <= cbytes[idx] - payload)
        block_bad[idx[~size_ok]] = True
        good = idx[size_ok]
        s = stream_start[good] + j
        stream_offset[s] = chunk_base[good] + payload[size_ok]
        stream_csize[s] = csize[size_ok]
        cursor[good] = payload[size_ok] + csize[size_ok]
    return stream_start, stream_offset, stream_csize, block_bad
