"""Background prefetch of chunk keys into a cache, bounded by bytes in flight.

Three pieces, from general to specific:

* :class:`Prefetcher` runs ``fetch_into_cache(keys)`` for submitted key batches on a
  few worker threads, never with more than ``max_bytes_in_flight`` (estimated) bytes
  outstanding, skipping keys already queued or in flight. ``close()`` drops what is
  still queued, waits for the calls in progress and joins every thread.
* :class:`PlannedPrefetcher` is for loaders that *know* their future: with a seeded
  sampler the keys of batch ``i`` are a pure function ``keys_for_batch(i)``. Calling
  :meth:`PlannedPrefetcher.advance` with the batch about to be read queues exactly the
  keys of the next ``batches_ahead`` batches (each batch once).
* :class:`StridePrefetcher` is for arbitrary access: it watches the chunk coordinates
  each read touches, detects a constant shift between successive reads (sequential
  scans are the shift of one step; strided scans any other constant shift, in linear
  chunk-index space so it works across row boundaries), and once the same shift was
  seen ``confirmations`` times in a row queues the next ``depth`` reads.

Keys are any hashable values (store keys, chunk coordinate tuples ...) as long as
``fetch_into_cache`` understands them. Prefetch failures are counted and kept on the
:class:`PrefetchTicket`, never raised into the loader: the foreground read of the
same keys raises the real error with full context.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuzarr.errors import ConfigurationError
from gpuzarr.plan.planner import unique_rows


@dataclass(frozen=True, slots=True)
class PrefetchStats:
    """Counters of a :class:`Prefetcher`."""

    submitted_keys: int
    fetched_keys: int
    duplicate_keys: int
    failed_keys: int
    cancelled_keys: int
    bytes_in_flight: int
    queued_pieces: int


class PrefetchTicket:
    """Completion handle of one :meth:`Prefetcher.submit` call."""

    def __init__(self, keys: list[Hashable], pieces: int) -> None:
        self.keys = keys
        self._pending = pieces
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.cancelled = False
        if pieces == 0:
            self._event.set()

    def _piece_done(self, error: BaseException | None = None, cancelled: bool = False) -> None:
        with self._lock:
            if error is not None:
                self.errors.append(error)
            if cancelled:
                self.cancelled = True
            self._pending -= 1
            if self._pending == 0:
                self._event.set()

    def done(self) -> bool:
        """Whether every piece finished, failed or was cancelled."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (or ``timeout``); returns :meth:`done`."""
        return self._event.wait(timeout)


@dataclass
class _Piece:
    keys: list[Hashable]
    nbytes: int
    ticket: PrefetchTicket


class Prefetcher[K: Hashable]:
    """Runs ``fetch_into_cache`` on background threads under a bytes-in-flight bound."""

    def __init__(
        self,
        fetch_into_cache: Callable[[list[K]], object],
        *,
        max_bytes_in_flight: int = 256 << 20,
        workers: int = 4,
        size_of: Callable[[K], int] | None = None,
        default_key_bytes: int = 1 << 20,
        is_cached: Callable[[list[K]], list[bool]] | None = None,
        name: str = "gpuzarr-prefetch",
    ) -> None:
        if workers < 1:
            raise ConfigurationError(f"workers must be >= 1, got {workers}")
        if max_bytes_in_flight < 1:
            raise ConfigurationError(f"max_bytes_in_flight must be >= 1, got {max_bytes_in_flight}")
        self._fetch = fetch_into_cache
        self.max_bytes_in_flight = int(max_bytes_in_flight)
        self.workers = workers
        self._size_of = size_of
        self._default_key_bytes = int(default_key_bytes)
        self._is_cached = is_cached
        self._cond = threading.Condition()
        self._queue: deque[_Piece] = deque()
        self._queued_or_running: set[Hashable] = set()
        self._in_flight_bytes = 0
        self._running = 0
        self._closed = False
        self._submitted = self._fetched = self._duplicates = self._failed = self._cancelled = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- submission ---------------------------------------------------------------
    def _nbytes(self, key: K) -> int:
        if self._size_of is None:
            return self._default_key_bytes
        try:
            return max(0, int(self._size_of(key)))
        except Exception:  # noqa: BLE001 - a size estimate must never break prefetch
            return self._default_key_bytes

    def submit(self, batch_keys: Iterable[K]) -> PrefetchTicket:
        """Queue keys for background fetching; returns a ticket to wait on (optional)."""
        keys = list(dict.fromkeys(batch_keys))
        if self._is_cached is not None and keys:
            cached = self._is_cached(keys)
            keys = [k for k, c in zip(keys, cached, strict=True) if not c]
        with self._cond:
            if self._closed:
                raise RuntimeError("Prefetcher is closed")
            fresh = [k for k in keys if k not in self._queued_or_running]
            self._duplicates += len(keys) - len(fresh)
            self._submitted += len(fresh)
            # split into pieces of at most a worker's share of the byte budget
            share = max(1, self.max_bytes_in_flight // self.workers)
            pieces: list[tuple[list[Hashable], int]] = []
            current: list[Hashable] = []
            current_bytes = 0
            for key in fresh:
                size = self._nbytes(key)
                if current and current_bytes + size > share:
                    pieces.append((current, current_bytes))
                    current, current_bytes = [], 0
                current.append(key)
                current_bytes += size
            if current:
                pieces.append((current, current_bytes))
            ticket = PrefetchTicket(list(fresh), len(pieces))
            for piece_keys, piece_bytes in pieces:
                self._queue.append(_Piece(piece_keys, piece_bytes, ticket))
            self._queued_or_running.update(fresh)
            self._cond.notify_all()
        return ticket

    # -- workers ------------------------------------------------------------------
    def _take(self) -> _Piece | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._queue:
                    piece = self._queue[0]
                    fits = self._in_flight_bytes + piece.nbytes <= self.max_bytes_in_flight
                    if fits or self._running == 0:  # an oversized piece still runs, alone
                        self._queue.popleft()
                        self._in_flight_bytes += piece.nbytes
                        self._running += 1
                        return piece
                self._cond.wait()

    def _work(self) -> None:
        while True:
            piece = self._take()
            if piece is None:
                return
            error: BaseException | None = None
            try:
                self._fetch(piece.keys)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - recorded on the ticket, see module doc
                error = exc
            with self._cond:
                self._in_flight_bytes -= piece.nbytes
                self._running -= 1
                self._queued_or_running.difference_update(piece.keys)
                if error is None:
                    self._fetched += len(piece.keys)
                else:
                    self._failed += len(piece.keys)
                self._cond.notify_all()
            piece.ticket._piece_done(error)

    # -- control ------------------------------------------------------------------
    @property
    def bytes_in_flight(self) -> int:
        with self._cond:
            return self._in_flight_bytes

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or (not self._queue and self._running == 0), timeout)

    def cancel_pending(self) -> int:
        """Drop every queued (not yet running) piece; returns how many keys were dropped."""
        with self._cond:
            dropped = list(self._queue)
            self._queue.clear()
            for piece in dropped:
                self._queued_or_running.difference_update(piece.keys)
            count = sum(len(p.keys) for p in dropped)
            self._cancelled += count
            self._cond.notify_all()
        for piece in dropped:
            piece.ticket._piece_done(cancelled=True)
        return count

    def close(self, timeout: float | None = None) -> None:
        """Cancel queued work, wait for running calls to return, join all threads."""
        self.cancel_pending()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def threads_alive(self) -> int:
        """How many worker threads are still running (0 after :meth:`close`)."""
        return sum(t.is_alive() for t in self._threads)

    def stats(self) -> PrefetchStats:
        with self._cond:
            return PrefetchStats(self._submitted, self._fetched, self._duplicates, self._failed, self._cancelled,
                                 self._in_flight_bytes, len(self._queue))

    def __enter__(self) -> Prefetcher[K]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlannedPrefetcher[K: Hashable]:
    """Prefetches the known keys of the next ``batches_ahead`` batches of a loader."""

    def __init__(self, prefetcher: Prefetcher[K], keys_for_batch: Callable[[int], Sequence[K]], *,
                 batches_ahead: int = 2, num_batches: int | None = None) -> None:
        self.prefetcher = prefetcher
        self.keys_for_batch = keys_for_batch
        self.batches_ahead = batches_ahead
        self.num_batches = num_batches
        self._next_to_submit = 0
        self.tickets: dict[int, PrefetchTicket] = {}

    def advance(self, current_batch: int) -> list[int]:
        """Called before reading batch ``current_batch``; queues batches up to ``current + batches_ahead``.

        Returns the batch indexes newly queued.
        """
        start = max(self._next_to_submit, current_batch + 1)
        stop = current_batch + self.batches_ahead + 1
        if self.num_batches is not None:
            stop = min(stop, self.num_batches)
        queued = []
        for index in range(start, stop):
            self.tickets[index] = self.prefetcher.submit(self.keys_for_batch(index))
            queued.append(index)
        self._next_to_submit = max(self._next_to_submit, stop)
        for old in [i for i in self.tickets if i < current_batch]:  # keep the current one to wait on
            del self.tickets[old]
        return queued

    def reset(self) -> None:
        """Forget the position (new epoch with a new order): cancel what is queued."""
        self.prefetcher.cancel_pending()
        self._next_to_submit = 0
        self.tickets.clear()


class StridePrefetcher:
    """Detects sequential / constant-stride read patterns and fetches ahead.

    Each :meth:`observe` call gets the chunk coordinates one read touched. They are
    turned into sorted linear chunk indexes (C order over ``grid_shape``). When the
    current read equals the previous one shifted by a constant ``delta`` (same for
    every element) and that ``delta`` was seen ``confirmations`` times in a row, the
    next ``depth`` reads (shifted by ``delta``, ``2*delta`` ...; clipped to the grid)
    are submitted through ``key_of`` to the prefetcher. A different pattern resets
    the detector.
    """

    def __init__(self, prefetcher: Prefetcher, grid_shape: Sequence[int], key_of: Callable[[tuple[int, ...]], Hashable],
                 *, depth: int = 4, confirmations: int = 2) -> None:
        self.prefetcher = prefetcher
        self.grid_shape = tuple(int(g) for g in grid_shape)
        self.key_of = key_of
        self.depth = depth
        self.confirmations = confirmations
        self._size = math.prod(self.grid_shape)
        # a grid of 2**63 chunks or more (a huge sparse volume) cannot be linearised in int64:
        # there a read's chunks are compared as coordinate rows, shifted by one vector
        self._linear = self._size < 2**63
        self._previous: np.ndarray | None = None
        self._delta: int | None = None
        self._streak = 0
        self._predicted_up_to: int | None = None
        self.detected_delta: int | None = None

    def observe(self, chunk_coords: np.ndarray | Sequence[Sequence[int]]) -> PrefetchTicket | None:
        """Record one read; returns the prefetch ticket when a pattern fired, else ``None``."""
        coords = np.asarray(chunk_coords, dtype=np.int64).reshape(-1, len(self.grid_shape))
        if self._linear:
            linear = np.unique(np.ravel_multi_index(coords.T, self.grid_shape)) if len(coords) else np.empty(0, np.int64)
        else:
            linear = unique_rows(coords)[0]
        previous, self._previous = self._previous, linear
        if previous is None or previous.shape != linear.shape or linear.size == 0:
            self._reset()
            return None
        shifts = linear - previous
        if self._linear:
            delta: Any = int(shifts[0])
            moved = delta != 0
        else:
            delta = tuple(shifts[0].tolist())
            moved = any(delta)
        if not moved or not np.all(shifts == shifts[0]):
            self._reset()
            return None
        if delta == self._delta:
            self._streak += 1
        else:
            self._delta, self._streak, self._predicted_up_to = delta, 1, None
        if self._streak < self.confirmations:
            return None
        self.detected_delta = delta
        first_step = 1 if self._predicted_up_to is None else max(1, self._predicted_up_to)
        steps = np.arange(first_step, self.depth + 1)
        self._predicted_up_to = self.depth  # next time, only the step that became new
        if steps.size == 0:
            return None
        if self._linear:
            future = (linear[None, :] + steps[:, None] * delta).ravel()
            future = future[(future >= 0) & (future < self._size)]
            if future.size == 0:
                return None
            coords_ahead = np.stack(np.unravel_index(future, self.grid_shape), axis=1)
        else:
            ahead = (linear[None, :, :] + steps[:, None, None] * np.asarray(delta, dtype=np.int64)).reshape(
                -1, len(self.grid_shape))
            coords_ahead = ahead[self._inside(ahead)]
            if len(coords_ahead) == 0:
                return None
        return self.prefetcher.submit(self.key_of(tuple(int(c) for c in row)) for row in coords_ahead.tolist())

    def _inside(self, rows: np.ndarray) -> np.ndarray:
        """Which coordinate rows lie inside the grid."""
        return ((rows >= 0) & (rows < np.asarray(self.grid_shape, dtype=np.int64))).all(axis=1)

    def _reset(self) -> None:
        self._delta = None
        self._streak = 0
        self._predicted_up_to = None
        self.detected_delta = None


__all__ = ["PlannedPrefetcher", "PrefetchStats", "PrefetchTicket", "Prefetcher", "StridePrefetcher"]
