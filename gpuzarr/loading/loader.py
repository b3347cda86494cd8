"""Samplers and the batch loader: which regions to read, and reading them ahead of use.

A sampler is a small deterministic object: for an array shape, an epoch, a rank and a
world size it returns the regions of that epoch for that rank. :class:`Loader` cuts
them into batches and reads each with :meth:`ArrayHandle.read_batch`, keeping up to
``prefetch_batches`` batches in flight on a background thread, so decode overlaps the
training step. Because the whole epoch's regions are known up front, a loader can
resume mid-epoch from :meth:`Loader.state_dict`, give every rank a disjoint share, and
(with ``prefetch_chunks``) fetch exactly the encoded chunks of the next batches into the
array's cache ahead of time (:class:`gpuzarr.storage.prefetch.PlannedPrefetcher`), which hides
storage latency such as S3's.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuzarr.errors import RegionError


@dataclass(frozen=True, slots=True)
class DistributedContext:
    """This process's rank and the world size (torch.distributed, else RANK/WORLD_SIZE, else 0/1)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def detect(cls) -> DistributedContext:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                return cls(dist.get_rank(), dist.get_world_size())
        except ImportError:
            pass
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def _crop_axes(shape: Sequence[int], size: Sequence[int | None]) -> tuple[int, ...]:
    """Crop extent per axis: ``size`` aligns to the trailing axes; ``None`` means the whole axis."""
    if len(size) > len(shape):
        raise RegionError(f"crop size {tuple(size)} has more axes than the array shape {tuple(shape)}")
    lead = len(shape) - len(size)
    extent = [0] * lead + [shape[lead + i] if s is None else int(s) for i, s in enumerate(size)]
    for d in range(lead, len(shape)):
        if not 0 < extent[d] <= shape[d]:
            raise RegionError(f"crop size {tuple(size)} does not fit the array shape {tuple(shape)} on axis {d}")
    return tuple(extent)


def _to_regions(starts: np.ndarray, extent: Sequence[int], lead: int) -> list[tuple[Any, ...]]:
    """Regions from a (n, ndim) start table: axis 0 as an integer when it is a leading axis."""
    out: list[tuple[Any, ...]] = []
    for row in starts.tolist():
        items: list[Any] = []
        for d, s in enumerate(row):
            if d == 0 and lead > 0:
                items.append(s)
            elif d < lead:
                items.append(slice(None))
            else:
                items.append(slice(s, s + extent[d]))
        out.append(tuple(items))
    return out


def _shard_for_rank(n: int, rank: int, world_size: int) -> np.ndarray:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return np.arange(rank, n, world_size)


@dataclass(frozen=True)
class RandomCrops:
    """Uniformly random crops of ``size`` (aligned to the trailing axes).

    For an array ``(N, C, H, W)`` and ``size=(960, 960)``: a random sample index on
    axis 0 (dropped from the batch, like an integer index), all of ``C``, and a random
    960×960 window — batches come out as ``(B, C, 960, 960)``. When ``size`` covers
    every axis, every axis gets a random window. ``samples_per_epoch`` defaults to the
    number of non-overlapping crops that fit.
    """

    size: tuple[int | None, ...]
    seed: int = 0
    samples_per_epoch: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(self.size) if isinstance(self.size, (tuple, list)) else (self.size,))

    def regions(self, shape: Sequence[int], epoch: int = 0, rank: int = 0, world_size: int = 1) -> list[tuple]:
        extent = _crop_axes(shape, self.size)
        lead = len(shape) - len(self.size)
        n = self.samples_per_epoch
        if n is None:
            n = int(np.prod([shape[d] // extent[d] if d >= lead else (shape[0] if d == 0 else 1)
                             for d in range(len(shape))]))
        rng = np.random.default_rng([self.seed, epoch])
        cols = []
        for d in range(len(shape)):
            if d >= lead:
                cols.append(rng.integers(0, shape[d] - extent[d] + 1, size=n))
            elif d == 0:
                cols.append(rng.integers(0, shape[0], size=n))
            else:
                cols.append(np.zeros(n, dtype=np.int64))
        starts = np.stack(cols, axis=1)[_shard_for_rank(n, rank, world_size)]
        return _to_regions(starts, extent, lead)


@dataclass(frozen=True)
class GridPatches:
    """Every window of ``size`` on a regular grid (``stride`` defaults to ``size``), optionally shuffled per epoch.

    Leading axes not covered by ``size`` behave as in :class:`RandomCrops`: axis 0 is
    enumerated as an integer sample index, the others are taken whole. Windows that
    would fall off the array's end are not produced.
    """

    size: tuple[int | None, ...]
    stride: tuple[int, ...] | None = None
    shuffle: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(self.size) if isinstance(self.size, (tuple, list)) else (self.size,))

    def regions(self, shape: Sequence[int], epoch: int = 0, rank: int = 0, world_size: int = 1) -> list[tuple]:
        extent = _crop_axes(shape, self.size)
        lead = len(shape) - len(self.size)
        stride = self.stride or tuple(extent[lead:])
        axes_starts = []
        for d in range(len(shape)):
            if d >= lead:
                axes_starts.append(np.arange(0, shape[d] - extent[d] + 1, stride[d - lead]))
            elif d == 0:
                axes_starts.append(np.arange(shape[0]))
            else:
                axes_starts.append(np.zeros(1, dtype=np.int64))
        grid = np.stack(np.meshgrid(*axes_starts, indexing="ij"), axis=-1).reshape(-1, len(shape))
        if self.shuffle:
            grid = grid[np.random.default_rng([self.seed, epoch]).permutation(len(grid))]
        starts = grid[_shard_for_rank(len(grid), rank, world_size)]
        return _to_regions(starts, extent, lead)


class Loader:
    """Iterates batches of regions of one array, reading ahead on a background thread.

    ``for batch in Loader(arr, RandomCrops((960, 960), seed=0), batch_size=32, epochs=2)``
    yields stacked arrays (NumPy or CuPy per ``device``). Deterministic for a given
    sampler seed, epoch and rank; :meth:`state_dict` / :meth:`load_state_dict` resume
    at the next unread batch.

    ``prefetch_chunks=N`` (needs an array opened with a cache) fetches the encoded chunks
    of the next ``N`` batches in the background while the current one is read, at most
    ``prefetch_max_bytes`` in flight, on ``prefetch_workers`` threads (default ``N + 1``:
    one per batch in flight, the current one included, so none waits for a thread; with
    fewer, a remote store's latency is hidden only that many batches deep).
    """

    def __init__(
        self,
        array: Any,
        sampler: Any,
        batch_size: int,
        *,
        epochs: int = 1,
        device: str = "auto",
        drop_last: bool = False,
        transform: Any = None,
        prefetch_batches: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch_chunks: int = 0,
        prefetch_workers: int | None = None,
        prefetch_max_bytes: int = 256 << 20,
        even_ranks: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if prefetch_chunks and getattr(getattr(array, "reader", None), "cache", None) is None:
            raise ValueError("prefetch_chunks needs an array opened with a cache, e.g. "
                             "gpuzarr.open_array(url, cache=gpuzarr.PinnedLRUCache(1 << 30))")
        self.even_ranks = even_ranks
        self.prefetch_chunks = prefetch_chunks
        self.prefetch_workers = prefetch_workers or prefetch_chunks + 1
        self.prefetch_max_bytes = prefetch_max_bytes
        self.array = array
        self.sampler = sampler
        self.batch_size = batch_size
        self.epochs = epochs
        self.device = device
        self.drop_last = drop_last
        self.transform = transform
        self.prefetch_batches = max(0, prefetch_batches)
        ctx = DistributedContext.detect()
        self.rank = ctx.rank if rank is None else rank
        self.world_size = ctx.world_size if world_size is None else world_size
        self._epoch = 0
        self._batch = 0
        self._finished = False

    # ------------------------------------------------------------ schedule
    def epoch_regions(self, epoch: int) -> list[tuple]:
        """This rank's regions of ``epoch``.

        With ``even_ranks`` (the default) and several ranks, a rank whose share is one
        region short repeats its first region, so every rank runs the same number of
        batches: an uneven count would leave the other ranks waiting forever in the
        collective of the step the short rank never takes (as torch's DistributedSampler pads).
        """
        regions = self.sampler.regions(self.array.shape, epoch, self.rank, self.world_size)
        if self.even_ranks and self.world_size > 1 and self.rank > 0 and regions:
            longest = len(self.sampler.regions(self.array.shape, epoch, 0, self.world_size))
            regions = regions + regions[: longest - len(regions)]
        return regions

    def _batches(self, regions: list[tuple]) -> list[list[tuple]]:
        batches = [regions[i : i + self.batch_size] for i in range(0, len(regions), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        return sum(len(self._batches(self.epoch_regions(e))) for e in range(self.epochs))

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from: resume with :meth:`load_state_dict`."""
        return {"epoch": self._epoch, "batch": self._batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state``; a state at the very end resumes with nothing left to read."""
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        self._finished = False

    def _schedule(self) -> Iterator[tuple[int, int, list[tuple]]]:
        """(epoch, batch index, regions) of every batch from the resume point on, in order."""
        start_epoch, start_batch = self._epoch, self._batch
        for epoch in range(start_epoch, self.epochs):
            batches = self._batches(self.epoch_regions(epoch))
            for b in range(start_batch if epoch == start_epoch else 0, len(batches)):
                yield epoch, b, batches[b]

    # ------------------------------------------------------------ iteration
    def _chunk_prefetch(self) -> tuple[Any, Any] | None:
        """A planned prefetcher over the chunks of the upcoming batches (``prefetch_chunks`` > 0)."""
        if not self.prefetch_chunks:
            return None
        from gpuzarr.storage.prefetch import PlannedPrefetcher

        array = self.array
        upcoming = self._schedule()  # a second walk of the same schedule, running ahead of the reads
        planned: dict[int, np.ndarray] = {}

        def coords_of(ordinal: int) -> list[tuple[int, ...]]:
            while len(planned) <= ordinal:  # PlannedPrefetcher asks for each ordinal once, in order
                try:
                    _, _, regions = next(upcoming)
                except StopIteration:
                    return []
                planned[len(planned)] = array.plan(regions).chunk_coords
            coords = planned[ordinal]
            planned[ordinal] = coords[:0]  # keep the slot (it counts), drop the data
            return [tuple(c) for c in coords.tolist()]

        prefetcher = array.chunk_prefetcher(workers=self.prefetch_workers, max_bytes_in_flight=self.prefetch_max_bytes)
        # advanced with the batch *before* the one about to be read (see _reads), so batches_ahead
        # N + 1 keeps the current batch and the next N queued or in flight
        return prefetcher, PlannedPrefetcher(prefetcher, coords_of, batches_ahead=self.prefetch_chunks + 1)

    def _read(self, regions: list[tuple]) -> Any:
        return self.array.read_batch(regions, device=self.device, transform=self.transform)

    def _reads(self) -> Iterator[tuple[int, int, Any]]:
        """Read every scheduled batch in order, chunk prefetch running ahead when enabled."""
        chunk_prefetch = self._chunk_prefetch()
        try:
            for ordinal, (epoch, b, regions) in enumerate(self._schedule()):
                if chunk_prefetch is not None:
                    # queue this batch and the next ones; then wait for this batch's chunks, which
                    # are in flight or cached already, rather than fetch any of them twice
                    chunk_prefetch[1].advance(ordinal - 1)
                    ticket = chunk_prefetch[1].tickets.get(ordinal)
                    if ticket is not None:
                        ticket.wait()
                yield epoch, b, self._read(regions)
        finally:
            if chunk_prefetch is not None:
                chunk_prefetch[0].close()

    def __iter__(self) -> Iterator[Any]:
        if self._finished:  # a loader that ran to the end starts over, like iterating a DataLoader again
            self._epoch, self._batch, self._finished = 0, 0, False
        if self.prefetch_batches == 0:
            reads = self._reads()
            try:
                for epoch, b, batch in reads:
                    self._epoch, self._batch = epoch, b + 1
                    yield batch
            finally:
                reads.close()
            self._epoch, self._batch, self._finished = self.epochs, 0, True
            return
        yield from self._iter_prefetched()

    def _iter_prefetched(self) -> Iterator[Any]:
        results: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=self.prefetch_batches)
        stop = threading.Event()

        def produce() -> None:
            reads = self._reads()
            try:
                for epoch, b, batch in reads:
                    if stop.is_set():
                        return
                    item = ("batch", (epoch, b, batch))
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
                    self._epoch, self._batch, self._finished = self.epochs, 0, True
                    return
                if kind == "error":
                    raise payload
                epoch, b, batch = payload
                self._epoch, self._batch = epoch, b + 1
                yield batch
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    results.get(timeout=0.05)
                except queue.Empty:
                    pass
            worker.join()
