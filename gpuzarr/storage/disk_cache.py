"""A disk tier for remote chunk bytes, and a fetcher wrapper that puts caches in front.

:class:`DiskCache` keeps fetched bytes in a local directory under a byte budget, with
an embedded SQLite index (one row per entry: key, file, size, checksum, last access,
hit count, fetch latency). It is meant for remote data that is read over and over
(training epochs) and is safe to share between several worker processes:

* **Atomic, never torn.** Bytes go to a temp file, are ``fsync``-ed, then
  ``os.replace``-d to a unique final name; only *then* is the index row written (in a
  transaction). A process killed at any point leaves at worst an orphan file without
  a row, which is never served and is swept later. Every read verifies the length and
  CRC-32 recorded in the row; a mismatch drops the entry and reads as a miss.
* **Shared safely.** SQLite in WAL mode with a busy timeout; inserts and evictions run
  inside ``BEGIN IMMEDIATE`` transactions, so the indexed total never exceeds the
  budget no matter how many processes write. Files of evicted rows are unlinked after
  the commit; a reader that loses that race just sees a miss.
* **Least-recently-used eviction** by ``last_access``.
* **Heals itself.** A damaged index (not a database, a malformed page, a missing
  table: a disk error, a half-copied directory) raises no error to the reader: the
  process that meets it warns (:class:`~gpuzarr.errors.GpuzarrWarning`), starts a new,
  empty index generation and carries on; the read is served from the store. Each
  generation has its own file (``index-<id>.sqlite3``, named in ``index.current``), so
  a connection another process still holds on the damaged one can never touch the new
  one's files; every process moves to the current generation on its next call. Files
  that belonged to the damaged index are removed. Rows only ever name files written
  with them and every read is checked against the row's size and CRC-32, so healing
  can lose entries but never serve wrong bytes.

:class:`CachingFetcher` is a :class:`~gpuzarr.storage.base.ChunkFetcher` that answers from
a :class:`~gpuzarr.storage.cache.PinnedLRUCache` (memory tier) and/or a :class:`DiskCache`
(disk tier) and fetches only the misses from the wrapped fetcher, filling both tiers.
Byte ranges are part of the cache key, so shard sub-ranges cache too. Both tiers key on the
fetcher's identity (:attr:`~gpuzarr.storage.base.ChunkFetcher.cache_identity`); the disk
tier, which outlives the process, only for fetchers with a ``persistent_identity`` (others
skip it, with a warning). Use it to give
*any* fetcher caching; when the chunk reader already has a memory cache, wrap with the
disk tier only so bytes are not held twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import sqlite3
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuzarr.errors import GpuzarrWarning
from gpuzarr.storage.base import Buffer, ChunkFetcher, Range, SuffixRange, normalize_request

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    crc32 INTEGER NOT NULL,
    created REAL NOT NULL,
    last_access REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    fetch_latency REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_access);
"""


_LEGACY_INDEX = "index.sqlite3"
_GENERATION = re.compile(r"index-[0-9a-f]{32}\.sqlite3")
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether an SQLite error means the index file itself is damaged (not busy, not a full disk)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return True
    text = str(exc).lower()
    return any(m in text for m in ("malformed", "not a database", "no such table", "no such column"))


def _healing[T](method: Callable[..., T]) -> Callable[..., T]:
    """Run ``method``; if the index turns out damaged, rebuild it empty (with a warning) and run it once more."""

    @functools.wraps(method)
    def wrapper(self: DiskCache, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            self._rebuild(exc)
        return method(self, *args, **kwargs)

    return wrapper


@dataclass(frozen=True, slots=True)
class DiskCacheStats:
    """Counters of this process plus the shared index's totals."""

    hits: int
    misses: int
    corrupt: int
    insertions: int
    evictions: int
    rejected: int
    entries: int
    bytes_used: int
    max_bytes: int
    rebuilds: int = 0  #: damaged indexes this process replaced by an empty one


def range_token(byte_range: Range) -> str:
    """A stable text form of a range for cache keys."""
    if byte_range is None:
        return ""
    if isinstance(byte_range, SuffixRange):
        return f"-{byte_range.length}"
    return f"{byte_range.start}+{byte_range.length}"


class DiskCache:
    """Byte-budgeted on-disk cache with a SQLite index (see module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, *, fsync: bool = True,
                 busy_timeout_s: float = 60.0, sweep_orphans_older_than_s: float | None = 3600.0) -> None:
        self.directory = Path(directory).expanduser().resolve()
        self.data_dir = self.directory / "data"
        self.tmp_dir = self.directory / "tmp"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.pointer_path = self.directory / "index.current"
        self.max_bytes = int(max_bytes)
        self.fsync = fsync
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._counter_lock = threading.Lock()
        self._hits = self._misses = self._corrupt = self._insertions = self._evictions = self._rejected = 0
        self._rebuilds = 0
        self._open()
        if sweep_orphans_older_than_s is not None:
            self.sweep(sweep_orphans_older_than_s)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as the same directory and budget: the tier is shared between processes by design."""
        return (type(self), (str(self.directory), self.max_bytes), {"fsync": self.fsync,
                                                                   "busy_timeout_s": self.busy_timeout_s})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.fsync = state["fsync"]
        self.busy_timeout_s = state["busy_timeout_s"]

    # -- sqlite ------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        """The current index generation's file (see the module docstring)."""
        return self.directory / self._generation()

    def _generation(self) -> str:
        try:
            name = self.pointer_path.read_text().strip()
        except FileNotFoundError:
            return _LEGACY_INDEX
        if not _GENERATION.fullmatch(name):
            raise sqlite3.DatabaseError(f"index pointer {self.pointer_path} is not a database name: {name[:60]!r}")
        return name

    @_healing
    def _open(self) -> None:
        self._connection().executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        generation = self._generation()
        if (connection is None or getattr(self._local, "pid", None) != os.getpid()
                or getattr(self._local, "generation", None) != generation):
            if connection is not None and getattr(self._local, "pid", None) == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
            self._local.connection = None
            connection = sqlite3.connect(self.directory / generation, timeout=self.busy_timeout_s,
                                         isolation_level=None, check_same_thread=True)
            try:
                connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
                self._enable_wal(connection)
                connection.execute("PRAGMA synchronous = NORMAL")
                if generation != _LEGACY_INDEX:  # a new generation may be seen before its creator made the table
                    connection.executescript(_SCHEMA)
            except BaseException:
                connection.close()
                raise
            self._local.connection = connection
            self._local.pid = os.getpid()
            self._local.generation = generation
        return connection

    def _rebuild(self, exc: BaseException) -> None:
        """Start a new, empty index generation after ``exc`` showed the current one damaged (see module docstring)."""
        with open(self.directory / "index.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process rebuilds; the others then see the new pointer
            try:
                damaged = self._generation()
            except sqlite3.DatabaseError:
                damaged = None  # the pointer itself is garbage
            seen = getattr(self._local, "generation", None)
            connection = getattr(self._local, "connection", None)
            self._local.connection = None
            if connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
            if damaged is not None and seen is not None and damaged != seen:
                return  # another process (or thread) rebuilt it already: reconnect to the new one
            fresh = f"index-{uuid.uuid4().hex}.sqlite3"
            fresh_connection = sqlite3.connect(self.directory / fresh, isolation_level=None)
            try:
                fresh_connection.executescript(_SCHEMA)
            finally:
                fresh_connection.close()
            temp = self.tmp_dir / f"{uuid.uuid4().hex}.pointer"
            temp.write_text(fresh)
            os.replace(temp, self.pointer_path)
            for suffix in ("", "-wal", "-shm", "-journal") if damaged else ():
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{damaged}{suffix}").unlink()
            removed = 0
            for path in self.data_dir.glob("*/*"):  # every file belonged to the damaged index
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        self._rebuilds += 1
        warnings.warn(
            f"disk cache {self.directory}: its index was damaged ({type(exc).__name__}: {exc}); started a new, "
            f"empty index and removed {removed} cached files; reads go to the store meanwhile",
            GpuzarrWarning, stacklevel=4,
        )

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        """Switch the index to WAL, retrying while another process holds the lock.

        SQLite does not run the busy handler for a journal-mode change, so two processes
        opening a new cache directory at once would otherwise see "database is locked".
        """
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.005
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    @contextlib.contextmanager
    def _write_transaction(self) -> Any:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _count(self, **deltas: int) -> None:
        with self._counter_lock:
            for name, delta in deltas.items():
                setattr(self, f"_{name}", getattr(self, f"_{name}") + delta)

    # -- reads -------------------------------------------------------------------
    @_healing
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Bytes of each key (``None`` on a miss or a failed verification)."""
        if not keys:
            return []
        connection = self._connection()
        rows: dict[str, tuple[str, int, int]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            marks = ",".join("?" * len(part))
            for key, file, size, crc in connection.execute(
                f"SELECT key, file, size, crc32 FROM entries WHERE key IN ({marks})", part
            ):
                rows[key] = (file, size, crc)
        found: dict[str, bytes] = {}
        bad: list[tuple[str, str]] = []
        for key, (file, size, crc) in rows.items():
            try:
                data = (self.data_dir / file).read_bytes()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            if len(data) != size or zlib.crc32(data) != crc:
                bad.append((key, file))
                continue
            found[key] = data
        now = time.time()
        if found or bad:
            with self._write_transaction() as tx:
                if found:
                    tx.executemany("UPDATE entries SET last_access = ?, hits = hits + 1 WHERE key = ?",
                                   [(now, k) for k in found])
                for key, file in bad:
                    tx.execute("DELETE FROM entries WHERE key = ? AND file = ?", (key, file))
            for _key, file in bad:
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / file).unlink()
        out = [found.get(k) for k in keys]
        hits = sum(o is not None for o in out)
        self._count(hits=hits, misses=len(out) - hits, corrupt=len(bad))
        return out

    def get(self, key: str) -> bytes | None:
        """Bytes of one key, or ``None``."""
        return self.get_many([key])[0]

    # -- writes ------------------------------------------------------------------
    def _write_file(self, key: str, data: Buffer) -> str:
        digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        name = f"{digest[:2]}/{digest}-{uuid.uuid4().hex[:12]}"
        final = self.data_dir / name
        final.parent.mkdir(exist_ok=True)
        temp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())
        os.replace(temp, final)
        if self.fsync:
            directory = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        return name

    @_healing
    def put_many(self, items: Sequence[tuple[str, Buffer, float]]) -> int:
        """Store ``(key, data, fetch_latency_s)`` items; returns how many were stored."""
        written: list[tuple[str, str, int, int, float]] = []
        for key, data, latency in items:
            view = memoryview(data)
            if view.nbytes > self.max_bytes:
                self._count(rejected=1)
                continue
            name = self._write_file(key, view)
            written.append((key, name, view.nbytes, zlib.crc32(view), float(latency)))
        if not written:
            return 0
        now = time.time()
        doomed: list[str] = []
        evicted = 0
        with self._write_transaction() as tx:
            for key, name, size, crc, latency in written:
                old = tx.execute("SELECT file FROM entries WHERE key = ?", (key,)).fetchone()
                if old is not None:
                    doomed.append(old[0])
                tx.execute(
                    "INSERT OR REPLACE INTO entries (key, file, size, crc32, created, last_access, hits, fetch_latency)"
                    " VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                    (key, name, size, crc, now, now, latency),
                )
            total = tx.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
            if total > self.max_bytes:
                cursor = tx.execute("SELECT key, file, size FROM entries ORDER BY last_access ASC, created ASC")
                victims: list[tuple[str, str]] = []
                for key, file, size in cursor:
                    if total <= self.max_bytes:
                        break
                    victims.append((key, file))
                    total -= size
                tx.executemany("DELETE FROM entries WHERE key = ? AND file = ?", victims)
                doomed.extend(file for _, file in victims)
                evicted = len(victims)
        for file in doomed:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / file).unlink()
        self._count(insertions=len(written), evictions=evicted)
        return len(written)

    def put(self, key: str, data: Buffer, fetch_latency_s: float = 0.0) -> bool:
        """Store one entry."""
        return self.put_many([(key, data, fetch_latency_s)]) == 1

    # -- maintenance -------------------------------------------------------------
    @_healing
    def sweep(self, older_than_s: float = 3600.0) -> int:
        """Remove temp files and files without an index row older than ``older_than_s``.

        Such files are what a process killed mid-write leaves behind; they are never
        served. Returns how many files were removed.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for temp in self.tmp_dir.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime <= cutoff:
                    temp.unlink()
                    removed += 1
        current = self._generation()
        for path in self.directory.glob("index*.sqlite3*"):  # generations left by a rebuild elsewhere
            if path.name.startswith(current):
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
        known = {row[0] for row in self._connection().execute("SELECT file FROM entries")}
        for path in self.data_dir.glob("*/*"):
            name = f"{path.parent.name}/{path.name}"
            if name in known:
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    # re-check under the write lock: a row may have been added since
                    with self._write_transaction() as tx:
                        if tx.execute("SELECT 1 FROM entries WHERE file = ?", (name,)).fetchone() is None:
                            path.unlink()
                            removed += 1
        return removed

    @_healing
    def verify(self) -> list[str]:
        """Keys whose file is missing or fails its length / CRC check (and drop them)."""
        rows = list(self._connection().execute("SELECT key FROM entries"))
        keys = [r[0] for r in rows]
        results = self.get_many(keys)
        return [k for k, r in zip(keys, results, strict=True) if r is None]

    @_healing
    def bytes_used(self) -> int:
        """Total size of indexed entries (shared across processes)."""
        return int(self._connection().execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])

    @_healing
    def stats(self) -> DiskCacheStats:
        """This process's counters plus the shared totals."""
        entries, used = self._connection().execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries").fetchone()
        with self._counter_lock:
            return DiskCacheStats(self._hits, self._misses, self._corrupt, self._insertions, self._evictions,
                                  self._rejected, int(entries), int(used), self.max_bytes, self._rebuilds)

    def close(self) -> None:
        """Close this thread's index connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def __repr__(self) -> str:
        return f"DiskCache({str(self.directory)!r}, max_bytes={self.max_bytes})"


class CachingFetcher(ChunkFetcher):
    """A fetcher answering from a memory and/or disk tier before the wrapped fetcher."""

    def __init__(self, fetcher: ChunkFetcher, *, memory: Any = None, disk: DiskCache | None = None,
                 array_path: str = "", close_inner: bool = True) -> None:
        self.inner = fetcher
        self.memory = memory
        if disk is not None and fetcher.persistent_identity is None:
            # the disk tier outlives this process: only a location with a lasting name may be keyed in it
            warnings.warn(
                f"{fetcher.store_id}: this store has no lasting location (an in-memory or wrapped zarr store), so "
                "its chunks are not kept in the disk cache; reads go to the store", GpuzarrWarning, stacklevel=3)
            disk = None
        self.disk = disk
        self.array_path = array_path
        self.close_inner = close_inner
        self.store_id = fetcher.store_id

    @property
    def persistent_identity(self) -> str | None:
        return self.inner.persistent_identity

    @property
    def cache_identity(self) -> str:
        return self.inner.cache_identity

    def _memory_key(self, key: str, byte_range: Range) -> Hashable:
        token = range_token(byte_range)
        return (self.cache_identity, self.array_path, f"{key}@{token}" if token else key)

    def _disk_key(self, key: str, byte_range: Range) -> str:
        return f"{self.inner.persistent_identity}\x00{key}\x00{range_token(byte_range)}"

    def fetch(self, keys: Sequence[str], ranges: Sequence[Range] | None = None) -> list[Buffer | None]:
        """Cached bytes where present; the misses fetched in one batch and cached."""
        keys, ranges = normalize_request(keys, ranges)
        out: list[Buffer | None] = [None] * len(keys)
        todo = list(range(len(keys)))
        if self.memory is not None and todo:
            hits = self.memory.get_many([self._memory_key(keys[i], ranges[i]) for i in todo])
            for i, hit in zip(todo, hits, strict=True):
                out[i] = hit
            todo = [i for i, hit in zip(todo, hits, strict=True) if hit is None]
        from_disk: list[int] = []
        if self.disk is not None and todo:
            hits = self._disk_call("read", self.disk.get_many, [self._disk_key(keys[i], ranges[i]) for i in todo])
            if hits is None:
                hits = [None] * len(todo)
            for i, hit in zip(todo, hits, strict=True):
                if hit is not None:
                    out[i] = hit
                    from_disk.append(i)
            todo = [i for i, hit in zip(todo, hits, strict=True) if hit is None]
        fetched_ok: list[int] = []
        if todo:
            started = time.perf_counter()
            fetched = self.inner.fetch([keys[i] for i in todo], [ranges[i] for i in todo])
            latency = (time.perf_counter() - started) / len(todo)
            for i, data in zip(todo, fetched, strict=True):
                out[i] = data
                if data is not None:
                    fetched_ok.append(i)
            if self.disk is not None and fetched_ok:
                self._disk_call("write", self.disk.put_many,
                                [(self._disk_key(keys[i], ranges[i]), out[i], latency) for i in fetched_ok])
        if self.memory is not None and (fetched_ok or from_disk):
            self.memory.put_many([(self._memory_key(keys[i], ranges[i]), out[i]) for i in fetched_ok + from_disk])
        return out

    def _disk_call[T](self, what: str, method: Callable[[Any], T], argument: Any) -> T | None:
        """A disk-tier call that cannot fail the read: on an error the tier is skipped for this batch, with a warning.

        A damaged index heals itself (see :class:`DiskCache`); what is left (a full or
        read-only disk, a lock held past the busy timeout) must not stop reads from the store.
        """
        try:
            return method(argument)
        except (sqlite3.Error, OSError) as exc:
            warnings.warn(f"disk cache {self.disk.directory if self.disk else ''}: {what} failed "
                          f"({type(exc).__name__}: {exc}); reading from {self.store_id} without it for this batch",
                          GpuzarrWarning, stacklevel=4)
            return None

    def prefetch(self, keys: Sequence[str], ranges: Sequence[Range] | None = None) -> None:
        """Bring keys into the caches without returning them (for :mod:`gpuzarr.storage.prefetch`)."""
        keys = list(keys)
        ranges = list(ranges) if ranges is not None else [None] * len(keys)
        if self.memory is not None and hasattr(self.memory, "contains_many"):
            present = self.memory.contains_many([self._memory_key(k, r) for k, r in zip(keys, ranges, strict=True)])
            pairs = [(k, r) for k, r, p in zip(keys, ranges, present, strict=True) if not p]
            keys, ranges = [k for k, _ in pairs], [r for _, r in pairs]
        if keys:
            self.fetch(keys, ranges)

    def close(self) -> None:
        """Close the wrapped fetcher (unless ``close_inner=False``) and the disk index."""
        if self.disk is not None:
            self.disk.close()
        if self.close_inner:
            self.inner.close()


__all__ = ["CachingFetcher", "DiskCache", "DiskCacheStats", "range_token"]
