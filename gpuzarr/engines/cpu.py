"""CPU engine: decode the distinct chunks of a batch in a thread pool and scatter them.

One task per distinct chunk: decode it once with the array's
:class:`~gpuzarr.codecs.chain.DecodeChain` (numcodecs' Blosc/Zstd/Gzip release the GIL,
so the pool uses every core), then copy each of its pieces into the preallocated
output — NumPy's copies release the GIL too. Chunks never written fill their pieces
with the fill value without decoding anything. Where the compiled lane
(:mod:`gpuzarr.engines.compiled`) takes a batch, its threads read, decode and copy the
chunks with no Python per chunk, and only the chunks it leaves take the path above.
The pool is gpuzarr's one CPU pool (:func:`gpuzarr.threads.cpu_pool`, ``threads``
setting; rebuilt in a forked child), or a pool of its own when the engine is given
``workers``. :meth:`CpuEngine.decode_and_assemble_async` is the same for a caller on an
event loop (the zarr plug-in).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpuzarr.codecs import native
from gpuzarr.codecs.chain import DecodeChain
from gpuzarr.engines import compiled
from gpuzarr.engines.base import EngineCapabilities
from gpuzarr.errors import ConfigurationError
from gpuzarr.plan.planner import BatchPlan, chunk_byte_intervals, chunk_byte_limits
from gpuzarr.settings import config
from gpuzarr.storage.base import DeferredRead, DeferredReads
from gpuzarr.threads import ThreadPool, cpu_pool


def _piece_indices(start: np.ndarray, extent: np.ndarray, region: np.ndarray | None) -> list[tuple]:
    """One index tuple of slices per piece (``region`` first when given), built from whole-array tables.

    The slices of all pieces are made in one pass (``map`` over flat lists, no per-axis
    Python loop), then cut into one tuple per piece.
    """
    n, ndim = start.shape
    if ndim == 0:  # 0-d chunks: every piece is the whole (empty) index
        return [()] * n if region is None else [(r,) for r in region.tolist()]
    lo = start.ravel().tolist()
    hi = (start + extent).ravel().tolist()
    slices = list(map(slice, lo, hi))
    if region is None:
        return [tuple(slices[i:i + ndim]) for i in range(0, n * ndim, ndim)]
    return [(r, *slices[i * ndim:(i + 1) * ndim]) for i, r in enumerate(region.tolist())]


def _resolve(future: asyncio.Future) -> None:
    """Mark ``future`` done (on its loop's thread) unless it already is."""
    if not future.done():  # a cancelled wait (the caller gave up) stays cancelled
        future.set_result(None)


class CpuEngine:
    """Executes a :class:`BatchPlan` with NumPy and a thread pool."""

    name = "cpu"
    #: chunks may arrive as :class:`~gpuzarr.storage.base.DeferredRead`, loaded by the decoding thread
    capabilities = EngineCapabilities(device="cpu", loads_deferred_reads=True)

    def takes_device_batches(self, chain: Any) -> bool:
        """Never: the CPU engine decodes host bytes (see ``GpuEngine.takes_device_batches``)."""
        return False

    def __init__(self, workers: int | None = None) -> None:
        self._own_pool = workers is not None
        self.pool: ThreadPool = ThreadPool("gpuzarr-cpu-engine", workers) if workers is not None else cpu_pool()
        self._scratch = threading.local()

    @property
    def workers(self) -> int:
        """Decode threads (the ``threads`` setting unless the engine was given ``workers``)."""
        return self.pool.size

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
        stream: Any = None,
    ) -> np.ndarray:
        """Decode every distinct chunk once and build the stacked batch (shape ``plan.out_shape``).

        ``stream`` is accepted for the :class:`~gpuzarr.engines.base.Engine` contract and ignored.
        """
        full, partial = self._prepare(plan, chain, out)
        todo: Sequence[int] = range(plan.n_chunks)
        fast = compiled.lane(plan, encoded, chain, full, partial=partial)
        if fast is not None:
            todo = self._run_compiled(fast, plan.n_chunks, chain, full)
            if not todo:
                return self._finish(full, plan, transform)
        self._python_path(plan, encoded, chain, fill_value, keys, array_name, full, todo, partial)
        return self._finish(full, plan, transform)

    async def decode_and_assemble_async(self, plan: BatchPlan, encoded: Sequence[Any], chain: DecodeChain,
                                        fill_value: Any, *, keys: Sequence[str], array_name: str,
                                        out: np.ndarray) -> None:
        """:meth:`decode_and_assemble` into ``out`` for a caller on an event loop, which it never blocks for long.

        The compiled lane's work goes to the pool's threads straight from the loop (the loop
        awaits them: no thread in between that only waits), and what the lane leaves, or a
        whole batch it cannot take, runs on a worker thread through the Python path, as in
        :meth:`decode_and_assemble`.
        """
        full, partial = self._prepare(plan, chain, out)
        fast = compiled.lane(plan, encoded, chain, full, partial=partial)
        if fast is None:
            await asyncio.to_thread(self._python_path, plan, encoded, chain, fill_value, keys, array_name, full,
                                    range(plan.n_chunks), partial)
            return
        status = np.zeros(plan.n_chunks, dtype=np.int8)
        await self._each_async(plan.n_chunks, self._lane_work(fast, status, chain, full), guided=True)
        todo = self._lane_leftovers(chain, status)
        if todo:
            await asyncio.to_thread(self._python_path, plan, encoded, chain, fill_value, keys, array_name, full,
                                    todo, partial)

    def _prepare(self, plan: BatchPlan, chain: DecodeChain, out: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """The batch array (``out`` reshaped, checked; or a new one) and whether Blosc chunks decode in part."""
        full_shape = (plan.n_regions, *plan.region_shape)
        if out is not None:
            if tuple(out.shape) != plan.out_shape or out.dtype != chain.dtype:
                raise ConfigurationError(f"out has shape {out.shape} {out.dtype}, need {plan.out_shape} {chain.dtype}")
            full = out.reshape(full_shape)
        else:
            full = np.empty(full_shape, dtype=chain.dtype)
        partial = chain.supports_partial_decode and chain.stored_nbytes >= config.get("partial_decode.min_chunk_bytes")
        return full, partial

    def _python_path(self, plan: BatchPlan, encoded: Sequence[Any], chain: DecodeChain, fill_value: Any,
                     keys: Sequence[str], array_name: str, full: np.ndarray, todo: Sequence[int],
                     partial: bool) -> None:
        """Decode the chunks ``todo`` with the chain (numcodecs' C decoders) and copy their pieces into ``full``."""
        n = plan.n_chunks
        # every per-piece number as Python ints, converted once per batch (no per-piece NumPy)
        offsets = plan.chunk_piece_offsets.tolist()
        dst_index = _piece_indices(plan.piece_dst_start, plan.piece_extent, plan.piece_region)
        src_index = _piece_indices(plan.piece_src_start, plan.piece_extent, None)
        scratch_nbytes = chain.stored_nbytes
        # decoding only the needed Blosc blocks pays off once a chunk spans several blocks (chunks
        # below partial_decode.min_chunk_bytes hold few Blosc blocks: always decoded whole);
        # the byte intervals every chunk's pieces read come from one NumPy pass over the batch.
        # A Zstd chunk is decoded front to back, so it stops after the last byte a piece reads.
        intervals_of: Any = None  # chunk number -> the byte intervals its pieces read
        if partial and n:
            iv, iv_offsets = chunk_byte_intervals(plan, chain.chunk_shape, chain.dtype.itemsize)
            iv_list, iv_off = iv.tolist(), iv_offsets.tolist()

            def intervals_of(u: int) -> Any:
                return iv_list[iv_off[u]:iv_off[u + 1]]
        elif chain.supports_prefix_decode and n:
            limits = chunk_byte_limits(plan, chain.chunk_shape, chain.dtype.itemsize).tolist()

            def intervals_of(u: int) -> Any:
                return ((0, limits[u]),)
        deferred = encoded if isinstance(encoded, DeferredReads) else None
        decode = chain.decode
        input_for = self._input_for
        scratch_for = self._scratch_for

        def assemble_chunk(u: int) -> None:
            if deferred is not None:
                data = deferred.load(u, input_for)
            else:
                data = encoded[u]
                if isinstance(data, DeferredRead):
                    data = data.load(input_for)
            lo, hi = offsets[u], offsets[u + 1]
            if data is None:
                for p in range(lo, hi):
                    full[dst_index[p]] = fill_value
                return
            chunk = decode(data, key=functools.partial(keys.__getitem__, u), array=array_name,
                           scratch=scratch_for(scratch_nbytes),
                           intervals=None if intervals_of is None else intervals_of(u))
            for p in range(lo, hi):
                full[dst_index[p]] = chunk[src_index[p]]

        def assemble_chunks(start: int, stop: int) -> None:
            for i in range(start, stop):
                assemble_chunk(todo[i])

        self._each(len(todo), assemble_chunks)

    @staticmethod
    def _finish(full: np.ndarray, plan: BatchPlan, transform: Any) -> np.ndarray:
        result = full.reshape(plan.out_shape)
        if transform is not None:
            result = transform.apply_reference(result)
        return result

    def _each(self, n: int, work: Any, *, guided: bool = False) -> None:
        """``work(start, stop)`` over ``range(n)`` cut into consecutive pieces, on the pool's threads and the calling one.

        A few long-lived tasks (the calling thread is one of them) take the next piece from a
        shared cursor instead of one future per item: a future costs more than a small chunk's
        Python work. A piece is one item, or with ``guided`` (OpenMP's guided schedule) a share
        of what is left, ``left // (2 * threads)`` and at least one: few hand-offs while much is
        left, and small last pieces so that the threads finish together (fixed pieces of a
        quarter of a thread's share left one thread idle for up to a whole piece at the end).
        The first error stops the others and is re-raised.
        """
        threads = min(self.workers, n)
        if threads <= 1:
            if n:
                work(0, n)
            return
        drain, failed = self._drainer(n, work, threads, guided)
        helpers = [self.pool.submit(drain) for _ in range(threads - 1)]
        try:
            drain()
        finally:
            for f in helpers:
                f.exception()  # wait for each; the first error is re-raised below
        if failed:
            raise failed[0]

    async def _each_async(self, n: int, work: Any, *, guided: bool = False) -> None:
        """:meth:`_each` with every piece on the pool's threads, awaited by the calling event loop.

        The loop is woken once, by the last thread to finish (not once per thread).
        """
        threads = max(1, min(self.workers, n))
        drain, failed = self._drainer(n, work, threads, guided)
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        left = [threads]
        lock = threading.Lock()

        def run() -> None:
            try:
                drain()
            except BaseException:  # noqa: BLE001, S110 - kept in ``failed`` by drain, re-raised on the loop
                pass
            finally:
                with lock:
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    try:
                        loop.call_soon_threadsafe(_resolve, finished)
                    except RuntimeError:  # the loop closed while the work ran: nobody waits for it
                        pass

        for _ in range(threads):
            self.pool.submit(run)
        await finished
        if failed:
            raise failed[0]

    @staticmethod
    def _drainer(n: int, work: Any, threads: int, guided: bool) -> tuple[Any, list[BaseException]]:
        """A task that takes the next piece of ``range(n)`` until none is left (see :meth:`_each`), and its errors."""
        lock = threading.Lock()
        cursor = 0
        failed: list[BaseException] = []

        def take() -> tuple[int, int]:
            nonlocal cursor
            with lock:
                start = cursor
                size = max(1, (n - start) // (2 * threads)) if guided else 1
                cursor = min(n, start + size)
                return start, cursor

        def drain() -> None:
            try:
                while not failed:
                    start, stop = take()
                    if start >= n:
                        return
                    work(start, stop)
            except BaseException as exc:
                failed.append(exc)
                raise

        return drain, failed

    def _run_compiled(self, fast: compiled.CompiledLane, n: int, chain: DecodeChain, full: np.ndarray) -> list[int]:
        """Run the compiled lane over all ``n`` chunks; returns the chunks it left to the Python path."""
        status = np.zeros(n, dtype=np.int8)
        self._each(n, self._lane_work(fast, status, chain, full), guided=True)
        return self._lane_leftovers(chain, status)

    def _lane_work(self, fast: compiled.CompiledLane, status: np.ndarray, chain: DecodeChain,
                   full: np.ndarray) -> Any:
        """``work(first, stop)``: the lane over chunks ``first:stop`` on the calling thread, with its buffers."""
        flat = full.reshape(-1).view(np.uint8)

        def work(first: int, stop: int) -> None:
            fast.run(first, stop, status, flat, self._input_for(fast.input_bytes),
                     self._scratch_for(chain.stored_nbytes), native.zstd_context())

        return work

    @staticmethod
    def _lane_leftovers(chain: DecodeChain, status: np.ndarray) -> list[int]:
        """The chunks the lane left to the Python path (and what the chain's statuses taught)."""
        compiled.note_statuses(chain, status)
        return np.flatnonzero(status != compiled.DONE).tolist()

    def close(self) -> None:
        """Stop the engine's own pool (the shared CPU pool lives as long as the process)."""
        if self._own_pool:
            self.pool.shutdown(wait=True)
