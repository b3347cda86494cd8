"""Storage: the one batched fetcher interface and its implementations.

``ChunkFetcher`` (in :mod:`gpuzarr.storage.base`) is the only way bytes enter gpuzarr.
Implementations: local files (:mod:`gpuzarr.storage.local`) and any zarr ``Store``
(:mod:`gpuzarr.storage.zarr_store`). :func:`make_fetcher` picks one, once, at open.
"""

from __future__ import annotations

from gpuzarr.storage.base import ByteRange, ChunkFetcher, SuffixRange
from gpuzarr.storage.select import make_fetcher

__all__ = ["ByteRange", "ChunkFetcher", "SuffixRange", "make_fetcher"]
