"""Chunk coordinates → encoded chunk bytes: key encoding, shard indexes, range coalescing.

This is the layer between the planner and a :class:`~gpuzarr.storage.base.ChunkFetcher`.
For a plain array a chunk is one store key. For a sharded array the planner works on
the *inner* chunk grid; this reader maps each inner chunk to its shard key, reads the
shard index once (then keeps it in a bounded cache), and fetches only the byte ranges
of the inner chunks it needs, merging ranges that touch into one read. An optional
encoded-chunk cache (e.g. :class:`gpuzarr.storage.cache.PinnedLRUCache`) sits in front of the
fetcher here, so every engine benefits from it.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gpuzarr.codecs.chain import DecodeChain, build_decode_chain, build_v2_decode_chain
from gpuzarr.errors import CorruptChunkError, RangeNotSatisfiableError, UnsupportedCodecError
from gpuzarr.plan.planner import unique_rows
from gpuzarr.storage.base import Buffer, ByteRange, ChunkFetcher, DeferredRead, DeferredReads, SuffixRange

if TYPE_CHECKING:
    from gpuzarr.storage.buffers import DeviceBatch

_MAX_UINT64 = np.uint64(2**64 - 1)
#: a shard index not in the cache (a cached None is a shard that does not exist)
_NOT_CACHED = object()


class EncodedChunkCache(Protocol):
    """What the reader needs of a cache of encoded chunk bytes (see :mod:`gpuzarr.storage.cache`)."""

    def get_many(self, keys: Sequence[tuple[str, str, str]]) -> list[Buffer | None]: ...

    def put_many(self, items: Sequence[tuple[tuple[str, str, str], Buffer]]) -> None: ...

    def contains_many(self, keys: Sequence[tuple[str, str, str]]) -> list[bool]: ...


def _key_format(metadata: Any, prefix: str) -> str | None:
    """A ``%``-format that turns a coordinate tuple into the store key, or None to ask zarr each time.

    Found by encoding a probe coordinate with zarr's own ``encode_chunk_key`` and
    replacing its numbers with ``%d``, then checked on a second coordinate; one string
    format per chunk instead of zarr's encoder (the default and v2 encodings both pass).
    """
    try:
        ndim = len(metadata.shape)
        probe = tuple(7_000_000_001 + 1_000 * d for d in range(ndim))
        key = prefix.replace("%", "%%") + metadata.encode_chunk_key(probe).replace("%", "%%")
        for value in probe:
            if key.count(str(value)) != 1:
                return None
            key = key.replace(str(value), "%d")
        check = tuple(3 + 11 * d for d in range(ndim))
        if key % check != prefix + metadata.encode_chunk_key(check):
            return None
        return key
    except Exception:  # noqa: BLE001 - any surprise: fall back to zarr's encoder
        return None


class ChunkKeys(Sequence[str]):
    """Keys of a batch's chunks, each built only when it is read (in practice: by an error message)."""

    __slots__ = ("_coords", "_reader")

    def __init__(self, reader: ChunkReader, coords: np.ndarray) -> None:
        self._reader = reader
        self._coords = coords

    def __len__(self) -> int:
        return len(self._coords)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self._reader.chunk_keys(self._coords[index])
        return self._reader.chunk_keys(self._coords[index : index + 1 if index != -1 else None])[0]

    def __iter__(self) -> Any:  # all of them (e.g. the GPU engine's batch parser): built in one go
        return iter(self._reader.chunk_keys(self._coords))


@dataclass(frozen=True, slots=True)
class ShardLayout:
    """How inner chunks sit inside shards."""

    shard_shape: tuple[int, ...]
    chunks_per_shard: tuple[int, ...]
    index_location: str  # "start" | "end"
    index_nbytes: int
    index_chain: DecodeChain


def check_shard_index(index: np.ndarray, layout: ShardLayout, key: str, array_name: str) -> None:
    """Raise :class:`CorruptChunkError` unless every entry of a decoded shard index is empty or a plausible range.

    ``index`` is ``(*chunks_per_shard, 2)`` uint64. The spec's empty entry is *both* fields
    2**64-1; one of them alone is corruption (read as empty it would silently return fill
    values). A range must fit in a signed 64-bit offset, and with the index at the start it
    cannot overlap the index. Ranges past the end of the shard are found when they are read.
    One vectorised pass per index; the message names the array, the shard key and the first
    bad inner chunk.
    """
    offset, length = index[..., 0], index[..., 1]
    off_max, len_max = offset == _MAX_UINT64, length == _MAX_UINT64
    used = ~(off_max & len_max)
    limit = np.uint64(2**63 - 1)
    beyond = (offset > limit) | (length > limit) | (offset > limit - np.minimum(length, limit))  # never wraps
    bad = (off_max ^ len_max) | (used & beyond)
    if layout.index_location == "start":
        bad |= used & (offset < np.uint64(layout.index_nbytes))
    if not bad.any():
        return
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    o, n = int(offset[where]), int(length[where])
    if (o == 2**64 - 1) != (n == 2**64 - 1):
        why = "only one of its fields is the 'empty' marker 2**64-1 (an empty entry has both)"
    elif o < layout.index_nbytes and layout.index_location == "start" and not beyond[where]:
        why = f"it overlaps the shard index (the first {layout.index_nbytes} bytes)"
    else:
        why = "it reaches beyond any possible shard"
    raise CorruptChunkError(
        f"{array_name}: shard index of {key!r} is corrupt: inner chunk {where} has offset {o} and "
        f"length {n}; {why} ({int(bad.sum())} bad entries in this index)",
        array=array_name, key=key,
    )


class ChunkReader:
    """Reads the encoded bytes of chunks (by grid coordinates) of one array."""

    def __init__(
        self,
        fetcher: ChunkFetcher,
        metadata: Any,
        array_path: str,
        array_name: str,
        *,
        cache: EncodedChunkCache | None = None,
        shard: ShardLayout | None = None,
        coalesce_gap: int = 0,
        shard_index_cache_size: int = 4096,
    ) -> None:
        self.fetcher = fetcher
        self.metadata = metadata
        self.prefix = f"{array_path}/" if array_path else ""
        self.array_path = array_path
        self.array_name = array_name
        self.cache = cache
        self.shard = shard
        self.coalesce_gap = coalesce_gap
        self._index_cache: OrderedDict[tuple[int, ...], np.ndarray | None] = OrderedDict()
        self._index_cache_size = shard_index_cache_size
        self._index_lock = threading.Lock()
        self._key_format = _key_format(metadata, self.prefix)

    # ----------------------------------------------------------------- keys
    def _store_key(self, coords: Sequence[int]) -> str:
        fmt = self._key_format
        if fmt is not None:
            return fmt % tuple(coords)
        return self.prefix + self.metadata.encode_chunk_key(tuple(int(c) for c in coords))

    def store_keys(self, coords: np.ndarray) -> list[str]:
        """Store keys (prefix included) of the objects at grid ``coords`` (shards for a sharded array)."""
        fmt = self._key_format
        if fmt is not None:
            return [fmt % tuple(c) for c in coords.tolist()]
        return [self._store_key(c) for c in coords.tolist()]

    def chunk_keys(self, coords: np.ndarray) -> list[str]:
        """Human-readable keys of chunks (inner chunks name their shard and position)."""
        if self.shard is None:
            return self.store_keys(coords)
        cps = np.asarray(self.shard.chunks_per_shard, dtype=np.int64)
        return [
            f"{self._store_key(s)}[inner {tuple(i)}]"
            for s, i in zip((coords // cps).tolist(), (coords % cps).tolist(), strict=True)
        ]

    def lazy_chunk_keys(self, coords: np.ndarray) -> ChunkKeys:
        """:meth:`chunk_keys` as a sequence that builds a key only when one is read (an error message)."""
        return ChunkKeys(self, coords)

    # ----------------------------------------------------------------- reads
    def cached(self, coords: np.ndarray) -> list[bool]:
        """Whether each chunk at ``coords`` is in the encoded-chunk cache (all False without one)."""
        if self.cache is None or len(coords) == 0:
            return [False] * len(coords)
        store_id = self.fetcher.cache_identity
        return self.cache.contains_many([(store_id, self.array_path, k) for k in self.chunk_keys(coords)])

    def read(self, coords: np.ndarray, *, deferred: bool = False,
             to_device: bool = False) -> list[Buffer | None] | DeferredReads | DeviceBatch:
        """Encoded bytes of each chunk at ``coords`` (U, ndim); ``None`` = never written.

        With ``deferred=True`` (the CPU engine) the plain chunks of a fetcher that reads into
        buffers come back as one :class:`~gpuzarr.storage.base.DeferredReads` for the
        decoding threads to load.
        With ``to_device=True`` (the GPU engine, for chains it takes that way) and a fetcher
        that reads into GPU memory (kvikio), the whole batch comes back as one
        :class:`~gpuzarr.storage.buffers.DeviceBatch`, never touching host memory. Both only for
        unsharded arrays without a cache (a cache holds host bytes to reuse).
        """
        if len(coords) == 0:
            return []
        if self.cache is None and self.shard is None:
            if to_device and self.fetcher.reads_to_device:
                return self.fetcher.fetch_device(self.store_keys(coords))
            if deferred and self.fetcher.reads_into_buffers:
                return DeferredReads(self.fetcher, self.store_keys(coords))
        if self.cache is None and deferred and self.fetcher.reads_into_buffers:  # sharded
            return self._deferred_inner_chunks(coords)
        cache_keys = None
        missing_idx = np.arange(len(coords))
        out: list[Buffer | None] = [None] * len(coords)
        if self.cache is not None:
            store_id = self.fetcher.cache_identity
            cache_keys = [(store_id, self.array_path, k) for k in self.chunk_keys(coords)]
            hits = self.cache.get_many(cache_keys)
            missing = [i for i, h in enumerate(hits) if h is None]
            for i, h in enumerate(hits):
                out[i] = h
            missing_idx = np.asarray(missing, dtype=np.int64)
            if missing_idx.size == 0:
                return out
        sub = coords[missing_idx]
        fetched = self._read_uncached(sub)
        for i, data in zip(missing_idx.tolist(), fetched, strict=True):
            out[i] = data
        if self.cache is not None and cache_keys is not None:
            self.cache.put_many([(cache_keys[i], d) for i, d in zip(missing_idx.tolist(), fetched, strict=True)
                                 if d is not None])
        return out

    def _read_uncached(self, coords: np.ndarray) -> list[Buffer | None]:
        if self.shard is None:
            return self.fetcher.fetch(self.store_keys(coords))
        return self._read_inner_chunks(coords)

    # ------------------------------------------------------------- sharding
    def shard_indexes(self, shard_coords: np.ndarray) -> list[np.ndarray | None]:
        """Decoded shard indexes (``(*chunks_per_shard, 2)`` uint64), read once then cached."""
        assert self.shard is not None
        layout = self.shard
        keys = list(map(tuple, shard_coords.tolist()))
        with self._index_lock:
            cache = self._index_cache
            found_all = list(map(cache.get, keys, repeat(_NOT_CACHED, len(keys))))
            if not any(index is _NOT_CACHED for index in found_all):  # every index cached: touch them (LRU), done
                deque(map(cache.move_to_end, keys), maxlen=0)
                return found_all
            todo = [k for k in dict.fromkeys(keys) if k not in cache]
            deque(map(cache.move_to_end, (k for k, index in zip(keys, found_all) if index is not _NOT_CACHED)),
                  maxlen=0)
        store_keys = [self._store_key(k) for k in todo]
        rng = ByteRange(0, layout.index_nbytes) if layout.index_location == "start" else SuffixRange(layout.index_nbytes)
        raws = self._fetch_shard_ranges(store_keys, [rng] * len(todo))
        decoded: list[np.ndarray | None] = []
        for key, raw in zip(store_keys, raws, strict=True):
            if raw is None:
                decoded.append(None)
                continue
            try:
                index = layout.index_chain.decode(raw, key=key, array=self.array_name)
            except CorruptChunkError as exc:
                raise CorruptChunkError(
                    f"{self.array_name}: shard index of {key!r} is corrupt: {exc}", array=self.array_name, key=key
                ) from exc
            entries = np.asarray(index, dtype=np.uint64).reshape(*layout.chunks_per_shard, 2)
            check_shard_index(entries, layout, key, self.array_name)
            decoded.append(entries)
        with self._index_lock:
            for k, idx in zip(todo, decoded, strict=True):
                cache[k] = idx
                cache.move_to_end(k)
            while len(cache) > self._index_cache_size:
                cache.popitem(last=False)
        # what was cached when this call looked, and what it read: an index evicted since (by this
        # call's own inserts into a small cache, or another thread's) is still here
        found = {k: index for k, index in zip(keys, found_all, strict=True) if index is not _NOT_CACHED}
        found.update(zip(todo, decoded, strict=True))
        return [found[k] for k in keys]

    def _fetch_shard_ranges(self, keys: list[str], ranges: list[Any]) -> list[Buffer | None]:
        """Fetch byte ranges of shards; a range past a shard's end means the shard is truncated."""
        try:
            return self.fetcher.fetch(keys, ranges)
        except RangeNotSatisfiableError as exc:
            raise self._truncated(exc) from exc

    def _truncated(self, exc: RangeNotSatisfiableError) -> CorruptChunkError:
        return CorruptChunkError(
            f"{self.array_name}: shard {exc.key!r} is truncated or its index points past its end: {exc}",
            array=self.array_name,
            key=exc.key,
        )

    def _inner_past_end(self, exc: RangeNotSatisfiableError, inner: np.ndarray, start: int,
                        length: int) -> CorruptChunkError:
        """An inner chunk whose index entry reaches past the end of its shard."""
        where = tuple(int(i) for i in inner)
        return CorruptChunkError(
            f"{self.array_name}: shard {exc.key!r} is truncated or its index points past its end: inner chunk "
            f"{where} has offset {start} and length {length}: {exc}",
            array=self.array_name, key=exc.key,
        )

    def _shard_vanished(self, key: str) -> CorruptChunkError:
        """A shard whose index was read but whose chunks are gone."""
        return CorruptChunkError(f"{self.array_name}: shard {key!r} disappeared between reading its index and its "
                                 "chunks", array=self.array_name, key=key)

    def _inner_chunk_extents(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                                np.ndarray, np.ndarray]:
        """Where each inner chunk lies: ``(uniq, inverse, inner, offsets, lengths, present)``.

        ``uniq`` are the distinct shard coordinates, ``inverse`` the shard of each chunk,
        ``inner`` its coordinates inside the shard, ``offsets``/``lengths`` its bytes in
        the shard from the (checked, cached) shard index, ``present`` False for an empty
        entry or a missing shard.
        """
        assert self.shard is not None
        per_axis = tuple(int(c) for c in self.shard.chunks_per_shard)
        cps = np.asarray(per_axis, dtype=np.int64)
        shard_coords = coords // cps
        inner = coords % cps
        uniq, inverse = unique_rows(shard_coords)
        indexes = self.shard_indexes(uniq)
        # every shard's index as rows of one table (a missing shard: empty entries), then one gather
        per_shard = math.prod(per_axis)
        if any(index is None for index in indexes):
            empty = np.empty((per_shard, 2), dtype=np.uint64)
            empty[:, 0], empty[:, 1] = _MAX_UINT64, 0
            indexes = [empty if index is None else index for index in indexes]
        table = np.concatenate(indexes, axis=None).reshape(-1, 2) if indexes else np.empty((0, 2), dtype=np.uint64)
        inner_strides = np.asarray([math.prod(per_axis[d + 1:]) for d in range(len(per_axis))], dtype=np.int64)
        entries = table[inverse * per_shard + inner @ inner_strides]
        offsets = entries[:, 0]
        lengths = entries[:, 1]
        present = offsets != _MAX_UINT64
        return uniq, inverse, inner, offsets, lengths, present

    def _deferred_inner_chunks(self, coords: np.ndarray) -> DeferredShardReads:
        """The inner chunks as byte ranges of their shards, each read later by the thread that decodes it."""
        uniq, inverse, inner, offsets, lengths, present = self._inner_chunk_extents(coords)
        shard_keys = self.store_keys(uniq)
        shard_of = np.where(present, inverse, -1)
        return DeferredShardReads(self, shard_keys, shard_of, np.where(present, offsets, 0).astype(np.int64),
                                  lengths.astype(np.int64), inner)

    def _read_inner_chunks(self, coords: np.ndarray) -> list[Buffer | None]:
        uniq, inverse, inner, offsets, lengths, present = self._inner_chunk_extents(coords)
        n = len(coords)
        out: list[Buffer | None] = [None] * n
        idx = np.flatnonzero(present)
        if idx.size == 0:
            return out
        starts = offsets[idx].astype(np.int64)
        lens = lengths[idx].astype(np.int64)
        shard_of = inverse[idx]
        order = np.lexsort((starts, shard_of))
        idx, starts, lens, shard_of = idx[order], starts[order], lens[order], shard_of[order]
        ends = starts + lens
        # a new read starts where the shard changes or the gap to the previous range is too big
        prev_end = np.maximum.accumulate(ends)
        new_group = np.ones(len(idx), dtype=bool)
        new_group[1:] = (shard_of[1:] != shard_of[:-1]) | (starts[1:] > prev_end[:-1] + self.coalesce_gap)
        group_id = np.cumsum(new_group) - 1
        g_first = np.flatnonzero(new_group)
        g_start = starts[g_first]
        g_end = np.maximum.reduceat(ends, g_first)
        g_keys = [self._store_key(uniq[s]) for s in shard_of[g_first].tolist()]
        try:
            blobs = self.fetcher.fetch(g_keys, [ByteRange(int(a), int(b - a))
                                                for a, b in zip(g_start, g_end, strict=True)])
        except RangeNotSatisfiableError as exc:
            # name the inner chunk of that shard whose range reaches furthest: the index points past the end
            mine = np.asarray([g_keys[g] == exc.key for g in group_id.tolist()], dtype=bool)
            if not mine.any():
                raise self._truncated(exc) from exc
            far = int(np.flatnonzero(mine)[np.argmax(ends[mine])])
            raise self._inner_past_end(exc, inner[idx[far]], int(starts[far]), int(lens[far])) from exc
        for key, blob in zip(g_keys, blobs, strict=True):
            if blob is None:
                raise self._shard_vanished(key)
        views = [memoryview(b) for b in blobs]  # type: ignore[arg-type]
        rel = starts - g_start[group_id]
        for pos, g, r, ln in zip(idx.tolist(), group_id.tolist(), rel.tolist(), lens.tolist(), strict=True):
            out[pos] = views[g][r : r + ln]
        return out


class DeferredShardReads(DeferredReads):
    """Inner chunks of a batch as byte ranges of their shards, read by the decoding threads.

    The shard indexes were read (and checked) when the batch was planned for reading;
    each entry is then one ``pread`` of ``(shard key, offset, length)`` by the thread
    that decodes it, so no thread hand-off and no intermediate copy per inner chunk. An
    index that points past the end of its shard, or a shard removed since its index was
    read, is a :class:`CorruptChunkError` naming the array, shard and inner chunk.
    """

    __slots__ = ("inner", "lengths", "reader", "shard_keys", "shard_of", "starts")

    def __init__(self, reader: ChunkReader, shard_keys: list[str], shard_of: np.ndarray, starts: np.ndarray,
                 lengths: np.ndarray, inner: np.ndarray) -> None:
        """``shard_keys``: the distinct shards; ``shard_of``: each inner chunk's shard among them (-1: not written);
        ``starts``/``lengths``: each inner chunk's bytes in its shard (int64)."""
        named = [*shard_keys, None]  # position -1: no shard to read
        super().__init__(reader.fetcher, list(map(named.__getitem__, shard_of.tolist())))  # type: ignore[arg-type]
        self.shard_keys = shard_keys
        self.shard_of = shard_of
        self.reader = reader
        self.starts = starts
        self.lengths = lengths
        self.inner = inner

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self.keys))[index]]
        key = self.keys[index]
        return None if key is None else DeferredRead(self.fetcher, key, int(self.starts[index]),
                                                     int(self.lengths[index]))

    def key_table(self) -> tuple[list[str], np.ndarray]:
        return self.shard_keys, self.shard_of

    def load(self, index: int, buffer_for: Any) -> memoryview | None:
        key = self.keys[index]
        if key is None:
            return None
        start, length = int(self.starts[index]), int(self.lengths[index])
        try:
            data = self.fetcher.read_into(key, buffer_for, ByteRange(start, length))
        except RangeNotSatisfiableError as exc:
            raise self.reader._inner_past_end(exc, self.inner[index], start, length) from exc
        if data is None:
            raise self.reader._shard_vanished(key)
        return data


def decode_layout(codecs: tuple[Any, ...], chunk_spec: Any, array_name: str) -> tuple[DecodeChain, ShardLayout | None]:
    """Decode chain of the units read (inner chunks when sharded) and the shard layout (``None`` if not sharded).

    ``chunk_spec`` is zarr's ``ArraySpec`` of one stored chunk (a whole shard when
    sharded). Only zarr's public API is used: the shard index is a ``(*chunks_per_shard,
    2)`` little-endian uint64 array, and its stored size is what the sharding codec adds
    to a shard's payload (``compute_encoded_size(0, ...)``). The one place the array
    handle and the zarr codec-pipeline plug-in turn codecs into a read layout.
    """
    from zarr.codecs import ShardingCodec
    from zarr.core.array_spec import ArraySpec
    from zarr.dtype import UInt64

    def spec(shape: tuple[int, ...], dtype: Any, fill: Any) -> Any:
        return ArraySpec(shape=shape, dtype=dtype, fill_value=fill, config=chunk_spec.config,
                         prototype=chunk_spec.prototype)

    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        sc = codecs[0]
        shard_shape = tuple(int(s) for s in chunk_spec.shape)
        inner = tuple(int(c) for c in sc.chunk_shape)
        if len(inner) != len(shard_shape) or any(i <= 0 or s % i for s, i in zip(shard_shape, inner, strict=True)):
            raise UnsupportedCodecError(f"{array_name}: shard shape {shard_shape} is not a multiple of {inner}")
        cps = tuple(s // i for s, i in zip(shard_shape, inner, strict=True))
        if any(isinstance(c, ShardingCodec) for c in sc.codecs):
            raise UnsupportedCodecError(f"{array_name}: nested sharding is not supported")
        chain = build_decode_chain(tuple(sc.codecs), spec(inner, chunk_spec.dtype, chunk_spec.fill_value), array_name)
        index_spec = spec((*cps, 2), UInt64(endianness="little"), np.iinfo(np.uint64).max)
        layout = ShardLayout(
            shard_shape=shard_shape,
            chunks_per_shard=cps,
            index_location=str(getattr(sc.index_location, "value", sc.index_location)),
            index_nbytes=int(sc.compute_encoded_size(0, chunk_spec)),
            index_chain=build_decode_chain(tuple(sc.index_codecs), index_spec, array_name),
        )
        return chain, layout
    if any(isinstance(c, ShardingCodec) for c in codecs):
        raise UnsupportedCodecError(f"{array_name}: sharding combined with other codecs outside it is not supported")
    return build_decode_chain(codecs, chunk_spec, array_name), None


def make_chunk_reader(
    fetcher: ChunkFetcher, metadata: Any, array_path: str, array_name: str, *, cache: Any = None
) -> tuple[ChunkReader, DecodeChain, tuple[int, ...]]:
    """Reader, decode chain and read-grid chunk shape for a Zarr array (v3: inner grid if sharded; or v2).

    Zarr v2 arrays map onto the same chain (see :func:`build_v2_decode_chain`); their
    chunk keys use the array's ``dimension_separator`` through zarr's own metadata.
    """
    from zarr.core.array_spec import ArrayConfig, ArraySpec
    from zarr.core.buffer import default_buffer_prototype

    if metadata.zarr_format == 2:
        chain = build_v2_decode_chain(metadata, array_name)
        return make_reader_for(fetcher, metadata, array_path, array_name, cache, None), chain, chain.chunk_shape
    grid = metadata.chunk_grid
    chunk_shape = getattr(grid, "chunk_shape", None)
    if chunk_shape is None:
        raise UnsupportedCodecError(f"{array_name}: chunk grid {type(grid).__name__} is not supported (regular grids only)")
    chunk_shape = tuple(int(c) for c in chunk_shape)
    chunk_spec = ArraySpec(shape=chunk_shape, dtype=metadata.data_type, fill_value=metadata.fill_value,
                           config=ArrayConfig.from_dict({}), prototype=default_buffer_prototype())
    chain, layout = decode_layout(tuple(metadata.codecs), chunk_spec, array_name)
    reader = make_reader_for(fetcher, metadata, array_path, array_name, cache, layout)
    return reader, chain, chain.chunk_shape if layout is not None else chunk_shape


def make_reader_for(
    fetcher: ChunkFetcher, metadata: Any, array_path: str, array_name: str, cache: Any, shard: ShardLayout | None
) -> ChunkReader:
    """A :class:`ChunkReader`, merging nearby inner-chunk ranges for remote stores only."""
    remote = not fetcher.store_id.startswith("file://")
    return ChunkReader(fetcher, metadata, array_path, array_name, cache=cache, shard=shard,
                       coalesce_gap=(1 << 16) if remote else 0)
