"""PinnedLRUCache: hard byte budget under concurrency, LRU order, batched API, stats."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuzarr.storage.cache import PinnedLRUCache


def key(i: int, store: str = "s") -> tuple[str, str, str]:
    return (store, "arr", f"c/{i}")


def payload(i: int, size: int) -> bytes:
    return bytes([i % 251]) * size


def test_roundtrip_and_batch_api() -> None:
    cache = PinnedLRUCache(1000, pinned=False)
    assert cache.put_many([(key(1), b"abc"), (key(2), bytearray(b"defg")), (key(3), memoryview(b"hi"))]) == 3
    got = cache.get_many([key(1), key(2), key(9), key(3)])
    assert [bytes(g) if g is not None else None for g in got] == [b"abc", b"defg", None, b"hi"]
    assert all(g.readonly for g in got if g is not None)
    s = cache.stats()
    assert (s.hits, s.misses, s.insertions, s.entries, s.bytes_used) == (3, 1, 3, 3, 9)


def test_same_chunk_key_in_two_stores_does_not_collide() -> None:
    cache = PinnedLRUCache(1000, pinned=False)
    cache.put_many([(key(1, "store-a"), b"A"), (key(1, "store-b"), b"B")])
    assert [bytes(x) for x in cache.get_many([key(1, "store-a"), key(1, "store-b")])] == [b"A", b"B"]


def test_lru_eviction_order() -> None:
    cache = PinnedLRUCache(30, pinned=False)
    for i in range(3):
        cache.put(key(i), payload(i, 10))
    cache.get(key(0))  # 0 becomes most recent; 1 is now least recent
    cache.put(key(3), payload(3, 10))
    assert cache.contains_many([key(0), key(1), key(2), key(3)]) == [True, False, True, True]
    s = cache.stats()
    assert s.evictions == 1 and s.evicted_bytes == 10 and s.bytes_used == 30


def test_item_larger_than_budget_is_not_cached() -> None:
    cache = PinnedLRUCache(100, pinned=False)
    cache.put(key(0), payload(0, 60))
    assert not cache.put(key(1), payload(1, 101))
    assert key(0) in cache and key(1) not in cache  # nothing evicted for it
    assert cache.stats().rejected == 1


def test_zero_budget_caches_nothing() -> None:
    cache = PinnedLRUCache(0, pinned=False)
    assert cache.put_many([(key(0), b"x")]) == 0
    assert cache.get(key(0)) is None


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 64)), max_size=200), st.integers(0, 256))
def test_budget_and_accounting_hold_for_any_sequence(ops: list[tuple[int, int]], budget: int) -> None:
    cache = PinnedLRUCache(budget, pinned=False)
    for i, size in ops:
        if size % 3 == 0:
            cache.get(key(i))
        else:
            cache.put(key(i), payload(i, size))
        assert cache.bytes_committed <= budget
    s = cache.stats()
    stored = cache.get_many([key(i) for i in range(21)])
    assert s.bytes_used == sum(len(x) for x in stored if x is not None)
    assert s.entries == sum(x is not None for x in stored)


def test_eight_threads_never_exceed_budget() -> None:
    budget = 64 * 1024
    cache = PinnedLRUCache(budget, pinned=False)
    stop = threading.Event()
    peak = [0]
    violations: list[int] = []
    errors: list[BaseException] = []
    lookups = [0] * 8

    def watcher() -> None:
        while not stop.is_set():
            committed = cache.bytes_committed
            peak[0] = max(peak[0], committed)
            if committed > budget:
                violations.append(committed)

    def worker(n: int) -> None:
        rng = random.Random(n)
        try:
            for _ in range(3000):
                batch = [key(rng.randrange(400)) for _ in range(rng.randrange(1, 8))]
                if rng.random() < 0.5:
                    got = cache.get_many(batch)
                    lookups[n] += len(batch)
                    for k, g in zip(batch, got, strict=True):
                        if g is not None:  # content always belongs to its key
                            i = int(k[2].split("/")[1])
                            assert bytes(g) == payload(i, len(g))
                else:
                    cache.put_many([(k, payload(int(k[2].split("/")[1]), rng.randrange(1, 8192))) for k in batch])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    watch = threading.Thread(target=watcher)
    watch.start()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    watch.join()
    assert not any(t.is_alive() for t in threads), "deadlock: a worker never finished"
    assert not errors, errors[0]
    assert not violations, f"budget {budget} exceeded: {max(violations)}"
    s = cache.stats()
    assert s.hits + s.misses == sum(lookups)
    assert s.bytes_reserved == 0 and cache.bytes_committed == s.bytes_used <= budget
    assert s.insertions - s.evictions == s.entries
    assert peak[0] > budget // 2  # the test really filled the cache


@pytest.mark.gpu
@pytest.mark.real_cuda
def test_pinned_entries_are_page_locked() -> None:
    import cupy

    cache = PinnedLRUCache(1 << 20, pinned=True)
    cache.put(key(0), payload(0, 4096))
    view = cache.get(key(0))
    assert bytes(view) == payload(0, 4096)
    array = np.frombuffer(view, dtype=np.uint8)
    attrs = cupy.cuda.runtime.pointerGetAttributes(array.ctypes.data)
    assert attrs.type == cupy.cuda.runtime.memoryTypeHost
