"""Codec chain: a Zarr array's codecs (v3 codec list or v2 compressor/filters) → the steps that decode one chunk.

The one decode entry point is :meth:`DecodeChain.decode` (the CPU engine calls it for
every chunk, the GPU engine for every chunk it cannot decode itself). The GPU engine
reads the same :class:`DecodeChain` (its ``bytes_steps``, ``bytes_step`` and
``array_steps``) to decide which steps it runs and which chunks fall back.

A chain is three stages, in decode order:

1. ``bytes_steps`` — bytes → bytes: compressors, checksums and, for Zarr v2, the
   numcodecs ``filters`` (v2 filters work on the flat buffer and their output bytes are
   reinterpreted as the array's data type, exactly as zarr-python's ``V2Codec`` does);
2. ``bytes_step`` — bytes → array: zarr's ``bytes`` codec (:class:`BytesStep`, raw
   elements of ``stored_dtype`` in C order) or any other array→bytes codec zarr knows
   (pcodec, zfpy, ...: :class:`CodecArrayBytesStep`);
3. ``array_steps`` — array → array: ``transpose`` (also a v2 array's ``order="F"``) and
   any other array→array codec, each with the data type and shape it produces, so codecs
   that change the stored type (``FixedScaleOffset(astype=...)``, ``AsType``,
   ``cast_value``) and any order of transposes and other codecs decode correctly.

Known codecs take a fast, synchronous path (numcodecs' GIL-releasing decoders called
directly, no asyncio, no Buffer wrappers): Blosc, Zstd, gzip, zlib, LZ4, bz2, LZMA,
crc32c, bytes and transpose. Anything else zarr-python can decode runs through that
codec's own ``_decode_sync`` (or numcodecs' ``decode`` for v2), so every codec zarr can
read, gpuzarr can read too. Sharding is not a step: the planner works on the inner
chunk grid and :mod:`gpuzarr.storage.reader` fetches inner chunks by byte range, so a
:class:`DecodeChain` always decodes one inner chunk.

Every step is *bounded*: gpuzarr knows each chunk's decoded size, so each step knows
the most bytes it may produce (``cap``) and stops there. The last bytes step decodes
into a buffer of exactly the expected size; a Zstd frame, Blosc header or LZ4 header
claiming more is refused before anything is allocated, and streaming decoders (zlib,
gzip, bz2, LZMA, Zstd frames without a size) stop one byte past the cap. A
decompression bomb therefore costs at most about one chunk of memory and becomes a
:class:`CorruptChunkError` naming the array and chunk key. Codecs gpuzarr does not know
run through their own decoder; their output is checked against the cap afterwards.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numcodecs
import numcodecs.blosc
import numcodecs.lz4
import numcodecs.zstd
import numpy as np

from gpuzarr.codecs import native
from gpuzarr.codecs.blosc.format import HEADER_BYTES, header_fields
from gpuzarr.codecs.blosc.partial import decode_blocks_into
from gpuzarr.codecs.blosc.reference import zstd_content_size as _zstd_frame_size
from gpuzarr.errors import CorruptChunkError, UnsupportedCodecError

try:  # the crc32c package takes any buffer (no copy); zarr itself depends on google-crc32c
    from crc32c import crc32c as _crc32c_value
except ImportError:  # pragma: no cover
    from google_crc32c import value as _google_crc32c_value

    def _crc32c_value(data: Any) -> int:
        return int(_google_crc32c_value(bytes(data)))


#: data types a chain can produce: bool, integers, floats, complex, datetime64, timedelta64
SUPPORTED_KINDS = "biufcmM"

#: numcodecs' own C decoders are reachable through ctypes (see :mod:`gpuzarr.codecs.native`)
_NATIVE = native.available()


def encoded_bound(nbytes: int) -> int:
    """The most bytes any compressor gpuzarr knows can turn ``nbytes`` into (worst case, with margin).

    Zstd, LZ4, Blosc, deflate, bz2 and LZMA all expand incompressible data by well under
    a quarter; the bound caps what the step *before* a compressor may produce.
    """
    return int(nbytes) + int(nbytes) // 4 + (1 << 16)


def _u8(data: Any) -> memoryview:
    """A flat byte view of any buffer (bytes, memoryview, NumPy array of any dtype)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return memoryview(data).cast("B")


def zstd_content_size(frame: Any) -> int | None:
    """Frame_Content_Size of a Zstd frame header (any buffer), ``None`` when absent; ValueError if malformed."""
    return _zstd_frame_size(_u8(frame))


def _too_much(name: str, cap: int) -> ValueError:
    return ValueError(f"{name}: the stream decodes to more than the {cap} bytes this chunk can hold "
                      "(a corrupt chunk or a decompression bomb)")


def _stream_decode(name: str, make: Any, data: Any, cap: int, *, multi: bool) -> bytes:
    """Run streaming decompressors made by ``make()`` over ``data``, producing at most ``cap`` bytes.

    ``multi``: concatenated members/streams are decoded one after the other (gzip, bz2),
    zero padding between them skipped, as Python's own modules do.
    """
    rest: Any = _u8(data)
    parts: list[bytes] = []
    total = 0
    while True:
        d = make()
        out = d.decompress(rest, cap + 1 - total)
        total += len(out)
        parts.append(out)
        if total > cap:
            raise _too_much(name, cap)
        if not d.eof:
            if getattr(d, "unconsumed_tail", b"") or not getattr(d, "needs_input", True):
                raise _too_much(name, cap)
            raise ValueError(f"{name}: the stream is truncated")
        rest = d.unused_data
        if not multi:
            break
        rest = rest.lstrip(b"\x00")
        if not rest:
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


# --------------------------------------------------------------------------- bytes → bytes


@dataclass(frozen=True, slots=True)
class BloscStep:
    """Blosc1 container (any cname/shuffle/typesize; everything needed is in its header).

    ``cap``: the most decoded bytes allowed; the header's size is checked against it
    before anything is decoded (``exact``: must equal it).
    """

    cap: int = 1 << 62
    exact: bool = False
    name = "blosc"

    def _check_header(self, view: memoryview, expected: int | None = None) -> tuple[int, ...]:
        """The header fields ``(version, versionlz, flags, typesize, nbytes, blocksize, cbytes)``, sizes checked."""
        if len(view) < HEADER_BYTES:
            raise ValueError(f"blosc: {len(view)} bytes is shorter than the 16-byte header")
        header = header_fields(view)
        nbytes, cbytes = header[4], header[6]
        if cbytes != len(view):
            raise ValueError(f"blosc: header says {cbytes} compressed bytes but the chunk has {len(view)}")
        want = expected if expected is not None else (self.cap if self.exact else None)
        if want is not None and nbytes != want:
            raise ValueError(f"blosc: header says {nbytes} decoded bytes, expected {want}")
        if nbytes > self.cap or nbytes < 0:
            raise ValueError(f"blosc: header says {nbytes} decoded bytes, more than the {self.cap} allowed")
        return header

    def decode(self, data: Any) -> Any:
        view = _u8(data)
        nbytes = self._check_header(view)[4]
        dest = np.empty(nbytes, dtype=np.uint8)
        self._decompress(view, nbytes, dest)
        return dest

    @staticmethod
    def _decompress(view: memoryview, nbytes: int, dest: np.ndarray) -> None:
        if _NATIVE:
            native.blosc_decompress_into(view, nbytes, dest)
        else:  # pragma: no cover - numcodecs without exported symbols
            numcodecs.blosc.decompress(view, dest)

    def decode_into(self, data: Any, dest: np.ndarray, intervals: Any = None) -> np.ndarray:
        """Decode into ``dest`` (uint8, exactly the expected size) after checking the header sizes.

        Reusing one destination per thread avoids mapping and faulting in fresh pages
        for every chunk, which costs more than the decode itself for multi-MB chunks.
        With ``intervals`` (byte ranges of ``dest`` that will be read) only the blocks
        they touch may be decoded; the rest of ``dest`` is then left stale.
        """
        view = _u8(data)
        header = self._check_header(view, dest.nbytes)
        # one block (blocksize >= nbytes, as c-blosc picks for small chunks): nothing to skip
        if intervals is not None and 0 < header[5] < header[4] and decode_blocks_into(view, dest, intervals, header):
            return dest
        self._decompress(view, header[4], dest)
        return dest


@dataclass(frozen=True, slots=True)
class ZstdStep:
    """A Zstandard frame (zarr's ``zstd`` codec, numcodecs' ``Zstd``), decoded into a bounded buffer."""

    cap: int = 1 << 62
    exact: bool = False
    name = "zstd"

    def decode(self, data: Any) -> Any:
        view = _u8(data)
        declared = zstd_content_size(view)
        if declared is not None:
            if declared > self.cap or (self.exact and declared != self.cap):
                raise ValueError(f"zstd: frame header declares {declared} decoded bytes, "
                                 f"{'expected' if self.exact else 'at most'} {self.cap}")
            dest = np.empty(declared, dtype=np.uint8)
        elif self.exact:
            dest = np.empty(self.cap, dtype=np.uint8)
        else:  # no size in the header and no exact size known: a decoder with an output limit
            try:
                import zstandard
            except ImportError:  # without the zstandard package: numcodecs' own (unbounded) streaming decode
                return numcodecs.zstd.decompress(view)
            try:
                return zstandard.ZstdDecompressor().decompress(view, max_output_size=self.cap)
            except zstandard.ZstdError as exc:
                raise ValueError(f"zstd: {exc} (at most {self.cap} bytes allowed)") from None
        return self.decode_into(view, dest)

    def decode_into(self, data: Any, dest: np.ndarray, limit: int | None = None) -> np.ndarray:
        """Decode into ``dest`` (uint8): the frame must decode to exactly ``dest.nbytes`` bytes.

        Nothing beyond ``dest`` is ever written or allocated. With ``limit`` (and the
        C decoder reachable) only the first ``limit`` bytes need be decoded, the rest of
        ``dest`` may be left stale; a frame that carries a checksum is decoded whole so
        the checksum is verified.
        """
        if _NATIVE:
            if limit is not None and _zstd_has_checksum(data):
                limit = None
            native.zstd_decompress_into(data, dest, limit)
            return dest
        try:  # pragma: no cover - numcodecs without exported symbols
            numcodecs.zstd.decompress(data, dest)
        except (RuntimeError, ValueError) as exc:  # pragma: no cover
            raise ValueError(f"zstd: {exc} (the chunk holds {dest.nbytes} bytes)") from None
        return dest


def _zstd_has_checksum(frame: Any) -> bool:
    """Whether a Zstd frame's header sets Content_Checksum_flag (byte 4, bit 2); the frame was size-checked."""
    return bool(_u8(frame)[4] & 0x04)


@dataclass(frozen=True, slots=True)
class GzipStep:
    """A gzip member (zarr's ``gzip`` codec, numcodecs' ``GZip``), decoded by a capped zlib stream."""

    cap: int = 1 << 62
    exact: bool = False
    name = "gzip"

    def decode(self, data: Any) -> Any:
        return _stream_decode("gzip", lambda: zlib.decompressobj(31), data, self.cap, multi=True)


@dataclass(frozen=True, slots=True)
class ZlibStep:
    """A zlib stream (numcodecs' ``Zlib``), decoded by a capped zlib stream."""

    cap: int = 1 << 62
    exact: bool = False
    name = "zlib"

    def decode(self, data: Any) -> Any:
        return _stream_decode("zlib", zlib.decompressobj, data, self.cap, multi=False)


@dataclass(frozen=True, slots=True)
class Bz2Step:
    """A bzip2 stream (numcodecs' ``BZ2``), decoded by a capped decompressor."""

    cap: int = 1 << 62
    exact: bool = False
    name = "bz2"

    def decode(self, data: Any) -> Any:
        return _stream_decode("bz2", bz2.BZ2Decompressor, data, self.cap, multi=True)


@dataclass(frozen=True, slots=True)
class LzmaStep:
    """An xz/LZMA stream (numcodecs' ``LZMA``, with its format and filters), decoded by a capped decompressor."""

    format: int = lzma.FORMAT_AUTO
    filters: Any = None
    cap: int = 1 << 62
    exact: bool = False
    name = "lzma"

    def decode(self, data: Any) -> Any:
        filters = None if self.filters is None else [dict(f) for f in self.filters]
        return _stream_decode("lzma", lambda: lzma.LZMADecompressor(format=self.format, filters=filters),
                              data, self.cap, multi=self.format != lzma.FORMAT_RAW)


@dataclass(frozen=True, slots=True)
class Lz4Step:
    """numcodecs' ``LZ4``: a 4-byte little-endian decoded size, then one LZ4 block; the size is checked first."""

    cap: int = 1 << 62
    exact: bool = False
    name = "lz4"

    def decode(self, data: Any) -> Any:
        view = _u8(data)
        if len(view) < 4:
            raise ValueError(f"lz4: {len(view)} bytes is shorter than the 4-byte size header")
        declared = int.from_bytes(view[:4], "little", signed=True)
        if declared < 0 or declared > self.cap or (self.exact and declared != self.cap):
            raise ValueError(f"lz4: header declares {declared} decoded bytes, "
                             f"{'expected' if self.exact else 'at most'} {self.cap}")
        return numcodecs.lz4.decompress(view)


@dataclass(frozen=True, slots=True)
class Crc32cStep:
    """A 4-byte little-endian CRC32C appended to the data; verified, then stripped."""

    cap: int = 1 << 62
    exact: bool = False
    name = "crc32c"

    def decode(self, data: Any) -> Any:
        view = _u8(data)
        if len(view) < 4:
            raise ValueError(f"crc32c: {len(view)} bytes is shorter than the 4-byte checksum")
        body, stored = view[:-4], bytes(view[-4:])
        computed = int(_crc32c_value(body)).to_bytes(4, "little")
        if computed != stored:
            raise ValueError(f"crc32c mismatch: stored {stored.hex()}, computed {computed.hex()}")
        return body


def _check_cap(name: str, out: Any, cap: int) -> memoryview:
    view = _u8(out)
    if len(view) > cap:
        raise _too_much(name, cap)
    return view


@dataclass(frozen=True, slots=True)
class NumcodecStep:
    """Any other numcodecs codec applied to a flat buffer: a Zarr v2 compressor or filter.

    Its output bytes are passed on as they are (a v2 filter's output is reinterpreted as
    the array's data type, as zarr-python does), after checking them against ``cap``.
    """

    codec: Any
    cap: int = 1 << 62
    exact: bool = False

    @property
    def name(self) -> str:
        return str(getattr(self.codec, "codec_id", type(self.codec).__name__))

    def decode(self, data: Any) -> Any:
        from numcodecs.compat import ensure_ndarray_like

        try:
            out = self.codec.decode(data)
        except (ValueError, RuntimeError, OSError, EOFError, zlib.error, lzma.LZMAError, MemoryError, TypeError,
                KeyError, IndexError, OverflowError) as exc:
            raise ValueError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if isinstance(out, (bytes, bytearray, memoryview)):
            return _check_cap(self.name, out, self.cap)
        arr = ensure_ndarray_like(out).reshape(-1, order="A")
        if arr.dtype == object:
            raise ValueError(f"{self.name}: decoded to Python objects, not numbers")
        return _check_cap(self.name, np.ascontiguousarray(arr).view(np.uint8), self.cap)


@dataclass(frozen=True, slots=True)
class ZarrCodecStep:
    """Any other zarr v3 bytes→bytes codec, run through zarr's own ``_decode_sync``; output checked against ``cap``."""

    codec: Any
    spec: Any  # zarr ArraySpec of the codec's input when decoding
    cap: int = 1 << 62
    exact: bool = False

    @property
    def name(self) -> str:
        return str(getattr(self.codec, "codec_name", type(self.codec).__name__))

    def decode(self, data: Any) -> Any:
        from zarr.core.buffer.cpu import buffer_prototype  # host buffers, whatever zarr's default (GPU) is

        buf = buffer_prototype.buffer.from_array_like(np.frombuffer(_u8(data), dtype=np.uint8))
        try:
            out = self.codec._decode_sync(buf, self.spec)
        except (ValueError, RuntimeError, OSError, EOFError, zlib.error, lzma.LZMAError, MemoryError, TypeError,
                KeyError, IndexError, OverflowError) as exc:
            raise ValueError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        return _check_cap(self.name, out.as_numpy_array(), self.cap)


# --------------------------------------------------------------------------- bytes → array


@dataclass(frozen=True, slots=True)
class BytesStep:
    """zarr's ``bytes`` codec (and a v2 chunk's raw layout): raw elements in C order with the given byte order."""

    endian: str | None  # "little", "big" or None (single-byte types)


@dataclass(frozen=True, slots=True)
class CodecArrayBytesStep:
    """An array→bytes codec other than ``bytes`` (pcodec, zfpy, ...), run through zarr's codec object."""

    codec: Any
    spec: Any  # zarr ArraySpec of the array it decodes to

    @property
    def name(self) -> str:
        return str(getattr(self.codec, "codec_name", type(self.codec).__name__))

    @property
    def encoded_cap(self) -> int:
        """Most encoded bytes accepted: twice the raw size plus margin (lossless modes may expand a little)."""
        return encoded_bound(2 * int(np.prod(self.spec.shape, dtype=np.int64))
                             * np.dtype(self.spec.dtype.to_native_dtype()).itemsize)

    def decode(self, data: Any) -> np.ndarray:
        from zarr.core.buffer.cpu import buffer_prototype  # host buffers, whatever zarr's default (GPU) is

        shape = tuple(int(s) for s in self.spec.shape)
        dtype = np.dtype(self.spec.dtype.to_native_dtype())
        raw = np.frombuffer(_u8(data), dtype=np.uint8)
        try:
            inner = getattr(self.codec, "_codec", None)
            if getattr(inner, "codec_id", None) == "pcodec":  # decodes into a buffer of the chunk's size: bounded
                from pcodec import standalone

                out = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=dtype)
                progress = standalone.simple_decompress_into(raw.tobytes(), out)
                if not progress.finished or progress.n_processed != out.size:
                    raise ValueError(f"pcodec: the stream holds more than the chunk's {out.size} elements "
                                     f"or fewer ({progress.n_processed} decoded)")
                arr = out
            else:
                buf = buffer_prototype.buffer.from_array_like(raw)
                arr = np.asarray(self.codec._decode_sync(buf, self.spec).as_numpy_array())
        except (ValueError, RuntimeError, OSError, EOFError, MemoryError, TypeError, KeyError, IndexError,
                OverflowError) as exc:
            raise ValueError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{self.name}: decoded {arr.size} elements, expected {shape}")
        return arr.reshape(shape)


# --------------------------------------------------------------------------- array → array


@dataclass(frozen=True, slots=True)
class TransposeStep:
    """zarr's ``transpose`` codec (and a v2 array's ``order="F"``): stored axes are ``order`` of the array's axes."""

    order: tuple[int, ...]
    name = "transpose"

    def decode(self, arr: np.ndarray) -> np.ndarray:
        return arr.transpose(np.argsort(self.order))


@dataclass(frozen=True, slots=True)
class ZarrArrayStep:
    """Any other array→array codec, run through zarr's own ``_decode_sync``.

    ``spec`` is the codec's input spec when encoding, i.e. what decoding produces: its
    shape and data type are the step's output (the data type may differ from the
    step's input, e.g. ``FixedScaleOffset(astype=...)``).
    """

    codec: Any
    spec: Any

    @property
    def name(self) -> str:
        return str(getattr(self.codec, "codec_name", type(self.codec).__name__))

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.spec.shape)

    @property
    def out_dtype(self) -> np.dtype:
        return np.dtype(self.spec.dtype.to_native_dtype())

    def decode(self, arr: np.ndarray) -> np.ndarray:
        from zarr.core.buffer.cpu import buffer_prototype  # host buffers, whatever zarr's default (GPU) is

        buf = buffer_prototype.nd_buffer.from_numpy_array(arr)
        try:
            out = np.asarray(self.codec._decode_sync(buf, self.spec).as_numpy_array())
        except (ValueError, RuntimeError, OSError, MemoryError, TypeError, KeyError, IndexError,
                OverflowError) as exc:
            raise ValueError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if out.size != int(np.prod(self.out_shape, dtype=np.int64)):
            raise ValueError(f"{self.name}: decoded {out.size} elements, expected shape {self.out_shape}")
        return out.reshape(self.out_shape)


@dataclass(frozen=True)
class DecodeChain:
    """The steps that decode one stored (inner) chunk, in decode order (see module docstring).

    ``bytes_steps`` run first (last codec first), then ``bytes_step`` turns bytes into
    an array of ``stored_dtype`` and ``stored_shape``, then ``array_steps`` run (also
    last first) and the result is converted to ``dtype`` (native byte order).
    """

    dtype: np.dtype  # native-endian dtype of the decoded chunk
    chunk_shape: tuple[int, ...]
    bytes_steps: tuple[Any, ...]
    bytes_step: BytesStep | CodecArrayBytesStep
    array_steps: tuple[TransposeStep | ZarrArrayStep, ...]
    stored_shape: tuple[int, ...]
    stored_dtype: np.dtype | None = None  # dtype the bytes step produces (native order); None: ``dtype``
    bytes_dtype: np.dtype | None = None  # dtype the array steps receive (zarr's view of the bytes codec output)

    def __post_init__(self) -> None:
        # per-chain constants, computed once: the hot path decodes thousands of chunks a batch
        stored = self.stored_dtype or self.dtype
        fixed = isinstance(self.bytes_step, BytesStep)
        view_dtype = stored
        if fixed and self.bytes_step.endian is not None and stored.itemsize > 1:
            view_dtype = stored.newbyteorder("<" if self.bytes_step.endian == "little" else ">")
        last = self.bytes_steps[-1] if self.bytes_steps else None
        plain = fixed and not self.array_steps
        stored_nbytes = int(np.prod(self.stored_shape, dtype=np.int64)) * stored.itemsize
        constants = {
            "nbytes": int(np.prod(self.chunk_shape, dtype=np.int64)) * self.dtype.itemsize,
            "stored_nbytes": stored_nbytes,
            "_fixed": fixed,
            "_view_dtype": view_dtype,
            "_view_target": self.bytes_dtype or _native(view_dtype),
            "supports_partial_decode": plain and isinstance(last, BloscStep),
            # a Zstd block decodes whole: a chunk of one block (<= 128 KiB) has no prefix worth stopping at
            "supports_prefix_decode": (plain and isinstance(last, ZstdStep) and _NATIVE
                                       and stored_nbytes > native.ZSTD_BLOCK_MAX),
        }
        for name, value in constants.items():
            object.__setattr__(self, name, value)

    #: decoded bytes of one chunk (``chunk_shape`` × ``dtype``)
    nbytes: int = field(init=False, repr=False, compare=False)
    #: bytes produced by the bytes→bytes steps (what the ``bytes`` codec reads)
    stored_nbytes: int = field(init=False, repr=False, compare=False)
    #: :meth:`decode` can decode only the Blosc blocks under given byte intervals (last step
    #: Blosc, stored layout = chunk layout)
    supports_partial_decode: bool = field(init=False, repr=False, compare=False)
    #: :meth:`decode` can stop a Zstd frame once the bytes up to the last interval exist
    #: (last step Zstd, stored layout = chunk layout, C decoder reachable, chunk larger than
    #: one Zstd block)
    supports_prefix_decode: bool = field(init=False, repr=False, compare=False)
    _fixed: bool = field(init=False, repr=False, compare=False)
    _view_dtype: np.dtype = field(init=False, repr=False, compare=False)
    _view_target: np.dtype = field(init=False, repr=False, compare=False)

    @property
    def stored_itemsize(self) -> int:
        return (self.stored_dtype or self.dtype).itemsize

    @property
    def codec_names(self) -> tuple[str, ...]:
        names = [s.name for s in reversed(self.bytes_steps)]
        first = "bytes" if isinstance(self.bytes_step, BytesStep) else self.bytes_step.name
        return (*[s.name for s in reversed(self.array_steps)], first, *names)

    def decode(self, data: Any, *, key: str | Callable[[], str] = "", array: str = "",
               scratch: np.ndarray | None = None, intervals: Any = None) -> np.ndarray:
        """Decode stored bytes into a native-endian array of ``chunk_shape``.

        ``scratch`` (uint8, ``stored_nbytes`` long) lets the last Blosc or Zstd step
        decode in place; the result is then a view of ``scratch``, valid until it is
        reused. ``intervals`` (byte ranges of the decoded chunk: sorted ``[start, stop)``
        pairs as :func:`gpuzarr.plan.planner.chunk_byte_intervals` gives them, or an (m, 2)
        array) promise that only those bytes will be read, so only the Blosc blocks under
        them (:attr:`supports_partial_decode`) or the Zstd prefix up to the last of them
        (:attr:`supports_prefix_decode`) need decoding. Any failure (truncated data, bad
        header, checksum, wrong size, more output than the chunk can hold) becomes a
        :class:`CorruptChunkError` naming the array and key (``key`` may be a callable
        returning it, so the hot path never builds a key no error needs).
        """
        try:
            buf = data
            steps = self.bytes_steps
            fixed = self._fixed
            last = len(steps) - 1
            into = scratch is not None and fixed and scratch.nbytes == self.stored_nbytes
            for i, step in enumerate(steps):
                if into and i == last and type(step) is BloscStep:
                    buf = step.decode_into(buf, scratch, intervals if self.supports_partial_decode else None)
                elif into and i == last and type(step) is ZstdStep:
                    view = _u8(buf)
                    declared = zstd_content_size(view)
                    if declared is not None and declared != scratch.nbytes:
                        raise ValueError(f"zstd: frame header declares {declared} decoded bytes, "
                                         f"expected {scratch.nbytes}")
                    limit = None
                    if intervals is not None and self.supports_prefix_decode and declared is not None:
                        limit = _last_stop(intervals)
                    buf = step.decode_into(view, scratch, limit)
                else:
                    buf = step.decode(buf)
            if fixed:
                arr = self._view_stored(buf)
            else:
                if len(_u8(buf)) > self.bytes_step.encoded_cap:
                    raise _too_much(self.bytes_step.name, self.bytes_step.encoded_cap)
                arr = self.bytes_step.decode(buf)
            for step in self.array_steps:
                arr = step.decode(arr)
            if arr.shape != self.chunk_shape:
                raise ValueError(f"decoded shape {arr.shape}, expected {self.chunk_shape}")
            if arr.dtype != self.dtype:
                arr = arr.astype(self.dtype)
            return arr
        except CorruptChunkError:
            raise
        except (ValueError, RuntimeError, OSError, EOFError, zlib.error, lzma.LZMAError, MemoryError) as exc:
            key = key() if callable(key) else key
            raise CorruptChunkError.of_chunk(array, key, f"cannot be decoded ({', '.join(self.codec_names)}): {exc}") from exc

    def _view_stored(self, buf: Any) -> np.ndarray:
        """The bytes codec: view the decoded bytes as ``stored_shape`` elements in the stored byte order."""
        raw = buf if type(buf) is np.ndarray and buf.dtype == np.uint8 else _u8_array(buf)
        if raw.size != self.stored_nbytes:
            raise ValueError(f"decoded {raw.size} bytes, expected {self.stored_nbytes} for shape {self.stored_shape}")
        arr = raw.view(self._view_dtype).reshape(self.stored_shape)
        if arr.dtype != self._view_target:
            arr = arr.astype(self._view_target)
        return arr


def _u8_array(buf: Any) -> np.ndarray:
    """Any decoded buffer as a flat uint8 array (no copy)."""
    if isinstance(buf, np.ndarray):
        return buf.view(np.uint8).ravel()
    return np.frombuffer(buf, dtype=np.uint8)


def _last_stop(intervals: Any) -> int:
    """The end of the last byte interval (a list of ``[start, stop)`` pairs or an (m, 2) array)."""
    if isinstance(intervals, np.ndarray):
        return int(intervals.reshape(-1, 2)[:, 1].max()) if intervals.size else 0
    return max((hi for _, hi in intervals), default=0)


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=") if dtype.itemsize > 1 else dtype


def _check_dtype(dtype: np.dtype, shown: Any, array_name: str) -> None:
    if dtype.kind not in SUPPORTED_KINDS or dtype.itemsize == 0 or dtype.fields is not None or dtype.subdtype:
        raise UnsupportedCodecError(f"{array_name}: data type {shown} is not supported "
                                    "(bool, integers, floats, complex, datetime64 and timedelta64 only)")


def _with_caps(steps: list[Any], final: int, exact: bool) -> tuple[Any, ...]:
    """Set each bytes→bytes step's output cap, walking back from the last one (decode order).

    ``steps`` are (factory, how its input relates to its output) pairs, see the builders.
    """
    out: list[Any] = []
    cap, is_exact = final, exact
    for make, input_cap in reversed(steps):
        out.append(make(cap, is_exact))
        cap, is_exact = input_cap(cap), False
    return tuple(reversed(out))


def _numcodec_step(codec: Any) -> tuple[Any, Any]:
    """A bounded step for a numcodecs compressor, or the generic one: (factory(cap, exact), input cap)."""
    cid = getattr(codec, "codec_id", None)
    known = {"blosc": BloscStep, "zstd": ZstdStep, "gzip": GzipStep, "zlib": ZlibStep, "bz2": Bz2Step,
             "lz4": Lz4Step}
    if cid in known:
        cls = known[cid]
        return (lambda cap, exact: cls(cap=cap, exact=exact)), encoded_bound
    if cid == "lzma":
        fmt, filters = getattr(codec, "format", lzma.FORMAT_AUTO), getattr(codec, "filters", None)
        if fmt == lzma.FORMAT_XZ and not filters:
            fmt = lzma.FORMAT_AUTO
        frozen = None if filters is None else tuple(tuple(sorted(f.items())) for f in filters)
        return (lambda cap, exact: LzmaStep(fmt, frozen, cap=cap, exact=exact)), encoded_bound
    if cid == "crc32c" and getattr(codec, "location", "end") == "end":
        return (lambda cap, exact: Crc32cStep(cap=cap, exact=exact)), lambda n: n + 4
    return (lambda cap, exact: NumcodecStep(codec, cap=cap, exact=exact)), encoded_bound


def _filter_input_cap(codec: Any, n_items: int) -> Any:
    """How many bytes may go into a v2 filter producing ``n_items`` elements (its encoded dtype decides)."""
    sizes = [np.dtype(getattr(codec, a)).itemsize for a in ("astype", "encode_dtype", "dtype", "decode_dtype")
             if isinstance(getattr(codec, a, None), (str, np.dtype))]
    widest = max(sizes, default=16)
    return lambda out_cap: max(out_cap, n_items * widest) + (1 << 16)


def build_decode_chain(codecs: tuple[Any, ...], chunk_spec: Any, array_name: str) -> DecodeChain:
    """Build the chain for zarr v3 ``codecs`` decoding chunks described by ``chunk_spec``.

    ``chunk_spec`` is zarr's ``ArraySpec`` of one (inner) chunk. Raises
    :class:`UnsupportedCodecError` for a codec no path can decode (e.g. nested sharding,
    variable-length types).
    """
    from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec, BytesBytesCodec
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

    dtype = np.dtype(chunk_spec.dtype.to_native_dtype())
    _check_dtype(dtype, chunk_spec.dtype, array_name)
    chunk_shape = tuple(int(s) for s in chunk_spec.shape)

    array_steps: list[Any] = []
    spec = chunk_spec
    i = 0
    while i < len(codecs) and isinstance(codecs[i], ArrayArrayCodec):
        codec = codecs[i]
        if isinstance(codec, TransposeCodec):
            array_steps.append(TransposeStep(tuple(int(x) for x in codec.order)))
        else:
            array_steps.append(ZarrArrayStep(codec, spec))
        spec = codec.resolve_metadata(spec)
        i += 1
    if i >= len(codecs) or not isinstance(codecs[i], ArrayBytesCodec):
        raise UnsupportedCodecError(f"{array_name}: codec list {codecs} has no array→bytes codec")
    ab = codecs[i]
    if type(ab).__name__ == "V2Codec" and i == 0 and len(codecs) == 1:  # zarr's own pipeline view of a v2 array
        return _v2_chain(ab.compressor, ab.filters, chunk_spec.dtype, chunk_shape, str(chunk_spec.order), array_name)
    stored_shape = tuple(int(s) for s in spec.shape)
    stored_dtype = np.dtype(spec.dtype.to_native_dtype())
    _check_dtype(stored_dtype, spec.dtype, array_name)
    if type(ab).__name__ == "ShardingCodec":
        raise UnsupportedCodecError(f"{array_name}: nested sharding is not supported")
    if isinstance(ab, BytesCodec):
        bytes_step: BytesStep | CodecArrayBytesStep = BytesStep(
            None if ab.endian is None else str(getattr(ab.endian, "value", ab.endian)))
        final, exact = int(np.prod(stored_shape, dtype=np.int64)) * stored_dtype.itemsize, True
    else:
        bytes_step = CodecArrayBytesStep(ab, spec)
        final, exact = bytes_step.encoded_cap, False
    bytes_spec = ab.resolve_metadata(spec)
    made: list[tuple[Any, Any]] = []
    for codec in codecs[i + 1 :]:
        if not isinstance(codec, BytesBytesCodec):
            raise UnsupportedCodecError(f"{array_name}: unexpected codec {type(codec).__name__} after bytes")
        inner = getattr(codec, "_codec", None)  # zarr's / numcodecs.zarr3's wrappers of numcodecs codecs
        if isinstance(codec, BloscCodec):
            made.append(((lambda cap, exact: BloscStep(cap=cap, exact=exact)), encoded_bound))
        elif isinstance(codec, ZstdCodec):
            made.append(((lambda cap, exact: ZstdStep(cap=cap, exact=exact)), encoded_bound))
        elif isinstance(codec, GzipCodec):
            made.append(((lambda cap, exact: GzipStep(cap=cap, exact=exact)), encoded_bound))
        elif isinstance(codec, Crc32cCodec):
            made.append(((lambda cap, exact: Crc32cStep(cap=cap, exact=exact)), lambda n: n + 4))
        elif inner is not None and getattr(inner, "codec_id", None) in ("blosc", "zstd", "gzip", "zlib", "bz2",
                                                                          "lz4", "lzma"):
            made.append(_numcodec_step(inner))
        else:
            s = bytes_spec
            made.append(((lambda cap, exact, c=codec, s=s: ZarrCodecStep(c, s, cap=cap, exact=exact)), encoded_bound))
        bytes_spec = codec.resolve_metadata(bytes_spec)
    # decode order: last bytes→bytes codec first; array→array codecs last-first too
    bytes_steps = _with_caps(list(reversed(made)), final, exact)
    bytes_dtype = stored_dtype if array_steps else None
    return DecodeChain(
        dtype=_native(dtype),
        chunk_shape=chunk_shape,
        bytes_steps=bytes_steps,
        bytes_step=bytes_step,
        array_steps=tuple(reversed(array_steps)),
        stored_shape=stored_shape,
        stored_dtype=_native(stored_dtype),
        bytes_dtype=bytes_dtype,
    )


def build_v2_decode_chain(metadata: Any, array_name: str) -> DecodeChain:
    """Build the chain for a Zarr v2 array from zarr-python's parsed ``ArrayV2Metadata``.

    The compressor and filters are numcodecs objects; decoding mirrors zarr-python's
    ``V2Codec``: decompress, run the filters last-first on the flat buffer, view the
    bytes as the array's data type (its own byte order), lay them out in ``order``.
    ``order="F"`` is a :class:`TransposeStep` reversing the axes, so the GPU engine
    folds it into its gather like a v3 ``transpose``.
    """
    return _v2_chain(metadata.compressor, metadata.filters, metadata.dtype,
                     tuple(int(c) for c in metadata.chunks), str(getattr(metadata, "order", "C")), array_name)


def _v2_chain(compressor: Any, filters: Any, zdtype: Any, chunk_shape: tuple[int, ...], order: str,
              array_name: str) -> DecodeChain:
    """The chain of zarr-python's ``V2Codec(filters, compressor)`` for chunks of ``zdtype`` in ``order``."""
    stored = np.dtype(zdtype.to_native_dtype())
    _check_dtype(stored, zdtype, array_name)
    n_items = int(np.prod(chunk_shape, dtype=np.int64))
    made: list[tuple[Any, Any]] = []
    if compressor is not None:
        made.append(_numcodec_step(compressor))
    for f in reversed(tuple(filters or ())):  # decode order: the last filter first
        made.append(((lambda cap, exact, f=f: NumcodecStep(f, cap=cap, exact=exact)), _filter_input_cap(f, n_items)))
    final = n_items * stored.itemsize
    bytes_steps = _with_caps(made, final, True)
    ndim = len(chunk_shape)
    if order == "F" and ndim > 1:
        array_steps: tuple[Any, ...] = (TransposeStep(tuple(range(ndim - 1, -1, -1))),)
        stored_shape = chunk_shape[::-1]
    else:
        array_steps, stored_shape = (), chunk_shape
    endian = None if stored.itemsize == 1 or stored.byteorder == "|" else (
        "big" if stored.byteorder == ">" or (stored.byteorder == "=" and np.little_endian is False) else "little")
    return DecodeChain(
        dtype=_native(stored),
        chunk_shape=chunk_shape,
        bytes_steps=bytes_steps,
        bytes_step=BytesStep(endian),
        array_steps=array_steps,
        stored_shape=stored_shape,
        stored_dtype=_native(stored),
    )
