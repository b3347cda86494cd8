"""The one batched fetcher interface every storage backend implements.

A fetcher answers "give me these keys (optionally these byte ranges of them)" for a
whole batch at once and is free to issue the reads concurrently. It never decodes
and never caches; caching and shard-index handling live above it
(:mod:`gpuzarr.chunk_reader`).

Contract of :meth:`ChunkFetcher.fetch`:

* ``keys[i]`` is a store key relative to the store root (``"raw/c/0/1/2"``).
* ``ranges[i]`` is ``None`` (whole object), a :class:`ByteRange` or a
  :class:`SuffixRange`.
* The result has one entry per key, in order: a bytes-like object, or ``None``
  when the key does not exist (a chunk never written reads as the fill value).
* A range that reaches past the end of the object is an error
  (:class:`gpuzarr.errors.FetchError` naming the key); lengths are always checked,
  so a short read is never returned as if it were whole.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

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


class ChunkFetcher(abc.ABC):
    """Batched, concurrent reads of whole objects or byte ranges by key."""

    #: Identifies the store (e.g. ``"file:///data/x.zarr"``); caches key on it.
    store_id: str

    @abc.abstractmethod
    def fetch(self, keys: Sequence[str], ranges: Sequence[Range] | None = None) -> list[Buffer | None]:
        """Read every key (or range of it) of a batch; ``None`` for a missing key."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release threads, handles and connections."""

    def __enter__(self) -> ChunkFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
