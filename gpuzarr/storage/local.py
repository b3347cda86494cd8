"""Local-file fetcher: chunk keys are files under a root directory.

Two read paths, chosen once when the fetcher is built:

* **kvikio** (a CUDA driver and a GPU are usable): every read of a batch is issued
  at once as a ``kvikio.CuFile.pread`` into one pinned host buffer for the batch
  (:meth:`LocalFileFetcher.fetch`) or one device buffer
  (:meth:`LocalFileFetcher.fetch_device`). kvikio uses GPUDirect Storage when the
  system has it and its POSIX compat mode otherwise; we never force compat mode off.
* **POSIX** (no usable CUDA driver): ``os.pread`` in a thread pool, one worker per
  slice of the batch, each read looped until the requested length arrived.

Either way lengths are checked: a read shorter than the file / range it asked for is
retried by :class:`~gpuzarr.storage.retry.RetryPolicy` and never returned; a range past the
end of a file is a :class:`~gpuzarr.errors.FetchError` naming the key.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gpuzarr.errors import FetchError, RangeNotSatisfiableError
from gpuzarr.settings import io_thread_budget
from gpuzarr.storage.base import Buffer, ByteRange, ChunkFetcher, Range, SuffixRange, normalize_request
from gpuzarr.storage.buffers import DeviceBatch, aligned_slots
from gpuzarr.storage.retry import PermanentFetchError, RetryPolicy, ShortReadError
from gpuzarr.threads import ThreadPool


@functools.cache
def cuda_io_usable() -> bool:
    """Whether kvikio can read into GPU / pinned memory here (probed once per process).

    True when kvikio imports and CuPy sees a CUDA device (see :mod:`gpuzarr._optional`).
    Without a CUDA driver kvikio cannot run and the POSIX path is used instead.
    """
    from gpuzarr import _optional

    return bool(_optional.kvikio()) and bool(_optional.cupy_device())


def range_past_end_error(message: str, key: str) -> FetchError:
    """The error for a byte range the object cannot satisfy (e.g. a truncated shard).

    A :class:`~gpuzarr.errors.RangeNotSatisfiableError`, so the chunk reader can turn
    it into a :class:`~gpuzarr.errors.CorruptChunkError` naming the array.
    """
    return RangeNotSatisfiableError(message, key=key)


def resolve_extent(key: str, size: int, byte_range: Range) -> tuple[int, int]:
    """``(offset, length)`` to read for ``byte_range`` of an object of ``size`` bytes."""
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, ByteRange):
        if byte_range.start < 0 or byte_range.length < 0:
            raise FetchError(f"invalid byte range {byte_range} for chunk key {key!r}", key=key)
        if byte_range.start + byte_range.length > size:
            raise range_past_end_error(
                f"byte range {byte_range.start}+{byte_range.length} reaches past the end of "
                f"chunk key {key!r} ({size} bytes)",
                key,
            )
        return byte_range.start, byte_range.length
    if isinstance(byte_range, SuffixRange):
        if byte_range.length > size or byte_range.length < 0:
            raise range_past_end_error(
                f"suffix range of {byte_range.length} bytes is longer than chunk key {key!r} ({size} bytes)", key
            )
        return size - byte_range.length, byte_range.length
    raise TypeError(f"unsupported range type {type(byte_range).__name__} for chunk key {key!r}")


def _pread_exact(fd: int, length: int, offset: int, key: str) -> bytes:
    """``length`` bytes at ``offset``; loops over partial reads, ShortReadError at EOF."""
    if length == 0:
        return b""
    first = os.pread(fd, length, offset)
    if len(first) == length:
        return first
    buffer = bytearray(first)
    while len(buffer) < length:
        more = os.pread(fd, length - len(buffer), offset + len(buffer))
        if not more:
            raise ShortReadError(f"chunk key {key!r}: read {len(buffer)} of {length} bytes at offset {offset}")
        buffer += more
    return bytes(buffer)


class LocalFileFetcher(ChunkFetcher):
    """Reads chunk keys as files under ``root`` (see module docstring for the paths)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_workers: int | None = None,
        retry: RetryPolicy | None = None,
        use_kvikio: bool | None = None,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self._root_prefix = str(self.root).rstrip("/") + "/"
        self.store_id = self.root.as_uri()
        self.retry = retry or RetryPolicy()  # the retry.* settings unless given
        self.use_kvikio = cuda_io_usable() if use_kvikio is None else bool(use_kvikio and cuda_io_usable())
        self._pool = ThreadPool("gpuzarr-local", max_workers or io_thread_budget)
        self._closed = False

    @property
    def persistent_identity(self) -> str:
        """The resolved root as a ``file://`` URL: every fetcher of the same directory shares cache entries."""
        return self.store_id

    @property
    def max_workers(self) -> int:
        """Read threads (the ``io_threads`` setting, read at each use, unless given ``max_workers``)."""
        return self._pool.size

    # -- helpers -----------------------------------------------------------------
    def _path(self, key: str) -> str:
        """The file of ``key`` (a plain string: building ``Path`` objects per chunk is measurable)."""
        if key.startswith("/") or (".." in key and ".." in key.split("/")):
            raise FetchError(f"chunk key {key!r} escapes the store root {self.root}", key=key)
        return self._root_prefix + key

    def local_paths(self, keys: Sequence[str]) -> list[str] | None:
        """The file of each key, for code that opens files itself (the CPU engine's compiled lane).

        Each key is checked as for every read (no key escapes the root). ``None`` when a
        subclass or a wrapper set on this object changes how files are read: those reads
        must go through its methods.
        """
        for name in ("read_into", "_with_open_file", "_path", "fetch"):
            if getattr(getattr(self, name), "__func__", None) is not getattr(LocalFileFetcher, name):
                return None
        joined = "\0".join(keys)
        if ".." in joined or joined.startswith("/") or "\0/" in joined:  # a key may escape: checked one by one
            return [self._path(k) for k in keys]
        prefix = self._root_prefix
        return [prefix + k for k in keys]  # what _path gives a key with no "/" in front and no ".."

    def _executor(self) -> ThreadPoolExecutor:
        if self._closed:
            raise FetchError(f"{self.store_id}: this array was closed; open it again to read from it")
        return self._pool.executor()

    def _with_open_file(self, key: str, read: Callable[[int, int], Any]) -> Any:
        """``read(fd, size)`` on the file of ``key`` under the retry policy; ``None`` when it does not exist."""
        path = self._path(key)

        def attempt() -> Any:
            try:
                fd = os.open(path, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                return None
            try:
                return read(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)

        return self.retry.call(attempt, key=key)

    def _read_one(self, key: str, byte_range: Range) -> bytes | None:
        def read(fd: int, size: int) -> bytes:
            offset, length = resolve_extent(key, size, byte_range)
            return _pread_exact(fd, length, offset, key)

        return self._with_open_file(key, read)

    reads_into_buffers = True

    def read_into(self, key: str, buffer_for: Callable[[int], np.ndarray],
                  byte_range: Range = None) -> memoryview | None:
        """Read a file (or ``byte_range`` of it) into ``buffer_for(size)`` with ``os.preadv`` (no bytes object)."""

        def read(fd: int, size: int) -> memoryview:
            offset, length = (0, size) if byte_range is None else resolve_extent(key, size, byte_range)
            out = memoryview(buffer_for(length))[:length]
            done = 0
            while done < length:
                n = os.preadv(fd, [out[done:]], offset + done)
                if n == 0:
                    raise ShortReadError(f"chunk key {key!r}: read {done} of {length} bytes at offset {offset}")
                done += n
            return out

        return self._with_open_file(key, read)

    def _read_slice(self, keys: Sequence[str], ranges: Sequence[Range]) -> list[bytes | None]:
        """Read each (key, range); consecutive ranges of one key (a shard's inner chunks) share one open."""
        out: list[bytes | None] = []
        i, n = 0, len(keys)
        while i < n:
            j = i + 1
            while j < n and keys[j] == keys[i]:
                j += 1
            if j - i == 1:
                out.append(self._read_one(keys[i], ranges[i]))
            else:
                out.extend(self._read_ranges(keys[i], ranges[i:j]))
            i = j
        return out

    def _read_ranges(self, key: str, ranges: Sequence[Range]) -> list[bytes | None]:
        def read(fd: int, size: int) -> list[bytes]:
            extents = [resolve_extent(key, size, r) for r in ranges]
            return [_pread_exact(fd, length, offset, key) for offset, length in extents]

        got = self._with_open_file(key, read)
        return [None] * len(ranges) if got is None else got

    def _plan_extents(self, keys: Sequence[str], ranges: Sequence[Range]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Paths, offsets-in-file, lengths and presence for every key (one stat each)."""
        paths = [self._path(k) for k in keys]
        file_offsets = np.zeros(len(keys), dtype=np.int64)
        lengths = np.zeros(len(keys), dtype=np.int64)
        present = np.zeros(len(keys), dtype=bool)
        for i, (key, path, byte_range) in enumerate(zip(keys, paths, ranges, strict=True)):
            try:
                size = os.stat(path).st_size
            except (FileNotFoundError, NotADirectoryError):
                continue
            file_offsets[i], lengths[i] = resolve_extent(key, size, byte_range)
            present[i] = True
        return paths, file_offsets, lengths, present

    def _kvikio_read_into(self, buffer: Any, keys: Sequence[str], paths: list[str], file_offsets: np.ndarray,
                          lengths: np.ndarray, present: np.ndarray, buffer_offsets: np.ndarray) -> None:
        """Issue every read of the batch at once with kvikio, then check every length."""
        import kvikio

        handles: list[Any] = []
        futures: list[tuple[int, Any]] = []
        waited = 0
        try:
            for i in np.flatnonzero(present & (lengths > 0)):
                handle = kvikio.CuFile(paths[i], "r")
                handles.append(handle)
                start = int(buffer_offsets[i])
                view = buffer[start : start + int(lengths[i])]
                futures.append((int(i), handle.pread(view, int(lengths[i]), int(file_offsets[i]))))
            short: list[int] = []
            for i, future in futures:
                got = future.get()
                waited += 1
                if got != int(lengths[i]):
                    short.append(i)
        finally:
            # on an error, reads still in flight must finish before their handles close
            # and before the caller drops the buffer they write into
            for _, future in futures[waited:]:
                with contextlib.suppress(Exception):
                    future.get()
            for handle in handles:
                handle.close()
        for i in short:  # rare: retry that entry alone with the checked POSIX path
            data = self._read_one(keys[i], ByteRange(int(file_offsets[i]), int(lengths[i])))
            if data is None or len(data) != int(lengths[i]):
                raise FetchError(f"chunk key {keys[i]!r} changed while being read", key=keys[i])
            start = int(buffer_offsets[i])
            if hasattr(buffer, "__cuda_array_interface__"):
                import cupy

                buffer[start : start + len(data)] = cupy.asarray(np.frombuffer(data, dtype=np.uint8))
            else:
                buffer[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)

    # -- ChunkFetcher ----------------------------------------------------------------
    def fetch(self, keys: Sequence[str], ranges: Sequence[Range] | None = None) -> list[Buffer | None]:
        """Read a batch; host bytes-like per key, ``None`` for a missing file."""
        keys, ranges = normalize_request(keys, ranges)
        if not keys:
            return []
        if self.use_kvikio:
            return self._fetch_pinned(keys, ranges)
        workers = min(self.max_workers, len(keys))
        if workers <= 1:
            return list(self._read_slice(keys, ranges))
        bounds = np.linspace(0, len(keys), workers + 1).astype(int)
        executor = self._executor()
        futures = [
            executor.submit(self._read_slice, keys[a:b], ranges[a:b]) for a, b in itertools.pairwise(bounds.tolist()) if b > a
        ]
        results: list[Buffer | None] = []
        for future in futures:
            results.extend(future.result())
        return results

    def _fetch_pinned(self, keys: list[str], ranges: list[Range]) -> list[Buffer | None]:
        import cupyx

        paths, file_offsets, lengths, present = self._plan_extents(keys, ranges)
        buffer_offsets = np.zeros(len(keys), dtype=np.int64)
        np.cumsum(lengths[:-1], out=buffer_offsets[1:])
        pinned = cupyx.empty_pinned(max(int(lengths.sum()), 1), dtype=np.uint8)
        self._kvikio_read_into(pinned, keys, paths, file_offsets, lengths, present, buffer_offsets)
        view = memoryview(pinned)
        return [
            view[int(o) : int(o) + int(n)] if p else None
            for o, n, p in zip(buffer_offsets, lengths, present, strict=True)
        ]

    def fetch_device(self, keys: Sequence[str], ranges: Sequence[Range] | None = None) -> DeviceBatch:
        """Read a batch straight into one device buffer (GDS when available).

        Raises :class:`~gpuzarr.errors.DeviceUnavailableError` without a usable GPU.
        """
        from gpuzarr.errors import DeviceUnavailableError

        if not cuda_io_usable():
            raise DeviceUnavailableError(f"fetch_device on {self.store_id}: no usable CUDA device / kvikio")
        import cupy

        keys, ranges = normalize_request(keys, ranges)
        paths, file_offsets, lengths, present = self._plan_extents(keys, ranges)
        buffer_offsets, total = aligned_slots(lengths)  # nvCOMP reads entries in place: aligned
        device = cupy.empty(max(total, 1), dtype=cupy.uint8)
        # CuPy's pool may hand back memory that kernels still queued on the current stream
        # read; kvikio writes from its own threads/streams (or GDS DMA), outside that order
        cupy.cuda.get_current_stream().synchronize()
        self._kvikio_read_into(device, keys, paths, file_offsets, lengths, present, buffer_offsets)
        return DeviceBatch(device, buffer_offsets, lengths, present)

    def close(self) -> None:
        """Stop the thread pool (waits for reads in flight)."""
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def reads_to_device(self) -> bool:
        """kvikio ``CuFile`` reads straight into device memory (GDS, or its compat mode)."""
        return self.use_kvikio

    def __repr__(self) -> str:
        mode = "kvikio" if self.use_kvikio else "posix"
        return f"LocalFileFetcher({str(self.root)!r}, mode={mode})"


__all__ = ["LocalFileFetcher", "PermanentFetchError", "cuda_io_usable", "range_past_end_error",
           "resolve_extent"]
