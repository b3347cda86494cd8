"""The batch loader core: cut each rank's epoch into batches and read them ahead of use.

:class:`Loader` is the one scheduling core of gpuzarr. It takes one array or a dict of
arrays (:class:`~gpuzarr.loading.sources.ArraySet`, with ``scale`` for arrays at other
resolutions), a sampler (:mod:`gpuzarr.loading.samplers`) and a batch size; for each
epoch it takes this rank's share of the sampler's regions
(:mod:`gpuzarr.loading.schedule`: equal shares on every rank, always), cuts it into
batches and reads each with one ``read_batch`` per array, keeping up to
``prefetch_batches`` batches in flight on a background thread so decode overlaps the
training step. Because the whole epoch is known up front, a loader resumes mid-epoch at
exactly the next sample (:meth:`Loader.state_dict`), and with ``prefetch_chunks`` it
fetches exactly the encoded chunks of the next batches into the arrays' caches ahead of
time (:class:`gpuzarr.storage.prefetch.PlannedPrefetcher`), which hides storage latency
such as S3's. An optional :class:`~gpuzarr.loading.adaptive.AdaptiveBatchSize` changes
how the share is cut, never which samples it holds.

:class:`gpuzarr.torch.ZarrLoader` is this core with one epoch per iteration and torch
tensors out; :class:`gpuzarr.dali.ExternalSource` drives the same core for DALI.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gpuzarr.errors import ConfigurationError
from gpuzarr.loading.samplers import DistributedContext, GridPatches, RandomCrops
from gpuzarr.loading.schedule import EpochShare, Schedule, batch_bounds, batches_per_epoch
from gpuzarr.loading.sources import ArraySet

# How long closing a prefetching iterator waits for its reader's batch in flight.
CLOSE_WAIT_SECONDS = 10.0

__all__ = ["DistributedContext", "EpochLoader", "GridPatches", "Loader", "RandomCrops"]


@dataclass(frozen=True, slots=True)
class Cut:
    """One batch of the schedule: samples ``lo:hi`` of this rank's share of ``epoch``."""

    epoch: int
    lo: int
    hi: int


class _Cutter:
    """The batches from a start point on, cut lazily and remembered, so two walks (reads, chunk prefetch) agree.

    With an adaptive controller a batch's size is decided when it is cut; a walk running
    ahead (chunk prefetch) therefore fixes the sizes of the batches it looks at.
    """

    def __init__(self, loader: Loader, epochs: range, start: int) -> None:
        self.loader = loader
        self.epochs = iter(epochs)
        self.lock = threading.Lock()
        self.cuts: dict[int, Cut] = {}
        self.made = 0
        self.done = False
        self.epoch: int | None = None
        self.pending: list[tuple[int, int]] = []
        self.next_lo = 0
        self.n = 0
        self.first_start = start

    def _advance_epoch(self) -> bool:
        for epoch in self.epochs:
            self.epoch = epoch
            self.n = len(self.loader.share(epoch))
            start, self.first_start = self.first_start, 0
            if self.loader.adaptive is None:
                self.pending = batch_bounds(self.n, self.loader.batch_size, self.loader.drop_last, start)
                self.pending.reverse()
            else:
                self.pending = []
                self.next_lo = start
            return True
        return False

    def _next(self) -> Cut | None:
        while True:
            if self.epoch is not None:
                if self.loader.adaptive is None:
                    if self.pending:
                        lo, hi = self.pending.pop()
                        return Cut(self.epoch, lo, hi)
                elif self.next_lo < self.n:
                    lo = self.next_lo
                    hi = min(self.n, lo + self.loader.adaptive.next_size())
                    self.next_lo = hi
                    return Cut(self.epoch, lo, hi)
            if not self._advance_epoch():
                return None

    def get(self, ordinal: int) -> Cut | None:
        with self.lock:
            while self.made <= ordinal and not self.done:
                cut = self._next()
                if cut is None:
                    self.done = True
                    break
                self.cuts[self.made] = cut
                self.made += 1
            return self.cuts.get(ordinal)

    def forget(self, ordinal: int) -> None:
        with self.lock:
            self.cuts.pop(ordinal, None)


class Loader:
    """Iterates batches of regions of one array (or a dict of arrays), reading ahead on a background thread.

    ``for batch in Loader(arr, RandomCrops((960, 960), seed=0), batch_size=32, epochs=2)``
    yields stacked arrays (NumPy or CuPy per ``device``; a dict of them for a dict of
    arrays). Deterministic for a given sampler seed, epoch and rank; every rank gets the
    same number of batches (:mod:`gpuzarr.loading.schedule`); :meth:`state_dict` /
    :meth:`load_state_dict` resume at the next unread sample.

    ``scale`` maps array names to their resolution relative to the first array
    (:mod:`gpuzarr.loading.sources`); ``transform`` is one
    :class:`~gpuzarr.OutputTransform` or a dict name → transform. ``metadata=True``
    yields ``(batch, meta)`` with ``meta = {"sample_id", "start", "epoch"}``: the samples'
    positions in the epoch, the start of each region in the first array, the epoch.

    ``prefetch_chunks=N`` (needs arrays opened with a cache) fetches the encoded chunks
    of the next ``N`` batches in the background while the current one is read, at most
    ``prefetch_max_bytes`` in flight, on ``prefetch_workers`` threads (default ``N + 1``:
    one per batch in flight, the current one included, so none waits for a thread; with
    fewer, a remote store's latency is hidden only that many batches deep).

    ``adaptive``: an :class:`~gpuzarr.loading.adaptive.AdaptiveBatchSize` that picks each
    batch's size from measured throughput and free memory (single process only: under
    DDP every rank must run the same number of batches, so a fixed ``batch_size`` is needed).
    """

    #: a loader object iterates epochs ``state.epoch .. epochs - 1``; ZarrLoader one epoch per iter()
    _one_epoch_per_iter = False

    def __init__(
        self,
        arrays: Any,
        sampler: Any,
        batch_size: int,
        *,
        epochs: int = 1,
        device: str = "auto",
        drop_last: bool = False,
        transform: Any = None,
        scale: Any = None,
        prefetch_batches: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch_chunks: int = 0,
        prefetch_workers: int | None = None,
        prefetch_max_bytes: int = 256 << 20,
        even_ranks: bool = True,
        adaptive: Any = None,
        metadata: bool = False,
        stream: Any = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, not {batch_size}")
        self.source = ArraySet(arrays, scale, transform)
        if prefetch_chunks:
            for name, arr in self.source.arrays.items():
                if getattr(arr, "cache", None) is None:
                    raise ConfigurationError(f"prefetch_chunks needs arrays opened with a cache ({name or 'the array'} has "
                                     "none), e.g. gpuzarr.open_array(url, cache=gpuzarr.PinnedLRUCache(1 << 30))")
        self.array = self.source.primary
        self.arrays = arrays
        self.even_ranks = even_ranks
        self.prefetch_chunks = prefetch_chunks
        #: plans the chunk prefetch made for upcoming cuts, taken by the read of each cut
        self._ahead_plans: dict[Cut, dict[str | None, Any]] = {}
        self.prefetch_workers = prefetch_workers or prefetch_chunks + 1
        self.prefetch_max_bytes = prefetch_max_bytes
        self.sampler = sampler
        self.batch_size = batch_size
        self.epochs = epochs
        self.device = device
        self.drop_last = drop_last
        self.transform = transform
        self.metadata = metadata
        self.stream = stream
        self.prefetch_batches = max(0, prefetch_batches)
        ctx = DistributedContext.detect()
        self.rank = ctx.rank if rank is None else rank
        self.world_size = ctx.world_size if world_size is None else world_size
        self.schedule = Schedule(sampler, self.source.shape, self.rank, self.world_size, even_ranks=even_ranks)
        if adaptive is not None:
            if self.world_size > 1:
                raise ConfigurationError("adaptive batch sizes would give DDP ranks different numbers of batches "
                                 "(a hang in the first collective after the shortest rank stops); "
                                 "use a fixed batch_size with several ranks")
            if drop_last:
                raise ConfigurationError("drop_last with an adaptive batch size would drop a varying number of samples; "
                                 "adaptive batching keeps every sample of the epoch")
        self.adaptive = adaptive
        self._epoch = 0
        self._sample = 0
        self._finished = False

    # ------------------------------------------------------------ schedule
    def share(self, epoch: int) -> EpochShare:
        """This rank's samples of ``epoch`` (ids and regions), padded to equal length across ranks."""
        return self.schedule.share(epoch)

    def epoch_regions(self, epoch: int) -> list[tuple]:
        """This rank's regions of ``epoch`` (see :mod:`gpuzarr.loading.schedule` for the padding rule).

        With ``even_ranks`` (the default) every rank gets ``ceil(n / world_size)`` regions, so
        every rank runs the same number of batches: an uneven count would leave the other ranks
        waiting forever in the collective of the step the short rank never takes.
        """
        return self.share(epoch).regions

    def batches_in_epoch(self, epoch: int) -> int:
        """Batches this rank reads in ``epoch`` (with a fixed batch size)."""
        return batches_per_epoch(len(self.share(epoch)), self.batch_size, self.drop_last)

    def __len__(self) -> int:
        if self.adaptive is not None:
            raise TypeError("an adaptive loader has no fixed number of batches")
        return sum(self.batches_in_epoch(e) for e in range(self.epochs))

    def state_dict(self) -> dict[str, int]:
        """Where the next sample comes from: resume with :meth:`load_state_dict` (also in a new process).

        ``{"epoch": e, "batch": b}`` while the position is on a batch boundary of the fixed
        batch size, else ``{"epoch": e, "sample": s}`` (adaptive batches, or a resume mid-batch).
        """
        epoch, sample = self._epoch, self._sample
        if self.adaptive is None and not self._finished:
            b = -(-sample // self.batch_size)
            if sample == min(b * self.batch_size, len(self.share(epoch)) if epoch < self.epochs else 0):
                return {"epoch": epoch, "batch": b}
        if self._finished:
            return {"epoch": self.epochs, "batch": 0}
        return {"epoch": epoch, "sample": sample}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state``; a state at the very end resumes with nothing left to read."""
        self._epoch = int(state["epoch"])
        if "sample" in state:
            self._sample = int(state["sample"])
        else:
            self._sample = int(state.get("batch", 0)) * self.batch_size
            if self._epoch < self.epochs:
                self._sample = min(self._sample, len(self.share(self._epoch)))
        self._finished = False

    def _span(self) -> tuple[range, int]:
        """(epochs this iteration walks, first sample of the first one)."""
        if self._finished:  # a loader that ran to the end starts over, like iterating a DataLoader again
            self._epoch, self._sample, self._finished = 0, 0, False
        return range(self._epoch, self.epochs), self._sample

    def _on_exhausted(self) -> None:
        self._epoch, self._sample, self._finished = self.epochs, 0, True

    # ------------------------------------------------------------ reading
    def _chunk_prefetch(self, cutter: _Cutter) -> tuple[list[Any], list[Any]] | None:
        """Planned prefetchers (one per array) over the chunks of the upcoming batches (``prefetch_chunks`` > 0)."""
        if not self.prefetch_chunks:
            return None
        from gpuzarr.storage.prefetch import PlannedPrefetcher

        prefetchers, planned = [], []
        for name, array in self.source.arrays.items():

            def coords_of(ordinal: int, name: str | None = name, array: Any = array) -> list[tuple[int, ...]]:
                cut = cutter.get(ordinal)  # cut ahead of the reads; the read walk takes the same cut
                if cut is None:
                    return []
                regions = self.source.regions_for(name, self.share(cut.epoch).regions[cut.lo : cut.hi])
                plan = array.plan(regions)
                # one plan per batch: the read of this cut executes the plan made here
                self._ahead_plans.setdefault(cut, {})[name] = plan
                return [tuple(c) for c in plan.chunk_coords.tolist()]

            prefetcher = array.chunk_prefetcher(workers=self.prefetch_workers,
                                                max_bytes_in_flight=self.prefetch_max_bytes)
            prefetchers.append(prefetcher)
            # advanced with the batch *before* the one about to be read (see _reads), so batches_ahead
            # N + 1 keeps the current batch and the next N queued or in flight
            planned.append(PlannedPrefetcher(prefetcher, coords_of, batches_ahead=self.prefetch_chunks + 1))
        return prefetchers, planned

    def _allocator(self) -> Any:
        """Output buffers for the arrays' reads (``None``: each read allocates its own)."""
        return None

    def _deliver(self, data: Any, cut: Cut, allocation: Any = None) -> Any:
        """Turn one read batch (read into ``allocation``'s buffers, when given) into what the loop receives."""
        if not self.metadata:
            return data
        return data, self._meta(cut)

    def _meta(self, cut: Cut) -> dict[str, Any]:
        from gpuzarr.plan.planner import normalize_regions

        share = self.share(cut.epoch)
        regions = share.regions[cut.lo : cut.hi]
        starts = normalize_regions(regions, self.source.shape, getattr(self.array, "name", "array")).starts
        return {"sample_id": share.positions[cut.lo : cut.hi].copy(), "start": starts, "epoch": cut.epoch}

    def read_cut(self, cut: Cut) -> Any:
        """Read the batch of ``cut`` (what the background thread does for each batch)."""
        regions = self.share(cut.epoch).regions[cut.lo : cut.hi]
        t0 = time.perf_counter()
        allocation = self._allocator()
        plans = self._ahead_plans.pop(cut, None)  # made by the chunk prefetch, when it runs
        data = self.source.read(regions, device=self.device, stream=self.stream, allocate=allocation, plans=plans)
        if self.adaptive is not None:
            parts = data.values() if isinstance(data, dict) else (data,)
            self.adaptive.observe(cut.hi - cut.lo, time.perf_counter() - t0, sum(int(p.nbytes) for p in parts))
        return self._deliver(data, cut, allocation)

    def _reads(self, cutter: _Cutter) -> Iterator[tuple[Cut, Any]]:
        """Read every scheduled batch in order, chunk prefetch running ahead when enabled."""
        self._ahead_plans = {}
        chunk_prefetch = self._chunk_prefetch(cutter)
        try:
            ordinal = 0
            while True:
                if chunk_prefetch is not None:
                    # queue this batch and the next ones; then wait for this batch's chunks, which
                    # are in flight or cached already, rather than fetch any of them twice
                    for planned in chunk_prefetch[1]:
                        planned.advance(ordinal - 1)
                        ticket = planned.tickets.get(ordinal)
                        if ticket is not None:
                            ticket.wait()
                cut = cutter.get(ordinal)
                if cut is None:
                    return
                cutter.forget(ordinal - 1 - 2 * self.prefetch_chunks)
                yield cut, self.read_cut(cut)
                ordinal += 1
        finally:
            if chunk_prefetch is not None:
                for prefetcher in chunk_prefetch[0]:
                    prefetcher.close()

    def __iter__(self) -> Iterator[Any]:
        epochs, start = self._span()
        cutter = _Cutter(self, epochs, start)
        if self.prefetch_batches == 0:
            reads = self._reads(cutter)
            try:
                for cut, batch in reads:
                    self._epoch, self._sample = cut.epoch, cut.hi
                    yield batch
            finally:
                reads.close()
            self._on_exhausted()
            return
        yield from self._iter_prefetched(cutter)

    def _iter_prefetched(self, cutter: _Cutter) -> Iterator[Any]:
        results: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=self.prefetch_batches)
        stop = threading.Event()

        def produce() -> None:
            reads = self._reads(cutter)
            try:
                for cut, batch in reads:
                    if stop.is_set():
                        return
                    item = ("batch", (cut, batch))
                    while not stop.is_set():
                        try:
                            results.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                results.put(("done", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
                results.put(("error", exc))
            finally:
                reads.close()

        worker = threading.Thread(target=produce, name="gpuzarr-loader", daemon=True)
        worker.start()
        try:
            while True:
                kind, payload = results.get()
                if kind == "done":
                    self._on_exhausted()
                    return
                if kind == "error":
                    raise payload
                cut, batch = payload
                self._epoch, self._sample = cut.epoch, cut.hi
                yield batch
        finally:
            stop.set()
            # Wait for the reader to finish its batch in flight, but never on ourselves and never
            # unboundedly: this block also runs when garbage collection finalizes an abandoned
            # iterator, which can happen on the reader thread itself or inside another thread's
            # pool submit (holding the lock the reader needs to submit). Past the bound the reader,
            # a daemon that sees ``stop`` before its next batch, ends by itself.
            if threading.current_thread() is not worker:
                deadline = time.monotonic() + CLOSE_WAIT_SECONDS
                while worker.is_alive() and time.monotonic() < deadline:
                    try:
                        results.get(timeout=0.05)
                    except queue.Empty:
                        pass



class EpochLoader(Loader):
    """The core with DataLoader semantics: one epoch per ``iter()`` (base of ZarrLoader and the DALI source).

    :meth:`set_epoch` picks the epoch; a new ``iter()`` starts it over (after a ``break``
    too); ``len()`` is this rank's batches of the epoch; :meth:`state_dict` is
    ``{"epoch": e, "sample": s}`` and :meth:`load_state_dict` makes the next ``iter()``
    start at sample ``s`` of epoch ``e`` (a later ``set_epoch(e)`` of the same epoch keeps it).
    """

    def __init__(self, arrays: Any, sampler: Any, batch_size: int, *, epoch: int = 0, **options: Any) -> None:
        super().__init__(arrays, sampler, batch_size, epochs=epoch + 1, **options)
        self._epoch = int(epoch)
        self._resume: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next ``iter()`` reads (a pending resume point of that same epoch is kept)."""
        epoch = int(epoch)
        if epoch != self._epoch:
            self._epoch, self._sample, self._resume = epoch, 0, None

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        """Batches per epoch for this rank (the same on every rank)."""
        if self.adaptive is not None:
            raise TypeError("an adaptive loader has no fixed number of batches")
        return self.batches_in_epoch(self._epoch)

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "sample": s}``: resume at sample ``s`` of this rank's share of epoch ``e``."""
        return {"epoch": self._epoch, "sample": self._sample}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state`` on the next ``iter()`` (in this process or a new one)."""
        self._epoch = int(state["epoch"])
        sample = int(state["sample"]) if "sample" in state else int(state.get("batch", 0)) * self.batch_size
        self._sample = self._resume = min(sample, len(self.share(self._epoch)))

    def _span(self) -> tuple[range, int]:
        start = self._resume or 0
        self._resume = None
        self._sample = start
        return range(self._epoch, self._epoch + 1), start

    def _on_exhausted(self) -> None:
        self._sample = len(self.share(self._epoch))
