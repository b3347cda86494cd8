"""gpuzarr over S3 (moto): batches equal zarr-python's, sharded arrays, anonymous and bad credentials.

Every test that reads through gpuzarr runs once per S3 client (obstore and s3fs).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zarr
from s3_server import S3Server, s3_server  # noqa: F401 - fixture

import gpuzarr
from gpuzarr.errors import FetchError, GpuzarrError
from gpuzarr.storage.base import ByteRange, SuffixRange
from gpuzarr.storage.remote import RemoteFetcher
from gpuzarr.storage.select import make_fetcher


def direct_options(server: S3Server) -> dict[str, Any]:
    return {"endpoint_url": server.endpoint_url, "key": server.key, "secret": server.secret}


@pytest.fixture(params=["obstore", "s3fs"])
def client(request: pytest.FixtureRequest) -> str:
    """The S3 client gpuzarr reads with (``s3_client=``)."""
    return request.param


@pytest.fixture(scope="module")
def dataset(s3_server: S3Server) -> dict[str, Any]:  # noqa: F811
    """A group with a compressed 3-D array and a sharded 2-D array, written by zarr-python."""
    bucket = s3_server.create_bucket()
    url = f"s3://{bucket}/data.zarr"
    group = zarr.open_group(url, mode="w", storage_options=direct_options(s3_server))
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(20, 30, 24)).astype("float32")
    raw = group.create_array("raw", shape=volume.shape, chunks=(8, 10, 12), dtype="float32",
                             compressors=zarr.codecs.BloscCodec(cname="zstd"), fill_value=0)
    raw[:] = volume
    labels = np.arange(64 * 40, dtype="int32").reshape(64, 40)
    sharded = group.create_array("sharded", shape=labels.shape, chunks=(8, 8), shards=(32, 16), dtype="int32",
                                 compressors=zarr.codecs.ZstdCodec(), fill_value=-1)
    sharded[:] = labels
    sharded[40:64, 32:40] = -1  # partly empty shards
    return {"bucket": bucket, "url": url, "raw": raw, "sharded": sharded, "volume": volume}


def random_regions(shape: tuple[int, ...], extent: tuple[int, ...], n: int, seed: int) -> list[tuple[slice, ...]]:
    rng = np.random.default_rng(seed)
    starts = [rng.integers(0, s - e + 1, size=n) for s, e in zip(shape, extent, strict=True)]
    return [tuple(slice(int(st[i]), int(st[i]) + e) for st, e in zip(starts, extent, strict=True)) for i in range(n)]


@pytest.fixture
def raw_handle(dataset: dict[str, Any], s3_server: S3Server, client: str) -> Iterator[Any]:  # noqa: F811
    handle = gpuzarr.open_array(f"{dataset['url']}/raw", s3_client=client, **direct_options(s3_server))
    yield handle
    handle.close()


def test_open_uses_the_remote_fetcher(raw_handle: Any, client: str) -> None:
    assert isinstance(raw_handle.fetcher, RemoteFetcher)
    assert raw_handle.fetcher.store_id.startswith("s3://")
    assert raw_handle.fetcher.s3_client == client and f"client={client}" in repr(raw_handle.fetcher)


@pytest.mark.parametrize("seed", [0, 1])
def test_batches_equal_zarr_python(raw_handle: Any, dataset: dict[str, Any], seed: int) -> None:
    raw = dataset["raw"]
    for batch in range(3):
        regions = random_regions(raw.shape, (5, 11, 13), 6, seed * 100 + batch)
        out = raw_handle.read_batch(regions, device="cpu")
        expected = np.stack([raw[r] for r in regions])
        np.testing.assert_array_equal(out, expected)


def test_sharded_array_over_s3(dataset: dict[str, Any], s3_server: S3Server, client: str) -> None:  # noqa: F811
    sharded = dataset["sharded"]
    with gpuzarr.open_array(dataset["url"], path="sharded", s3_client=client, **direct_options(s3_server)) as handle:
        assert handle.shards == (32, 16)
        regions = random_regions(sharded.shape, (9, 7), 10, 3) + [(slice(50, 59), slice(33, 40))]
        out = handle.read_batch(regions, device="cpu")
        np.testing.assert_array_equal(out, np.stack([sharded[r] for r in regions]))


def test_anonymous_public_bucket(s3_server: S3Server, client: str) -> None:  # noqa: F811
    bucket = s3_server.create_bucket(public_read=True)
    url = f"s3://{bucket}/pub.zarr"
    data = np.arange(200, dtype="uint16").reshape(10, 20)
    array = zarr.create_array(url, shape=data.shape, chunks=(4, 8), dtype="uint16",
                              storage_options=direct_options(s3_server))
    array[:] = data
    with gpuzarr.open_array(url, anon=True, endpoint_url=s3_server.endpoint_url, s3_client=client) as handle:
        assert handle.fetcher._options.get("anon") is True and handle.fetcher.s3_client == client
        out = handle.read_batch([(slice(1, 5), slice(3, 17)), (slice(6, 10), slice(0, 14))], device="cpu")
    np.testing.assert_array_equal(out[0], data[1:5, 3:17])
    np.testing.assert_array_equal(out[1], data[6:10, 0:14])


def test_fetcher_ranges_and_missing_keys(dataset: dict[str, Any], s3_server: S3Server,  # noqa: F811
                                         client: str) -> None:
    s3_server.client().put_object(Bucket=dataset["bucket"], Key="blobs/a", Body=bytes(range(100)))
    with make_fetcher(f"s3://{dataset['bucket']}/blobs", {**direct_options(s3_server), "s3_client": client}) as fetcher:
        got = fetcher.fetch(["a", "a", "a", "nope", "a"], [None, ByteRange(10, 5), SuffixRange(3), None, ByteRange(7, 0)])
        assert got == [bytes(range(100)), bytes(range(10, 15)), bytes([97, 98, 99]), None, b""]
        for past_end in (ByteRange(90, 20), ByteRange(100, 1), ByteRange(500, 3), SuffixRange(101)):
            with pytest.raises(FetchError, match="past the end") as info:
                fetcher.fetch(["a"], [past_end])
            assert info.value.key == "a"


@pytest.fixture
def moto_auth_enforced(s3_server: S3Server) -> Iterator[None]:  # noqa: F811
    """Make moto check signatures and access keys (it accepts anything by default)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    previous = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = ActionAuthenticatorMixin.request_count
    try:
        yield
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = previous


def test_wrong_credentials_give_a_clear_error(dataset: dict[str, Any], s3_server: S3Server,  # noqa: F811
                                              moto_auth_enforced: None, client: str) -> None:
    options = {"endpoint_url": s3_server.endpoint_url, "key": "AKIAWRONGWRONGWRONG0", "secret": "nope",
               "s3_client": client}
    with RemoteFetcher(dataset["url"], options) as fetcher, pytest.raises(FetchError) as info:
        fetcher.fetch(["raw/zarr.json"])
    message = str(info.value)
    assert info.value.key == "raw/zarr.json"
    assert "InvalidAccessKeyId" in message and "credentials" in message
    assert "attempt" not in message  # refused at once, not retried
    with pytest.raises(GpuzarrError):
        gpuzarr.open_array(f"{dataset['url']}/raw", **options)


def test_anonymous_read_of_private_bucket_is_refused(dataset: dict[str, Any], s3_server: S3Server,  # noqa: F811
                                                      client: str) -> None:
    options = {"endpoint_url": s3_server.endpoint_url, "anon": True, "s3_client": client}
    with RemoteFetcher(dataset["url"], options) as fetcher, pytest.raises(FetchError, match="refused") as info:
        fetcher.fetch(["raw/zarr.json"])
    assert info.value.key == "raw/zarr.json" and dataset["bucket"] in str(info.value)


def test_missing_bucket_is_an_error_not_a_missing_chunk(s3_server: S3Server, client: str) -> None:  # noqa: F811
    options = {**direct_options(s3_server), "s3_client": client}
    with RemoteFetcher("s3://gz-no-such-bucket-here/data.zarr", options) as fetcher, pytest.raises(FetchError) as info:
        fetcher.fetch(["c/0/0"])
    assert "gz-no-such-bucket-here" in str(info.value) and info.value.key == "c/0/0"


def test_client_choice(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """auto → obstore only where every option means the same to it; s3fs otherwise; bad names are refused."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    url = "s3://bucket/data.zarr"
    assert RemoteFetcher(url, direct_options(s3_server)).s3_client == "obstore"
    assert RemoteFetcher(url, {"anon": True, "region": "us-west-2"}).s3_client == "obstore"
    assert RemoteFetcher(url, {"anon": True}).s3_client == "s3fs"  # AWS, region unknown: botocore finds it
    assert RemoteFetcher(url, {**direct_options(s3_server), "client_kwargs": {"region_name": "eu-west-1"}}
                         ).s3_client == "obstore"
    assert RemoteFetcher(url, {"profile": "research", "region": "eu-west-1"}).s3_client == "s3fs"  # AWS config files
    assert RemoteFetcher(url, {"region": "eu-west-1"}).s3_client == "s3fs"  # credentials from ~/.aws or instance role
    assert RemoteFetcher(url, {**direct_options(s3_server), "config_kwargs": {"signature_version": "s3v4"}}
                         ).s3_client == "s3fs"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    assert RemoteFetcher(url, {}).s3_client == "s3fs"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert RemoteFetcher(url, {}).s3_client == "obstore"
    with pytest.raises(ValueError, match="need s3fs"):
        RemoteFetcher(url, {"profile": "research", "s3_client": "obstore"})
    with pytest.raises(ValueError, match="s3_client must be one of"):
        RemoteFetcher(url, {"s3_client": "boto"})


def test_credentials_and_endpoint_from_the_environment(dataset: dict[str, Any], s3_server: S3Server,  # noqa: F811
                                                        client: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No storage_options at all: the usual AWS_* variables reach the store, for either client."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    raw = dataset["raw"]
    regions = random_regions(raw.shape, (5, 11, 13), 4, 9)
    with gpuzarr.open_array(f"{dataset['url']}/raw", s3_client=client) as handle:
        assert handle.fetcher.s3_client == client
        np.testing.assert_array_equal(handle.read_batch(regions, device="cpu"), np.stack([raw[r] for r in regions]))


def test_wrong_credentials_from_the_environment_are_refused(dataset: dict[str, Any], s3_server: S3Server,  # noqa: F811
                                                            client: str, monkeypatch: pytest.MonkeyPatch,
                                                            moto_auth_enforced: None) -> None:
    """The environment's key is the one sent: moto, checking keys, refuses it by name."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMTHEENVIRON00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    options = {"endpoint_url": s3_server.endpoint_url, "s3_client": client}
    with RemoteFetcher(dataset["url"], options) as fetcher, pytest.raises(FetchError) as info:
        fetcher.fetch(["raw/zarr.json"])
    assert "InvalidAccessKeyId" in str(info.value) and info.value.key == "raw/zarr.json"
