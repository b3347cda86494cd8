"""The C decoders numcodecs already ships (c-blosc, zstd), called straight through ctypes.

numcodecs' Python wrappers cost more than decoding a small chunk: each call normalises
its buffers in Python, and its Zstd ``decompress`` creates and frees a decompression
context for every frame. The same C functions are exported by numcodecs' extension
modules, so the CPU hot path calls them directly:

* :func:`blosc_decompress_into` — ``blosc_decompress_ctx`` with one internal thread;
* :func:`blosc_getitem_into` — ``blosc_getitem`` (decode a run of Blosc blocks);
* :func:`zstd_decompress_into` — ``ZSTD_decompressDCtx`` with one context per thread,
  reused for every frame; or, given a ``limit`` at least one Zstd block (128 KiB) short
  of the frame's end, ``ZSTD_decompressStream`` stopped once the first ``limit`` decoded
  bytes exist (a crop that needs only the top rows of a large chunk pays only for them).

ctypes releases the GIL for each call, so decoding threads run in parallel. Nothing
here is compiled by gpuzarr: the libraries come with numcodecs' wheels. When a symbol
is missing (a numcodecs built without exported symbols) :func:`available` says so and
callers use numcodecs' Python API instead. Every function raises ``ValueError`` on a
decoder error; the caller turns it into a :class:`~gpuzarr.errors.CorruptChunkError`.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import weakref
from typing import Any

import numcodecs.blosc
import numcodecs.zstd
import numpy as np

__all__ = ["address", "available", "blosc_decompress_into", "blosc_getitem_into", "zstd_decompress_into"]

_size_t = ctypes.c_size_t
_ptr = ctypes.c_void_p

#: ``ZSTD_d_windowLogMax``: the largest window a streamed frame may ask for (bounds its buffer)
_ZSTD_D_WINDOW_LOG_MAX = 100
#: ``ZSTD_reset_session_only``
_ZSTD_RESET_SESSION = 1
#: ``ZSTD_BLOCKSIZE_MAX``: a frame's blocks decode whole, so a prefix saves only whole blocks after it
ZSTD_BLOCK_MAX = 1 << 17


class _InBuffer(ctypes.Structure):
    _fields_ = [("src", _ptr), ("size", _size_t), ("pos", _size_t)]


class _OutBuffer(ctypes.Structure):
    _fields_ = [("dst", _ptr), ("size", _size_t), ("pos", _size_t)]


@functools.cache
def _blosc() -> Any:
    try:
        lib = ctypes.CDLL(numcodecs.blosc.__file__)
        lib.blosc_decompress_ctx.argtypes = [_ptr, _ptr, _size_t, ctypes.c_int]
        lib.blosc_decompress_ctx.restype = ctypes.c_int
        lib.blosc_getitem.argtypes = [_ptr, ctypes.c_int, ctypes.c_int, _ptr]
        lib.blosc_getitem.restype = ctypes.c_int
    except (OSError, AttributeError):  # pragma: no cover - symbols not exported by this build
        return None
    return lib


@functools.cache
def _zstd() -> Any:
    try:
        lib = ctypes.CDLL(numcodecs.zstd.__file__)
        lib.ZSTD_createDCtx.argtypes = []
        lib.ZSTD_createDCtx.restype = _ptr
        lib.ZSTD_freeDCtx.argtypes = [_ptr]
        lib.ZSTD_freeDCtx.restype = _size_t
        lib.ZSTD_decompressDCtx.argtypes = [_ptr, _ptr, _size_t, _ptr, _size_t]
        lib.ZSTD_decompressDCtx.restype = _size_t
        lib.ZSTD_decompressStream.argtypes = [_ptr, ctypes.POINTER(_OutBuffer), ctypes.POINTER(_InBuffer)]
        lib.ZSTD_decompressStream.restype = _size_t
        lib.ZSTD_DCtx_reset.argtypes = [_ptr, ctypes.c_int]
        lib.ZSTD_DCtx_reset.restype = _size_t
        lib.ZSTD_DCtx_setParameter.argtypes = [_ptr, ctypes.c_int, ctypes.c_int]
        lib.ZSTD_DCtx_setParameter.restype = _size_t
        lib.ZSTD_isError.argtypes = [_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_getFrameContentSize.argtypes = [_ptr, _size_t]
        lib.ZSTD_getFrameContentSize.restype = ctypes.c_ulonglong
        lib.ZSTD_getErrorName.argtypes = [_size_t]
        lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    except (OSError, AttributeError):  # pragma: no cover - symbols not exported by this build
        return None
    return lib


def available() -> bool:
    """Whether both libraries' symbols can be called (else callers use numcodecs' Python API)."""
    return _blosc() is not None and _zstd() is not None


_char_from_buffer = ctypes.c_char.from_buffer
_addressof = ctypes.addressof


def address(buf: Any) -> int:
    """Address of the first byte of a contiguous buffer (NumPy array, bytes, memoryview).

    Writable buffers (the decoding threads' reused arrays) go through ctypes, the
    cheapest route; read-only ones (``bytes``) and empty ones through NumPy.
    """
    try:
        return _addressof(_char_from_buffer(buf))
    except (TypeError, ValueError):
        if not isinstance(buf, np.ndarray):
            buf = np.frombuffer(buf, dtype=np.uint8)
        return buf.__array_interface__["data"][0]


# ------------------------------------------------------------------ blosc


def blosc_decompress_into(src: Any, nbytes: int, dest: np.ndarray) -> None:
    """Decode a whole Blosc chunk (``src`` header-checked by the caller: ``nbytes`` decoded bytes) into ``dest``."""
    got = _blosc().blosc_decompress_ctx(address(src), address(dest), dest.nbytes, 1)
    if got != nbytes:
        raise ValueError(f"blosc: decompression failed (c-blosc returned {got}, expected {nbytes} bytes)")


def blosc_getitem_into(src_address: int, start_item: int, n_items: int, dest_address: int) -> int:
    """``blosc_getitem``: decode items ``[start_item, start_item + n_items)``; returns bytes written (< 0: error)."""
    return _blosc().blosc_getitem(src_address, start_item, n_items, dest_address)


# ------------------------------------------------------------------ zstd


class _ThreadContext:
    """One ``ZSTD_DCtx`` for the thread that holds this object; freed when the thread's locals go."""

    __slots__ = ("__weakref__", "ctx", "inb", "outb", "window_log")

    def __init__(self) -> None:
        lib = _zstd()
        self.ctx = lib.ZSTD_createDCtx()
        if not self.ctx:
            raise MemoryError("ZSTD_createDCtx failed")
        self.inb = _InBuffer()
        self.outb = _OutBuffer()
        self.window_log = 0
        weakref.finalize(self, lib.ZSTD_freeDCtx, self.ctx)


_local = threading.local()


def _context() -> _ThreadContext:
    ctx = getattr(_local, "zstd", None)
    if ctx is None:
        ctx = _local.zstd = _ThreadContext()
    return ctx


def zstd_context() -> int:
    """The calling thread's ``ZSTD_DCtx`` (its address), made on first use and reused for every frame."""
    return _context().ctx


def _zstd_error(lib: Any, code: int) -> ValueError:
    return ValueError(f"zstd: {lib.ZSTD_getErrorName(code).decode(errors='replace')}")


def prefix_skips_a_block(nbytes: Any, limit: Any) -> Any:
    """Whether decoding a Zstd frame of ``nbytes`` only up to ``limit`` leaves at least one whole block undecoded.

    A decoder produces whole blocks (at most 128 KiB each; compressors cut full-size blocks
    once a frame is larger than one): stopping after the block that holds byte ``limit - 1``
    (at least the first block) saves something only if another block follows. Works on
    ints and on NumPy arrays alike.
    """
    blocks_needed = -(-limit // ZSTD_BLOCK_MAX)
    if isinstance(blocks_needed, np.ndarray):
        blocks_needed = np.maximum(blocks_needed, 1)
    else:
        blocks_needed = max(blocks_needed, 1)
    return nbytes > blocks_needed * ZSTD_BLOCK_MAX


def zstd_decompress_into(src: Any, dest: np.ndarray, limit: int | None = None) -> None:
    """Decode one Zstd frame into ``dest``.

    Without ``limit`` the frame must decode to exactly ``dest.nbytes`` bytes (the decoder
    refuses to write past ``dest``). With ``limit`` < ``dest.nbytes`` only the first
    ``limit`` bytes are produced (the rest of ``dest`` is left as it was) when the frame
    header declares exactly ``dest.nbytes`` decoded bytes; any other frame is decoded
    whole, and fails if it does not fill ``dest`` exactly. A frame that carries a
    checksum should be asked for whole (a prefix is never checksummed). Raises ``ValueError``.
    """
    lib = _zstd()
    state = _context()
    src_address, src_size = address(src), len(src) if not isinstance(src, np.ndarray) else src.nbytes
    dst_address = address(dest)
    # a prefix only when it skips at least one whole Zstd block (a block decodes whole: streaming a
    # prefix of a one-block frame saves nothing and costs a copy and several calls), and only of a
    # frame that declares exactly dest's size (else the one-shot decode below says what is wrong)
    if (limit is not None and prefix_skips_a_block(dest.nbytes, limit)
            and lib.ZSTD_getFrameContentSize(src_address, src_size) == dest.nbytes
            and _zstd_prefix(lib, state, src_address, src_size, dst_address, dest.nbytes, limit)):
        return
    got = lib.ZSTD_decompressDCtx(state.ctx, dst_address, dest.nbytes, src_address, src_size)
    if lib.ZSTD_isError(got):
        raise _zstd_error(lib, got)
    if got != dest.nbytes:
        raise ValueError(f"zstd: the frame decodes to {got} bytes, expected {dest.nbytes}")


def _zstd_prefix(lib: Any, state: _ThreadContext, src_address: int, src_size: int, dst_address: int, nbytes: int,
                 limit: int) -> bool:
    """Stream the frame until ``limit`` bytes are decoded; False (decode it whole instead) on any decoder complaint.

    A streamed frame keeps a window buffer, bounded here by the chunk's size; a frame
    asking for more, or any other error, is left to the one-shot decoder, which
    needs no window and reports the real problem.
    """
    # the previous prefix left the context inside its frame: end that session first (a parameter
    # can only be set between frames, so setting it before the reset failed and disabled prefixes)
    lib.ZSTD_DCtx_reset(state.ctx, _ZSTD_RESET_SESSION)
    window_log = max(10, int(nbytes - 1).bit_length())
    if state.window_log != window_log:
        if lib.ZSTD_isError(lib.ZSTD_DCtx_setParameter(state.ctx, _ZSTD_D_WINDOW_LOG_MAX, window_log)):
            return False  # pragma: no cover - a valid parameter between frames
        state.window_log = window_log
    inb, outb = state.inb, state.outb
    inb.src, inb.size, inb.pos = src_address, src_size, 0
    outb.dst, outb.size, outb.pos = dst_address, limit, 0
    while outb.pos < limit:
        before = (inb.pos, outb.pos)
        code = lib.ZSTD_decompressStream(state.ctx, outb, inb)
        if lib.ZSTD_isError(code) or (code == 0 and outb.pos < limit) or (inb.pos, outb.pos) == before:
            lib.ZSTD_DCtx_reset(state.ctx, _ZSTD_RESET_SESSION)
            return False
    return True
