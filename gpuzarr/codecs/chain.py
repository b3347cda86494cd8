"""Codec chain: a Zarr array's codec list → the steps that turn stored bytes into a chunk.

The one decode entry point of the CPU engine is :meth:`DecodeChain.decode`. The GPU
engine reads the same :class:`DecodeChain` (its ``bytes_steps``, ``bytes_step`` and
``array_steps``) to decide which steps it runs itself and which chunks fall back.

Known codecs get a fast, synchronous path (numcodecs' GIL-releasing decoders called
directly, no asyncio, no Buffer wrappers): ``blosc``, ``zstd``, ``gzip``, ``crc32c``,
``bytes`` and ``transpose``. Any other codec zarr-python knows (numcodecs.* wrappers,
``cast_value``, ``scale_offset``, ...) runs through that codec's own ``_decode_sync``,
so every codec zarr can read, gpuzarr can read too. Sharding is not a step: the
planner works on the inner chunk grid and :mod:`gpuzarr.storage.reader` fetches inner
chunks by byte range, so a :class:`DecodeChain` always decodes one inner chunk.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np

from gpuzarr.codecs.blosc.format import HEADER_BYTES, read_header
from gpuzarr.codecs.blosc.partial import decode_blocks_into
from gpuzarr.errors import CorruptChunkError, UnsupportedCodecError

try:  # the crc32c package takes any buffer (no copy); zarr itself depends on google-crc32c
    from crc32c import crc32c as _crc32c_value
except ImportError:  # pragma: no cover
    from google_crc32c import value as _google_crc32c_value

    def _crc32c_value(data: Any) -> int:
        return int(_google_crc32c_value(bytes(data)))


@dataclass(frozen=True, slots=True)
class BloscStep:
    """Blosc1 container (any cname/shuffle/typesize; everything needed is in its header)."""

    name = "blosc"

    def decode(self, data: Any) -> Any:
        return numcodecs.blosc.decompress(data)

    def decode_into(self, data: Any, dest: np.ndarray, intervals: Any = None) -> np.ndarray:
        """Decode into ``dest`` (uint8, exactly the expected size) after checking the header sizes.

        Reusing one destination per thread avoids mapping and faulting in fresh pages
        for every chunk, which costs more than the decode itself for multi-MB chunks.
        With ``intervals`` (byte ranges of ``dest`` that will be read) only the blocks
        they touch may be decoded; the rest of ``dest`` is then left stale.
        """
        view = memoryview(data).cast("B")
        if len(view) < HEADER_BYTES:
            raise ValueError(f"blosc: {len(view)} bytes is shorter than the 16-byte header")
        header = read_header(view)
        nbytes, cbytes = int(header["nbytes"]), int(header["cbytes"])
        if cbytes != len(view):
            raise ValueError(f"blosc: header says {cbytes} compressed bytes but the chunk has {len(view)}")
        if nbytes != dest.nbytes:
            raise ValueError(f"blosc: header says {nbytes} decoded bytes, expected {dest.nbytes}")
        if intervals is not None and decode_blocks_into(view, dest, intervals):
            return dest
        numcodecs.blosc.decompress(view, dest)
        return dest


@dataclass(frozen=True, slots=True)
class ZstdStep:
    """A Zstandard frame (zarr's ``zstd`` codec)."""

    name = "zstd"

    def decode(self, data: Any) -> Any:
        return _ZSTD.decode(data)


@dataclass(frozen=True, slots=True)
class GzipStep:
    """A gzip member (zarr's ``gzip`` codec)."""

    name = "gzip"

    def decode(self, data: Any) -> Any:
        return _GZIP.decode(data)


@dataclass(frozen=True, slots=True)
class Crc32cStep:
    """A 4-byte little-endian CRC32C appended to the data; verified, then stripped."""

    name = "crc32c"

    def decode(self, data: Any) -> Any:
        view = memoryview(data).cast("B")
        if len(view) < 4:
            raise ValueError(f"crc32c: {len(view)} bytes is shorter than the 4-byte checksum")
        body, stored = view[:-4], bytes(view[-4:])
        computed = int(_crc32c_value(body)).to_bytes(4, "little")
        if computed != stored:
            raise ValueError(f"crc32c mismatch: stored {stored.hex()}, computed {computed.hex()}")
        return body


@dataclass(frozen=True, slots=True)
class ZarrCodecStep:
    """Any other bytes→bytes or array→array codec, run through zarr's own ``_decode_sync``."""

    codec: Any
    spec: Any  # zarr ArraySpec of the codec's input when decoding

    @property
    def name(self) -> str:
        return type(self.codec).__name__

    def decode(self, data: Any) -> Any:
        from zarr.core.buffer import default_buffer_prototype

        proto = default_buffer_prototype()
        if isinstance(data, np.ndarray) and data.dtype != np.uint8:
            buf = proto.nd_buffer.from_numpy_array(data)
            return self.codec._decode_sync(buf, self.spec).as_numpy_array()
        buf = proto.buffer.from_bytes(bytes(data)) if not isinstance(data, np.ndarray) else (
            proto.buffer.from_array_like(data))
        return self.codec._decode_sync(buf, self.spec).as_numpy_array()


@dataclass(frozen=True, slots=True)
class BytesStep:
    """zarr's ``bytes`` codec: raw elements in C order with the given byte order."""

    endian: str | None  # "little", "big" or None (single-byte types)


@dataclass(frozen=True, slots=True)
class TransposeStep:
    """zarr's ``transpose`` codec: stored axes are ``order`` of the array's axes."""

    order: tuple[int, ...]


_ZSTD = numcodecs.Zstd()
_GZIP = numcodecs.GZip()


@dataclass(frozen=True)
class DecodeChain:
    """The steps that decode one stored (inner) chunk, in decode order.

    ``bytes_steps`` run first (last codec first), then ``bytes_step`` turns bytes into
    an array of ``stored_shape``, then ``array_steps`` run (also last first).
    """

    dtype: np.dtype  # native-endian dtype of the decoded chunk
    chunk_shape: tuple[int, ...]
    bytes_steps: tuple[Any, ...]
    bytes_step: BytesStep
    array_steps: tuple[TransposeStep | ZarrCodecStep, ...]
    stored_shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.chunk_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def codec_names(self) -> tuple[str, ...]:
        names = [s.name for s in reversed(self.bytes_steps)]
        return ("bytes", *names)

    @property
    def stored_nbytes(self) -> int:
        """Bytes produced by the bytes→bytes steps (what the ``bytes`` codec reads)."""
        return int(np.prod(self.stored_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def supports_partial_decode(self) -> bool:
        """Whether :meth:`decode` can decode only part of a chunk (last step Blosc, stored layout = chunk layout)."""
        return bool(self.bytes_steps) and isinstance(self.bytes_steps[-1], BloscStep) and not self.array_steps

    def decode(self, data: Any, *, key: str | Callable[[], str] = "", array: str = "",
               scratch: np.ndarray | None = None, intervals: Any = None) -> np.ndarray:
        """Decode stored bytes into a native-endian array of ``chunk_shape``.

        ``scratch`` (uint8, ``stored_nbytes`` long) lets the last Blosc step decode in
        place; the result is then a view of ``scratch``, valid until it is reused.
        ``intervals`` (byte ranges of the decoded chunk: sorted ``[start, stop)`` pairs as
        :func:`gpuzarr.plan.planner.chunk_byte_intervals` gives them, or an (m, 2) array)
        promise that only those bytes
        will be read, so only the Blosc blocks under them need decoding.
        Any failure (truncated data, bad header, checksum, wrong size) becomes a
        :class:`CorruptChunkError` naming the array and chunk key (``key`` may be a
        callable returning it, so the hot path never builds a key no error needs).
        """
        try:
            buf = data
            last = len(self.bytes_steps) - 1
            for i, step in enumerate(self.bytes_steps):
                if i == last and scratch is not None and isinstance(step, BloscStep):
                    buf = step.decode_into(buf, scratch, intervals if self.supports_partial_decode else None)
                else:
                    buf = step.decode(buf)
            raw = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf.view(np.uint8).ravel()
            stored_dtype = self.dtype
            if self.bytes_step.endian is not None and self.dtype.itemsize > 1:
                stored_dtype = self.dtype.newbyteorder("<" if self.bytes_step.endian == "little" else ">")
            expected = int(np.prod(self.stored_shape, dtype=np.int64)) * stored_dtype.itemsize
            if raw.size != expected:
                raise ValueError(f"decoded {raw.size} bytes, expected {expected} for shape {self.stored_shape}")
            arr = raw.view(stored_dtype).reshape(self.stored_shape)
            if not stored_dtype.isnative:
                arr = arr.astype(self.dtype)
            for step in self.array_steps:
                if isinstance(step, TransposeStep):
                    arr = arr.transpose(np.argsort(step.order))
                else:
                    arr = np.asarray(step.decode(arr)).reshape(self.chunk_shape)
            return arr
        except CorruptChunkError:
            raise
        except (ValueError, RuntimeError, OSError, EOFError, zlib.error) as exc:
            key = key() if callable(key) else key
            raise CorruptChunkError.of_chunk(array, key, f"cannot be decoded ({', '.join(self.codec_names)}): {exc}") from exc


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=") if dtype.itemsize > 1 else dtype


def build_decode_chain(codecs: tuple[Any, ...], chunk_spec: Any, array_name: str) -> DecodeChain:
    """Build the chain for zarr v3 ``codecs`` decoding chunks described by ``chunk_spec``.

    ``chunk_spec`` is zarr's ``ArraySpec`` of one (inner) chunk. Raises
    :class:`UnsupportedCodecError` for a codec no path can decode (e.g. nested sharding,
    variable-length types).
    """
    from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec, BytesBytesCodec
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

    dtype = np.dtype(chunk_spec.dtype.to_native_dtype())
    if dtype.kind not in "biufc" or dtype.itemsize == 0:
        raise UnsupportedCodecError(f"{array_name}: data type {chunk_spec.dtype} is not supported (numeric and bool only)")
    chunk_shape = tuple(int(s) for s in chunk_spec.shape)

    array_steps: list[Any] = []
    spec = chunk_spec
    i = 0
    while i < len(codecs) and isinstance(codecs[i], ArrayArrayCodec):
        codec = codecs[i]
        if isinstance(codec, TransposeCodec):
            array_steps.append(TransposeStep(tuple(int(x) for x in codec.order)))
        else:
            array_steps.append(ZarrCodecStep(codec, spec))
        spec = codec.resolve_metadata(spec)
        i += 1
    if i >= len(codecs) or not isinstance(codecs[i], ArrayBytesCodec):
        raise UnsupportedCodecError(f"{array_name}: codec list {codecs} has no array→bytes codec")
    ab = codecs[i]
    if not isinstance(ab, BytesCodec):
        raise UnsupportedCodecError(
            f"{array_name}: array→bytes codec {type(ab).__name__} is not supported here"
            + (" (nested sharding)" if type(ab).__name__ == "ShardingCodec" else "")
        )
    bytes_step = BytesStep(None if ab.endian is None else str(getattr(ab.endian, "value", ab.endian)))
    stored_shape = tuple(int(s) for s in spec.shape)
    bytes_spec = ab.resolve_metadata(spec)
    bytes_steps: list[Any] = []
    for codec in codecs[i + 1 :]:
        if not isinstance(codec, BytesBytesCodec):
            raise UnsupportedCodecError(f"{array_name}: unexpected codec {type(codec).__name__} after bytes")
        if isinstance(codec, BloscCodec):
            bytes_steps.append(BloscStep())
        elif isinstance(codec, ZstdCodec):
            bytes_steps.append(ZstdStep())
        elif isinstance(codec, GzipCodec):
            bytes_steps.append(GzipStep())
        elif isinstance(codec, Crc32cCodec):
            bytes_steps.append(Crc32cStep())
        else:
            bytes_steps.append(ZarrCodecStep(codec, bytes_spec))
        bytes_spec = codec.resolve_metadata(bytes_spec)
    # decode order: last bytes→bytes codec first; array→array codecs last-first too
    return DecodeChain(
        dtype=_native(dtype),
        chunk_shape=chunk_shape,
        bytes_steps=tuple(reversed(bytes_steps)),
        bytes_step=bytes_step,
        array_steps=tuple(reversed(array_steps)),
        stored_shape=stored_shape,
    )
