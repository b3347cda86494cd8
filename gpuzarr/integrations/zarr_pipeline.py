"""zarr-python codec-pipeline plug-in: gpuzarr's plan and engines under ``zarr.open_array(...)[...]``.

Enable it for every array zarr-python opens (xarray and dask included)::

    import zarr
    zarr.config.set({"codec_pipeline.path": "gpuzarr.GpuzarrCodecPipeline"})

zarr hands a pipeline's :meth:`~GpuzarrCodecPipeline.read` one batch per selection:
``(byte_getter, chunk_spec, chunk_selection, out_selection, is_complete)`` for every
stored chunk (or shard) the selection touches. This pipeline turns the batch into one
:class:`~gpuzarr.plan.planner.BatchPlan` over the chunks that are decoded (the inner
chunks of a shard: each shard's index is read, then only the byte ranges of the inner
chunks the selection touches, through the store's own ``get_ranges``), fetches the encoded
bytes concurrently through the byte getters (any zarr store: local, memory, zip, fsspec,
obstore, Icechunk sessions), and runs the plan through gpuzarr's engine:

* host output (the default): :class:`~gpuzarr.engines.cpu.CpuEngine` decodes every chunk
  once in its thread pool with :class:`~gpuzarr.codecs.chain.DecodeChain` (only the Blosc
  blocks the selection touches) and copies the pieces straight into zarr's output;
* GPU output (``zarr.config.enable_gpu()``: the output is CuPy): the GPU engine decodes
  into device memory and gathers into the CuPy output.

Selections made of integers and step-1 slices (``a[...]``, crops) are planned as one
region: pieces land directly in zarr's output. Any other selection (strides, orthogonal,
coordinate and mask indexing) is planned per chunk as the bounding box of its
selection; the engine fills that box and NumPy (or CuPy) applies zarr's own
chunk/out selections to it. Writes and the per-chunk ``encode``/``decode`` API are
zarr's own :class:`~zarr.core.codec_pipeline.BatchedCodecPipeline`.

Anything gpuzarr cannot decode (a codec, a data type, an output buffer type) is read by
zarr's ``BatchedCodecPipeline`` instead, with one :class:`PipelineFallbackWarning` per
reason and process; with ``codec_pipeline.strict`` set it is a
:class:`PipelineUnsupportedError` instead. Settings live in zarr's config:

=====================================  ===============================================
key                                    meaning
=====================================  ===============================================
``codec_pipeline.strict``              raise instead of falling back (default False)
``threading.max_workers``              decode threads (else ``codec_pipeline.max_workers``,
                                       else gpuzarr's ``threads`` setting)
``codec_pipeline.inline_max_bytes``    reads from LocalStore/MemoryStore decoding at most
                                       this many bytes run on the calling thread, without
                                       thread hand-offs (default 1 MiB; 0: never)
``array.sharding_coalesce_*``          how the inner-chunk ranges of one shard merge into
                                       reads (zarr's own settings, passed to the store's
                                       ``get_ranges``, as zarr's sharding codec does)
=====================================  ===============================================

The pipeline pickles as its codecs (dask sends it to worker processes) and keeps no
process-bound state: the engines rebuild their thread pools in a forked child.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from zarr.abc.codec import CodecPipeline, GetResult
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.config import config as zarr_config

from gpuzarr.codecs.chain import DecodeChain
from gpuzarr.engines import compiled
from gpuzarr.errors import CorruptChunkError, GpuzarrError, GpuzarrWarning, UnsupportedCodecError
from gpuzarr.plan.layout import chunk_strides
from gpuzarr.plan.planner import BatchPlan
from gpuzarr.storage.base import DeferredRead, DeferredReads
from gpuzarr.storage.reader import ShardLayout, check_shard_index, decode_layout

__all__ = ["GpuzarrCodecPipeline", "PipelineFallbackWarning", "PipelineUnsupportedError", "read_stats"]

_EMPTY = np.uint64(2**64 - 1)
_PRESENT: GetResult = {"status": "present"}
_MISSING: GetResult = {"status": "missing"}


class PipelineFallbackWarning(GpuzarrWarning):
    """A read went to zarr's own pipeline because gpuzarr cannot do it (said once per reason)."""


class PipelineUnsupportedError(GpuzarrError, NotImplementedError):
    """``codec_pipeline.strict`` is set and a read needs something gpuzarr cannot do."""


class _Unsupported(Exception):
    """Internal: this batch goes to zarr's pipeline; the message is the reason."""


_warned: set[str] = set()
_warned_lock = threading.Lock()
_stats: dict[str, int] = {"reads": 0, "chunks": 0, "fallback_reads": 0}


def read_stats() -> dict[str, int]:
    """What this process's pipelines did: ``reads`` (batches gpuzarr read), ``chunks`` (stored chunks or
    shards in them) and ``fallback_reads`` (batches handed to zarr's pipeline). A copy."""
    with _warned_lock:
        return dict(_stats)


def _count(**kw: int) -> None:
    with _warned_lock:
        for k, v in kw.items():
            _stats[k] += v


def _reset_after_fork() -> None:  # pragma: no cover - runs in forked children
    global _warned_lock, _engines_lock
    _warned_lock = threading.Lock()
    _engines_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _fall_back(reason: str) -> None:
    """Raise under ``codec_pipeline.strict``, else warn once per reason and process."""
    if zarr_config.get("codec_pipeline.strict", False):
        raise PipelineUnsupportedError(f"GpuzarrCodecPipeline cannot read this: {reason} (codec_pipeline.strict is set)")
    with _warned_lock:
        if reason in _warned:
            return
        _warned.add(reason)
    warnings.warn(f"GpuzarrCodecPipeline: {reason}; reading through zarr's BatchedCodecPipeline instead",
                  PipelineFallbackWarning, stacklevel=3)


def _workers() -> int | None:
    """zarr's own thread setting, when one is given (else gpuzarr's shared CPU pool is used)."""
    for key in ("threading.max_workers", "codec_pipeline.max_workers"):
        value = zarr_config.get(key, None)
        if value:
            try:
                return max(1, int(value))
            except (TypeError, ValueError):
                continue
    return None


_engines: dict[int, Any] = {}
_engines_lock = threading.Lock()


def _cpu_engine(workers: int | None = None) -> Any:
    """A CPU engine with ``workers`` (default: zarr's thread setting) threads, one per count and process;
    without either, gpuzarr's shared one (the ``threads`` budget)."""
    from gpuzarr.engines.base import resolve_engine
    from gpuzarr.engines.cpu import CpuEngine

    n = workers or _workers()
    if n is None:
        return resolve_engine("cpu")  # the `threads` budget, shared with every other gpuzarr read
    with _engines_lock:
        engine = _engines.get(n)
        if engine is None:
            engine = _engines[n] = CpuEngine(workers=n)
        return engine


@dataclass(frozen=True, slots=True)
class _Layout:
    """How the chunks one ``chunk_spec`` describes are stored: the chain of a decoded unit, the shard layout."""

    chain: DecodeChain  # decodes one (inner) chunk
    shard: ShardLayout | None  # None: a stored chunk is one decoded unit


def _compile(codecs: tuple[Any, ...], spec: Any) -> _Layout:
    """The decode layout of chunks of ``spec`` under ``codecs``; UnsupportedCodecError says why not.

    Array→array codecs that change the data type or shape (``FixedScaleOffset`` with
    ``astype``, ``AsType``, ``cast_value``, ``scale_offset``, ``PackBits``, ...) decode in
    :class:`DecodeChain`, which tracks each step's dtype and shape. The chain decodes on the
    host: the zarr codecs it runs get host buffers (zarr's CPU prototype) even when zarr's
    default buffers are CuPy (``enable_gpu()``).
    """
    import dataclasses

    from zarr.core.buffer.cpu import buffer_prototype

    if spec.prototype is not buffer_prototype:
        spec = dataclasses.replace(spec, prototype=buffer_prototype)
    return _Layout(*decode_layout(codecs, spec, "array"))


def _is_box(chunk_sel: Any, out_sel: Any, ndim: int, out_ndim: int) -> bool:
    """Whether a chunk's selection is integers and step-1 slices mapped onto step-1 slices of ``out``."""
    if not isinstance(chunk_sel, tuple) or len(chunk_sel) != ndim or not isinstance(out_sel, tuple):
        return False
    n_int = 0
    for s in chunk_sel:
        if isinstance(s, slice):
            if s.step not in (None, 1) or s.start is None or s.stop is None:
                return False
        elif isinstance(s, int | np.integer):
            n_int += 1
        else:
            return False
    if len(out_sel) != out_ndim or ndim - n_int != out_ndim:
        return False
    return all(isinstance(s, slice) and s.step in (None, 1) for s in out_sel)


def _bounds(sel: Any, shape: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Per-axis [lo, hi) of the elements a zarr chunk selection reads (its bounding box)."""
    items = sel if isinstance(sel, tuple) else (sel,)
    items = items + (slice(None),) * (len(shape) - len(items))
    lo, hi = [], []
    for s, n in zip(items, shape, strict=True):
        if isinstance(s, slice):
            a, b, step = s.indices(n)
            if step > 0:
                count = max(0, -(-(b - a) // step))
                lo.append(a)
                hi.append(a + (count - 1) * step + 1 if count else a)
            else:  # pragma: no cover - zarr never passes negative steps
                lo.append(0)
                hi.append(n)
        elif isinstance(s, int | np.integer):
            lo.append(int(s))
            hi.append(int(s) + 1)
        else:
            arr = np.asarray(s)
            if arr.dtype == bool or arr.size == 0:
                lo.append(0)
                hi.append(n)
            else:
                lo.append(int(arr.min()))
                hi.append(int(arr.max()) + 1)
    return lo, hi


def _shift(sel: Any, lo: Sequence[int], ndim: int) -> Any:
    """``sel`` relative to a box starting at ``lo`` (boolean masks cover whole axes: unshifted)."""
    items = sel if isinstance(sel, tuple) else (sel,)
    items = items + (slice(None),) * (ndim - len(items))
    out = []
    for s, b in zip(items, lo, strict=True):
        if isinstance(s, slice):
            out.append(slice(None if s.start is None else s.start - b, None if s.stop is None else s.stop - b, s.step))
        elif isinstance(s, int | np.integer):
            out.append(int(s) - b)
        else:
            arr = np.asarray(s)
            out.append(arr if arr.dtype == bool else arr - b)
    return tuple(out)


_FEW_PIECES = 32  # up to this many pieces a Python walk beats a dozen NumPy calls on tiny arrays


def _pieces(lo: np.ndarray, hi: np.ndarray, unit: np.ndarray) -> tuple[np.ndarray, ...]:
    """Intersect each item's box [lo, hi) (N, d) with the unit grid: item, unit coords, src, offset, extent."""
    n, ndim = lo.shape
    if 0 < n <= _FEW_PIECES:
        few = _few_pieces(lo.tolist(), hi.tolist(), unit.tolist(), ndim)
        if few is not None:
            return few
    nonempty = (hi > lo).all(axis=1)
    c_lo = lo // unit
    c_hi = (np.maximum(hi, lo + 1) - 1) // unit
    counts = np.where(nonempty[:, None], c_hi - c_lo + 1, 0)
    if n == 0 or not nonempty.any():
        e1 = np.zeros(0, dtype=np.int64)
        e2 = np.zeros((0, ndim), dtype=np.int64)
        return e1, e2, e2, e2, e2
    if (counts <= 1).all():  # every item within one unit (unsharded, or a crop inside one inner chunk)
        item = np.flatnonzero(nonempty)
        coords = c_lo[item]
    else:
        grid = np.indices(tuple(int(m) for m in counts.max(axis=0)), dtype=np.int64).reshape(ndim, -1).T
        valid = (grid[None, :, :] < counts[:, None, :]).all(axis=2)
        item, g = np.nonzero(valid)
        coords = c_lo[item] + grid[g]
    base = coords * unit
    p_lo = np.maximum(lo[item], base)
    p_hi = np.minimum(hi[item], base + unit)
    return item, coords, p_lo - base, p_lo - lo[item], p_hi - p_lo


def _few_pieces(lo: list[list[int]], hi: list[list[int]], unit: list[int], ndim: int) -> tuple[np.ndarray, ...] | None:
    """:func:`_pieces` for a few items in plain Python (same pieces, same order); None past ``_FEW_PIECES``."""
    spans = []
    total = 0
    for l, h in zip(lo, hi, strict=True):
        if any(b <= a for a, b in zip(l, h, strict=True)):
            spans.append(None)
            continue
        span = [range(a // u, (b - 1) // u + 1) for a, b, u in zip(l, h, unit, strict=True)]
        count = 1
        for r in span:
            count *= len(r)
        total += count
        if total > _FEW_PIECES:
            return None
        spans.append(span)
    item: list[int] = []
    rows: list[list[int]] = []  # coords, src, offset, extent of each piece, concatenated
    for i, span in enumerate(spans):
        if span is None:
            continue
        l, h = lo[i], hi[i]
        for c in itertools.product(*span):
            base = [k * u for k, u in zip(c, unit, strict=True)]
            p_lo = [max(a, b) for a, b in zip(l, base, strict=True)]
            item.append(i)
            rows.append([*c, *(p - b for p, b in zip(p_lo, base, strict=True)),
                         *(p - a for p, a in zip(p_lo, l, strict=True)),
                         *(min(e, b + u) - p for e, b, u, p in zip(h, base, unit, p_lo, strict=True))])
    table = np.array(rows, dtype=np.int64).reshape(len(item), 4, ndim)
    return (np.array(item, dtype=np.int64), table[:, 0], table[:, 1], table[:, 2], table[:, 3])


class _LazyKeys(Sequence[str]):
    """Chunk keys of a job's pieces for error messages, built only when one is asked for."""

    __slots__ = ("_job",)

    def __init__(self, job: _Job) -> None:
        self._job = job

    def __len__(self) -> int:
        return len(self._job.piece_item)

    def __getitem__(self, u: int) -> str:  # type: ignore[override]
        job = self._job
        key = job._key(int(job.piece_item[u]))
        if job.layout.shard is None:
            return key
        return f"{key}[inner {tuple(job.piece_coords[u].tolist())}]"


class _GetterRead:
    """Adapter for :class:`DeferredRead`: the decoding thread reads one chunk through a sync byte getter."""

    __slots__ = ("getter", "missing", "prototype")

    def __init__(self, getter: Any, prototype: Any) -> None:
        self.getter = getter
        self.prototype = prototype
        self.missing = False

    def read_into(self, key: str, buffer_for: Any, byte_range: Any = None) -> memoryview | None:
        buf = self.getter.get_sync(prototype=self.prototype, byte_range=byte_range)
        if buf is None:
            self.missing = True
            return None
        return memoryview(buf.as_numpy_array())


class _LocalStoreReads:
    """A job's chunks or shards in a ``LocalStore``: their files for the CPU engine's compiled lane.

    The lane reads the files itself (``local_paths``: the store's root joined with the
    chunk's key, as ``LocalStore.get`` reads them); every chunk it leaves — missing,
    unreadable, corrupt, decoded in part — is read by the engine through ``read_into``,
    i.e. zarr's own getter, which also records the chunks that do not exist.
    """

    reads_into_buffers = True

    def __init__(self, root: str, keys: list[str], reads: list[_GetterRead]) -> None:
        self.root = root
        self.by_key = dict(zip(keys, reads, strict=True))

    def local_paths(self, keys: Sequence[str]) -> list[str]:
        return [os.path.join(self.root, k) for k in keys]

    def read_into(self, key: str, buffer_for: Any, byte_range: Any = None) -> memoryview | None:
        return self.by_key[key].read_into(key, buffer_for, byte_range)


class _ShardRangeReads(DeferredReads):
    """A job's inner chunks as byte ranges of ``LocalStore`` shard files (``keys[u]`` None: not written).

    The compiled lane reads each range itself (one ``open`` per shard, a ``pread`` or a
    mapping per inner chunk); a chunk it leaves is read through zarr's getter (``load``).
    """

    __slots__ = ("lengths", "starts")

    def __init__(self, files: _LocalStoreReads, keys: list[str | None], starts: list[int], lengths: list[int]) -> None:
        super().__init__(files, keys)  # type: ignore[arg-type]
        self.starts = starts
        self.lengths = lengths

    def __getitem__(self, index: Any) -> Any:
        raise TypeError("read the inner chunks with load()")

    def load(self, index: int, buffer_for: Any) -> memoryview | None:
        from zarr.abc.store import RangeByteRequest

        key = self.keys[index]
        if key is None:
            return None
        start = self.starts[index]
        return self.fetcher.read_into(key, buffer_for, RangeByteRequest(start, start + self.lengths[index]))


def _local_root(getter: Any) -> str | None:
    """The directory of a plain ``LocalStore`` behind ``getter`` (a subclass or wrapper: None)."""
    from zarr.storage import LocalStore
    from zarr.storage._common import StorePath

    if isinstance(getter, StorePath) and type(getter.store) is LocalStore:
        return str(getter.store.root)
    return None


def _supports_sync_get(getter: Any) -> bool:
    from zarr.abc.store import SyncByteGetter, _store_supports_sync_io
    from zarr.storage._common import StorePath

    if isinstance(getter, StorePath):
        return _store_supports_sync_io(getter.store)
    return isinstance(getter, SyncByteGetter)


def _view(buf: Any) -> memoryview | None:
    return None if buf is None else memoryview(buf.as_numpy_array())


class _Job:
    """One group of a read batch (one chunk layout): its plan, its fetches and its scatter."""

    def __init__(self, layout: _Layout, items: list[Any], out: Any, xp_out: Any, drop_axes: tuple[int, ...],
                 gpu: bool) -> None:
        from zarr.core.buffer.cpu import buffer_prototype

        self.layout = layout
        self.items = items
        self.out = xp_out  # the NumPy / CuPy array behind zarr's NDBuffer
        self.drop_axes = drop_axes
        self.gpu = gpu
        self.proto = buffer_prototype
        self.spec = items[0][1]
        self.chain = layout.chain
        stored_shape = layout.shard.shard_shape if layout.shard else self.chain.chunk_shape
        self.stored_shape = tuple(int(s) for s in stored_shape)
        ndim = len(self.stored_shape)
        self.ndim = ndim
        out = xp_out
        out_ndim = out.ndim
        self.box = (not drop_axes and out.dtype == self.chain.dtype
                    and all(_is_box(it[2], it[3], ndim, out_ndim) for it in items))
        if self.box and not gpu:
            # the engine writes through out.reshape(...): it must stay a view of zarr's output
            probe = out.reshape((1, *out.shape))
            self.box = bool(np.shares_memory(probe, out)) if out.size else True
        if self.box and gpu and not out.flags.c_contiguous:
            self.box = False
        self.status: list[GetResult] = [_PRESENT] * len(items)
        self._plan()

    # ---------------------------------------------------------------- planning
    def _plan(self) -> None:
        items, ndim = self.items, self.ndim
        n = len(items)
        lo = np.zeros((n, ndim), dtype=np.int64)
        hi = np.zeros((n, ndim), dtype=np.int64)
        if self.box:
            int_axes = tuple(d for d, s in enumerate(items[0][2]) if not isinstance(s, slice))
            kept = [d for d in range(ndim) if d not in int_axes]
            dst0 = np.zeros((n, ndim), dtype=np.int64)
            for i, (_, _, csel, osel, _) in enumerate(items):
                for d, s in enumerate(csel):
                    if isinstance(s, slice):
                        lo[i, d], hi[i, d] = s.start, s.stop
                    else:
                        lo[i, d], hi[i, d] = int(s), int(s) + 1
                for k, s in enumerate(osel):
                    dst0[i, kept[k]] = 0 if s.start is None else s.start
            region_shape = [1] * ndim
            for k, d in enumerate(kept):
                region_shape[d] = int(self.out.shape[k])
            self.squeeze_axes = int_axes
            self.region_shape = tuple(region_shape)
            self.n_regions = 1
        else:
            for i, it in enumerate(items):
                a, b = _bounds(it[2], self.stored_shape)
                lo[i], hi[i] = a, b
            dst0 = np.zeros((n, ndim), dtype=np.int64)
            self.squeeze_axes = ()
            region = (hi - lo).max(axis=0) if n else np.zeros(ndim, dtype=np.int64)
            if self.gpu and n:
                # the GPU gather writes every element of every region from the pieces (the planner's
                # contract): grow each box to the common region shape, inside its chunk (it fits: no box
                # is larger than the chunk), so the pieces cover each region
                lo = np.minimum(lo, np.asarray(self.stored_shape, dtype=np.int64) - region)
                hi = lo + region
            self.region_shape = tuple(int(x) for x in region)
            self.n_regions = n
        self.lo = lo
        self.hi = hi
        if self.layout.shard is None:  # a stored chunk is one unit: each item's (non-empty) box is its one piece
            ext = hi - lo
            item = np.flatnonzero((ext > 0).all(axis=1)) if n else np.zeros(0, dtype=np.int64)
            if len(item) < n:
                ext = ext[item]
            coords = np.zeros((len(item), ndim), dtype=np.int64)
            src, rel = lo[item], coords
        else:
            item, coords, src, rel, ext = _pieces(lo, hi, np.asarray(self.chain.chunk_shape, dtype=np.int64))
        self.piece_item = item
        self.piece_coords = coords  # inner-chunk coords within the shard (zeros when unsharded)
        dst = dst0[item] + rel
        region = np.zeros(len(item), dtype=np.int64) if self.box else item.astype(np.int64)
        u = len(item)
        self.plan = BatchPlan(
            array_shape=self.region_shape, chunk_shape=self.chain.chunk_shape, region_shape=self.region_shape,
            squeeze_axes=self.squeeze_axes, n_regions=self.n_regions,
            chunk_coords=np.zeros((u, ndim), dtype=np.int64), chunk_piece_offsets=np.arange(u + 1, dtype=np.int64),
            piece_chunk=np.arange(u, dtype=np.int64), piece_region=region, piece_src_start=src,
            piece_dst_start=dst, piece_extent=ext)

    def _key(self, i: int) -> str:
        getter = self.items[i][0]
        return str(getattr(getter, "path", getter))

    def _keys(self) -> Sequence[str]:
        return _LazyKeys(self)

    # ---------------------------------------------------------------- fetching
    def index_requests(self) -> list[tuple[Any, Any]]:
        from zarr.abc.store import RangeByteRequest, SuffixByteRequest

        shard = self.layout.shard
        assert shard is not None
        rng = (RangeByteRequest(0, shard.index_nbytes) if shard.index_location == "start"
               else SuffixByteRequest(shard.index_nbytes))
        return [(it[0], rng) for it in self.items]

    def shard_ranges(self, raw_indexes: list[Any]) -> list[tuple[int, list[int], list[Any]]]:
        """Decode the shard indexes: per present shard, its item, its planned units and their byte ranges."""
        from zarr.abc.store import RangeByteRequest

        shard = self.layout.shard
        assert shard is not None
        work = []
        flat = self.piece_coords @ chunk_strides(shard.chunks_per_shard)  # each piece's entry in its shard's index
        for i, raw in enumerate(raw_indexes):
            if raw is None:
                self.status[i] = _MISSING
                continue
            key = self._key(i)
            view = _view(raw)
            if view is None or len(view) < shard.index_nbytes:
                raise CorruptChunkError(f"shard {key!r} is {len(view) if view is not None else 0} bytes, too short "
                                        f"to hold its index of {shard.index_nbytes} bytes", key=key)
            try:
                index = shard.index_chain.decode(view, key=key, array="shard index")
            except CorruptChunkError as exc:
                raise CorruptChunkError(f"shard index of {key!r} is corrupt: {exc}", key=key) from exc
            index = np.asarray(index, dtype=np.uint64).reshape(-1, 2)
            # one field at 2**64-1 is corrupt, not empty: the one check the chunk reader makes too
            check_shard_index(index.reshape(*shard.chunks_per_shard, 2), shard, key, "shard index")
            members = np.flatnonzero(self.piece_item == i)
            if not members.size:
                continue
            entries = index[flat[members]]
            present = entries[:, 0] != _EMPTY
            members, entries = members[present], entries[present].astype(np.int64)
            if members.size:
                ranges = [RangeByteRequest(int(a), int(a + n)) for a, n in entries.tolist()]
                work.append((i, members.tolist(), ranges))
        return work

    def _place(self, units: list[Any], i: int, members: list[int], got: Any) -> None:
        """Put the buffers ``got`` ((index into members, Buffer | None) pairs) of shard ``i`` into ``units``."""
        for j, buf in got:
            units[members[j]] = _view(buf)

    def _ranges_sync(self, work: list[tuple[int, list[int], list[Any]]]) -> list[Any]:
        from zarr.abc.store import Store, _store_supports_sync_io

        units: list[Any] = [None] * len(self.piece_item)
        cfg = self.spec.config
        for i, members, ranges in work:
            getter = self.items[i][0]
            store = getattr(getter, "store", None)
            try:
                if isinstance(store, Store) and _store_supports_sync_io(store):
                    got = store.get_ranges_sync(getter.path, ranges, prototype=self.proto,
                                                max_gap_bytes=cfg.sharding_coalesce_max_gap_bytes,
                                                max_coalesced_bytes=cfg.sharding_coalesce_max_bytes)
                else:
                    got = [(j, getter.get_sync(prototype=self.proto, byte_range=r)) for j, r in enumerate(ranges)]
            except BaseExceptionGroup as eg:  # the shard vanished after its index was read: zarr reads it as missing
                _, rest = eg.split(FileNotFoundError)
                if rest is not None:
                    raise rest from None
                self.status[i] = _MISSING
                continue
            self._place(units, i, members, got)
        return units

    async def _ranges_async(self, work: list[tuple[int, list[int], list[Any]]]) -> list[Any]:
        from zarr.core.common import concurrent_map
        from zarr.storage._common import StorePath

        units: list[Any] = [None] * len(self.piece_item)
        cfg = self.spec.config
        proto = self.proto

        async def one(i: int, members: list[int], ranges: list[Any]) -> None:
            getter = self.items[i][0]
            try:
                if isinstance(getter, StorePath):
                    async for group in getter.store.get_ranges(getter.path, ranges, prototype=proto,
                                                               max_gap_bytes=cfg.sharding_coalesce_max_gap_bytes,
                                                               max_coalesced_bytes=cfg.sharding_coalesce_max_bytes):
                        self._place(units, i, members, group)
                else:
                    got = [(j, await getter.get(proto, byte_range=r)) for j, r in enumerate(ranges)]
                    self._place(units, i, members, got)
            except BaseExceptionGroup as eg:
                _, rest = eg.split(FileNotFoundError)
                if rest is not None:
                    raise rest from None
                self.status[i] = _MISSING
                for m in members:
                    units[m] = None

        await concurrent_map(work, one, zarr_config.get("async.concurrency"))
        return units

    def fetch_sync(self) -> list[Any]:
        """Encoded units for the engine, read through sync byte getters (deferred when unsharded on the CPU)."""
        if self.layout.shard is None:
            if not self.gpu:
                self._reads = [_GetterRead(it[0], self.proto) for it in self.items]
                root = _local_root(self.items[0][0]) if self.items else None
                if root is not None:
                    keys = [str(it[0].path) for it in self.items]
                    units = [keys[i] for i in self.piece_item.tolist()]
                    return DeferredReads(_LocalStoreReads(root, keys, self._reads), units)  # type: ignore[return-value]
                return [DeferredRead(self._reads[i], "") for i in self.piece_item.tolist()]  # type: ignore[arg-type]
            raws = [it[0].get_sync(prototype=self.proto) for it in self.items]
            return self.whole_chunks(raws)
        raws = [g.get_sync(prototype=self.proto, byte_range=r) for g, r in self.index_requests()]
        work = self.shard_ranges(raws)
        if not self.gpu and compiled.runs_now():
            root = _local_root(self.items[0][0]) if self.items else None
            if root is not None:  # the lane reads the inner chunks from the shard files itself
                return self._shard_file_ranges(root, work)  # type: ignore[return-value]
        return self._ranges_sync(work)

    def _shard_file_ranges(self, root: str, work: list[tuple[int, list[int], list[Any]]]) -> _ShardRangeReads:
        """The planned inner chunks as ranges of their shard files, for the compiled lane."""
        self._reads = [_GetterRead(it[0], self.proto) for it in self.items]
        shard_keys = [str(it[0].path) for it in self.items]
        n = len(self.piece_item)
        keys: list[str | None] = [None] * n
        starts, lengths = [0] * n, [0] * n
        for i, members, ranges in work:
            key = shard_keys[i]
            for m, r in zip(members, ranges, strict=True):
                keys[m], starts[m], lengths[m] = key, r.start, r.end - r.start
        return _ShardRangeReads(_LocalStoreReads(root, shard_keys, self._reads), keys, starts, lengths)

    async def fetch_async(self) -> list[Any]:
        """Encoded units for the engine, read concurrently through async byte getters."""
        from zarr.core.common import concurrent_map

        limit = zarr_config.get("async.concurrency")
        proto = self.proto

        async def get(getter: Any, rng: Any) -> Any:
            return await getter.get(proto, byte_range=rng)

        if self.layout.shard is None:
            raws = await concurrent_map([(it[0], None) for it in self.items], get, limit)
            return self.whole_chunks(raws)
        raws = await concurrent_map(self.index_requests(), get, limit)
        return await self._ranges_async(self.shard_ranges(raws))

    def whole_chunks(self, raws: list[Any]) -> list[memoryview | None]:
        for i, raw in enumerate(raws):
            if raw is None:
                self.status[i] = _MISSING
        return [_view(raws[i]) for i in self.piece_item.tolist()]

    # ---------------------------------------------------------------- decoding
    def _engine_call(self, workers: int | None) -> tuple[Any, Any, Sequence[str], str]:
        """The engine, the fill value, the chunk keys and the array name one decode passes it."""
        from zarr.core.chunk_utils import fill_value_or_default

        if self.gpu:
            from gpuzarr.engines.base import resolve_engine

            engine = resolve_engine("cuda")
        else:
            engine = _cpu_engine(workers)
        return (engine, fill_value_or_default(self.spec), self._keys(),
                str(getattr(self.items[0][0], "store", "zarr array")))

    def reads_on_the_loop(self) -> bool:
        """Whether :meth:`decode_async` applies: the CPU with the compiled lane built (no compile on the loop),
        zarr's output written in place, unsharded chunks of a local store (planning them reads nothing, so the
        loop waits on no I/O)."""
        return (not self.gpu and self.box and self.layout.shard is None and bool(self.items)
                and compiled.setting() is not None and compiled.built() and _local_root(self.items[0][0]) is not None)

    async def decode_async(self) -> None:
        """:meth:`fetch_sync` and :meth:`decode` from the event loop, without a worker thread that only waits.

        The compiled lane's work goes from the loop straight to the engine's threads
        (:meth:`CpuEngine.decode_and_assemble_async`); one hand-off each way instead of two.
        """
        encoded = self.fetch_sync()
        engine, fill, keys, array_name = self._engine_call(None)
        if self.plan.n_chunks:
            await engine.decode_and_assemble_async(self.plan, encoded, self.chain, fill, keys=keys,
                                                   array_name=array_name, out=self.out.reshape((1, *self.out.shape)))
        self._note_missing()

    def decode(self, encoded: list[Any], workers: int | None = None) -> None:
        """Run the plan through the engine (``workers`` threads) and scatter into zarr's output."""
        engine, fill, keys, array_name = self._engine_call(workers)
        if self.box:
            out = self.out.reshape((1, *self.out.shape))
            if self.plan.n_chunks:
                engine.decode_and_assemble(self.plan, encoded, self.chain, fill, keys=keys, array_name=array_name,
                                           out=out)
        else:
            boxes = engine.decode_and_assemble(self.plan, encoded, self.chain, fill, keys=keys,
                                               array_name=array_name)
            self._scatter(boxes, fill)
        self._note_missing()

    def _note_missing(self) -> None:
        if not self.gpu and hasattr(self, "_reads"):  # chunks or shards zarr's getter found missing
            for i, r in enumerate(self._reads):
                if r.missing:
                    self.status[i] = _MISSING

    def _scatter(self, boxes: Any, fill: Any) -> None:
        """Apply zarr's selections to each item's decoded bounding box (non-box indexing)."""
        for i, (_, _, csel, osel, _) in enumerate(self.items):
            lo = self.lo[i].tolist()
            ext = (self.hi[i] - self.lo[i]).tolist()
            box = boxes[i][tuple(slice(0, e) for e in ext)]
            selected = box[_shift(csel, lo, self.ndim)]
            if self.drop_axes:
                selected = selected.squeeze(axis=self.drop_axes)
            self.out[osel] = selected


class GpuzarrCodecPipeline(CodecPipeline):
    """zarr-python ``CodecPipeline`` that reads through gpuzarr's plan and engines (see module docstring)."""

    def __init__(self, fallback: BatchedCodecPipeline) -> None:
        self._fallback = fallback
        self._layouts: dict[tuple[Any, ...], _Layout | str] = {}
        self._layouts_lock = threading.Lock()

    # --------------------------------------------------------------- pickling
    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._fallback,))

    def __repr__(self) -> str:
        return f"GpuzarrCodecPipeline({list(self._fallback)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GpuzarrCodecPipeline) and other._fallback == self._fallback

    def __hash__(self) -> int:
        return hash(self._fallback)

    # --------------------------------------------------------------- construction
    @classmethod
    def from_codecs(cls, codecs: Iterable[Any], *, batch_size: int | None = None) -> Self:
        return cls(BatchedCodecPipeline.from_codecs(codecs, batch_size=batch_size))

    def evolve_from_array_spec(self, array_spec: Any) -> Self:
        return type(self)(self._fallback.evolve_from_array_spec(array_spec))

    # --------------------------------------------------------------- zarr's codec API (delegated)
    @property
    def supports_partial_decode(self) -> bool:
        return self._fallback.supports_partial_decode

    @property
    def supports_partial_encode(self) -> bool:
        return self._fallback.supports_partial_encode

    def __iter__(self) -> Iterator[Any]:
        return iter(self._fallback)

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        self._fallback.validate(shape=shape, dtype=dtype, chunk_grid=chunk_grid)

    def compute_encoded_size(self, byte_length: int, array_spec: Any) -> int:
        return self._fallback.compute_encoded_size(byte_length, array_spec)

    async def decode(self, chunk_bytes_and_specs: Iterable[tuple[Any, Any]]) -> Iterable[Any]:
        return await self._fallback.decode(chunk_bytes_and_specs)

    async def encode(self, chunk_arrays_and_specs: Iterable[tuple[Any, Any]]) -> Iterable[Any]:
        return await self._fallback.encode(chunk_arrays_and_specs)

    async def write(self, batch_info: Iterable[Any], value: Any, drop_axes: tuple[int, ...] = ()) -> None:
        await self._fallback.write(batch_info, value, drop_axes)

    # --------------------------------------------------------------- reads
    def _layout(self, spec: Any) -> _Layout:
        key = (tuple(spec.shape), str(spec.dtype), repr(spec.fill_value), spec.config.order)
        found = self._layouts.get(key)
        if found is None:
            try:
                found = _compile(tuple(self._fallback), spec)
            except UnsupportedCodecError as exc:
                found = f"cannot decode this array ({exc})"
            with self._layouts_lock:
                self._layouts[key] = found
        if isinstance(found, str):
            raise _Unsupported(found)
        return found

    def _jobs(self, batch: list[Any], out: Any, drop_axes: tuple[int, ...]) -> list[_Job]:
        arr = out.as_ndarray_like()
        cupy = sys.modules.get("cupy")  # imported by zarr's GPU buffers whenever the output is CuPy
        if isinstance(arr, np.ndarray):
            gpu = False
        elif cupy is not None and isinstance(arr, cupy.ndarray):
            gpu = True
        else:
            raise _Unsupported(f"output buffer type {type(arr).__module__}.{type(arr).__name__}")
        groups: dict[tuple[int, ...], list[int]] = {}
        first = batch[0][1]
        if all(it[1] is first for it in batch):
            groups[tuple(first.shape)] = list(range(len(batch)))
        else:
            for i, it in enumerate(batch):
                groups.setdefault(tuple(it[1].shape), []).append(i)
        jobs = []
        for members in groups.values():
            layout = self._layout(batch[members[0]][1])
            jobs.append((_Job(layout, [batch[i] for i in members], out, arr, drop_axes, gpu), members))
        return jobs  # type: ignore[return-value]

    async def read(self, batch_info: Iterable[Any], out: Any, drop_axes: tuple[int, ...] = ()) -> tuple[GetResult, ...]:
        batch = list(batch_info)
        if not batch:
            return ()
        try:
            jobs = self._jobs(batch, out, drop_axes)
        except _Unsupported as exc:
            _fall_back(str(exc))
            _count(fallback_reads=1)
            return await self._fallback.read(batch, out, drop_axes)
        _count(reads=1, chunks=len(batch))
        results: list[GetResult] = [_PRESENT] * len(batch)
        inline_max = int(zarr_config.get("codec_pipeline.inline_max_bytes", 1 << 20) or 0)
        for job, members in jobs:  # type: ignore[misc]
            if all(_supports_sync_get(it[0]) for it in job.items[:1]):
                if not job.gpu and len(job.piece_item) * job.chain.nbytes <= inline_max:
                    # a small read from a local store: one thread, no hand-offs (they would cost more)
                    job.decode(job.fetch_sync(), workers=1)
                elif job.reads_on_the_loop():
                    await job.decode_async()
                else:
                    await asyncio.to_thread(_run_sync, job)
            else:
                encoded = await job.fetch_async()
                await asyncio.to_thread(job.decode, encoded)
            for i, status in zip(members, job.status, strict=True):
                results[i] = status
        return tuple(results)


def _run_sync(job: _Job) -> None:
    job.decode(job.fetch_sync())


def _register() -> None:
    """Make the pipeline findable as ``gpuzarr.GpuzarrCodecPipeline`` (and by its module path)."""
    from zarr.registry import _pipeline_registry, register_pipeline

    register_pipeline(GpuzarrCodecPipeline)
    _pipeline_registry.register(GpuzarrCodecPipeline, qualname="gpuzarr.GpuzarrCodecPipeline")


_register()
