"""Remote fetchers: S3 (and S3-compatible) and plain HTTP(S) range reads.

Host reads (:meth:`RemoteFetcher.fetch`) run as one ``asyncio.gather`` per batch on
fsspec's I/O event-loop thread, bounded by ``max_concurrency`` requests in flight:

* ``s3://`` goes through one of two clients, chosen once at open (``s3_client=``):

  - **obstore** (Rust ``object_store``; ``pip install obstore``): about 0.13 ms of
    client CPU per GET against 0.9 ms for aiobotocore on our 2-core box, which decides
    the throughput when a batch needs hundreds of small chunks. ``"auto"`` (the
    default) takes it when it is installed and every storage option has an obstore
    equivalent (:func:`obstore_options`): ``key``/``secret``/``token``, ``anon``,
    ``endpoint_url``, region, ``requester_pays``, with credentials given explicitly, by
    ``anon=True`` or by ``AWS_ACCESS_KEY_ID``, and an endpoint or a region known.
    obstore's own retries are off.
  - **s3fs**' aiobotocore client otherwise: what zarr-python uses for ``s3://``, so
    every ``storage_options`` key (``profile``, ``config_kwargs``, ``client_kwargs``…)
    and AWS config file means what it means to ``zarr.open``. We call ``get_object``
    directly instead of s3fs' ``cat`` helpers so that *one* retry policy applies
    (s3fs' and botocore's retry loops are switched off).

  Either way the answer's range and object size are checked against the request.
* ``http://`` / ``https://`` goes through **aiohttp** with ``Range`` headers.

Device reads (:meth:`RemoteFetcher.fetch_device`) use kvikio's ``RemoteFile`` (libcurl,
parallel range reads straight into a device buffer) when a GPU is usable and kvikio
was built with remote support; otherwise host reads packed into a pinned arena and one asynchronous
host→device copy on the current stream (:func:`gpuzarr.storage.buffers.stage_to_device`).

Every read is wrapped in :class:`~gpuzarr.storage.retry.RetryPolicy`: 429/5xx, timeouts,
connection resets and short bodies are retried with exponential backoff and jitter;
a missing key reads as ``None``; bad credentials / access denied / a range past the
end fail at once; after the budget a :class:`~gpuzarr.errors.FetchError` names the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlparse

import numpy as np

from gpuzarr.errors import ConfigurationError, DeviceUnavailableError, FetchError
from gpuzarr.settings import config
from gpuzarr.storage import local as _local
from gpuzarr.storage.base import (
    Buffer,
    ByteRange,
    ChunkFetcher,
    Range,
    SuffixRange,
    normalize_request,
)
from gpuzarr.storage.buffers import DeviceBatch, aligned_slots, stage_to_device
from gpuzarr.storage.local import range_past_end_error, resolve_extent
from gpuzarr.storage.retry import PermanentFetchError, RetryPolicy, ShortReadError
from gpuzarr.threads import ForkLocal, ThreadPool

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

#: storage_options keys that only gpuzarr understands (removed before s3fs sees them).
FETCHER_ONLY_OPTIONS = ("max_concurrency", "retry", "use_kvikio", "request_timeout", "s3_client")

#: the S3 clients :class:`RemoteFetcher` can use (``s3_client=``).
S3_CLIENTS = ("auto", "obstore", "s3fs")

_STATUS = re.compile(r"status code: (\d{3})")
_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")


def _parse_content_range(header: str | None) -> tuple[int, int, int | None] | None:
    if not header:
        return None
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def _range_header(byte_range: Range) -> str | None:
    if byte_range is None:
        return None
    if isinstance(byte_range, SuffixRange):
        return f"bytes=-{byte_range.length}"
    return f"bytes={byte_range.start}-{byte_range.start + byte_range.length - 1}"


def check_body(key: str, byte_range: Range, body: bytes, content_length: int | None,
               content_range: str | None, status: int | None = None) -> bytes:
    """Return ``body`` if it is exactly what was asked for; raise otherwise.

    A body shorter than the server promised is :class:`ShortReadError` (retried); a
    range that the *object* cannot satisfy is :class:`FetchError` (permanent).
    """
    if content_length is not None and len(body) != content_length:
        raise ShortReadError(f"chunk key {key!r}: body has {len(body)} bytes, server announced {content_length}")
    if byte_range is None:
        return body
    want = byte_range.length
    if status == 200 and content_range is None:
        # the server ignored the Range header and sent the whole object: cut it here
        offset, length = resolve_extent(key, len(body), byte_range)
        return body[offset : offset + length]
    parsed = _parse_content_range(content_range)
    total = parsed[2] if parsed else None
    if len(body) == want:
        if parsed is not None and isinstance(byte_range, ByteRange) and parsed[0] != byte_range.start:
            raise ShortReadError(f"chunk key {key!r}: server answered range starting at {parsed[0]}, "
                                 f"asked for {byte_range.start}")
        return body
    if total is not None:
        end = byte_range.start + want if isinstance(byte_range, ByteRange) else want
        if end > total:
            raise range_past_end_error(
                f"range {_range_header(byte_range)} reaches past the end of chunk key {key!r} ({total} bytes)", key
            )
    raise ShortReadError(f"chunk key {key!r}: got {len(body)} of {want} requested bytes")


def normalise_s3_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """storage_options → s3fs keyword arguments (accepts ``region`` / ``region_name`` too)."""
    options = {k: v for k, v in dict(storage_options or {}).items() if k not in FETCHER_ONLY_OPTIONS}
    client_kwargs = dict(options.pop("client_kwargs", None) or {})
    for alias in ("region", "region_name"):
        if alias in options:
            client_kwargs.setdefault("region_name", options.pop(alias))
    for alias, target in (("aws_access_key_id", "key"), ("aws_secret_access_key", "secret"),
                          ("aws_session_token", "token")):
        if alias in options:
            options.setdefault(target, options.pop(alias))
    if "endpoint_url" in client_kwargs and "endpoint_url" not in options:
        options["endpoint_url"] = client_kwargs.pop("endpoint_url")
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


def obstore_options(s3fs_options: Mapping[str, Any], endpoint: str, request_timeout: float) -> dict[str, Any] | None:
    """s3fs-style options (after :func:`normalise_s3_options`) → ``obstore.store.S3Store`` keywords.

    ``None`` when an option has no obstore equivalent, when the credentials would come
    from somewhere only botocore reads (AWS config files, profiles), or when neither an
    endpoint nor a region is known (botocore finds a bucket's region by following AWS's
    redirect; obstore does not): the caller then uses s3fs, so the same
    ``storage_options`` always reach the same data.
    """
    options = dict(s3fs_options)
    client_kwargs = dict(options.pop("client_kwargs", None) or {})
    region = client_kwargs.pop("region_name", None)
    if client_kwargs:
        return None
    config: dict[str, Any] = {}
    for ours, theirs in (("key", "access_key_id"), ("secret", "secret_access_key"), ("token", "session_token")):
        value = options.pop(ours, None)
        if value:
            config[theirs] = value
    if options.pop("anon", False):
        config["skip_signature"] = True
    if options.pop("requester_pays", False):
        config["request_payer"] = True
    options.pop("endpoint_url", None)  # resolved by the caller, environment included
    if options:  # profile, config_kwargs, use_ssl, ...: s3fs knows what they mean
        return None
    explicit = config.get("skip_signature") or ("access_key_id" in config and "secret_access_key" in config)
    if not explicit and not os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    if not endpoint and not region and not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        # on AWS itself a bucket answers only in its own region: botocore follows the redirect, obstore does not
        return None
    if region:
        config["region"] = region
    if endpoint:
        config["endpoint"] = endpoint
    timeout = f"{request_timeout:g}s"
    config["client_options"] = {"allow_http": endpoint.startswith("http://"), "timeout": timeout,
                                "connect_timeout": f"{min(10.0, request_timeout):g}s"}
    config["retry_config"] = {"max_retries": 0}  # one retry layer only: ours
    return config


#: pid of the process whose obstore (tokio) runtime has made requests; see :func:`_obstore_usable_here`.
_obstore_ran_in: int | None = None
_fork_fallback_warned = False


def _obstore_usable_here() -> bool:
    """Whether obstore can make requests in this process.

    tokio does not survive ``fork()``: once obstore has made a request in a process,
    every request from a forked child (even through a new store) hangs. Such a child
    (a torch DataLoader worker, say) reads through s3fs instead, with a warning once.
    """
    return _obstore_ran_in in (None, os.getpid())


def _warn_fork_fallback(url: str) -> None:
    global _fork_fallback_warned
    if not _fork_fallback_warned:
        _fork_fallback_warned = True
        warnings.warn(
            f"{url}: obstore made requests in the parent process before this one was forked, and its runtime "
            "does not survive fork(); reading through s3fs here (slower per request). Use a 'spawn' or "
            "'forkserver' multiprocessing context, or read nothing before the workers start, to keep obstore.",
            RuntimeWarning, stacklevel=3,
        )


class _Clients:
    """The S3 / HTTP clients of one :class:`RemoteFetcher`, closed by a finalizer that does not hold the fetcher.

    A fetcher nobody closed (a handle dropped, or still alive at interpreter exit) would
    otherwise leave its aiohttp session open, and aiohttp prints "Unclosed client session"
    on stderr when it is collected: noise a user cannot act on.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.fs: Any = None
        self.client: Any = None
        self.http_session: Any = None

    def take(self) -> tuple[Any, Any, Any]:
        taken = (self.http_session, self.client, self.fs)
        self.http_session = self.client = self.fs = None
        return taken


async def _close_clients(session: Any, client: Any, fs: Any) -> None:
    if session is not None:
        await session.close()
    if fs is not None and getattr(fs, "_s3creator", None) is not None:
        await fs._s3creator.__aexit__(None, None, None)
    elif client is not None:
        await client.close()


def _finalize_clients(clients: _Clients) -> None:
    """Close the clients on fsspec's loop (runs when the fetcher is collected, or at exit); never raises."""
    if clients.pid != os.getpid():
        return  # a forked child's copy: these belong to the parent's loop
    session, client, fs = clients.take()
    if session is None and client is None:
        return
    with contextlib.suppress(Exception):
        import fsspec.asyn

        loop = fsspec.asyn.get_loop()
        if not loop.is_running():
            return
        future = asyncio.run_coroutine_threadsafe(_close_clients(session, client, fs), loop)
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if not on_loop:  # collected on the loop itself: the close runs after this callback returns
            future.result(timeout=5)


def _obstore_available() -> bool:
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return True


class RemoteFetcher(ChunkFetcher):
    """Batched range reads from ``s3://bucket/prefix`` or ``http(s)://host/prefix``."""

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        retry: RetryPolicy | None = None,
        max_concurrency: int | None = None,
        request_timeout: float | None = None,
        use_kvikio: bool | None = None,
    ) -> None:
        options = dict(storage_options or {})
        parsed = urlparse(url)
        if parsed.scheme not in ("s3", "s3a", "http", "https"):
            raise ConfigurationError(f"RemoteFetcher needs an s3:// or http(s):// URL, got {url!r}")
        self.scheme = "s3" if parsed.scheme in ("s3", "s3a") else "http"
        self.url = url.rstrip("/")
        # explicit arguments (or the same names among the storage options, as open_array passes
        # them) win; otherwise the settings (gpuzarr.config: retry.*, s3.*) at the time the fetcher is made
        self.retry = retry or options.get("retry") or RetryPolicy()
        self.max_concurrency = int(max_concurrency or options.get("max_concurrency") or config.get("s3.max_concurrency"))
        self.request_timeout = float(request_timeout or options.get("request_timeout") or config.get("s3.request_timeout"))
        want_kvikio = options.get("use_kvikio") if use_kvikio is None else use_kvikio
        s3_client = str(options.get("s3_client") or config.get("s3.client"))
        if s3_client not in S3_CLIENTS:
            raise ConfigurationError(f"s3_client must be one of {S3_CLIENTS}, got {s3_client!r}")
        # looked up at call time (a module-level name bound at import would freeze whatever was current then)
        self.use_kvikio = _local.cuda_io_usable() and want_kvikio is not False and _kvikio_remote_available()
        self._options = normalise_s3_options(options) if self.scheme == "s3" else {
            k: v for k, v in options.items() if k not in FETCHER_ONLY_OPTIONS
        }
        if self.scheme == "s3":
            self.bucket = parsed.netloc
            self.prefix = parsed.path.strip("/")
            if not self.bucket:
                raise ConfigurationError(f"S3 URL {url!r} has no bucket")
            endpoint = self._options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or \
                os.environ.get("AWS_ENDPOINT_URL") or ""
            self._endpoint = str(endpoint)
            self.store_id = f"s3://{self.bucket}/{self.prefix}" + (f"@{endpoint}" if endpoint else "")
            self._obstore_config = obstore_options(self._options, endpoint, self.request_timeout)
            self.s3_client = self._choose_s3_client(s3_client)
        else:
            self.store_id = self.url
            self._endpoint = ""
            self._obstore_config = None
            self.s3_client = None
        self._lock = threading.Lock()
        self._new_clients()
        self._client_ready: asyncio.Lock | None = None
        self._pid = os.getpid()
        self._obstore_store: ForkLocal[Any] = ForkLocal(self._make_obstore_store)
        self._io_pool = ThreadPool("gpuzarr-remote", lambda: self.max_concurrency)
        self._closed = False

    @property
    def persistent_identity(self) -> str:
        """Canonical URL of the prefix (with its endpoint for S3): fetchers of the same place share cache entries."""
        if self.scheme == "s3":
            endpoint = self._endpoint.rstrip("/").lower()
            return f"s3://{self.bucket}/{self.prefix}" + (f"@{endpoint}" if endpoint else "")
        parsed = urlparse(self.url)
        return parsed._replace(scheme=parsed.scheme.lower(), netloc=parsed.netloc.lower(),
                               path=parsed.path.rstrip("/"), fragment="").geturl()

    def _choose_s3_client(self, wanted: str) -> str:
        if wanted == "s3fs":
            return "s3fs"
        usable = self._obstore_config is not None and _obstore_available()
        if wanted == "obstore" and not usable:
            why = "it is not installed (pip install obstore)" if not _obstore_available() else \
                "these storage_options need s3fs (only key/secret/token, anon, endpoint_url, region and " \
                "requester_pays map to obstore, with credentials given or in AWS_ACCESS_KEY_ID, and an endpoint_url " \
                "or a region given)"
            raise ConfigurationError(f"s3_client='obstore' for {self.url}: {why}")
        return "obstore" if usable else "s3fs"

    # -- setup -------------------------------------------------------------------
    def _new_clients(self) -> None:
        self._clients = _Clients()
        weakref.finalize(self, _finalize_clients, self._clients)

    @property
    def _fs(self) -> Any:
        return self._clients.fs

    @_fs.setter
    def _fs(self, value: Any) -> None:
        self._clients.fs = value

    @property
    def _client(self) -> Any:
        return self._clients.client

    @_client.setter
    def _client(self, value: Any) -> None:
        self._clients.client = value

    @property
    def _http_session(self) -> Any:
        return self._clients.http_session

    @_http_session.setter
    def _http_session(self, value: Any) -> None:
        self._clients.http_session = value

    def _loop(self) -> asyncio.AbstractEventLoop:
        import fsspec.asyn

        return fsspec.asyn.get_loop()

    def _run(self, coro: Any) -> Any:
        import fsspec.asyn

        if self._pid != os.getpid():  # forked child: the parent's clients belong to a loop that is gone
            self._new_clients()  # the parent's stay with the parent (its finalizer skips them here)
            self._client_ready = None
            self._pid = os.getpid()
        return fsspec.asyn.sync(self._loop(), lambda: coro, timeout=None)

    async def _s3_client(self) -> Any:
        if self._client is not None:
            return self._client
        if self._client_ready is None:  # created on the loop, so concurrent first fetches share one client
            self._client_ready = asyncio.Lock()
        async with self._client_ready:
            if self._client is None:
                self._client = await self._create_s3_client()
        return self._client

    async def _create_s3_client(self) -> Any:
        import s3fs

        options = dict(self._options)
        config_kwargs = dict(options.pop("config_kwargs", None) or {})
        # one retry layer only: ours. botocore "standard" mode counts the first try.
        config_kwargs["retries"] = {"total_max_attempts": 1, "mode": "standard"}
        config_kwargs.setdefault("max_pool_connections", self.max_concurrency)
        config_kwargs.setdefault("connect_timeout", min(10.0, self.request_timeout))
        config_kwargs.setdefault("read_timeout", self.request_timeout)
        fs = s3fs.S3FileSystem(asynchronous=True, loop=self._loop(), skip_instance_cache=True,
                               config_kwargs=config_kwargs, **options)
        fs.retries = 1
        await fs.set_session()
        self._fs = fs
        return await fs.get_s3(self.bucket)

    def _make_obstore_store(self) -> Any:
        """The obstore ``S3Store`` of this process (a :class:`ForkLocal`: a forked child makes its own).

        obstore's blocking API is used from the fetcher's I/O pool, not its asyncio API: it
        costs half the client CPU per GET (0.1 vs 0.2 ms measured here) and, unlike the
        asyncio runtime, keeps working in a forked child (torch DataLoader workers), where
        the store and the threads are made anew.
        """
        global _obstore_ran_in
        from obstore.store import S3Store

        _obstore_ran_in = os.getpid()
        return S3Store(self.bucket, **self._obstore_config)

    async def _session(self) -> Any:
        if self._http_session is None:
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, self.request_timeout),
                                            sock_read=self.request_timeout)
            headers = dict(self._options.get("headers") or {})
            self._http_session = aiohttp.ClientSession(
                timeout=timeout, headers=headers,
                connector=aiohttp.TCPConnector(limit=self.max_concurrency),
            )
        return self._http_session

    def object_key(self, key: str) -> str:
        """The S3 object key (or URL path) of a store key."""
        return f"{self.prefix}/{key}" if self.scheme == "s3" and self.prefix else key

    def object_url(self, key: str) -> str:
        """Full URL of a store key (``s3://...`` or ``http(s)://...``)."""
        return f"{self.url}/{key}"

    # -- one read ----------------------------------------------------------------
    async def _s3_get(self, key: str, byte_range: Range) -> bytes | None:
        from botocore.exceptions import ClientError

        if isinstance(byte_range, ByteRange) and byte_range.length == 0:
            return b""
        client = await self._s3_client()
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(key)}
        header = _range_header(byte_range)
        if header is not None:
            request["Range"] = header
        try:
            response = await client.get_object(**request)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchBucket"):
                return None
            if code == "InvalidRange" or status == 416:
                raise range_past_end_error(f"range {header} reaches past the end of chunk key {key!r} "
                                           f"(s3://{self.bucket}/{request['Key']})", key) from exc
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "NoSuchBucket",
                        "InvalidToken", "ExpiredToken", "AllAccessDisabled") or status in (401, 403):
                raise PermanentFetchError(
                    f"S3 refused s3://{self.bucket}/{request['Key']} ({code or status}): check the credentials "
                    f"(key/secret/token or AWS_* variables, anon=True for public buckets) and the bucket name"
                ) from exc
            raise
        async with response["Body"] as stream:
            body = await stream.read()
        return check_body(key, byte_range, body, response.get("ContentLength"), response.get("ContentRange"),
                          response.get("ResponseMetadata", {}).get("HTTPStatusCode"))

    def _obstore_read(self, key: str, byte_range: Range) -> Buffer | None:
        """One GET through obstore's blocking API (runs on a pool thread, GIL released while waiting)."""
        import obstore
        from obstore.exceptions import BaseError

        if isinstance(byte_range, ByteRange) and byte_range.length == 0:
            return b""
        options: dict[str, Any] | None = None
        if isinstance(byte_range, ByteRange):
            options = {"range": (byte_range.start, byte_range.start + byte_range.length)}
        elif isinstance(byte_range, SuffixRange):
            options = {"range": {"suffix": byte_range.length}}
        store = self._obstore_store.get()
        try:
            result = obstore.get(store, self.object_key(key), options=options)
            body = memoryview(result.bytes())  # zero-copy view of obstore's buffer
        except (BaseError, OSError) as exc:  # obstore's errors, and FileNotFoundError for a missing key
            if isinstance(exc, FileNotFoundError) and "NoSuchBucket" not in str(exc):
                return None
            raise self._obstore_error(key, exc) from exc
        start, end = result.range
        content_range = f"bytes {start}-{end - 1}/{result.meta['size']}" if byte_range is not None else None
        return check_body(key, byte_range, body, end - start, content_range, 200 if byte_range is None else 206)

    def _fetch_obstore(self, keys: list[str], ranges: list[Range]) -> list[Buffer | None]:
        futures = [self._io_pool.submit(self.retry.call, partial(self._obstore_read, key, byte_range), key=key)
                   for key, byte_range in zip(keys, ranges, strict=True)]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def _obstore_error(self, key: str, exc: BaseException) -> OSError:
        """An obstore exception → the retry policy's vocabulary, naming the key and object."""
        from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

        from gpuzarr.storage.retry import RETRYABLE_HTTP_STATUS, RETRYABLE_S3_CODES, TransientFetchError

        text = str(exc)
        summary = text.split("\n\nDebug source")[0].splitlines()[0][:300]
        status = int(match.group(1)) if (match := _STATUS.search(text)) else None
        code = match.group(1) if (match := _S3_CODE.search(text)) else ""
        where = f"s3://{self.bucket}/{self.object_key(key)}"
        if status == 416:
            return range_past_end_error(f"a range reaches past the end of chunk key {key!r} ({where})", key)
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)) or status in (401, 403) or \
                code == "NoSuchBucket":
            return PermanentFetchError(
                f"S3 refused {where} ({code or status}): check the credentials (key/secret/token or AWS_* "
                f"variables, anon=True for public buckets) and the bucket name"
            )
        if status is None or status in RETRYABLE_HTTP_STATUS or status >= 500 or code in RETRYABLE_S3_CODES:
            # no status: the connection broke, timed out, or the body was cut short
            error = TransientFetchError(f"reading {where}: {summary}")
            error.status = status  # type: ignore[attr-defined]
            return error
        return PermanentFetchError(f"S3 answered {status} ({code}) for {where}: {summary}")

    async def _http_get(self, key: str, byte_range: Range) -> bytes | None:
        from gpuzarr.storage.retry import TransientFetchError

        if isinstance(byte_range, ByteRange) and byte_range.length == 0:
            return b""
        session = await self._session()
        header = _range_header(byte_range)
        headers = {"Range": header} if header else {}
        async with session.get(self.object_url(key), headers=headers) as response:
            if response.status == 404:
                return None
            if response.status == 416:
                raise range_past_end_error(f"range {header} reaches past the end of chunk key {key!r} "
                                           f"({self.object_url(key)})", key)
            if response.status in (401, 403):
                raise PermanentFetchError(f"HTTP {response.status} for {self.object_url(key)}: access refused")
            if response.status >= 400:
                error = TransientFetchError(f"HTTP {response.status} for {self.object_url(key)}")
                error.status = response.status  # type: ignore[attr-defined]
                if response.status not in (408, 425, 429) and response.status < 500:
                    raise PermanentFetchError(str(error))
                raise error
            body = await response.read()
            return check_body(key, byte_range, body, response.content_length,
                              response.headers.get("Content-Range"), response.status)

    # -- ChunkFetcher --------------------------------------------------------------
    def fetch(self, keys: Sequence[str], ranges: Sequence[Range] | None = None) -> list[Buffer | None]:
        """Read a batch concurrently; host ``bytes`` per key, ``None`` for a missing key."""
        if self._closed:
            raise FetchError(f"{self.store_id}: this array was closed; open it again to read from it")
        keys, ranges = normalize_request(keys, ranges)
        if not keys:
            return []
        if self.s3_client == "obstore":
            if _obstore_usable_here():
                return self._fetch_obstore(keys, ranges)
            _warn_fork_fallback(self.url)
        return self._run(self._fetch_all(keys, ranges))

    async def _fetch_all(self, keys: list[str], ranges: list[Range]) -> list[bytes | None]:
        if self.scheme == "s3":
            await self._s3_client()  # create the client once, before the tasks race for it
            getter = self._s3_get
        else:
            await self._session()
            getter = self._http_get
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(key: str, byte_range: Range) -> bytes | None:
            async with gate:
                return await self.retry.call_async(lambda: getter(key, byte_range), key=key)

        tasks = [asyncio.ensure_future(one(k, r)) for k, r in zip(keys, ranges, strict=True)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def fetch_device(self, keys: Sequence[str], ranges: Sequence[Range] | None = None) -> DeviceBatch:
        """Read a batch into one device buffer (kvikio RemoteFile when it can run)."""
        if not _local.cuda_io_usable():
            raise DeviceUnavailableError(f"fetch_device on {self.store_id}: no usable CUDA device / kvikio")
        keys, ranges = normalize_request(keys, ranges)
        if not self.use_kvikio:  # host reads, packed into the pinned arena, one async upload on the current stream
            host = self.fetch(keys, ranges)
            present = np.array([h is not None for h in host], dtype=bool)
            device, offsets, lengths, _ = stage_to_device([b"" if h is None else h for h in host])
            return DeviceBatch(device, offsets, lengths, present)
        return self._kvikio_fetch_device(keys, ranges)

    def _kvikio_open(self, key: str, nbytes: int | None) -> Any:
        import kvikio

        if self.scheme == "http":
            return kvikio.RemoteFile.open_http(self.object_url(key), nbytes)
        opts = self._options
        endpoint = opts.get("endpoint_url")
        if opts.get("anon"):
            base = (endpoint or f"https://{self.bucket}.s3.amazonaws.com").rstrip("/")
            url = f"{base}/{self.bucket}/{self.object_key(key)}" if endpoint else f"{base}/{self.object_key(key)}"
            return kvikio.RemoteFile.open_http(url, nbytes)
        return kvikio.RemoteFile.open_s3(
            self.bucket, self.object_key(key), nbytes,
            (opts.get("client_kwargs") or {}).get("region_name"),
            opts.get("key"), opts.get("secret"), endpoint, opts.get("token"),
        )

    def _kvikio_fetch_device(self, keys: list[str], ranges: list[Range]) -> DeviceBatch:
        import cupy

        def open_and_size(key: str, byte_range: Range) -> tuple[Any, int, int] | None:
            def attempt() -> tuple[Any, int, int] | None:
                hint = byte_range.start + byte_range.length if isinstance(byte_range, ByteRange) else None
                try:
                    handle = self._kvikio_open(key, hint)
                except RuntimeError as exc:
                    if "404" in str(exc):
                        return None
                    raise
                offset, length = resolve_extent(key, handle.nbytes(), byte_range)
                return handle, offset, length

            return self.retry.call(attempt, key=key)

        pool = self._io_pool
        opened = list(pool.map(open_and_size, keys, ranges))
        present = np.array([o is not None for o in opened], dtype=bool)
        lengths = np.array([0 if o is None else o[2] for o in opened], dtype=np.int64)
        offsets, total = aligned_slots(lengths)  # nvCOMP reads entries in place: aligned
        device = cupy.empty(max(total, 1), dtype=cupy.uint8)
        # pooled memory may still be read by kernels queued on the current stream;
        # kvikio's RemoteFile writes from its own threads, outside that stream order
        cupy.cuda.get_current_stream().synchronize()

        def read(i: int) -> None:
            handle, file_offset, length = opened[i]  # type: ignore[misc]

            def attempt() -> None:
                start = int(offsets[i])
                got = handle.pread(device[start : start + length], length, file_offset).get()
                if got != length:
                    raise ShortReadError(f"chunk key {keys[i]!r}: read {got} of {length} bytes")

            self.retry.call(attempt, key=keys[i])

        try:
            list(pool.map(read, [i for i in range(len(keys)) if present[i] and lengths[i] > 0]))
        finally:
            for o in opened:
                if o is not None:
                    o[0].close()
        return DeviceBatch(device, offsets, lengths, present)

    @property
    def reads_to_device(self) -> bool:
        """kvikio ``RemoteFile`` range reads straight into device memory."""
        return self.use_kvikio

    def close(self) -> None:
        """Close the HTTP session / S3 client (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._release()

    def _release(self) -> None:
        """Close the clients and stop the I/O threads (a later read would make new ones)."""
        with self._lock:
            session, client, fs = self._clients.take() if self._pid == os.getpid() else (None, None, None)
        self._io_pool.shutdown(wait=True, cancel_futures=True)
        self._obstore_store.take()  # the store's connections go with it
        if session is not None or client is not None:
            with contextlib.suppress(Exception):  # closing must not raise over the real error
                self._run(_close_clients(session, client, fs))

    def __repr__(self) -> str:
        client = f", client={self.s3_client}" if self.s3_client else ""
        return f"RemoteFetcher({self.store_id!r}{client}, concurrency={self.max_concurrency})"


def _kvikio_remote_available() -> bool:
    try:
        import kvikio

        return bool(kvikio.is_remote_file_available())
    except Exception:  # noqa: BLE001
        return False


__all__ = ["S3_CLIENTS", "RemoteFetcher", "check_body", "normalise_s3_options", "obstore_options"]
