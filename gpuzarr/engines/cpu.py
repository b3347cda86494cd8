"""CPU engine: decode the distinct chunks of a batch in a thread pool and scatter them.

One task per distinct chunk: decode it once with the array's
:class:`~gpuzarr.codecs.chain.DecodeChain` (numcodecs' Blosc/Zstd/Gzip release the GIL,
so the pool uses every core), then copy each of its pieces into the preallocated
output — NumPy's copies release the GIL too. Chunks never written fill their pieces
with the fill value without decoding anything. The pool is sized to the cores and
rebuilt in a forked child (DataLoader workers fork).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from gpuzarr.codecs.chain import DecodeChain
from gpuzarr.plan.planner import BatchPlan, piece_byte_intervals
from gpuzarr.storage.base import DeferredRead

#: chunks smaller than this are always decoded whole (they hold few Blosc blocks)
PARTIAL_DECODE_MIN_BYTES = 1 << 18


def default_workers() -> int:
    """Threads for decode: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class CpuEngine:
    """Executes a :class:`BatchPlan` with NumPy and a thread pool."""

    name = "cpu"
    #: chunks may arrive as :class:`~gpuzarr.storage.base.DeferredRead`, loaded by the decoding thread
    loads_deferred_reads = True

    def takes_device_batches(self, chain: Any) -> bool:
        """Never: the CPU engine decodes host bytes (see ``GpuEngine.takes_device_batches``)."""
        return False

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = -1
        self._lock = threading.Lock()
        self._scratch = threading.local()

    def _scratch_for(self, nbytes: int) -> np.ndarray:
        """A per-thread decode buffer, reused across chunks of the same size."""
        buf = getattr(self._scratch, "buf", None)
        if buf is None or buf.nbytes != nbytes:
            buf = self._scratch.buf = np.empty(nbytes, dtype=np.uint8)
        return buf

    def _input_for(self, nbytes: int) -> np.ndarray:
        """A per-thread buffer for encoded bytes read by :class:`DeferredRead`, grown as needed."""
        buf = getattr(self._scratch, "encoded", None)
        if buf is None or buf.nbytes < nbytes:
            buf = self._scratch.encoded = np.empty(max(nbytes, 1 << 16), dtype=np.uint8)
        return buf[:nbytes]

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="gpuzarr-cpu")
                self._pool_pid = os.getpid()
            return self._pool

    def decode_and_assemble(
        self,
        plan: BatchPlan,
        encoded: Sequence[Any],
        chain: DecodeChain,
        fill_value: Any,
        *,
        keys: Sequence[str],
        array_name: str,
        transform: Any = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Decode every distinct chunk once and build the stacked batch (shape ``plan.out_shape``)."""
        full_shape = (plan.n_regions, *plan.region_shape)
        if out is not None:
            if tuple(out.shape) != plan.out_shape or out.dtype != chain.dtype:
                raise ValueError(f"out has shape {out.shape} {out.dtype}, need {plan.out_shape} {chain.dtype}")
            full = out.reshape(full_shape)
        else:
            full = np.empty(full_shape, dtype=chain.dtype)
        ndim = len(plan.region_shape)
        offsets = plan.chunk_piece_offsets.tolist()
        regions = plan.piece_region.tolist()
        src_lo = plan.piece_src_start.tolist()
        dst_lo = plan.piece_dst_start.tolist()
        ext = plan.piece_extent.tolist()
        axes = range(ndim)
        scratch_nbytes = chain.stored_nbytes
        itemsize = chain.dtype.itemsize
        # decoding only the needed Blosc blocks pays off once a chunk spans several blocks
        partial = chain.supports_partial_decode and scratch_nbytes >= PARTIAL_DECODE_MIN_BYTES

        def assemble_chunk(u: int) -> None:
            data = encoded[u]
            if isinstance(data, DeferredRead):
                data = data.load(self._input_for)
            chunk = None
            if data is not None:
                intervals = None
                if partial:
                    lo, hi = offsets[u], offsets[u + 1]
                    intervals = piece_byte_intervals(chain.chunk_shape, itemsize,
                                                     plan.piece_src_start[lo:hi], plan.piece_extent[lo:hi])
                chunk = chain.decode(data, key=keys[u], array=array_name, scratch=self._scratch_for(scratch_nbytes),
                                     intervals=intervals)
            for p in range(offsets[u], offsets[u + 1]):
                s, d, e = src_lo[p], dst_lo[p], ext[p]
                dst = (regions[p], *(slice(d[i], d[i] + e[i]) for i in axes))
                if chunk is None:
                    full[dst] = fill_value
                else:
                    full[dst] = chunk[tuple(slice(s[i], s[i] + e[i]) for i in axes)]

        n = plan.n_chunks
        if n <= 1 or self.workers == 1:
            for u in range(n):
                assemble_chunk(u)
        else:
            for _ in self._executor().map(assemble_chunk, range(n)):
                pass
        result = full.reshape(plan.out_shape)
        if transform is not None:
            result = transform.apply_reference(result)
        return result

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
