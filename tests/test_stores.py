"""Any zarr Store reads through ZarrStoreFetcher: zip archives, memory stores and Icechunk sessions
(sharded too) equal zarr-python."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import MemoryStore, ZipStore

import gpuzarr
from gpuzarr.storage.zarr_store import ZarrStoreFetcher


@pytest.mark.parametrize("shards", [None, (14, 14)])
def test_zip_store(tmp_path: Path, shards: tuple[int, int] | None) -> None:
    writer = ZipStore(tmp_path / "a.zip", mode="w")
    arr = zarr.create_array(writer, shape=(30, 30), chunks=(7, 7), shards=shards, dtype="float32", fill_value=-1,
                            compressors=zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle"))
    arr[:20] = np.arange(600, dtype="float32").reshape(20, 30)
    writer.close()
    reader = zarr.open_array(ZipStore(tmp_path / "a.zip", mode="r"), mode="r")
    handle = gpuzarr.open_array(reader)
    assert isinstance(handle.fetcher, ZarrStoreFetcher)
    regions = [(slice(3, 20), slice(5, 22)), (slice(13, 30), slice(0, 17)), (slice(0, 17), slice(13, 30))]
    np.testing.assert_array_equal(handle.read_batch(regions, device="cpu"), np.stack([reader[r] for r in regions]))


REGIONS = [(slice(3, 20), slice(5, 22)), (slice(13, 30), slice(0, 17)), (slice(0, 17), slice(13, 30))]


def fill(arr: zarr.Array) -> None:
    arr[:20] = np.arange(600).reshape(20, 30).astype(arr.dtype)  # rows 20.. stay unwritten: fill value


@pytest.mark.parametrize("shards", [None, (14, 14)])
def test_memory_store(shards: tuple[int, int] | None) -> None:
    arr = zarr.create_array(MemoryStore(), shape=(30, 30), chunks=(7, 7), shards=shards, dtype="int16",
                            fill_value=3, compressors=zarr.codecs.ZstdCodec())
    fill(arr)
    handle = gpuzarr.open_array(arr)
    assert isinstance(handle.fetcher, ZarrStoreFetcher) and "MemoryStore" in repr(handle.fetcher)
    np.testing.assert_array_equal(handle.read_batch(REGIONS, device="cpu"), np.stack([arr[r] for r in REGIONS]))


@pytest.mark.parametrize("shards", [None, (14, 14)])
def test_icechunk_session(tmp_path: Path, shards: tuple[int, int] | None) -> None:
    """A committed Icechunk snapshot, read through a read-only session's store (a group member)."""
    icechunk = pytest.importorskip("icechunk")
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    group = zarr.open_group(session.store, mode="w")
    arr = group.create_array("frames", shape=(30, 30), chunks=(7, 7), shards=shards, dtype="float32",
                             fill_value=np.nan, compressors=zarr.codecs.BloscCodec(cname="zstd", shuffle="bitshuffle"))
    fill(arr)
    session.commit("frames")
    snapshot = zarr.open_group(repo.readonly_session(branch="main").store, mode="r")
    handle = gpuzarr.open_group(snapshot)["frames"]
    assert isinstance(handle.fetcher, ZarrStoreFetcher)
    expected = np.stack([snapshot["frames"][r] for r in REGIONS])
    np.testing.assert_array_equal(handle.read_batch(REGIONS, device="cpu"), expected)  # NaN fill compares equal
