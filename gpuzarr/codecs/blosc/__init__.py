"""Blosc1 containers: the format rules once, a batch parser for the GPU, partial decode for the CPU.

* :mod:`~gpuzarr.codecs.blosc.format` — header layout, flags, inner formats, and the
  split, shuffle and block-table rules of c-blosc 1.21 (vectorised; the only place
  they are written down).
* :mod:`~gpuzarr.codecs.blosc.parse` — validates a whole batch and lays it out as flat
  chunk/block/stream tables (:class:`BloscBatch`) for the GPU engine.
* :mod:`~gpuzarr.codecs.blosc.reference` — the GPU path on the CPU (python-lz4, Zstd,
  zlib and the NumPy kernel mirrors), the oracle of the GPU engine's tests.
* :mod:`~gpuzarr.codecs.blosc.partial` — decode only the blocks a crop needs, with
  c-blosc's ``blosc_getitem`` (the CPU engine).
"""

from gpuzarr.codecs.blosc.format import (
    FLAG_BITSHUFFLE,
    FLAG_DONT_SPLIT,
    FLAG_MEMCPYED,
    FLAG_RESERVED,
    FLAG_SHUFFLE,
    FORMAT_BLOSCLZ,
    FORMAT_LZ4,
    FORMAT_NAMES,
    FORMAT_SNAPPY,
    FORMAT_ZLIB,
    FORMAT_ZSTD,
    HEADER_BYTES,
    KNOWN_FORMATS,
    MODE_BITSHUFFLE,
    MODE_NONE,
    MODE_SHUFFLE,
    NATIVE_FORMATS,
    STREAM_COMPRESSED,
    STREAM_RAW,
)
from gpuzarr.codecs.blosc.parse import BloscBatch, BloscCheck, check_blosc_batch, parse_blosc_batch
from gpuzarr.codecs.blosc.reference import (
    decode_blosc_chunk_numcodecs,
    decode_blosc_reference,
    decode_stream_cpu,
    decode_streams_cpu,
    zstd_content_size,
)

__all__ = [
    "FLAG_BITSHUFFLE",
    "FLAG_DONT_SPLIT",
    "FLAG_MEMCPYED",
    "FLAG_RESERVED",
    "FLAG_SHUFFLE",
    "FORMAT_BLOSCLZ",
    "FORMAT_LZ4",
    "FORMAT_NAMES",
    "FORMAT_SNAPPY",
    "FORMAT_ZLIB",
    "FORMAT_ZSTD",
    "HEADER_BYTES",
    "KNOWN_FORMATS",
    "MODE_BITSHUFFLE",
    "MODE_NONE",
    "MODE_SHUFFLE",
    "NATIVE_FORMATS",
    "STREAM_COMPRESSED",
    "STREAM_RAW",
    "BloscBatch",
    "BloscCheck",
    "check_blosc_batch",
    "decode_blosc_chunk_numcodecs",
    "decode_blosc_reference",
    "decode_stream_cpu",
    "decode_streams_cpu",
    "parse_blosc_batch",
    "zstd_content_size",
]
