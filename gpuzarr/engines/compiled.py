"""The CPU engine's compiled lane: read, check, decode and scatter a batch's chunks without Python per chunk.

For the chains almost every array uses — raw bytes, Blosc or Zstd, each optionally
behind a CRC32C, stored in the array's own (native) byte order with no array→array
codec — one call of a Numba-compiled function per worker thread does, for each chunk
it is handed: ``open``/``pread`` of the chunk's file or shard range (the file mapped,
and a chunk's pages read in up front, for reads of at least ``cpu.map_min_bytes``: no
copy out of the page cache), or the address of bytes already in memory, the CRC32C check, the decode, and the copies of every
piece into the batch. Zstd chunks go to ``ZSTD_decompressDCtx``; Blosc chunks with
Zstd inside are decoded block by block by the kernel itself (``ZSTD_decompressDCtx``
for each stream, then its own byte or bit unshuffle: c-blosc's bit unshuffle took as
long as the Zstd decode on the demo data), and only the blocks a piece reads when the
batch reads chunks in part; other Blosc chunks go to ``blosc_decompress_ctx`` whole. The compiled code calls the same C libraries the Python path calls
(libc, numcodecs' c-blosc and zstd, google-crc32c's libcrc32c — zarr depends on it)
through their addresses, passed in at run time, so the compiled code is cached on
disk and holds no process-specific pointer. It runs without the GIL, so the worker
threads decode in parallel instead of taking turns for their Python bookkeeping.

It never decides an error on its own: a chunk it cannot finish — a file that is
missing or unreadable, a failed checksum or decode, a Blosc chunk of several blocks
read in part whose inner format is not Zstd — is left marked, and the engine runs
exactly that chunk through the one decode entry (:meth:`DecodeChain.decode`), which
fills missing chunks, retries reads, decodes partially and raises the typed error
naming the chunk. Values are therefore the Python path's by construction; the
compiled lane only removes its per-chunk cost.

Numba is optional (the ``fast`` extra; ``test`` and ``bench`` include it).
Compiling takes seconds the first time in an environment (then it is loaded from
Numba's cache, about a second with Numba's import), so by default it happens in a
background thread once a process has read ``cpu.compile_after_chunks`` chunks, and
batches take the Python path until it is ready; the ``cpu.compiled`` setting says
``"background"`` (default), ``"eager"`` (compile on first use, wait for it) or
``"off"``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import mmap
import os
import sys
import weakref
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np

from gpuzarr.settings import config
from gpuzarr.threads import BackgroundBuild

__all__ = ["CompiledLane", "available", "lane", "ready", "runs_now", "setting"]

#: per-chunk status left by the compiled code: 0 not reached, DONE, or why the Python path must take it
DONE, UNREADABLE, CORRUPT, PARTIAL = 1, 2, 3, 4
#: the source of each chunk (``kinds`` table)
WHOLE_FILE, FILE_RANGE, MEMORY, SKIP = 0, 1, 2, 3
#: the codec of the chain (``codec`` argument)
RAW, BLOSC, ZSTD = 0, 1, 2
#: order of the C function addresses handed to the kernel
#: flags of every ``open`` (read only, not inherited by a child process)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
#: ``madvise`` advice that reads a mapping's pages in or fails with an error (Linux 5.14; Python's mmap may not name it)
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_FUNCTIONS = ("open", "pread", "lseek", "close", "crc32c_value", "ZSTD_decompressDCtx", "blosc_decompress_ctx",
              "mmap", "munmap", "madvise")


# ----------------------------------------------------------------------------- the C functions


@functools.cache
def function_addresses() -> np.ndarray | None:
    """Addresses of the C functions the kernel calls, in :data:`_FUNCTIONS` order; None when one is missing."""
    if os.name != "posix":
        return None
    try:
        import google_crc32c._crc32c as crc_ext
        import numcodecs.blosc
        import numcodecs.zstd

        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        crc = ctypes.CDLL(crc_ext.__file__)  # its libcrc32c is a dependency: dlsym finds the symbol through it
        blosc = ctypes.CDLL(numcodecs.blosc.__file__)
        zstd = ctypes.CDLL(numcodecs.zstd.__file__)
        functions = (libc.open, libc.pread, libc.lseek, libc.close, crc.crc32c_value,
                     zstd.ZSTD_decompressDCtx, blosc.blosc_decompress_ctx, libc.mmap, libc.munmap, libc.madvise)
        return np.array([ctypes.cast(f, ctypes.c_void_p).value for f in functions], dtype=np.int64)
    except (ImportError, OSError, AttributeError):
        return None


@functools.cache
def _populate_read_works() -> bool:
    """Whether ``madvise(MADV_POPULATE_READ)`` works here (Linux 5.14 or later): the kernel maps files only then."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        area = mmap.mmap(-1, mmap.PAGESIZE)
        view = ctypes.c_char.from_buffer(area)
        address = ctypes.c_void_p(ctypes.addressof(view))
        works = libc.madvise(address, ctypes.c_size_t(mmap.PAGESIZE), MADV_POPULATE_READ) == 0
        del view  # the mapping closes only once no view of it is left
        area.close()
        return works
    except (OSError, AttributeError, ValueError, BufferError):
        return False


def _map_min() -> int:
    """The ``cpu.map_min_bytes`` setting, or 0 (never map) when the kernel cannot populate a mapping safely."""
    threshold = int(config.get("cpu.map_min_bytes") or 0)
    return threshold if threshold > 0 and _populate_read_works() else 0


# ----------------------------------------------------------------------------- compiling


def _build() -> Any:
    """Compile (or load from Numba's cache) the kernel; returns it."""
    from gpuzarr.engines import _compiled_kernel

    kernel = _compiled_kernel.run_chunks
    _compiled_kernel.warm_up(kernel)
    return kernel


_compiler: BackgroundBuild[Any] = BackgroundBuild(_build, what="the CPU engine's compiled lane",
                                                  instead="reading through the Python path")


def available() -> bool:
    """Whether the compiled lane can run here at all (Numba installed, the C functions found); imports nothing."""
    if "numba" in sys.modules:
        installed = sys.modules["numba"] is not None
    else:
        installed = importlib.util.find_spec("numba") is not None
    return installed and function_addresses() is not None


def ready(wait: bool = False) -> bool:
    """Whether the kernel is compiled (``wait``: compile now, or wait for the background compile).

    Asks the same of the planner's compiled twins, which the CPU engine plans its batches
    with (they build on their own, :func:`gpuzarr.plan.planner.twins_ready`), so one
    ``ready(wait=True)`` before timing leaves nothing of the CPU path to compile.
    """
    if not available():
        return False
    from gpuzarr.plan import planner

    planner.twins_ready(wait)  # nothing while cpu.compiled is "off"
    return _compiler.get(wait) is not None


def setting() -> Any:
    """The ``cpu.compiled`` setting, checked (a ConfigurationError names a bad value); None when it is ``"off"``."""
    mode = config.get("cpu.compiled")
    if mode not in ("background", "eager", "off", True, False):
        from gpuzarr.errors import ConfigurationError

        raise ConfigurationError(f"cpu.compiled must be 'background', 'eager' or 'off', not {mode!r}")
    return None if mode in (False, "off") else mode


def runs_now() -> bool:
    """Whether a batch handed to the lane now would run on it: compiled (``"eager"``: compiled here), and not ``"off"``.

    In ``"background"`` mode this starts nothing: until the compile is done, the answer is no.
    """
    mode = setting()
    if mode is None or not available():
        return False
    if mode in ("eager", True):
        return ready(wait=True)
    return built()


def built() -> bool:
    """Whether the kernel is compiled in this process already (never starts or waits for a compile)."""
    return available() and _compiler.built() is not None


def _kernel(n_chunks: int) -> Any:
    """The compiled kernel when the ``cpu.compiled`` setting allows it and it is ready; else None.

    In ``"background"`` mode the compile starts once ``cpu.compile_after_chunks`` chunks
    have been asked of the lane in this process, so a script that reads a few chunks
    never imports Numba.
    """
    mode = setting()
    if mode is None or not available():
        return None
    return _compiler.when_due(n_chunks, eager=mode in ("eager", True), after=config.get("cpu.compile_after_chunks"))


# ----------------------------------------------------------------------------- batch tables


def chain_codec(chain: Any) -> tuple[int, bool] | None:
    """``(codec, crc)`` when the compiled lane decodes ``chain`` exactly as :meth:`DecodeChain.decode` does; else None.

    Raw, Blosc or Zstd bytes (optionally behind a CRC32C), the ``bytes`` codec in the
    native byte order, no array→array codec, no change of data type.
    """
    from gpuzarr.codecs.chain import BloscStep, Crc32cStep, ZstdStep

    if not chain._fixed or chain.array_steps or chain.stored_shape != chain.chunk_shape or not chain.chunk_shape:
        return None
    if chain._view_dtype != chain.dtype or chain._view_target != chain.dtype or chain.nbytes != chain.stored_nbytes:
        return None
    steps = list(chain.bytes_steps)
    crc = bool(steps) and type(steps[0]) is Crc32cStep
    if crc:
        steps.pop(0)
    if not steps:
        return RAW, crc
    if len(steps) == 1 and type(steps[0]) is BloscStep:
        return BLOSC, crc
    if len(steps) == 1 and type(steps[0]) is ZstdStep:
        return ZSTD, crc
    return None


@dataclass
class CompiledLane:
    """One batch's tables for the kernel (made by :func:`lane`), and the buffers they point into."""

    kernel: Any
    order: np.ndarray      # int64: the chunks in the order they are processed (by file, then offset)
    kinds: np.ndarray      # int8 per chunk: WHOLE_FILE, FILE_RANGE, MEMORY or SKIP
    path_index: np.ndarray  # int64 per chunk: which path in ``paths``
    path_offsets: np.ndarray  # int64 per path: where its NUL-terminated bytes start in ``paths``
    paths: np.ndarray       # uint8: the paths, NUL-terminated
    starts: np.ndarray      # int64 per chunk: file offset (FILE_RANGE) or address (MEMORY)
    lengths: np.ndarray     # int64 per chunk: bytes to read (FILE_RANGE, MEMORY)
    piece_offsets: np.ndarray
    src_offsets: np.ndarray
    dst_offsets: np.ndarray
    extents: np.ndarray     # (pieces, ndim) int64, the last axis in bytes
    src_strides: np.ndarray
    dst_strides: np.ndarray
    codec: int
    crc: bool
    partial: bool            # decode only the Blosc blocks a piece reads
    input_bytes: int
    keep_alive: Any = None

    def run(self, first: int, stop: int, status: np.ndarray, out: np.ndarray, inbuf: np.ndarray,
            scratch: np.ndarray, zstd_ctx: int) -> None:
        """Process the chunks ``order[first:stop]`` on the calling thread (the GIL is released inside)."""
        self.kernel(first, stop, self.order, self.kinds, self.path_index, self.path_offsets, self.paths, self.starts,
                    self.lengths, self.codec, self.crc, self.partial, inbuf, scratch, out,
                    self.piece_offsets, self.src_offsets, self.dst_offsets, self.extents, self.src_strides,
                    self.dst_strides, function_addresses(), zstd_ctx, _OPEN_FLAGS, _map_min(), mmap.PAGESIZE,
                    status)


#: chains whose multi-block Blosc chunks (not Zstd inside) the kernel left to the Python path when read
#: in part: it decodes only the blocks a batch needs, so the lane (which would read a chunk only to
#: hand it back) stays out
_MULTI_BLOCK: weakref.WeakSet[Any] = weakref.WeakSet()


def note_statuses(chain: Any, status: np.ndarray) -> None:
    """Learn from one batch's statuses: a chunk left for partial decode means the chain's chunks are multi-block."""
    if (status == PARTIAL).any():
        _MULTI_BLOCK.add(chain)


#: the longest encoded chunk the lane reads into its buffer, in encoded bounds of the chain (zstd frames
#: written in many small blocks can exceed the one-shot bound a little; a corrupt index entry exceeds it by far)
_LONGEST_READ_BOUNDS = 4


def lane(plan: Any, encoded: Any, chain: Any, full: np.ndarray, *, partial: bool) -> CompiledLane | None:
    """The compiled lane for one batch, or None when the Python path must take it whole.

    ``full`` is the batch array the pieces are copied into (C-contiguous,
    ``(n_regions, *region_shape)``); ``partial``: decode only the Blosc blocks a piece
    reads (the kernel does for Zstd inside; chunks of other inner formats are left to
    the Python path, and once a batch has shown that, the chain's batches too).
    """
    if plan.n_chunks == 0 or not full.flags.c_contiguous or full.dtype != chain.dtype:
        return None
    codec = chain_codec(chain)
    if codec is None or (partial and chain in _MULTI_BLOCK):
        return None
    sources = _sources(encoded, plan.n_chunks)
    if sources is None:
        return None
    if chain.supports_prefix_decode:
        # a Zstd chunk whose pieces end early enough that a prefix skips a whole Zstd block is left
        # to the Python path, which decodes only that prefix; the lane decodes the others whole
        from gpuzarr.codecs.native import prefix_skips_a_block
        from gpuzarr.plan.planner import chunk_byte_limits

        limits = chunk_byte_limits(plan, chain.chunk_shape, chain.dtype.itemsize)
        sources[0][prefix_skips_a_block(chain.stored_nbytes, limits)] = SKIP
    if (sources[0] == SKIP).all():  # nothing the lane can read (missing, or reads it cannot make)
        return None
    kernel = _kernel(plan.n_chunks)
    if kernel is None:
        return None
    kinds, path_index, path_offsets, paths, starts, lengths, keep_alive = sources
    from gpuzarr.codecs.chain import encoded_bound
    from gpuzarr.plan.layout import chunk_strides as element_strides

    itemsize = chain.dtype.itemsize
    chunk_strides = element_strides(chain.chunk_shape) * itemsize  # bytes, C order (no transpose on the lane)
    out_strides = np.asarray(full.strides, dtype=np.int64)
    src_offsets = plan.piece_src_start.astype(np.int64) @ chunk_strides
    dst_offsets = plan.piece_dst_start.astype(np.int64) @ out_strides[1:] + plan.piece_region.astype(np.int64) * out_strides[0]
    extents = plan.piece_extent.astype(np.int64)
    extents[:, -1] *= itemsize
    bound = encoded_bound(chain.stored_nbytes) + 4  # the compressed chunk and its CRC32C
    # a read longer than an encoder writes (a damaged shard index says anything) is not given a buffer:
    # past this size the kernel leaves it to the Python path, which names it
    longest = min(int(lengths.max()) if lengths.size else 0, _LONGEST_READ_BOUNDS * bound)
    order = np.lexsort((starts, path_index))  # by file, then offset (bytes in memory: by address)
    return CompiledLane(kernel, order, kinds, path_index, path_offsets, paths, starts, lengths,
                        plan.chunk_piece_offsets.astype(np.int64), src_offsets, dst_offsets, extents,
                        chunk_strides[:-1].copy(), out_strides[1:-1].copy(), codec[0], codec[1], partial,
                        max(bound, longest), keep_alive)


def _sources(encoded: Any, n: int) -> tuple | None:
    """Per-chunk source tables from the reader's output; None when a source is not a local file or memory."""
    from gpuzarr.storage.base import DeferredRead, DeferredReads

    kinds = np.full(n, SKIP, dtype=np.int8)
    if isinstance(encoded, DeferredReads):
        paths_of = getattr(encoded.fetcher, "local_paths", None)
        if paths_of is None:
            return None
        ranged = getattr(encoded, "starts", None)
        unique, path_index = encoded.key_table()
        paths = paths_of(unique)
        if paths is None:
            return None
        present = path_index >= 0
        if ranged is None:
            kinds[present] = WHOLE_FILE
            starts = lengths = np.zeros(n, dtype=np.int64)
        else:
            kinds[present] = FILE_RANGE
            starts = np.asarray(ranged, dtype=np.int64)  # the kernel only reads them: no copy of an int64 array
            lengths = np.asarray(encoded.lengths, dtype=np.int64)
        if not paths:
            return kinds, path_index, np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.uint8), starts, lengths, None
        # the paths NUL-terminated, one after another, encoded in one call; a path with a NUL of its own
        # would open another file: such a batch is the Python path's, whose open names the key
        joined = "\0".join(paths) + "\0"
        if joined.count("\0") != len(paths):
            return None
        blob = np.frombuffer(os.fsencode(joined), dtype=np.uint8)
        path_offsets = np.zeros(len(paths), dtype=np.int64)
        if blob.size == len(joined):  # one byte per character (ASCII paths): the offsets are the lengths summed
            path_offsets[1:] = list(accumulate(map(len, paths[:-1])))
            path_offsets[1:] += np.arange(1, len(paths))
        else:
            path_offsets[1:] = np.flatnonzero(blob == 0)[:-1] + 1
        return kinds, path_index, path_offsets, blob, starts, lengths, None
    starts = np.zeros(n, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    keep = []
    for i in range(n):
        data = encoded[i]
        if data is None or isinstance(data, DeferredRead):
            continue  # missing (filled by the Python path) or an odd mix: left to the Python path
        try:  # one contiguous byte array per chunk (a copy only for a non-contiguous array)
            view = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else \
                np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        except (TypeError, ValueError):
            continue
        keep.append(view)
        kinds[i] = MEMORY
        starts[i] = view.ctypes.data
        lengths[i] = view.nbytes
    empty = np.zeros(0, dtype=np.int64)
    return kinds, np.full(n, -1, dtype=np.int64), empty, np.zeros(1, dtype=np.uint8), starts, lengths, keep

