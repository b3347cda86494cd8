"""Any zarr Store reads through ZarrStoreFetcher: zip archives (sharded too) equal zarr-python."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import ZipStore

import gpuzarr
from gpuzarr.io.store import ZarrStoreFetcher


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
