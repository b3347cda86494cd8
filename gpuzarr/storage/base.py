"""The one batched fetcher protocol every storage backend implements.

A fetcher answers "give me these keys (optionally these byte ranges of them)" for a
whole batch at once and is free to issue the reads concurrently. It never decodes
and never caches; caching and shard-index handling live above it
(:mod:`gpuzarr.storage.reader`).

Contract of :meth:`ChunkFetcher.fetch`:

* ``keys[i]`` is a store key relative to the store root (``"raw/c/0/1/2"``).
* ``ranges[i]`` is ``None`` (whole object), a :class:`ByteRange` or a
  :class:`SuffixRange`.
* The result has one entry per key, in order: a bytes-like object, or ``None``
  when the key does not exist (a chunk never written reads as the fill value).
* A range that reaches past the end of the object is an error
  (:class:`gpuzarr.errors.FetchError` naming the key); lengths are always checked,
  so a short read is never returned as if it were whole.

Cache identity (:attr:`ChunkFetcher.cache_identity`): the one name every cache tier keys
a fetcher's bytes on. A fetcher over a *location* that outlives the process (a local
directory, an S3 prefix at an endpoint, an HTTP URL) reports it as
:attr:`ChunkFetcher.persistent_identity`, a canonical URL, so every fetcher of the same
location shares cache entries, across processes too (the disk tier). Any other store
(``MemoryStore``, a wrapped or unknown zarr store) has no such name: its fetcher gets a
token unique to that fetcher object, never reused while the process lives and not carried
by pickling, so two stores can never read each other's cached chunks (a store's ``str``
or ``id`` can be reused once it is garbage collected). A forked child keeps its parent's
token, rightly: its copy of the store and of the memory cache hold the same bytes. Such
fetchers skip the disk tier, which outlives the process.
"""

from __future__ import annotations

import abc
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class ByteRange:
    """``length`` bytes starting at ``start``."""

    start: int
    length: int


@dataclass(frozen=True, slots=True)
class SuffixRange:
    """The last ``length`` bytes of an object."""

    length: int


Range = ByteRange | SuffixRange | None

_fetcher_tokens = itertools.count()


def _unique_token() -> str:
    """A name no other fetcher of this process (or of any earlier process) has: pid, a counter, a random part."""
    return f"unique:{os.getpid()}:{next(_fetcher_tokens)}:{os.urandom(6).hex()}"


@dataclass(frozen=True, slots=True)
class DeferredRead:
    """An encoded chunk to be read later, by the thread that decodes it, into that thread's buffer.

    Returned by :meth:`gpuzarr.storage.reader.ChunkReader.read` with ``deferred=True`` for
    fetchers that can read into a caller's buffer (local files). The CPU engine loads it
    in the same worker that decodes it: the bytes are still in the CPU cache when the
    decoder reads them, and no fresh multi-MB buffer (and its page faults) is needed per
    chunk.
    """

    fetcher: ChunkFetcher
    key: str
    #: a byte range of the object (``start``, ``length``) instead of all of it, when ``start >= 0``
    start: int = -1
    length: int = -1

    def load(self, buffer_for: Callable[[int], np.ndarray]) -> memoryview | None:
        """Read the object (or its range) into ``buffer_for(size)`` (uint8); ``None`` when the key does not exist."""
        if self.start >= 0:
            return self.fetcher.read_into(self.key, buffer_for, ByteRange(self.start, self.length))
        return self.fetcher.read_into(self.key, buffer_for)


class DeferredReads(Sequence[DeferredRead]):
    """The encoded chunks of a batch, each read later by the thread that decodes it (see :class:`DeferredRead`).

    One object per batch rather than one per chunk: ``load(i, buffer_for)`` reads entry ``i``.
    Indexing still gives a :class:`DeferredRead` for code that wants one.
    """

    __slots__ = ("fetcher", "keys")

    def __init__(self, fetcher: ChunkFetcher, keys: list[str]) -> None:
        self.fetcher = fetcher
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self.keys))[index]]
        return DeferredRead(self.fetcher, self.keys[index])

    def load(self, index: int, buffer_for: Callable[[int], np.ndarray]) -> memoryview | None:
        """Read entry ``index`` into ``buffer_for(size)`` (uint8); ``None`` when its key does not exist."""
        return self.fetcher.read_into(self.keys[index], buffer_for)

    def key_table(self) -> tuple[list[str], np.ndarray]:
        """The distinct keys, and each entry's position among them (int64; -1: nothing to read).

        For code that opens each object once however many entries read it (the CPU engine's
        compiled lane). A subclass that knows its distinct keys already says so here.
        """
        keys = self.keys
        distinct = list(dict.fromkeys(k for k in keys if k is not None))
        if len(distinct) == len(keys):  # every entry its own object (unsharded chunks)
            return distinct, np.arange(len(keys), dtype=np.int64)
        number = {k: i for i, k in enumerate(distinct)}
        return distinct, np.fromiter((-1 if k is None else number[k] for k in keys), dtype=np.int64, count=len(keys))


def normalize_request(keys: Sequence[str], ranges: Sequence[Range] | None) -> tuple[list[str], list[Range]]:
    """``keys`` and one range per key (``None`` = whole object), checked to line up."""
    keys = list(keys)
    ranges = list(ranges) if ranges is not None else [None] * len(keys)
    if len(ranges) != len(keys):
        raise ValueError(f"fetch got {len(keys)} keys but {len(ranges)} ranges")
    return keys, ranges


@runtime_checkable
class ChunkFetcher(Protocol):
    """Batched, concurrent reads of whole objects or byte ranges by key.

    A :class:`typing.Protocol`: any object with these members is a fetcher (wrappers
    such as the disk cache's need not inherit). Backends inherit from it to get the
    defaults below (``read_into`` through ``fetch``, no device reads, context manager).
    """

    #: Names the store in messages (e.g. ``"file:///data/x.zarr"``); caches key on :attr:`cache_identity`.
    store_id: str

    @property
    def persistent_identity(self) -> str | None:
        """Canonical URL of a location that outlives the process (shared by every fetcher of it), else ``None``."""
        return None

    @property
    def cache_identity(self) -> str:
        """What cache tiers key this fetcher's bytes on (see the module docstring): never shared by two stores."""
        persistent = self.persistent_identity
        if persistent is not None:
            return persistent
        token = self.__dict__.get("_cache_token")
        if token is None:
            token = self.__dict__.setdefault("_cache_token", _unique_token())  # setdefault: one winner under threads
        return token

    def __getstate__(self) -> dict[str, Any]:
        # a process-unique token must not travel: the unpickled copy is another store object
        state = dict(self.__dict__)
        state.pop("_cache_token", None)
        return state

    @abc.abstractmethod
    def fetch(self, keys: Sequence[str], ranges: Sequence[Range] | None = None) -> list[Buffer | None]:
        """Read every key (or range of it) of a batch; ``None`` for a missing key."""

    #: whether :meth:`read_into` reads without an intermediate copy (see :class:`DeferredRead`)
    reads_into_buffers: bool = False

    @property
    def reads_to_device(self) -> bool:
        """Whether ``fetch_device(keys, ranges) -> DeviceBatch`` reads straight into GPU memory (kvikio).

        The chunk reader hands such a batch to the GPU engine for codecs that need no
        host-side parsing (see ``GpuEngine.takes_device_batches``); False by default.
        """
        return False

    def read_into(self, key: str, buffer_for: Callable[[int], np.ndarray],
                  byte_range: Range = None) -> memoryview | None:
        """Read an object (or ``byte_range`` of it) into ``buffer_for(size)``; the filled view, ``None`` if missing.

        The default goes through :meth:`fetch` and copies; fetchers that can do better
        set ``reads_into_buffers`` and override it.
        """
        (data,) = self.fetch([key], [byte_range])
        if data is None:
            return None
        src = memoryview(data).cast("B")
        out = buffer_for(len(src))
        out[: len(src)] = np.frombuffer(src, dtype=np.uint8)
        return memoryview(out)[: len(src)]

    def close(self) -> None:
        """Release threads, handles and connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
