"""Reads through a proxy that injects 503s, stalls, resets and cut bodies: exact or a clear FetchError."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import zarr
from s3_server import FaultConfig, FaultProxy, S3Server, fault_proxy, fault_proxy_server, s3_server  # noqa: F401

import gpuzarr
from gpuzarr.errors import FetchError
from gpuzarr.storage.base import ByteRange, SuffixRange
from gpuzarr.storage.remote import RemoteFetcher, check_body
from gpuzarr.storage.retry import RetryPolicy, ShortReadError, is_transient

FAST_RETRY = RetryPolicy(max_attempts=12, base_delay=0.002, max_delay=0.02, deadline=None)


def blob(i: int) -> bytes:
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * 200)[: 3000 + 37 * i]


@pytest.fixture(scope="module")
def blobs(s3_server: S3Server) -> str:  # noqa: F811
    bucket = s3_server.create_bucket(public_read=True)  # readable over plain HTTP too
    client = s3_server.client()
    for i in range(40):
        client.put_object(Bucket=bucket, Key=f"blobs/{i}", Body=blob(i))
    return bucket


@pytest.fixture(scope="module")
def array_url(s3_server: S3Server) -> tuple[str, np.ndarray]:  # noqa: F811
    bucket = s3_server.create_bucket()
    url = f"s3://{bucket}/faulty.zarr"
    data = np.random.default_rng(1).integers(0, 1000, size=(48, 48), dtype="int32")
    array = zarr.create_array(url, shape=data.shape, chunks=(8, 8), dtype="int32",
                              compressors=zarr.codecs.ZstdCodec(),
                              storage_options={"endpoint_url": s3_server.endpoint_url, "key": s3_server.key,
                                               "secret": s3_server.secret})
    array[:] = data
    return url, data


def proxied(server: S3Server, proxy: FaultProxy) -> dict[str, Any]:
    return {"endpoint_url": proxy.endpoint_url, "key": server.key, "secret": server.secret}


@pytest.fixture(params=["obstore", "s3fs"])
def client(request: pytest.FixtureRequest) -> str:
    """The S3 client gpuzarr reads with (``s3_client=``): both must keep every guarantee."""
    return request.param


#: the client's per-request timeout where a test injects stalls: a stalled request is cut at
#: this and retried, long before the proxy's stall would end
STALL_CUT = 1.0
#: the proxy holds a stalled request this long; a read that waited for it would show in the test's time
LONG_STALL = 20.0


@pytest.fixture
def open_faulty(array_url: tuple[str, np.ndarray], s3_server: S3Server,  # noqa: F811
                fault_proxy: FaultProxy, client: str) -> Iterator[Callable[[float], Any]]:  # noqa: F811
    """Open the array through the proxy with a given ``request_timeout`` (metadata is read without faults).

    A test that counts requests uses a timeout the box can never reach under load: an attempt that
    timed out on a busy CI machine may never reach the proxy's counter, so an exact count only holds
    when every attempt is answered.
    """
    url, _ = array_url
    handles: list[Any] = []

    def open_with(request_timeout: float) -> Any:
        handle = gpuzarr.open_array(url, s3_client=client, request_timeout=request_timeout,
                                    **proxied(s3_server, fault_proxy))
        assert isinstance(handle.fetcher, RemoteFetcher)
        handle.fetcher.retry = FAST_RETRY
        handles.append(handle)
        return handle

    yield open_with
    for handle in handles:
        handle.close()


def test_array_reads_are_exact_through_faults(open_faulty: Callable[[float], Any],
                                              array_url: tuple[str, np.ndarray],
                                              fault_proxy: FaultProxy) -> None:  # noqa: F811
    """503s, resets, cut bodies and stalls past the timeout: every batch exact, none waits a stall out."""
    _, data = array_url
    handle = open_faulty(STALL_CUT)
    fault_proxy.configure(FaultConfig(error_503=0.1, reset=0.1, truncate=0.1, stall=0.05, stall_seconds=LONG_STALL,
                                      seed=5))
    rng = np.random.default_rng(2)
    started = time.monotonic()
    for _ in range(4):
        starts = rng.integers(0, 48 - 12, size=(6, 2))
        regions = [(slice(int(a), int(a) + 12), slice(int(b), int(b) + 12)) for a, b in starts]
        out = handle.read_batch(regions, device="cpu")
        np.testing.assert_array_equal(out, np.stack([data[r] for r in regions]))
    elapsed = time.monotonic() - started
    counts = fault_proxy.counts
    assert counts["error_503"] and counts["reset"] and counts["truncate"] and counts["stall"], counts
    # a stalled request is cut at the timeout and retried: the batches never wait for the stall to end
    assert elapsed < LONG_STALL, (elapsed, counts)


@pytest.mark.parametrize("fault", ["truncate", "reset", "error_503"])
def test_fetcher_never_returns_wrong_bytes(blobs: str, s3_server: S3Server, fault_proxy: FaultProxy,  # noqa: F811
                                           fault: str, client: str) -> None:
    fault_proxy.configure(FaultConfig(**{fault: 0.4}, seed=11))
    rng = np.random.default_rng(3)
    keys = [f"{i}" for i in range(40)]
    ranges: list[Any] = []
    for i in range(40):
        size = len(blob(i))
        kind = i % 3
        if kind == 0:
            ranges.append(None)
        elif kind == 1:
            start = int(rng.integers(0, size - 100))
            ranges.append(ByteRange(start, int(rng.integers(1, size - start))))
        else:
            ranges.append(SuffixRange(int(rng.integers(1, size))))
    with RemoteFetcher(f"s3://{blobs}/blobs", {**proxied(s3_server, fault_proxy), "s3_client": client},
                       retry=FAST_RETRY, request_timeout=2.0) as fetcher:
        got = fetcher.fetch(keys, ranges)
    for i, (data, byte_range) in enumerate(zip(got, ranges, strict=True)):
        whole = blob(i)
        if byte_range is None:
            expected = whole
        elif isinstance(byte_range, ByteRange):
            expected = whole[byte_range.start : byte_range.start + byte_range.length]
        else:
            expected = whole[-byte_range.length :]
        assert data == expected, f"key {i}: wrong bytes under {fault}"
    assert fault_proxy.counts[fault] > 5


def test_permanently_failing_key_raises_fetch_error_naming_it(open_faulty: Callable[[float], Any],
                                                              fault_proxy: FaultProxy) -> None:  # noqa: F811
    handle = open_faulty(60.0)  # only 503s here: every attempt is answered, so the proxy counts each one
    fault_proxy.configure(FaultConfig(always_fail=("/c/1/2",)))
    with pytest.raises(FetchError) as info:
        handle.read_batch([(slice(0, 24), slice(0, 24))], device="cpu")
    assert info.value.key == "c/1/2"
    assert "'c/1/2'" in str(info.value) and f"{FAST_RETRY.max_attempts} attempt" in str(info.value)
    assert fault_proxy.counts["error_503"] == FAST_RETRY.max_attempts  # exactly the retry budget
    assert fault_proxy.counts["passed"] == 8  # the other eight chunks of the region, each read once


def test_http_backend_through_faults(blobs: str, s3_server: S3Server, fault_proxy: FaultProxy) -> None:  # noqa: F811
    """Plain HTTP range reads (moto serves path-style URLs) with the same guarantees."""
    fault_proxy.configure(FaultConfig(error_503=0.15, truncate=0.15, reset=0.1, seed=2))
    url = f"{fault_proxy.endpoint_url}/{blobs}/blobs"
    with RemoteFetcher(url, retry=FAST_RETRY, request_timeout=2.0) as fetcher:
        keys = [str(i) for i in range(40)] + ["missing"]
        got = fetcher.fetch(keys, [ByteRange(5, 100)] * 40 + [None])
    assert got[:40] == [blob(i)[5:105] for i in range(40)] and got[40] is None
    assert sum(fault_proxy.counts[f] for f in ("error_503", "truncate", "reset")) > 5


def test_check_body_rules() -> None:
    with pytest.raises(ShortReadError):
        check_body("k", None, b"abc", 10, None)  # cut body
    with pytest.raises(ShortReadError):
        check_body("k", ByteRange(0, 10), b"abc", 3, "bytes 0-2/100")  # short range of a long object
    with pytest.raises(FetchError, match="past the end"):
        check_body("k", ByteRange(98, 10), b"ab", 2, "bytes 98-99/100")  # the object really ends there
    with pytest.raises(ShortReadError):
        check_body("k", ByteRange(5, 3), b"abc", 3, "bytes 0-2/100")  # wrong part of the object
    assert check_body("k", ByteRange(2, 3), b"0123456789", 10, None, status=200) == b"234"  # Range ignored
    assert check_body("k", SuffixRange(2), b"89", 2, "bytes 8-9/10") == b"89"


def test_retry_classification() -> None:
    assert is_transient(ShortReadError("short"))
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert not is_transient(PermissionError("denied"))
    assert not is_transient(FileNotFoundError())
    policy = RetryPolicy(max_attempts=3, base_delay=0.0)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert policy.call(flaky, key="k") == "ok" and len(calls) == 3
    with pytest.raises(FetchError, match="'k2' failed after 3 attempt"):
        policy.call(lambda: (_ for _ in ()).throw(ConnectionResetError("reset")), key="k2")
