"""Prefetcher: exact future keys, bytes-in-flight bound, clean cancellation, pattern detection."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from gpuzarr.storage.cache import PinnedLRUCache
from gpuzarr.storage.disk_cache import CachingFetcher
from gpuzarr.storage.local import LocalFileFetcher
from gpuzarr.storage.prefetch import PlannedPrefetcher, Prefetcher, StridePrefetcher


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gpuzarr-prefetch")]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    for i in range(64):
        path = tmp_path / "c" / str(i)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(bytes([i]) * (100 + i))
    return tmp_path


def test_planned_prefetch_covers_exactly_the_future_keys(store: Path) -> None:
    rng = np.random.default_rng(7)  # the loader's seeded sampler
    batches = [sorted({f"c/{int(i)}" for i in rng.integers(0, 64, size=5)}) for _ in range(12)]
    fetched: list[str] = []
    lock = threading.Lock()
    memory = PinnedLRUCache(1 << 20, pinned=False)
    storage_reads: list[str] = []
    foreground_reads: list[str] = []

    class CountingFetcher(LocalFileFetcher):
        def fetch(self, keys, ranges=None):  # type: ignore[no-untyped-def]
            with lock:
                storage_reads.extend(keys)
                if threading.current_thread() is threading.main_thread():
                    foreground_reads.extend(keys)
            return super().fetch(keys, ranges)

    caching = CachingFetcher(CountingFetcher(store), memory=memory)

    def fetch_into_cache(keys: list[str]) -> None:
        with lock:
            fetched.extend(keys)
        caching.prefetch(keys)

    with Prefetcher(fetch_into_cache, max_bytes_in_flight=4096, workers=3, size_of=lambda k: 200) as prefetcher:
        planned = PlannedPrefetcher(prefetcher, lambda i: batches[i], batches_ahead=3, num_batches=len(batches))
        for index, batch in enumerate(batches):
            planned.advance(index)
            if index == 0:
                caching.fetch(batch)
                continue
            assert planned.tickets[index].wait(10)
            data = caching.fetch(batch)
            assert [bytes(d) for d in data] == [bytes([int(k[2:])]) * (100 + int(k[2:])) for k in batch]
            assert sorted(foreground_reads) == batches[0]  # every later batch came from the cache
        assert prefetcher.wait_idle(10)
    expected = {k for batch in batches[1:] for k in batch}
    assert set(fetched) == expected  # nothing outside the future batches
    assert sorted(storage_reads) == sorted({k for batch in batches for k in batch})  # each key read once
    assert not prefetch_threads()
    caching.close()


def test_bytes_in_flight_never_exceed_budget() -> None:
    budget = 10_000
    current = [0]
    peak = [0]
    lock = threading.Lock()
    release = threading.Event()

    def fetch_into_cache(keys: list[int]) -> None:
        size = 1000 * len(keys)
        with lock:
            current[0] += size
            peak[0] = max(peak[0], current[0])
        release.wait(5)
        with lock:
            current[0] -= size

    prefetcher: Prefetcher[int] = Prefetcher(fetch_into_cache, max_bytes_in_flight=budget, workers=8,
                                             size_of=lambda k: 1000)
    tickets = [prefetcher.submit(range(i * 10, i * 10 + 10)) for i in range(10)]
    threading.Timer(0.2, release.set).start()
    assert all(t.wait(20) for t in tickets)
    prefetcher.close()
    assert peak[0] <= budget
    assert prefetcher.stats().fetched_keys == 100 and prefetcher.stats().bytes_in_flight == 0


def test_duplicate_keys_are_fetched_once() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def fetch_into_cache(keys: list[int]) -> None:
        gate.wait(5)
        seen.extend(keys)

    with Prefetcher(fetch_into_cache, workers=2) as prefetcher:
        prefetcher.submit([1, 2, 3])
        prefetcher.submit([2, 3, 4])
        gate.set()
        assert prefetcher.wait_idle(10)
        assert sorted(seen) == [1, 2, 3, 4]
        assert prefetcher.stats().duplicate_keys == 2


def test_close_cancels_queued_work_and_joins_threads() -> None:
    started = threading.Event()
    release = threading.Event()

    def slow_fetch(keys: list[int]) -> None:
        started.set()
        release.wait(5)

    prefetcher: Prefetcher[int] = Prefetcher(slow_fetch, max_bytes_in_flight=1000, workers=2, size_of=lambda k: 500)
    tickets = [prefetcher.submit([i]) for i in range(50)]
    assert started.wait(5)
    threading.Timer(0.1, release.set).start()
    prefetcher.close()
    assert prefetcher.threads_alive() == 0 and not prefetch_threads()
    stats = prefetcher.stats()
    assert stats.cancelled_keys >= 40 and stats.queued_pieces == 0
    assert all(t.done() for t in tickets)
    assert sum(t.cancelled for t in tickets) == stats.cancelled_keys
    with pytest.raises(RuntimeError, match="closed"):
        prefetcher.submit([1])


def test_failures_are_recorded_not_raised() -> None:
    def broken(keys: list[str]) -> None:
        raise OSError("storage down")

    with Prefetcher(broken, workers=1) as prefetcher:
        ticket = prefetcher.submit(["a", "b"])
        assert ticket.wait(5)
        assert isinstance(ticket.errors[0], OSError)
        assert prefetcher.stats().failed_keys == 2


def run_stride(grid: tuple[int, ...], reads: list[list[tuple[int, ...]]], depth: int = 3) -> tuple[list, StridePrefetcher]:
    fetched: list = []
    with Prefetcher(lambda keys: fetched.extend(keys), workers=1) as prefetcher:
        detector = StridePrefetcher(prefetcher, grid, key_of=lambda c: c, depth=depth, confirmations=2)
        for coords in reads:
            detector.observe(coords)
        prefetcher.wait_idle(5)
    return fetched, detector


def test_sequential_scan_prefetches_next_chunks() -> None:
    reads = [[(0, i)] for i in range(4)]  # chunks (0,0), (0,1), (0,2), (0,3)
    fetched, detector = run_stride((4, 8), reads, depth=3)
    assert detector.detected_delta == 1
    # fired after the 3rd read (two equal shifts): 3,4,5 ; after the 4th: 6
    assert fetched == [(0, 3), (0, 4), (0, 5), (0, 6)]


def test_strided_batches_across_rows() -> None:
    # each read takes two chunks of one column block, moving 3 chunks (linear) each time
    grid = (3, 4)
    start = [0, 1]
    reads = []
    for step in range(3):
        linear = np.array(start) + 3 * step
        reads.append([tuple(int(c) for c in np.unravel_index(i, grid)) for i in linear])
    fetched, detector = run_stride(grid, reads, depth=2)
    assert detector.detected_delta == 3
    expected_linear = [9, 10, 12, 13]  # last read was [6,7]; next two: [9,10], [12,13] (12,13 out of grid)
    expected = [tuple(int(c) for c in np.unravel_index(i, grid)) for i in expected_linear if i < 12]
    assert fetched == expected


def test_random_access_prefetches_nothing() -> None:
    rng = np.random.default_rng(0)
    reads = [[tuple(int(x) for x in rng.integers(0, 8, size=2)) for _ in range(4)] for _ in range(20)]
    fetched, detector = run_stride((8, 8), reads)
    assert fetched == [] and detector.detected_delta is None
