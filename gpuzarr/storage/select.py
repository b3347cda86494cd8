"""Chooses the fetcher for an opened array, once, at open time.

* a local path, ``file://`` URL or zarr ``LocalStore`` → :class:`~gpuzarr.storage.local.LocalFileFetcher`
* ``s3://`` / ``http(s)://`` URLs, or a zarr ``FsspecStore`` over s3fs / HTTP →
  :class:`~gpuzarr.storage.remote.RemoteFetcher`
* any other zarr ``Store`` (memory, zip, object stores, Icechunk ...) →
  :class:`~gpuzarr.storage.zarr_store.ZarrStoreFetcher`, which goes through zarr's async API.

Keys handed to the chosen fetcher are relative to the store root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from gpuzarr.errors import ConfigurationError
from gpuzarr.storage.base import ChunkFetcher

_REMOTE_SCHEMES = ("s3", "s3a", "http", "https")


def _is_remote_url(location: str) -> bool:
    return urlparse(location).scheme in _REMOTE_SCHEMES


def fetcher_for_location(location: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> ChunkFetcher:
    """The fetcher for a path or URL of a store root."""
    from gpuzarr.storage.local import LocalFileFetcher

    text = os.fspath(location)
    parsed = urlparse(text)
    if parsed.scheme in _REMOTE_SCHEMES:
        from gpuzarr.storage.remote import RemoteFetcher

        return RemoteFetcher(text, storage_options)
    if parsed.scheme == "file":
        return LocalFileFetcher(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ConfigurationError(f"no fetcher for URL scheme {parsed.scheme!r} in {text!r}; open it with zarr and pass the store")
    return LocalFileFetcher(Path(text))


def _fsspec_remote_url(store: Any) -> tuple[str, dict[str, Any]] | None:
    """``(url, storage_options)`` of an FsspecStore over s3fs / HTTP, else ``None``."""
    fs = getattr(store, "fs", None)
    path = getattr(store, "path", None)
    if fs is None or path is None:
        return None
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    options = dict(getattr(fs, "storage_options", {}) or {})
    options.pop("asynchronous", None)
    options.pop("loop", None)
    if protocol in ("s3", "s3a"):
        return f"s3://{str(path).strip('/')}", options
    if protocol in ("http", "https") and _is_remote_url(str(path)):
        return str(path), options
    return None


def make_fetcher(store: Any, storage_options: Mapping[str, Any] | None = None) -> ChunkFetcher:
    """The best fetcher for ``store``: a zarr Store, a local path, or an s3:// / http(s):// URL."""
    if isinstance(store, (str, os.PathLike)):
        return fetcher_for_location(store, storage_options)

    from zarr.storage import LocalStore

    from gpuzarr.storage.local import LocalFileFetcher

    if isinstance(store, LocalStore):
        return LocalFileFetcher(store.root)
    remote = _fsspec_remote_url(store)
    if remote is not None:
        from gpuzarr.storage.remote import RemoteFetcher

        url, options = remote
        options.update(storage_options or {})
        return RemoteFetcher(url, options)
    from gpuzarr.storage.zarr_store import ZarrStoreFetcher

    return ZarrStoreFetcher(store)


__all__ = ["fetcher_for_location", "make_fetcher"]
