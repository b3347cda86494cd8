"""An in-memory LRU cache of *encoded* chunk bytes with a hard byte budget.

:class:`PinnedLRUCache` keeps recently read chunk bytes so that repeated reads (epochs,
overlapping regions, prefetched batches) skip storage. It sits in front of a
:class:`~gpuzarr.storage.base.ChunkFetcher` inside :class:`gpuzarr.storage.reader.ChunkReader`
(or :class:`gpuzarr.storage.disk_cache.CachingFetcher`), and one cache can serve many arrays
and datasets at once because entries are keyed by ``(cache_identity, array_path, chunk_key)``,
where ``cache_identity`` (:attr:`gpuzarr.storage.base.ChunkFetcher.cache_identity`) is never
shared by two different stores.

Guarantees:

* **Hard budget.** The bytes held by the cache plus the bytes reserved by insertions
  in progress never exceed ``max_bytes``, under any number of threads. An insertion
  first *reserves* its size under the lock (evicting least-recently-used entries as
  needed), copies the data outside the lock, then commits. An item larger than the
  whole budget is never cached (counted as ``rejected``).
* **Pinned memory on GPU machines.** With a usable CUDA device, entries live in
  page-locked host memory (``cupyx.empty_pinned``), so a later host→device copy is a
  fast DMA; otherwise in ordinary memory.
* **Batched.** :meth:`PinnedLRUCache.get_many` / :meth:`PinnedLRUCache.put_many` take
  the lock once per batch.

Returned buffers are read-only ``memoryview`` objects over the cached storage; an
entry evicted while a caller still holds its view stays valid for that caller (the
view keeps it alive) but no longer counts against the budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuzarr.errors import ConfigurationError
from gpuzarr.storage.base import Buffer

CacheKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A consistent snapshot of a cache's counters."""

    hits: int
    misses: int
    insertions: int
    evictions: int
    evicted_bytes: int
    rejected: int
    entries: int
    bytes_used: int
    bytes_reserved: int
    max_bytes: int
    pinned: bool

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


def _pinned_default() -> bool:
    from gpuzarr import _optional

    return bool(_optional.cupy_device())


class PinnedLRUCache:
    """Thread-safe LRU of encoded chunk bytes under a hard ``max_bytes`` budget."""

    def __init__(self, max_bytes: int, *, pinned: bool | None = None) -> None:
        if max_bytes < 0:
            raise ConfigurationError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.pinned = _pinned_default() if pinned is None else bool(pinned)
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self._used = 0
        self._reserved = 0
        self._hits = 0
        self._misses = 0
        self._insertions = 0
        self._evictions = 0
        self._evicted_bytes = 0
        self._rejected = 0

    # -- storage ----------------------------------------------------------------
    def _own(self, data: Buffer) -> Any:
        """A private, read-only copy of ``data`` (pinned when configured)."""
        if self.pinned:
            import cupyx

            source = np.frombuffer(data, dtype=np.uint8)
            stored = cupyx.empty_pinned(source.shape, dtype=np.uint8)
            stored[...] = source
            stored.flags.writeable = False
            return stored
        if isinstance(data, bytes):
            return data  # immutable already: no copy needed
        return bytes(data)

    # -- reads ------------------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as an *empty* cache with the same budget: cached bytes belong to one process."""
        return (type(self), (self.max_bytes,), {"pinned": self.pinned})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.pinned = bool(state["pinned"]) and _pinned_default()

    def get_many(self, keys: Sequence[Hashable]) -> list[Buffer | None]:
        """Cached bytes of each key (``None`` on a miss); one lock acquisition."""
        out: list[Buffer | None] = []
        with self._lock:
            for key in keys:
                stored = self._entries.get(key)
                if stored is None:
                    self._misses += 1
                    out.append(None)
                    continue
                self._entries.move_to_end(key)
                self._hits += 1
                out.append(stored)
        return [memoryview(s) if s is not None else None for s in out]

    def get(self, key: Hashable) -> Buffer | None:
        """Cached bytes of one key, or ``None``."""
        return self.get_many([key])[0]

    def contains_many(self, keys: Iterable[Hashable]) -> list[bool]:
        """Which keys are cached, without touching LRU order or hit/miss counters."""
        with self._lock:
            return [key in self._entries for key in keys]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # -- writes -----------------------------------------------------------------
    def _evict_until_fits(self, size: int) -> bool:
        """Evict LRU entries until ``size`` more bytes fit; caller holds the lock."""
        while self._used + self._reserved + size > self.max_bytes and self._entries:
            key, _ = self._entries.popitem(last=False)
            freed = self._sizes.pop(key)
            self._used -= freed
            self._evictions += 1
            self._evicted_bytes += freed
        return self._used + self._reserved + size <= self.max_bytes

    def put_many(self, items: Sequence[tuple[Hashable, Buffer]]) -> int:
        """Insert a batch; returns how many entries were stored.

        Sizes are reserved under the lock, data copied outside it, and entries
        committed under the lock again, so the budget holds at every instant.
        """
        reserved: list[tuple[Hashable, Buffer, int]] = []
        with self._lock:
            seen: set[Hashable] = set()
            for key, data in items:
                if data is None or key in seen:
                    continue
                seen.add(key)
                size = memoryview(data).nbytes
                if key in self._entries:
                    self._entries.move_to_end(key)
                    continue
                if size > self.max_bytes or not self._evict_until_fits(size):
                    self._rejected += 1
                    continue
                self._reserved += size
                reserved.append((key, data, size))
        owned: list[Any] = []
        try:
            for _, data, _size in reserved:
                owned.append(self._own(data))
        finally:
            stored = 0
            with self._lock:
                for (key, _data, size), value in zip(reserved, owned + [None] * (len(reserved) - len(owned)),
                                                     strict=True):
                    self._reserved -= size
                    if value is None or key in self._entries:
                        continue  # copy failed, or another thread inserted it meanwhile
                    self._entries[key] = value
                    self._sizes[key] = size
                    self._used += size
                    self._insertions += 1
                    stored += 1
        return stored

    def put(self, key: Hashable, data: Buffer) -> bool:
        """Insert one entry; ``False`` when it was not stored (too large / no room)."""
        return self.put_many([(key, data)]) == 1

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self._used = 0

    # -- introspection ----------------------------------------------------------
    @property
    def bytes_committed(self) -> int:
        """Bytes held plus bytes reserved right now (never above ``max_bytes``)."""
        with self._lock:
            return self._used + self._reserved

    def stats(self) -> CacheStats:
        """A consistent snapshot of every counter."""
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                insertions=self._insertions,
                evictions=self._evictions,
                evicted_bytes=self._evicted_bytes,
                rejected=self._rejected,
                entries=len(self._entries),
                bytes_used=self._used,
                bytes_reserved=self._reserved,
                max_bytes=self.max_bytes,
                pinned=self.pinned,
            )

    def __repr__(self) -> str:
        s = self.stats()
        return (f"PinnedLRUCache({s.bytes_used}/{s.max_bytes} bytes, {s.entries} entries, "
                f"hit rate {s.hit_rate:.1%}, pinned={s.pinned})")


__all__ = ["CacheKey", "CacheStats", "PinnedLRUCache"]
