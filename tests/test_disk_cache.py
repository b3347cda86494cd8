"""DiskCache: atomic writes survive SIGKILL, budget holds, several processes share it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gpuzarr.storage.base import ByteRange
from gpuzarr.storage.cache import PinnedLRUCache
from gpuzarr.storage.disk_cache import CachingFetcher, DiskCache
from gpuzarr.storage.local import LocalFileFetcher

REPO = Path(__file__).resolve().parents[1]


def content(key: str, size: int) -> bytes:
    """Deterministic bytes for a key, so any reader can check what it got."""
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def disk_files(cache: DiskCache) -> list[Path]:
    return [p for p in cache.data_dir.glob("*/*") if p.is_file()]


def test_roundtrip_and_stats(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20)
    cache.put("a", b"hello", 0.01)
    cache.put_many([("b", bytearray(b"world"), 0.0), ("c", memoryview(b"!"), 0.0)])
    assert cache.get_many(["a", "x", "c", "b"]) == [b"hello", None, b"!", b"world"]
    s = cache.stats()
    assert (s.hits, s.misses, s.insertions, s.entries, s.bytes_used) == (3, 1, 3, 3, 11)


def test_rewrite_replaces_file(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20)
    cache.put("a", b"one")
    cache.put("a", b"two!")
    assert cache.get("a") == b"two!"
    assert len(disk_files(cache)) == 1 and cache.bytes_used() == 4


def test_corrupted_file_is_never_served(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20)
    cache.put("k", content("k", 1000))
    (victim,) = disk_files(cache)
    raw = bytearray(victim.read_bytes())
    raw[500] ^= 0xFF  # same length, wrong bytes
    victim.write_bytes(bytes(raw))
    assert cache.get("k") is None
    assert cache.stats().corrupt == 1 and cache.stats().entries == 0 and not victim.exists()
    cache.put("t", content("t", 1000))
    (victim,) = disk_files(cache)
    victim.write_bytes(content("t", 1000)[:300])  # torn: short file under a valid row
    assert cache.get("t") is None


def test_budget_respected_and_lru_evicted(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 10_000)
    for i in range(50):
        cache.put(f"k{i}", content(f"k{i}", 900))
        if i >= 2:
            cache.get("k0")  # keep k0 hot
        assert cache.bytes_used() <= 10_000
        assert sum(p.stat().st_size for p in disk_files(cache)) <= 10_000
    assert cache.get("k0") == content("k0", 900)
    assert cache.get("k1") is None  # cold, evicted
    assert cache.stats().evictions > 0
    assert not cache.put("huge", b"x" * 10_001)
    assert cache.verify() == []


def test_orphans_and_temp_files_are_not_served_and_swept(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20)
    cache.put("real", b"data")
    (cache.tmp_dir / "dead.part").write_bytes(b"half a chu")  # killed before os.replace
    orphan = cache.data_dir / "ab" / "abcdef-000000000000"
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"whole but unindexed")  # killed after os.replace, before the row
    assert cache.get("real") == b"data"
    assert cache.sweep(older_than_s=0) == 2
    assert not orphan.exists() and not list(cache.tmp_dir.iterdir())
    assert cache.get("real") == b"data"


WRITER = textwrap.dedent(
    """
    import hashlib, sys
    sys.path.insert(0, {repo!r})
    from gpuzarr.storage.disk_cache import DiskCache

    def content(key, size):
        seed = hashlib.sha256(key.encode()).digest()
        return (seed * (size // len(seed) + 1))[:size]

    cache = DiskCache({directory!r}, {budget}, sweep_orphans_older_than_s=None)
    i = 0
    while True:
        key = f"{tag}-{{i}}"
        cache.put(key, content(key, {size} + i % 7919))
        if i == 3:
            print("ready", flush=True)
        i += 1
        if {limit} and i >= {limit}:
            break
    print("done", i, flush=True)
    """
)


def writer_process(directory: Path, tag: str, *, budget: int, size: int, limit: int = 0) -> subprocess.Popen:
    script = WRITER.format(repo=str(REPO), directory=str(directory), budget=budget, size=size, tag=tag, limit=limit)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def check_every_entry(cache: DiskCache) -> int:
    rows = list(cache._connection().execute("SELECT key FROM entries"))
    keys = [r[0] for r in rows]
    got = cache.get_many(keys)
    for k, data in zip(keys, got, strict=True):
        assert data is not None, f"indexed entry {k} unreadable"
        assert data == content(k, len(data)) and len(data) >= 1
    return len(keys)


def test_sigkill_mid_write_never_serves_torn_chunk(tmp_path: Path) -> None:
    budget = 8 << 20
    leftovers = 0
    for round_ in range(4):
        process = writer_process(tmp_path, f"w{round_}", budget=budget, size=512 * 1024)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.07 * round_)  # land the kill at a different point each round
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        cache = DiskCache(tmp_path, budget, sweep_orphans_older_than_s=None)
        assert check_every_entry(cache) > 0
        assert cache.stats().corrupt == 0
        assert cache.bytes_used() <= budget
        leftovers += cache.sweep(older_than_s=0)  # what the killed writer left behind goes away
        indexed = {r[0] for r in cache._connection().execute("SELECT file FROM entries")}
        on_disk = {f"{p.parent.name}/{p.name}" for p in disk_files(cache)}
        assert on_disk == indexed
        cache.close()
    print(f"files left behind by killed writers (swept): {leftovers}")


def test_two_processes_share_one_directory(tmp_path: Path) -> None:
    budget = 3 << 20
    writers = [writer_process(tmp_path, tag, budget=budget, size=64 * 1024, limit=120) for tag in ("p", "q")]
    outputs = [w.communicate(timeout=120)[0] for w in writers]
    assert all(w.returncode == 0 for w in writers), outputs
    cache = DiskCache(tmp_path, budget)
    assert cache.bytes_used() <= budget
    assert check_every_entry(cache) > 0
    tags = {k.split("-")[0] for (k,) in cache._connection().execute("SELECT key FROM entries")}
    assert tags  # at least one writer's entries survive eviction
    assert cache.stats().corrupt == 0


def test_caching_fetcher_memory_and_disk_tiers(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "c").mkdir(parents=True)
    for i in range(6):
        (root / "c" / str(i)).write_bytes(content(str(i), 1000 + i))

    class CountingFetcher(LocalFileFetcher):
        calls: list[list[str]]

        def fetch(self, keys, ranges=None):  # type: ignore[no-untyped-def]
            self.calls.append(list(keys))
            return super().fetch(keys, ranges)

    inner = CountingFetcher(root)
    inner.calls = []
    memory = PinnedLRUCache(1 << 20, pinned=False)
    disk = DiskCache(tmp_path / "disk", 1 << 20)
    fetcher = CachingFetcher(inner, memory=memory, disk=disk)
    keys = [f"c/{i}" for i in range(6)] + ["c/missing"]
    first = fetcher.fetch(keys)
    assert [bytes(x) if x is not None else None for x in first] == [content(str(i), 1000 + i) for i in range(6)] + [None]
    second = fetcher.fetch(keys[:6])
    assert [bytes(x) for x in second] == [bytes(x) for x in first[:6]]
    assert inner.calls == [keys]  # second batch came from memory
    memory.clear()
    third = fetcher.fetch(keys[:3], [ByteRange(10, 20)] * 3)
    assert [bytes(x) for x in third] == [content(str(i), 1000 + i)[10:30] for i in range(3)]
    assert len(inner.calls) == 2  # ranges are different cache entries
    fresh_memory = PinnedLRUCache(1 << 20, pinned=False)
    fetcher2 = CachingFetcher(inner, memory=fresh_memory, disk=disk, close_inner=False)
    assert [bytes(x) for x in fetcher2.fetch(keys[:6])] == [bytes(x) for x in first[:6]]
    assert len(inner.calls) == 2  # served by the disk tier
    assert fresh_memory.stats().entries == 6  # and promoted to memory
    fetcher.close()


@pytest.mark.parametrize("fsync", [False])
def test_fsync_can_be_disabled(tmp_path: Path, fsync: bool) -> None:
    cache = DiskCache(tmp_path, 1 << 20, fsync=fsync)
    cache.put("a", b"x" * 100)
    assert cache.get("a") == b"x" * 100
