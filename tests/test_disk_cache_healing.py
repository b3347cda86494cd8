"""A damaged disk-cache index heals itself: a warning, a new empty index, reads served from the store.

The damage is real: the SQLite index file overwritten with garbage, truncated, its table
dropped, its generation pointer garbled. No error may reach the reader, values must equal
zarr-python's, the tier must work again afterwards, and other cache objects (other
processes) must move to the new index instead of rebuilding it again.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import gpuzarr
from gpuzarr.errors import GpuzarrWarning
from gpuzarr.storage.disk_cache import CachingFetcher, DiskCache
from gpuzarr.storage.local import LocalFileFetcher


def garble(file: Path) -> None:
    size = max(file.stat().st_size, 4096)
    file.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, size=size, dtype=np.uint8)))


def truncate(file: Path) -> None:
    with open(file, "r+b") as handle:
        handle.truncate(100)


def drop_table(file: Path) -> None:
    with sqlite3.connect(file) as connection:
        connection.execute("DROP TABLE entries")


def damage(cache: DiskCache, how: str) -> None:
    """Damage the index the way ``how`` says, with this object's connection closed (as after a crash)."""
    index = cache.index_path
    cache.close()
    if how == "pointer":
        cache.pointer_path.write_text("not an index name\x00")
        return
    for suffix in ("-wal", "-shm"):
        (index.parent / (index.name + suffix)).unlink(missing_ok=True)
    {"garbage": garble, "truncated": truncate, "dropped-table": drop_table}[how](index)


def filled(tmp_path: Path) -> DiskCache:
    cache = DiskCache(tmp_path / "tier", 1 << 20)
    assert cache.put_many([(f"k{i}", bytes([i]) * 100, 0.0) for i in range(5)]) == 5
    return cache


@pytest.mark.parametrize("how", ["garbage", "truncated", "dropped-table"])
def test_damaged_index_heals_on_the_next_read(tmp_path: Path, how: str) -> None:
    cache = filled(tmp_path)
    damage(cache, how)
    with pytest.warns(GpuzarrWarning, match="index was damaged"):
        assert cache.get_many(["k1", "k2"]) == [None, None]
    assert cache.stats().rebuilds == 1
    assert not list(cache.data_dir.glob("*/*")), "files of the damaged index are removed"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # healed: no more warnings
        assert cache.put("k1", b"new" * 10)
        assert cache.get("k1") == b"new" * 10
        assert cache.stats().entries == 1


@pytest.mark.parametrize("how", ["garbage", "truncated", "pointer"])
def test_damaged_index_heals_at_open(tmp_path: Path, how: str) -> None:
    cache = filled(tmp_path)
    if how == "pointer":  # a pointer exists only after a rebuild: make one first
        damage(cache, "garbage")
        with pytest.warns(GpuzarrWarning):
            cache.stats()
    damage(cache, how)
    with pytest.warns(GpuzarrWarning, match="index was damaged"):
        reopened = DiskCache(tmp_path / "tier", 1 << 20)
    assert reopened.stats().entries == 0
    assert reopened.put("a", b"x") and reopened.get("a") == b"x"


def test_a_damaged_generation_heals_again(tmp_path: Path) -> None:
    cache = filled(tmp_path)
    for _ in range(2):
        damage(cache, "garbage")
        with pytest.warns(GpuzarrWarning):
            assert cache.get("k0") is None
        assert cache.put("k0", b"again")
    assert cache.stats().rebuilds == 2 and cache.get("k0") == b"again"
    assert len(list(cache.directory.glob("index*.sqlite3"))) == 1, "damaged generations are removed"


def test_other_cache_objects_follow_the_new_index(tmp_path: Path) -> None:
    """Another object (as another process would) moves to the rebuilt index instead of rebuilding it again."""
    first = filled(tmp_path)
    second = DiskCache(tmp_path / "tier", 1 << 20)
    assert second.get("k3") == bytes([3]) * 100
    second.close()
    damage(first, "garbage")
    with pytest.warns(GpuzarrWarning):
        first.get("k3")
    first.put("fresh", b"made after the rebuild")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert second.get("fresh") == b"made after the rebuild"
    assert second.stats().rebuilds == 0 and second.stats().entries == 1


def test_another_process_follows_the_new_index(tmp_path: Path) -> None:
    cache = filled(tmp_path)
    damage(cache, "garbage")
    with pytest.warns(GpuzarrWarning):
        cache.put("from-parent", b"parent bytes")
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "from gpuzarr.storage.disk_cache import DiskCache\n"
        f"c = DiskCache({str(tmp_path / 'tier')!r}, 1 << 20)\n"
        "assert c.get('from-parent') == b'parent bytes', c.get('from-parent')\n"
        "assert c.put('from-child', b'child bytes')\n"
        "assert c.stats().rebuilds == 0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert cache.get("from-child") == b"child bytes"


def test_reads_through_a_damaged_tier_equal_zarr(tmp_path: Path) -> None:
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(32, 32), chunks=(8, 8), dtype="float32",
                            compressors=zarr.codecs.ZstdCodec())
    arr[:] = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    regions = [(slice(2, 20), slice(5, 29)), (slice(10, 28), slice(0, 24))]
    expected = np.stack([arr[r] for r in regions])
    handle = gpuzarr.open_array(str(tmp_path / "a.zarr"), disk_cache=DiskCache(tmp_path / "tier", 1 << 20))
    np.testing.assert_array_equal(handle.read_batch(regions, device="cpu"), expected)
    damage(handle.disk_cache, "garbage")
    with pytest.warns(GpuzarrWarning, match="index was damaged"):
        np.testing.assert_array_equal(handle.read_batch(regions, device="cpu"), expected)
    np.testing.assert_array_equal(handle.read_batch(regions, device="cpu"), expected)
    assert handle.disk_cache.stats().hits > 0, "the healed tier serves again"


def test_a_tier_that_cannot_heal_does_not_stop_reads(tmp_path: Path) -> None:
    """Writes to the tier fail (its temp directory replaced by a file): skipped with a warning, bytes from the store."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "k").write_bytes(b"payload")
    disk = DiskCache(tmp_path / "tier", 1 << 20)
    fetcher = CachingFetcher(LocalFileFetcher(tmp_path / "store"), disk=disk)
    disk.tmp_dir.rmdir()
    disk.tmp_dir.write_bytes(b"")
    with pytest.warns(GpuzarrWarning, match="write failed"):
        assert [bytes(b) for b in fetcher.fetch(["k"])] == [b"payload"]  # type: ignore[arg-type]
    assert disk.stats().entries == 0
