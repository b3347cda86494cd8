"""Opening S3 arrays: region options work, unreachable storage is a clear FetchError, exit is quiet.

Against the real moto server on loopback (``tests/s3_server.py``); "unreachable" is a
loopback port nothing listens on. Every case runs for both S3 clients (obstore, s3fs).
The exit checks run in a child interpreter and assert its stderr has no traceback, no
"Exception ignored" and no "Unclosed client session".
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from s3_server import S3Server, free_port, s3_server  # noqa: F401 - fixture

import gpuzarr
from gpuzarr.errors import ArrayNotFoundError, FetchError
from gpuzarr.storage.retry import RetryPolicy

FAST_RETRY = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
NOISE = ("Traceback", "Exception ignored", "Unclosed client session", "Unclosed connector")


@pytest.fixture(scope="module")
def array_url(s3_server: S3Server) -> str:  # noqa: F811
    bucket = s3_server.create_bucket()
    url = f"s3://{bucket}/a.zarr"
    arr = zarr.create_array(url, shape=(12, 10), chunks=(5, 4), dtype="int32",
                            storage_options={"endpoint_url": s3_server.endpoint_url, "key": s3_server.key,
                                             "secret": s3_server.secret})
    arr[:] = np.arange(120, dtype="int32").reshape(12, 10)
    return url


@pytest.fixture
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials anywhere botocore looks: variables, files, the instance metadata service."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
@pytest.mark.parametrize("spelling", ["region", "region_name"])
def test_region_options_open_and_read(array_url: str, s3_server: S3Server, client: str,  # noqa: F811
                                      spelling: str) -> None:
    options = {"endpoint_url": s3_server.endpoint_url, "key": s3_server.key, "secret": s3_server.secret,
               spelling: s3_server.region}
    handle = gpuzarr.open_array(array_url, s3_client=client, **options)
    assert handle.fetcher.s3_client == client
    regions = [(slice(1, 8), slice(2, 9)), (slice(5, 12), slice(0, 7))]
    expected = zarr.open_array(array_url, mode="r", storage_options={
        k: v for k, v in options.items() if not k.startswith("region")})
    np.testing.assert_array_equal(handle.read_batch(regions, device="cpu"), np.stack([expected[r] for r in regions]))
    handle.close()


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
def test_unreachable_endpoint_is_a_fetch_error_saying_what_and_why(array_url: str, client: str) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(FetchError) as info:
        gpuzarr.open_array(array_url, endpoint_url=endpoint, key="k", secret="s", s3_client=client, retry=FAST_RETRY)
    message = str(info.value)
    assert array_url in message and endpoint in message and "could not read" in message
    assert "not a readable Zarr array" not in message
    assert "attempt" in message  # the reason: the retries spent on a connection that never came


def test_missing_credentials_are_a_fetch_error_with_a_hint(array_url: str, s3_server: S3Server,  # noqa: F811
                                                           no_aws_environment: None) -> None:
    with pytest.raises(FetchError) as info:
        gpuzarr.open_array(array_url, endpoint_url=s3_server.endpoint_url, retry=FAST_RETRY)
    message = str(info.value)
    assert array_url in message and "credentials" in message.lower() and "anon=True" in message
    assert "not a readable Zarr array" not in message


def test_missing_array_is_still_not_found(array_url: str, s3_server: S3Server) -> None:  # noqa: F811
    with pytest.raises(ArrayNotFoundError):
        gpuzarr.open_array(array_url.replace("a.zarr", "nothing-here.zarr"), endpoint_url=s3_server.endpoint_url,
                           key=s3_server.key, secret=s3_server.secret)


def run_child(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    tests = str(Path(__file__).parent)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
                               **env}, check=False)


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
def test_exit_is_quiet_after_reads_and_failed_opens(array_url: str, s3_server: S3Server, client: str,  # noqa: F811
                                                    tmp_path: Path) -> None:
    """Handles never closed, handles dropped, failed opens: nothing on stderr at interpreter exit."""
    result = run_child(f"""
        import gc
        import gpuzarr
        from gpuzarr.errors import ArrayNotFoundError, FetchError
        from gpuzarr.storage.retry import RetryPolicy
        from s3_server import free_port
        fast = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
        ok = dict(endpoint_url={s3_server.endpoint_url!r}, key={s3_server.key!r}, secret={s3_server.secret!r},
                  s3_client={client!r})
        kept = gpuzarr.open_array({array_url!r}, **ok)
        print(kept.read_batch([(slice(0, 12), slice(0, 10))], device="cpu").sum())
        dropped = gpuzarr.open_array({array_url!r}, **ok)
        dropped[0:3, 0:3]
        del dropped
        gc.collect()
        for options in (dict(ok, endpoint_url=f"http://127.0.0.1:{{free_port()}}"), dict(endpoint_url=ok["endpoint_url"])):
            try:
                gpuzarr.open_array({array_url!r}, retry=fast, **options)
            except FetchError as exc:
                print("FetchError", type(exc).__name__)
        try:
            gpuzarr.open_array({array_url.replace("a.zarr", "none.zarr")!r}, **ok)
        except ArrayNotFoundError:
            print("ArrayNotFoundError")
        """, AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(int(np.arange(120).sum())), "FetchError", "FetchError", "FetchError",
                                     "FetchError", "ArrayNotFoundError"]
    for noise in NOISE:
        assert noise not in result.stderr, f"{noise!r} on stderr:\n{result.stderr}"
