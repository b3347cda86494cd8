"""The benchmark's read-only S3 endpoint (benchmarks/static_s3.py) answers like S3, so its numbers mean something.

The prefetch benchmark's published table was measured against it: it must serve exact
bytes and ranges, S3 error codes, and a zarr array that zarr-python and gpuzarr (both S3
clients) read identically.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import gpuzarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from static_s3 import start_static_s3


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("static-s3")
    (root / "bench" / "blobs").mkdir(parents=True)
    (root / "bench" / "blobs" / "a").write_bytes(bytes(range(100)))
    data = np.arange(40 * 30, dtype="int32").reshape(40, 30)
    array = zarr.create_array(str(root / "bench" / "data.zarr"), shape=data.shape, chunks=(16, 16), dtype="int32",
                              fill_value=-5, compressors=zarr.codecs.ZstdCodec())
    array[:32] = data[:32]
    process, url = start_static_s3(root)
    try:
        yield url, root
    finally:
        process.terminate()
        process.wait(10)


def client(url: str) -> Any:
    from botocore.session import get_session

    return get_session().create_client("s3", endpoint_url=url, aws_access_key_id="k", aws_secret_access_key="s",
                                       region_name="us-east-1")


@pytest.mark.parametrize(("header", "status", "body", "content_range"), [
    (None, 200, bytes(range(100)), None),
    ("bytes=10-14", 206, bytes(range(10, 15)), "bytes 10-14/100"),
    ("bytes=95-", 206, bytes(range(95, 100)), "bytes 95-99/100"),
    ("bytes=-3", 206, bytes([97, 98, 99]), "bytes 97-99/100"),
    ("bytes=90-200", 206, bytes(range(90, 100)), "bytes 90-99/100"),
])
def test_ranges(endpoint: tuple[str, Path], header: str | None, status: int, body: bytes,
                content_range: str | None) -> None:
    request = {"Bucket": "bench", "Key": "blobs/a"} | ({"Range": header} if header else {})
    answer = client(endpoint[0]).get_object(**request)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == status
    assert answer["Body"].read() == body and answer["ContentLength"] == len(body)
    assert answer.get("ContentRange") == content_range


def test_errors_are_s3_errors(endpoint: tuple[str, Path]) -> None:
    from botocore.exceptions import ClientError

    s3 = client(endpoint[0])
    for request, code in [({"Key": "blobs/missing"}, "NoSuchKey"), ({"Key": "blobs/a", "Range": "bytes=100-"},
                                                                   "InvalidRange")]:
        with pytest.raises(ClientError) as info:
            s3.get_object(Bucket="bench", **request)
        assert info.value.response["Error"]["Code"] == code
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket="no-such-bucket", Key="a")
    assert info.value.response["Error"]["Code"] == "NoSuchBucket"


@pytest.mark.parametrize("s3_client", ["obstore", "s3fs"])
def test_zarr_array_reads_like_the_local_copy(endpoint: tuple[str, Path], s3_client: str) -> None:
    url, root = endpoint
    local = zarr.open_array(str(root / "bench" / "data.zarr"), mode="r")
    options = {"endpoint_url": url, "key": "k", "secret": "s"}
    remote = zarr.open_array("s3://bench/data.zarr", mode="r", storage_options=options)
    regions = [(slice(0, 20), slice(3, 23)), (slice(20, 40), slice(10, 30)), (slice(12, 32), slice(0, 20))]
    with gpuzarr.open_array("s3://bench/data.zarr", s3_client=s3_client, **options) as handle:
        out = handle.read_batch(regions, device="cpu")
    expected = np.stack([local[r] for r in regions])
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(np.stack([remote[r] for r in regions]), expected)
