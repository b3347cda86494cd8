"""Storage: the one batched fetcher interface and its implementations.

``ChunkFetcher`` (in :mod:`gpuzarr.io.base`) is the only way bytes enter gpuzarr.
Implementations: local files (:mod:`gpuzarr.io.local`) and any zarr ``Store``
(:mod:`gpuzarr.io.store`). :func:`make_fetcher` picks one, once, at open.
"""

from __future__ import annotations

from gpuzarr.io.base import ByteRange, ChunkFetcher, SuffixRange
from gpuzarr.io.select import make_fetcher

__all__ = ["ByteRange", "ChunkFetcher", "SuffixRange", "make_fetcher"]
