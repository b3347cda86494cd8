"""GPU engine: batched nvCOMP decode, the Blosc unshuffle kernel and one gather launch per batch.

For one :class:`~gpuzarr.plan.planner.BatchPlan` the engine

1. packs the encoded chunks of the batch (16-byte aligned) into this thread's reusable
   page-locked arena (:class:`~gpuzarr.storage.buffers.PinnedStaging`) and uploads them in
   one asynchronous copy on the batch's stream;
2. verifies a ``crc32c`` codec for all chunks in two kernel launches (its result is read
   back before anything is decoded: corrupt bytes never reach nvCOMP);
3. decodes the compressor of all chunks at once through nvCOMP's batched C API
   (:mod:`gpuzarr.engines.gpu.nvcomp`): zarr's ``zstd`` → one Zstd call; ``gzip`` →
   framing checked and stripped on the host, one Deflate call; ``blosc`` → headers and
   block tables parsed and validated on the host
   (:func:`gpuzarr.codecs.blosc.parse_blosc_batch`), one call per inner algorithm (LZ4,
   Zstd, Deflate for zlib streams), then one unshuffle launch for every block of the
   batch. The pointer and size tables are built by NumPy and uploaded in one copy per
   call; a call whose nVCOMP temp memory would exceed ``gpu.scratch_bytes`` is split;
4. assembles the batch in one gather launch: the ``bytes`` codec's byte order and the
   ``transpose`` codec's axis order are folded into the gather (byte swap, strides), as
   are the optional :class:`~gpuzarr.plan.transform.OutputTransform` cast, normalisation and
   layout;
5. copies nvCOMP's per-stream statuses and decoded sizes back (asynchronously, into
   pinned memory), records an event after the gather and waits for it — the batch's only
   wait when there is no crc32c — and checks every stream against the size the host
   validated: a mismatch raises :class:`CorruptChunkError` naming the chunk.

Everything is queued on the caller's stream when one is given (CuPy's current stream
otherwise); the engine never synchronises the device or a whole stream for nvCOMP.

A chunk that fails any host check raises :class:`CorruptChunkError` naming its key and
never reaches nvCOMP. Codec chains the engine cannot run (other codecs, unusual order)
and Blosc chunks with an inner BloscLZ stream are decoded on the CPU and uploaded, with
one :class:`CpuFallbackWarning` per reason; ``strict=True`` raises
:class:`GpuFallbackError` instead.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuzarr import _optional
from gpuzarr.codecs import blosc
from gpuzarr.codecs.chain import BloscStep, BytesStep, Crc32cStep, DecodeChain, GzipStep, TransposeStep, ZstdStep
from gpuzarr.engines.base import EngineCapabilities
from gpuzarr.engines.gpu import kernels as K
from gpuzarr.engines.gpu import nvcomp as nvc
from gpuzarr.errors import (
    ConfigurationError,
    CorruptChunkError,
    CpuFallbackWarning,
    DeviceUnavailableError,
    GpuFallbackError,
)
from gpuzarr.plan.layout import chunk_strides, gather_layout
from gpuzarr.plan.planner import BatchPlan
from gpuzarr.settings import config
from gpuzarr.storage.buffers import (
    BATCH_ALIGN,
    DeviceBatch,
    aligned_slots,
    concatenate_aligned,
    pinned_staging,
    stage_to_device,
)
from gpuzarr.threads import cpu_pool

ALIGN = BATCH_ALIGN
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_NVCOMP_ALGORITHM = {blosc.FORMAT_LZ4: "LZ4", blosc.FORMAT_ZSTD: "Zstd", blosc.FORMAT_ZLIB: "Deflate"}


def _caller_stream(stream: Any) -> Any:
    """A context making the caller's CUDA stream CuPy's current one (nothing when ``None``)."""
    if stream is None:
        return contextlib.nullcontext()
    import cupy as cp

    if isinstance(stream, int) or hasattr(stream, "cuda_stream"):  # a raw handle, or a torch.cuda.Stream
        return cp.cuda.ExternalStream(int(getattr(stream, "cuda_stream", stream)))
    return stream  # a CuPy stream: entering it makes it current


def _align_up(x: np.ndarray | int, a: int = ALIGN) -> Any:
    return (x + (a - 1)) // a * a


_slots = aligned_slots


def _int64(values: Any) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64).reshape(-1)


#: bytes of each chunk's start and end the host reads of a batch that is already on the device:
#: a Zstd frame header is at most 18 bytes, a gzip header 10; the end holds the crc32c value and
#: gzip's ISIZE (4 bytes each)
_HEAD_BYTES, _TAIL_BYTES = 32, 8


def _host_framing(dev: Any, base: np.ndarray, length: np.ndarray) -> np.ndarray:
    """A host image of ``dev`` in which only each chunk's first and last bytes were copied (one transfer).

    The host checks of zstd/gzip framing and crc32c values read nothing else, so the
    rest stays unwritten (``np.empty``: pages never touched are never faulted in).
    """
    import cupy as cp

    host = np.empty(max(int(dev.size), 1), dtype=np.uint8)
    head = np.minimum(length, _HEAD_BYTES)
    tail = np.minimum(length, _TAIL_BYTES)
    starts = np.concatenate([base, base + length - tail])
    counts = np.concatenate([head, tail])
    total = int(counts.sum())
    if total:
        run_start = np.cumsum(counts) - counts
        idx = np.repeat(starts - run_start, counts) + np.arange(total, dtype=np.int64)
        host[idx] = dev[cp.asarray(idx)].get()
    return host


class _DeviceChunks:
    """``Sequence`` of the chunks of a device batch as host arrays, copied on access (error paths only)."""

    def __init__(self, dev: Any, base: np.ndarray, length: np.ndarray) -> None:
        self._dev, self._base, self._length = dev, base, length

    def __len__(self) -> int:
        return len(self._base)

    def __getitem__(self, c: int) -> np.ndarray:
        start = int(self._base[c])
        return self._dev[start : start + int(self._length[c])].get()


def _pieces(lib: nvc.NvcompLibrary, algorithm: str, capacity: np.ndarray, budget: int,
            stream: int) -> list[tuple[int, int, int]]:
    """Split entries ``[0, n)`` into contiguous ``(start, end, temp_bytes)`` whose nVCOMP temp memory fits ``budget``.

    Halves a range until it fits; a single entry is decoded alone even when it needs more.
    A few host-only temp-size queries per piece, none per entry.
    """
    out: list[tuple[int, int, int]] = []
    todo = [(0, len(capacity))]
    while todo:
        a, b = todo.pop()
        need = lib.temp_bytes(algorithm, b - a, int(capacity[a:b].max()), int(capacity[a:b].sum()), stream)
        if need <= budget or b - a == 1:
            out.append((a, b, need))
        else:
            m = (a + b) // 2
            todo += [(m, b), (a, m)]
    return out


@dataclass
class _Group:
    algorithm: str
    results: Any  # device: [decoded sizes, uint64 | statuses, int32]
    expected: np.ndarray
    row_chunk: np.ndarray


class _NvcompBatch:
    """One batch's nvCOMP work on one stream: pinned tables, per-call result buffers, and the batch's one wait.

    :meth:`reserve` takes this thread's pinned table arena for the batch's entries;
    :meth:`tables` hands out consecutive slices of it; :meth:`results` allocates a device
    buffer for each call's decoded sizes and statuses; :meth:`verify` copies all of them
    back asynchronously into pinned memory, records an event, waits for it (the only wait
    of the batch) and checks every entry, raising :class:`CorruptChunkError` naming the
    chunk of the first entry that failed or decoded to a size other than expected.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._tables: np.ndarray | None = None
        self._used = 0
        self._groups: list[_Group] = []
        self._keep: list[Any] = []

    def reserve(self, entries: int) -> None:
        self._tables = pinned_staging("tables").take(32 * max(entries, 1)).view(np.uint64)
        self._used = 0

    def tables(self, count: int) -> np.ndarray:
        if self._tables is None or self._used + count > self._tables.size:
            raise RuntimeError(f"nvCOMP tables: {count} entries past the {self._used} reserved")  # an engine bug
        view = self._tables[self._used: self._used + count]
        self._used += count
        return view

    def results(self, algorithm: str, n: int, expected: np.ndarray, row_chunk: np.ndarray) -> Any:
        import cupy as cp

        pinned_staging("tables").queued(self.stream)  # the table upload just queued reads the arena
        buf = cp.empty(12 * n, dtype=cp.uint8)
        self._groups.append(_Group(algorithm, buf, _int64(expected), _int64(row_chunk)))
        return buf

    def keep(self, *buffers: Any) -> None:
        """Device buffers the queued work reads: held until :meth:`verify` waited for it."""
        self._keep.extend(buffers)

    def verify(self, keys: Sequence[str], array_name: str) -> None:
        if not self._groups:
            return
        sizes = np.array([g.results.size for g in self._groups], dtype=np.int64)
        offsets, total = _slots(sizes)
        staging = pinned_staging("results")
        host = staging.take(total)
        for g, o in zip(self._groups, offsets.tolist(), strict=True):
            g.results.get(stream=self.stream, out=host[o: o + g.results.size], blocking=False)
        staging.queued(self.stream)
        staging.wait()
        groups, self._groups, self._keep = self._groups, [], []
        for g, o in zip(groups, offsets.tolist(), strict=True):
            n = g.expected.size
            decoded = host[o: o + 8 * n].view(np.uint64).astype(np.int64)
            status = host[o + 8 * n: o + 12 * n].view(np.int32)
            bad = np.flatnonzero((status != 0) | (decoded != g.expected))
            if bad.size:
                k = int(bad[0])
                code = int(status[k])
                what = (f"reports {nvc.STATUS_NAMES.get(code, code)}" if code else
                        f"decoded to {int(decoded[k])} bytes, expected {int(g.expected[k])}")
                more = f"; {bad.size} of the batch's {n} {g.algorithm} streams failed" if bad.size > 1 else ""
                raise CorruptChunkError.of_chunk(array_name, keys[int(g.row_chunk[k])],
                                                 f"cannot be decoded: nvCOMP {g.algorithm} stream {what}{more}")


class _GpuPlan:
    """What part of a chain runs on the GPU: ``crc32c`` first, at most one compressor, bytes, transposes."""

    def __init__(self, chain: DecodeChain) -> None:
        self.reason = ""
        steps = list(chain.bytes_steps)
        self.crc32c = bool(steps) and isinstance(steps[0], Crc32cStep)
        if self.crc32c:
            steps = steps[1:]
        self.compressor = steps[0] if len(steps) == 1 else None
        if len(steps) > 1 or (steps and not isinstance(steps[0], (BloscStep, ZstdStep, GzipStep))):
            names = ", ".join(s.name for s in chain.bytes_steps)
            self.reason = f"bytes codecs ({names}) have no GPU path"
        # decode applies arr.transpose(argsort(order)) per step; compose them into one
        composite = np.arange(len(chain.chunk_shape))
        for step in chain.array_steps:
            if not isinstance(step, TransposeStep):
                self.reason = self.reason or f"array codec {step.name} has no GPU path"
                break
            composite = composite[np.argsort(step.order)]
        self.transpose_order = [int(x) for x in np.argsort(composite)]
        if not isinstance(chain.bytes_step, BytesStep):  # pcodec, zfpy, ...: zarr's codec object on the CPU
            self.reason = self.reason or f"array→bytes codec {chain.bytes_step.name} has no GPU path"
        endian = getattr(chain.bytes_step, "endian", None)
        self.swap = endian is not None and chain.dtype.itemsize > 1 and endian != sys.byteorder
        if self.swap and chain.dtype.kind == "c":
            self.reason = self.reason or "byte-swapped complex data has no GPU path"

    @property
    def on_gpu(self) -> bool:
        return not self.reason


class GpuEngine:
    """Executes a :class:`BatchPlan` on the current CUDA device (see module docstring)."""

    name = "cuda"
    #: chunks arrive as host bytes or as one DeviceBatch (see takes_device_batches), never DeferredRead;
    #: the work of a batch is queued on the caller's stream when one is given
    capabilities = EngineCapabilities(device="cuda", device_batches=True, uses_stream=True)

    def __init__(self, *, strict: bool = False) -> None:
        available = _optional.gpu_engine()
        if not available:
            raise DeviceUnavailableError(f"the GPU engine cannot run: {available.reason}")
        self.strict = strict
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def takes_device_batches(self, chain: DecodeChain) -> bool:
        """Whether chunks of ``chain`` may arrive as one :class:`DeviceBatch` read straight into GPU memory.

        Yes when the whole chain runs on the GPU and the host needs only each chunk's first
        and last bytes (zstd / gzip framing, crc32c values, lengths); not for Blosc, whose
        block tables the host parses from every chunk before anything is decoded.
        """
        gplan = _GpuPlan(chain)
        return gplan.on_gpu and not isinstance(gplan.compressor, BloscStep)

    # ------------------------------------------------------------------ fallback policy

    def _fallback(self, array_name: str, reason: str) -> None:
        if self.strict:
            raise GpuFallbackError(f"{array_name}: {reason}; strict=True forbids the CPU fallback")
        with self._lock:
            if reason in self._warned:
                return
            self._warned.add(reason)
        warnings.warn(CpuFallbackWarning(f"{array_name}: {reason}; decoding on the CPU"), stacklevel=3)

    # ------------------------------------------------------------------ nvCOMP

    def _nvcomp_decode(self, io: _NvcompBatch, algorithm: str, src: Any, src_off: np.ndarray, src_size: np.ndarray,
                       dst: Any, dst_off: np.ndarray, dst_size: np.ndarray, row_chunk: np.ndarray) -> None:
        """Queue the decode of every entry (``src_off``/``src_size`` → ``dst_off``/``dst_size``) on ``io``'s stream.

        Inputs are repacked to aligned offsets first when the library asks for more
        alignment than they have. Nothing is read back here: ``io.verify`` checks every
        entry's status and decoded size against ``dst_size`` after the batch's event;
        ``row_chunk`` maps each entry to the chunk named when it fails.
        """
        import cupy as cp

        n = len(src_off)
        if n == 0:
            return
        lib = nvc.library()
        align = lib.alignment(algorithm)
        src_off, src_size = _int64(src_off), _int64(src_size)
        dst_off, dst_size = _int64(dst_off), _int64(dst_size)
        if ((int(src.data.ptr) + src_off) % max(align.input, 1)).any():
            packed_off, total = _slots(src_size, 0, max(ALIGN, align.input))
            packed = cp.empty(max(total, 1), dtype=cp.uint8)
            K.launch_copy_segments(src, src_off, packed, packed_off, src_size)
            src, src_off = packed, packed_off
        if ((int(dst.data.ptr) + dst_off) % max(align.output, 1)).any():
            raise ValueError(f"nvCOMP {algorithm} outputs must be {align.output}-byte aligned")
        stream = io.stream
        # one table of [input pointers | input sizes | output capacities | output pointers], uint64
        host = io.tables(4 * n)
        host[:n] = src_off + int(src.data.ptr)
        host[n: 2 * n] = src_size
        host[2 * n: 3 * n] = dst_size
        host[3 * n:] = dst_off + int(dst.data.ptr)
        tables = cp.empty(4 * n, dtype=cp.uint64)
        tables.set(host, stream=stream)
        results = io.results(algorithm, n, dst_size, row_chunk)  # [decoded sizes (uint64) | statuses (int32)]
        t, r = int(tables.data.ptr), int(results.data.ptr)
        budget = int(config.get("gpu.scratch_bytes"))
        pieces = _pieces(lib, algorithm, dst_size, budget, int(stream.ptr))
        temp_bytes = max(p[2] for p in pieces)
        temp = cp.empty(max(temp_bytes, 1), dtype=cp.uint8)  # one buffer, reused by the pieces in stream order
        for a, b, need in pieces:
            lib.decompress_async(algorithm, in_ptrs=t + 8 * a, in_bytes=t + 8 * (n + a), out_capacity=t + 8 * (2 * n + a),
                                 out_actual=r + 8 * a, n=b - a, temp=int(temp.data.ptr) if need else 0, temp_bytes=need,
                                 out_ptrs=t + 8 * (3 * n + a), statuses=r + 8 * n + 4 * a, stream=int(stream.ptr))
        io.keep(src, tables, temp)

    # ------------------------------------------------------------------ decode stages

    def _upload(self, chunks: Sequence[Any]) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        """Chunks → this thread's pinned arena → one async copy on the current stream: ``(dev, base, length, host)``."""
        return stage_to_device(chunks, align=ALIGN)

    def _verify_crc32c(self, dev: Any, host: np.ndarray, base: np.ndarray, length: np.ndarray,
                       keys: Sequence[str], array_name: str) -> np.ndarray:
        short = np.flatnonzero(length < 4)
        if short.size:
            k = keys[int(short[0])]
            raise CorruptChunkError.of_chunk(array_name, k, "is shorter than its 4-byte crc32c checksum")
        body = length - 4
        stored = np.ascontiguousarray(host[(base + body)[:, None] + np.arange(4)]).view("<u4").reshape(-1)
        computed = K.launch_crc32c(dev, base, body).get()
        bad = np.flatnonzero(computed != stored)
        if bad.size:
            k = keys[int(bad[0])]
            raise CorruptChunkError.of_chunk(array_name, k, f"fails its crc32c check (stored {int(stored[bad[0]]):08x}, "
                                                            f"computed {int(computed[bad[0]]):08x})")
        return body

    def _decode_plain(self, io: _NvcompBatch, algorithm: str, dev: Any, src_off: np.ndarray, src_size: np.ndarray,
                      nbytes: int) -> tuple[Any, np.ndarray]:
        """One nvCOMP call for whole chunks of ``nbytes`` each (checked by ``io.verify``)."""
        import cupy as cp

        n = len(src_off)
        out_off, total = _slots(np.full(n, nbytes, dtype=np.int64))
        out = cp.empty(max(total, 1), dtype=cp.uint8)
        io.reserve(n)
        self._nvcomp_decode(io, algorithm, dev, src_off, src_size, out, out_off, np.full(n, nbytes, dtype=np.int64),
                            np.arange(n, dtype=np.int64))
        return out, out_off

    def _check_zstd_frames(self, host: np.ndarray, base: np.ndarray, length: np.ndarray, nbytes: int,
                           keys: Sequence[str], array_name: str) -> None:
        for c in range(len(base)):  # header bytes only: a few byte reads per chunk
            view = memoryview(host[base[c]: base[c] + length[c]])
            try:
                declared = blosc.zstd_content_size(view)
            except ValueError as exc:
                raise CorruptChunkError.of_chunk(array_name, keys[c], f"is not a Zstd frame: {exc}") from None
            if declared is not None and declared != nbytes:
                raise CorruptChunkError.of_chunk(array_name, keys[c], f"declares {declared} bytes, expected {nbytes}")

    def _gzip_spans(self, host: np.ndarray, base: np.ndarray, length: np.ndarray, nbytes: int,
                    keys: Sequence[str], array_name: str) -> tuple[np.ndarray, np.ndarray]:
        """Deflate payload (offset, size) of every gzip member; framing checked on the host."""
        n = len(base)
        if n == 0:
            return base, length
        ok_len = length >= 18
        idx = np.where(ok_len, base, 0)[:, None] + np.arange(10)
        head = host[idx] if host.size >= 10 else np.zeros((n, 10), np.uint8)
        start = np.full(n, 10, dtype=np.int64)
        bad = ~ok_len | (head[:, 0] != 0x1F) | (head[:, 1] != 0x8B) | (head[:, 2] != 8) | ((head[:, 3] & 0xE0) != 0)
        for c in np.flatnonzero(~bad & (head[:, 3] != 0)).tolist():  # optional fields: rare, parsed one by one
            view = host[base[c]: base[c] + length[c]]
            flg, pos = int(view[3]), 10
            try:
                if flg & 4:
                    pos += 2 + int(view[pos]) + (int(view[pos + 1]) << 8)
                for bit in (8, 16):
                    if flg & bit:
                        pos = int(np.flatnonzero(view[pos:] == 0)[0]) + pos + 1
                if flg & 2:
                    pos += 2
            except IndexError:
                pos = int(length[c])
            start[c] = pos
        end = length - 8
        bad |= start > end
        isize_idx = np.where(ok_len, base + length - 4, 0)[:, None] + np.arange(4)
        isize = np.ascontiguousarray(host[isize_idx]).view("<u4").reshape(-1) if host.size else np.zeros(n, np.uint32)
        bad |= isize != (nbytes & 0xFFFFFFFF)
        if bad.any():
            k = keys[int(np.flatnonzero(bad)[0])]
            raise CorruptChunkError.of_chunk(array_name, k, f"is not a gzip member of {nbytes} bytes")
        return base + start, end - start

    def _decode_blosc(self, io: _NvcompBatch, chunks: Sequence[Any], nbytes: int, keys: Sequence[str],
                      array_name: str, packed: tuple[np.ndarray, np.ndarray, np.ndarray],
                      dev: Any = None) -> tuple[Any, np.ndarray]:
        """Blosc chunks → one device buffer. ``packed``: ``(host, base, length)``, the chunks in this
        thread's pinned arena; ``dev``: their device copy when the crc32c check already made one
        (copied device to device), else the arena is filled from ``host`` by one async upload."""
        import cupy as cp

        batch = blosc.parse_blosc_batch(chunks, keys=keys, array_name=array_name, expected_nbytes=nbytes,
                                        packed=packed)
        cpu_only = batch.chunks_needing_cpu()
        compressed = (batch.stream_kind == blosc.STREAM_COMPRESSED) & ~cpu_only[batch.stream_chunk]
        # arena: [uploaded chunks | decoded streams of every algorithm]
        blob_end = int(_align_up(batch.blob.size))
        scratch_off, arena_end = _slots(np.where(compressed, batch.stream_usize, 0), blob_end)
        arena = cp.empty(max(arena_end, 1), dtype=cp.uint8)
        if batch.blob.size and dev is not None:
            arena[: batch.blob.size] = dev[: batch.blob.size]  # device to device
        elif batch.blob.size:
            arena[: batch.blob.size].set(batch.blob, stream=io.stream)  # from the pinned arena, asynchronously
            pinned_staging("upload").queued(io.stream)
        src_off = batch.stream_offset.copy()
        src_size = batch.stream_csize.copy()
        zlib_rows = np.flatnonzero(compressed & (batch.stream_format == blosc.FORMAT_ZLIB))
        if zlib_rows.size:  # strip zlib framing: 2-byte header, 4-byte adler32 trailer
            head = batch.blob[src_off[zlib_rows][:, None] + np.arange(2)].astype(np.int64)
            cmf, flg = head[:, 0], head[:, 1]
            bad = ((src_size[zlib_rows] < 6) | ((cmf & 0x0F) != 8) | ((cmf >> 4) > 7)
                   | ((cmf * 256 + flg) % 31 != 0) | ((flg & 0x20) != 0))
            if bad.any():
                k = batch.keys[int(batch.stream_chunk[zlib_rows[np.flatnonzero(bad)[0]]])]
                raise CorruptChunkError.of_chunk(array_name, k, "has a zlib stream with a bad header")
            src_off[zlib_rows] += 2
            src_size[zlib_rows] -= 6
        io.reserve(int(np.count_nonzero(compressed)))
        for fmt, algorithm in _NVCOMP_ALGORITHM.items():
            rows = np.flatnonzero(compressed & (batch.stream_format == fmt))
            if rows.size:
                self._nvcomp_decode(io, algorithm, arena, src_off[rows], src_size[rows], arena, scratch_off[rows],
                                    batch.stream_usize[rows], batch.stream_chunk[rows])
        stream_at = np.where(compressed, scratch_off, batch.stream_offset)
        out_off, total = _slots(batch.chunk_nbytes)
        out = cp.empty(max(total, 1), dtype=cp.uint8)
        gpu_blocks = ~cpu_only[batch.block_chunk]
        rows = np.flatnonzero(gpu_blocks)
        if rows.size:
            first = batch.block_stream_start[rows]
            nsplits = batch.block_nsplits[rows]
            stream_rows = np.repeat(first, nsplits) + (np.arange(int(nsplits.sum())) - np.repeat(
                np.cumsum(nsplits) - nsplits, nsplits))
            sub_start = np.zeros(rows.size + 1, dtype=np.int64)
            np.cumsum(nsplits, out=sub_start[1:])
            K.launch_unshuffle(arena, stream_at[stream_rows], sub_start, nsplits, batch.block_size[rows],
                               batch.block_typesize[rows], batch.block_mode[rows],
                               out_off[batch.block_chunk[rows]] + batch.block_out_offset[rows], out)
        cpu_chunks = np.flatnonzero(cpu_only)
        if cpu_chunks.size:
            self._fallback(array_name, "Blosc chunks compressed with blosclz have no GPU decoder")
            decoded = cpu_pool().map(
                lambda c: blosc.decode_blosc_chunk_numcodecs(chunks[c], key=keys[c], array_name=array_name,
                                                             nbytes=nbytes), cpu_chunks.tolist())
            # through this thread's pinned fallback arena, each chunk one async copy into its slot
            staging = pinned_staging("fallback")
            host, base, length = concatenate_aligned(
                [np.ascontiguousarray(a).view(np.uint8).reshape(-1) for a in decoded], ALIGN, allocate=staging.take)
            for c, b, n in zip(cpu_chunks.tolist(), base.tolist(), length.tolist(), strict=True):
                if n:
                    out[out_off[c]: out_off[c] + n].set(host[b: b + n], stream=io.stream)
            staging.queued(io.stream)
        return out, out_off

    def _decode_on_cpu(self, chunks: Sequence[Any], chain: DecodeChain, keys: Sequence[str],
                       array_name: str) -> tuple[Any, np.ndarray]:
        decoded = list(cpu_pool().map(
            lambda c: np.ascontiguousarray(chain.decode(chunks[c], key=keys[c], array=array_name)).view(np.uint8).reshape(-1),
            range(len(chunks))))
        dev, base, _, _ = self._upload(decoded)
        return dev, base

    # ------------------------------------------------------------------ entry point

    def decode_chunks(self, encoded: Sequence[Any] | DeviceBatch, chain: DecodeChain, *, keys: Sequence[str],
                      array_name: str) -> tuple[Any, np.ndarray, np.ndarray, bool]:
        """Decode every chunk of ``encoded`` into one device buffer.

        ``encoded`` is host bytes per chunk, or a :class:`DeviceBatch` already in device
        memory (every entry present; only for chains :meth:`takes_device_batches` accepts).
        Returns ``(buffer, offsets, src_strides, swap_bytes)``: chunk ``k`` starts at byte
        ``offsets[k]``; its elements sit at ``src_strides`` (per array axis) in stored byte
        order (``swap_bytes`` says whether that is the opposite of the machine's).
        """
        import cupy as cp

        io = _NvcompBatch(cp.cuda.get_current_stream())
        result = self._decode_chunks(io, encoded, chain, keys=keys, array_name=array_name)
        io.verify(keys, array_name)
        return result

    def _decode_chunks(self, io: _NvcompBatch, encoded: Sequence[Any] | DeviceBatch, chain: DecodeChain, *,
                       keys: Sequence[str], array_name: str) -> tuple[Any, np.ndarray, np.ndarray, bool]:
        """:meth:`decode_chunks` with nvCOMP's per-stream checks left to ``io.verify`` (after more work is queued)."""
        gplan = _GpuPlan(chain)
        on_device = isinstance(encoded, DeviceBatch)
        if on_device and not self.takes_device_batches(chain):
            raise ValueError(f"{array_name}: a device batch for a chain that needs host bytes ({chain})")
        if not gplan.on_gpu:
            self._fallback(array_name, gplan.reason)
            dev, offsets = self._decode_on_cpu(encoded, chain, keys, array_name)
            return dev, offsets, chunk_strides(chain.chunk_shape), False
        nbytes = int(np.prod(chain.stored_shape, dtype=np.int64)) * chain.dtype.itemsize
        dev = host = base = length = None
        if on_device:
            dev, base, length = encoded.data, np.asarray(encoded.offsets, np.int64), np.asarray(encoded.lengths, np.int64)
            host = _host_framing(dev, base, length)
            encoded = _DeviceChunks(dev, base, length)
            if isinstance(gplan.compressor, GzipStep):  # optional gzip header fields (never written by zarr): whole chunk
                for c in np.flatnonzero((length >= 18) & (host[np.minimum(base + 3, host.size - 1)] != 0)).tolist():
                    host[base[c] : base[c] + length[c]] = encoded[c]
        elif gplan.crc32c or not isinstance(gplan.compressor, BloscStep):
            dev, base, length, host = self._upload(encoded)
        else:  # Blosc without crc32c: packed into the pinned arena here, uploaded once its layout is known
            host, base, length = concatenate_aligned(encoded, ALIGN, allocate=pinned_staging("upload").take)
        if gplan.crc32c:
            length = self._verify_crc32c(dev, host, base, length, keys, array_name)
        step = gplan.compressor
        if isinstance(step, BloscStep):
            if not gplan.crc32c:  # nothing uploaded yet
                out, offsets = self._decode_blosc(io, encoded, nbytes, keys, array_name, (host, base, length))
            else:  # the crc32c check uploaded the chunks: parse that image, decode from its device copy
                bodies = [memoryview(c).cast("B")[: int(n)] for c, n in zip(encoded, length.tolist(), strict=True)]
                out, offsets = self._decode_blosc(io, bodies, nbytes, keys, array_name, (host, base, length), dev)
        elif isinstance(step, ZstdStep):
            self._check_zstd_frames(host, base, length, nbytes, keys, array_name)
            out, offsets = self._decode_plain(io, "Zstd", dev, base, length, nbytes)
        elif isinstance(step, GzipStep):
            off, size = self._gzip_spans(host, base, length, nbytes, keys, array_name)
            out, offsets = self._decode_plain(io, "Deflate", dev, off, size, nbytes)
        else:
            bad = np.flatnonzero(length != nbytes)
            if bad.size:
                k = keys[int(bad[0])]
                raise CorruptChunkError.of_chunk(array_name, k, f"has {int(length[bad[0]])} bytes, expected {nbytes}")
            out, offsets = dev, base
        return out, offsets, chunk_strides(chain.chunk_shape, gplan.transpose_order), gplan.swap

    def decode_and_assemble(
        self,
        plan: BatchPlan,
        encoded: Sequence[Any] | DeviceBatch,
        chain: DecodeChain,
        fill_value: Any,
        *,
        keys: Sequence[str],
        array_name: str,
        transform: Any = None,
        out: Any = None,
        stream: Any = None,
    ) -> Any:
        """Decode every distinct chunk once and build the stacked batch on the GPU (a CuPy array).

        ``encoded``: host bytes per chunk (``None`` where never written), or one
        :class:`DeviceBatch` read straight into device memory (see :meth:`takes_device_batches`).
        ``stream``: a CUDA stream the caller owns (CuPy stream, torch stream, or a raw
        ``cudaStream_t``); every copy, decode and launch of the batch is queued on it
        (CuPy's current stream when ``None``).
        """
        with _caller_stream(stream):
            return self._decode_and_assemble(plan, encoded, chain, fill_value, keys=keys, array_name=array_name,
                                             transform=transform, out=out)

    def _decode_and_assemble(self, plan: BatchPlan, encoded: Sequence[Any] | DeviceBatch, chain: DecodeChain,
                             fill_value: Any, *, keys: Sequence[str], array_name: str, transform: Any,
                             out: Any) -> Any:
        import cupy as cp

        if isinstance(encoded, DeviceBatch):  # read straight into device memory (see takes_device_batches)
            present = np.asarray(encoded.present, dtype=bool)
            idx = np.flatnonzero(present)
            chunks: Sequence[Any] | DeviceBatch = DeviceBatch(encoded.data, encoded.offsets[idx], encoded.lengths[idx],
                                                              present[idx])
        else:
            present = np.fromiter((e is not None for e in encoded), dtype=bool, count=plan.n_chunks)
            idx = np.flatnonzero(present)
            chunks = [encoded[i] for i in idx.tolist()]
        chunk_offset = np.full(plan.n_chunks, -1, dtype=np.int64)
        present_keys = [keys[i] for i in idx.tolist()]
        io = _NvcompBatch(cp.cuda.get_current_stream())
        if idx.size:
            buf, offsets, src_strides, swap = self._decode_chunks(io, chunks, chain, keys=present_keys,
                                                                  array_name=array_name)
            chunk_offset[idx] = offsets
        else:
            buf, src_strides, swap = cp.zeros(1, dtype=cp.uint8), chunk_strides(chain.chunk_shape), False
        sample_shape, out_strides, channel_axis = gather_layout(plan, transform)
        out_dtype = chain.dtype if transform is None else transform.output_dtype(chain.dtype)
        sample_size = int(np.prod(sample_shape, dtype=np.int64))
        shape = (plan.n_regions, *sample_shape)
        if out is not None:
            if tuple(out.shape) != shape or out.dtype != out_dtype or not out.flags.c_contiguous:
                raise ConfigurationError(f"out has shape {out.shape} {out.dtype}, need C-contiguous {shape} {out_dtype}")
            result = out
        else:
            result = cp.empty(shape, dtype=out_dtype)
        convert = transform is not None and (transform.normalises or out_dtype != chain.dtype)
        mean = inv_std = None
        if convert and transform.normalises:
            n_ch = int(plan.region_shape[channel_axis]) if channel_axis is not None else 1
            mean, inv_std = transform.channel_tables(n_ch)
        K.launch_gather(plan, buf, chunk_offset, src_strides, chain.dtype, result.reshape(-1),
                        sample_size=sample_size, out_strides=out_strides, swap_bytes=swap, fill_value=fill_value,
                        convert_to=out_dtype if convert else None, channel_axis=channel_axis if convert else None,
                        mean=mean, inv_std=inv_std)
        io.verify(present_keys, array_name)  # the batch's one wait: after everything is queued
        return result

    def close(self) -> None:
        """Nothing to release: fallback decodes run on the shared CPU pool (:func:`gpuzarr.threads.cpu_pool`)."""
