"""Any zarr ``Store`` (memory, zip, fsspec, Icechunk sessions) as a batched fetcher.

All reads of a batch are issued together with ``asyncio.gather`` on zarr's own event
loop thread, so a remote store sees them concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from gpuzarr.errors import FetchError, RangeNotSatisfiableError
from gpuzarr.storage.base import Buffer, ByteRange, ChunkFetcher, Range, SuffixRange, normalize_request


class ZarrStoreFetcher(ChunkFetcher):
    """Fetches keys through zarr's async ``Store.get``."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.store_id = f"{type(store).__name__}:{store}"

    def fetch(self, keys: Sequence[str], ranges: Sequence[Range] | None = None) -> list[Buffer | None]:
        from zarr.abc.store import RangeByteRequest, SuffixByteRequest
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        proto = default_buffer_prototype()
        keys, rngs = normalize_request(keys, ranges)

        def request(rng: Range) -> Any:
            if rng is None:
                return None
            if isinstance(rng, SuffixRange):
                return SuffixByteRequest(rng.length)
            return RangeByteRequest(rng.start, rng.start + rng.length)

        async def get_all() -> list[Any]:
            return await asyncio.gather(
                *(self.store.get(k, prototype=proto, byte_range=request(r)) for k, r in zip(keys, rngs, strict=True)),
                return_exceptions=True,
            )

        results = sync(get_all())
        out: list[Buffer | None] = []
        for key, rng, res in zip(keys, rngs, results, strict=True):
            if isinstance(res, BaseException):
                raise FetchError(f"{self.store_id}: reading {key!r} failed: {res}", key=key) from res
            if res is None:
                out.append(None)
                continue
            data = res.to_bytes()
            want = rng.length if isinstance(rng, (ByteRange, SuffixRange)) else None
            if want is not None and len(data) != want:
                raise RangeNotSatisfiableError(
                    f"{self.store_id}: range read of {key!r} returned {len(data)} bytes, expected {want}", key=key
                )
            out.append(data)
        return out

    def __repr__(self) -> str:
        return f"ZarrStoreFetcher({self.store_id!r})"
