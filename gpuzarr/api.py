"""The public handles: :func:`open_array`, :func:`open_group` and :class:`ArrayHandle`.

An :class:`ArrayHandle` wraps one Zarr array (format 3 or 2) for batched reads. It keeps only what
it needs to read (metadata, a fetcher chosen once, the decode chain), reads a whole
batch with :meth:`ArrayHandle.read_batch` through the pipeline

    regions → planner → chunk reader (cache, shard index, fetcher) → engine

and survives pickling (it is rebuilt from its source in the child), so it can be
handed to DataLoader workers.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from gpuzarr.engines.base import resolve_engine
from gpuzarr.errors import (
    ArrayNotFoundError,
    ConfigurationError,
    FetchError,
    GpuzarrError,
    NotAZarrArrayError,
    UnsupportedCodecError,
)
from gpuzarr.plan.planner import BatchPlan, plan_batch
from gpuzarr.storage.reader import make_chunk_reader
from gpuzarr.storage.select import make_fetcher
from gpuzarr.threads import ForkLocal

if TYPE_CHECKING:
    from gpuzarr.storage.prefetch import Prefetcher, StridePrefetcher


def _describe_source(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return repr(source)


def _split_options(storage_options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options for zarr's store, options only gpuzarr's fetchers read: retry, concurrency, ...)."""
    from gpuzarr.storage.remote import FETCHER_ONLY_OPTIONS

    ours = {k: v for k, v in storage_options.items() if k in FETCHER_ONLY_OPTIONS}
    return {k: v for k, v in storage_options.items() if k not in ours}, ours


#: names of exceptions (from botocore, aiohttp, obstore, the OS) that mean "storage could not be reached or refused us"
_UNREACHABLE = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError", "ProxyConnectionError",
    "ClientConnectorError", "ServerDisconnectedError", "ServerTimeoutError", "NoCredentialsError",
    "PartialCredentialsError", "CredentialRetrievalError", "NoRegionError", "gaierror", "SSLError",
})


def _storage_failure(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain saying that storage could not be reached, or refused the credentials."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError, PermissionError)) or \
                type(current).__name__ in _UNREACHABLE:
            return current
        current = current.__cause__ or current.__context__
    return None


def _unreachable_error(full: str, where: str, options: dict[str, Any], cause: BaseException) -> FetchError:
    """A FetchError saying which store could not be read, from where, and why (with a hint for credentials)."""
    from urllib.parse import urlparse

    parsed = urlparse(where)
    if parsed.scheme in ("s3", "s3a"):
        endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url") or \
            os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        target = f"S3 bucket {parsed.netloc!r} at {endpoint}"
    else:
        target = f"{parsed.scheme}://{parsed.netloc}"
    text = f"{type(cause).__name__}: {cause}" if not isinstance(cause, FetchError) else str(cause)
    hint = ""
    if "credential" in text.lower() and "anon" not in options:
        hint = ("; give key= and secret= (or set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or a profile=), "
                "or anon=True for a public bucket")
    return FetchError(f"{full}: could not read from the {target}: {text}{hint}")


def _probe_remote(where: str, path: str | None, options: dict[str, Any]) -> None:
    """Read the array's ``zarr.json`` with gpuzarr's own fetcher before zarr opens the URL.

    An unreachable endpoint or missing credentials then fail here as a :class:`FetchError`
    saying what and why, once and with our retry policy, instead of as zarr's "not a
    readable Zarr array" after zarr's concurrent metadata reads (whose abandoned requests
    also print tracebacks at exit). A missing key is no error here: zarr decides.
    """
    from gpuzarr.storage.remote import RemoteFetcher

    key = f"{path.strip('/')}/zarr.json" if path else "zarr.json"
    if where.split("://", 1)[0] in ("s3", "s3a"):
        # s3fs, as zarr itself is about to use: an obstore request here would cost forked workers obstore
        options = {**options, "s3_client": "s3fs"}
    fetcher = RemoteFetcher(where, options)
    try:
        fetcher.fetch([key])
    except FetchError as exc:
        full = f"{where}{'/' + path if path else ''}"
        raise _unreachable_error(full, where, options, exc) from exc
    finally:
        fetcher.close()


def _open_zarr_node(source: Any, path: str | None, storage_options: dict[str, Any]) -> Any:
    """Open ``source`` read-only with zarr-python, mapping its errors onto ours."""
    import zarr

    from gpuzarr.storage.remote import normalise_s3_options
    from gpuzarr.storage.select import _is_remote_url

    all_options = dict(storage_options)
    storage_options, _ = _split_options(storage_options)

    if not isinstance(source, (str, os.PathLike)):
        node = source
        if path:
            node = node[path]
        return node
    where = os.fspath(source)
    if "://" not in where and not os.path.exists(where):
        raise ArrayNotFoundError(f"{where}: no such file or directory")
    if _is_remote_url(where):
        if where.split("://", 1)[0] in ("s3", "s3a"):
            # region= / region_name= / aws_* spellings (docs/storage.md) mean to s3fs what they mean to our fetcher
            storage_options = normalise_s3_options(storage_options)
        _probe_remote(where, path, all_options)
    full = f"{where}{'/' + path if path else ''}"
    try:
        kwargs: dict[str, Any] = {"mode": "r"}
        if storage_options:
            kwargs["storage_options"] = storage_options
        if path:
            kwargs["path"] = path
        return zarr.open(where, **kwargs)
    except GpuzarrError:
        raise
    except Exception as exc:  # zarr raises many kinds: NodeNotFound, FileNotFound, KeyError, JSON and auth errors
        kind = type(exc).__name__
        failure = _storage_failure(exc)
        if failure is not None:
            raise _unreachable_error(full, where, storage_options, failure) from exc
        missing = isinstance(exc, FileNotFoundError) or "NotFound" in kind
        exists_locally = "://" not in where and not path and os.path.exists(where)
        if missing and not exists_locally:
            raise ArrayNotFoundError(f"{full}: no Zarr array or group found ({kind}: {exc})") from exc
        raise NotAZarrArrayError(
            f"{full}: exists but is not a readable Zarr array or group ({kind}: {exc})"
        ) from exc


class ArrayHandle:
    """One Zarr array, ready for batched reads of equal-shape regions."""

    def __init__(self, zarr_array: Any, *, name: str | None = None, cache: Any = None, disk_cache: Any = None,
                 readahead: int = 0, _source: tuple[Any, str | None, dict[str, Any]] | None = None) -> None:
        import zarr

        if not isinstance(zarr_array, zarr.Array):
            raise NotAZarrArrayError(f"{name or zarr_array!r} is a {type(zarr_array).__name__}, not a Zarr array")
        self.zarr_array = zarr_array
        self.name = name or f"{zarr_array.store}/{zarr_array.path}".rstrip("/")
        self._source = _source
        self.cache = cache
        self.disk_cache = disk_cache
        meta = zarr_array.metadata
        if meta.zarr_format not in (2, 3):
            raise UnsupportedCodecError(f"{self.name}: Zarr format {meta.zarr_format} is not supported (Zarr 2 and 3)")
        self.shape: tuple[int, ...] = tuple(int(s) for s in zarr_array.shape)
        if len(self.shape) == 0:
            raise UnsupportedCodecError(f"{self.name}: 0-dimensional arrays are not supported")
        fetcher_options = _split_options(_source[2])[1] if _source is not None else {}
        self.fetcher = make_fetcher(zarr_array.store, fetcher_options)
        if disk_cache is not None:
            from gpuzarr.storage.disk_cache import CachingFetcher

            self.fetcher = CachingFetcher(self.fetcher, disk=disk_cache, array_path=zarr_array.path)
        self.reader, self.chain, self.chunks = make_chunk_reader(
            self.fetcher, meta, zarr_array.path, self.name, cache=cache
        )
        self.shards: tuple[int, ...] | None = self.reader.shard.shard_shape if self.reader.shard else None
        self.dtype: np.dtype = self.chain.dtype
        # a v2 fill_value of null reads as the data type's default (0, False, NaT), as in zarr-python
        fill = meta.fill_value
        if fill is None:
            zdtype = meta.data_type if meta.zarr_format == 3 else meta.dtype
            fill = zdtype.default_scalar()
        self.fill_value = np.asarray(fill, dtype=self.dtype)[()]
        if readahead and cache is None:
            raise ConfigurationError(f"{self.name}: readahead prefetches into the chunk cache; open the array with one, "
                             "e.g. cache=gpuzarr.PinnedLRUCache(1 << 30)")
        self.readahead = int(readahead)
        # (Prefetcher, StridePrefetcher, recent tickets, lock): made on first read, once per process
        self._readahead_state: ForkLocal[tuple[Prefetcher, StridePrefetcher, deque, threading.Lock]] = ForkLocal(
            self._start_readahead, close=lambda state: state[0].close())

    # ------------------------------------------------------------ properties
    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return (f"<gpuzarr.ArrayHandle {self.name} shape={self.shape} chunks={self.chunks} "
                f"dtype={self.dtype} codecs={'/'.join(self.chain.codec_names)}>")

    # ------------------------------------------------------------ reading
    def plan(self, regions: Sequence[object]) -> BatchPlan:
        """The chunk plan for a batch of regions (no I/O)."""
        return plan_batch(regions, self.shape, self.chunks, self.name)

    def read_batch(
        self,
        regions: Sequence[object],
        device: str = "auto",
        *,
        transform: Any = None,
        strict: bool = False,
        out: Any = None,
        stream: Any = None,
    ) -> Any:
        """Read equal-shape ``regions`` and return them stacked: ``(len(regions), *region_shape)``.

        ``device``: ``"cpu"`` returns NumPy, ``"cuda"`` CuPy, ``"auto"`` the GPU when one is
        usable. Each chunk the batch touches is fetched and decoded once. Values equal
        zarr-python's ``arr[region]`` for every region. ``transform`` optionally casts,
        normalises and re-lays out the batch (fused into assembly on the GPU). ``stream``: a
        CUDA stream the caller owns (a CuPy or torch stream, or a raw ``cudaStream_t`` as an int,
        e.g. a DALI pipeline's); on the GPU the batch's work is queued on it, so the result is
        ready when that stream reaches it. The CPU engine ignores it.

        ``regions`` is a list of region tuples (NumPy basic indexing: slices with step 1,
        integers, ``...``). One region without its list, or a region NumPy or zarr would not
        read the same way, raises :class:`~gpuzarr.errors.RegionError` naming the array and
        the region. An empty list reads nothing and returns an empty batch: shape ``(0,)``
        (there is no region to take a shape from), the array's dtype (or the transform's).
        """
        plan = self.plan(regions)
        return self.read_plan(plan, device=device, transform=transform, strict=strict, out=out, stream=stream)

    def read_plan(self, plan: BatchPlan, device: str = "auto", *, transform: Any = None,
                  strict: bool = False, out: Any = None, stream: Any = None) -> Any:
        """Execute a plan made by :meth:`plan` (lets a loader plan ahead and prefetch)."""
        if self.readahead:
            self._readahead(plan.chunk_coords)
        engine = resolve_engine(device, strict=strict, dtype=self.dtype)
        caps = engine.capabilities
        try:
            encoded = self.reader.read(plan.chunk_coords, deferred=caps.loads_deferred_reads,
                                       to_device=caps.device_batches and engine.takes_device_batches(self.chain))
            keys = self.reader.lazy_chunk_keys(plan.chunk_coords)
            return engine.decode_and_assemble(plan, encoded, self.chain, self.fill_value, keys=keys,
                                              array_name=self.name, transform=transform, out=out, stream=stream)
        except FetchError as exc:  # fetchers know the store and key, not which array asked
            named = exc.naming(self.name)
            if named is exc:
                raise
            raise named from exc.__cause__ or exc

    def __getitem__(self, region: object) -> Any:
        """One region on the CPU, like ``zarr_array[region]`` (slices with step 1 and integers)."""
        return self.read_batch([region], device="cpu")[0]

    # ------------------------------------------------------------ prefetch
    def chunk_prefetcher(self, *, workers: int, max_bytes_in_flight: int = 256 << 20) -> Prefetcher:
        """A :class:`~gpuzarr.storage.prefetch.Prefetcher` whose keys are chunk coordinates, read into this array's cache."""
        from gpuzarr.storage.prefetch import Prefetcher

        if self.reader.cache is None:
            raise ConfigurationError(f"{self.name}: prefetching needs the array opened with a cache")

        def as_coords(keys: list[tuple[int, ...]]) -> np.ndarray:
            return np.asarray(keys, dtype=np.int64).reshape(-1, self.ndim)

        chunk_bytes = int(np.prod(self.chunks)) * self.dtype.itemsize
        return Prefetcher(lambda coords: self.reader.read(as_coords(coords)), max_bytes_in_flight=max_bytes_in_flight,
                          workers=workers, size_of=lambda _: chunk_bytes,
                          is_cached=lambda coords: self.reader.cached(as_coords(coords)))

    def _readahead(self, chunk_coords: np.ndarray) -> None:
        """Feed this read to the stride detector, then wait for any of its chunks already in flight.

        The detector and its threads are made on first use (again in a forked child).
        Waiting for the earlier tickets that hold this read's chunks means a chunk being
        prefetched is not fetched a second time by the read itself.
        """
        _, detector, tickets, lock = self._readahead_state.get()
        with lock:
            ticket = detector.observe(chunk_coords)  # the detector keeps state: one read at a time
        wanted = {tuple(c) for c in chunk_coords.tolist()}
        for earlier in list(tickets):
            if not earlier.done() and wanted.intersection(earlier.keys):
                earlier.wait()
        if ticket is not None:
            tickets.append(ticket)

    def _start_readahead(self) -> tuple[Prefetcher, StridePrefetcher, deque, threading.Lock]:
        from gpuzarr.storage.prefetch import StridePrefetcher

        prefetcher = self.chunk_prefetcher(workers=self.readahead)
        grid = tuple(-(-s // c) for s, c in zip(self.shape, self.chunks, strict=True))
        detector = StridePrefetcher(prefetcher, grid, tuple, depth=self.readahead)
        return prefetcher, detector, deque(maxlen=self.readahead + 1), threading.Lock()

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._readahead_state.reset()  # stops the prefetch threads this process started
        self.fetcher.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # caches travel as what they are made of (a DiskCache as its directory, a memory
        # cache as an empty one of the same budget), see their __reduce__
        state = {"name": self.name, "cache": self.cache, "disk_cache": self.disk_cache, "readahead": self.readahead}
        if self._source is None:
            return {**state, "zarr_array": self.zarr_array}
        return {**state, "source": self._source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        caches = {"cache": state.get("cache"), "disk_cache": state.get("disk_cache"),
                  "readahead": state.get("readahead", 0)}
        if "source" in state:
            source, path, opts = state["source"]
            node = _open_zarr_node(source, path, opts)
            self.__init__(node, name=state["name"], _source=state["source"], **caches)  # type: ignore[misc]
        else:
            self.__init__(state["zarr_array"], name=state["name"], **caches)  # type: ignore[misc]


class GroupHandle:
    """A Zarr group: index it by name (``group["raw"]``, ``group["lr/2x"]``) for array handles."""

    def __init__(self, zarr_group: Any, name: str, source: tuple[Any, str | None, dict[str, Any]] | None,
                 cache: Any = None, disk_cache: Any = None, readahead: int = 0) -> None:
        self.zarr_group = zarr_group
        self.name = name
        self._source = source
        self.cache = cache
        self.disk_cache = disk_cache
        self.readahead = readahead

    def __getitem__(self, key: str) -> ArrayHandle | GroupHandle:
        import zarr

        try:
            node = self.zarr_group[key]
        except KeyError as exc:
            raise ArrayNotFoundError(f"{self.name}: no array or group named {key!r}") from exc
        name = f"{self.name}/{key}"
        sub_source = None
        if self._source is not None:
            src, base, opts = self._source
            sub_source = (src, f"{base}/{key}" if base else key, opts)
        if isinstance(node, zarr.Group):
            return GroupHandle(node, name, sub_source, self.cache, self.disk_cache, self.readahead)
        return ArrayHandle(node, name=name, cache=self.cache, disk_cache=self.disk_cache, readahead=self.readahead,
                           _source=sub_source)

    def __contains__(self, key: str) -> bool:
        return key in self.zarr_group

    def keys(self) -> Iterator[str]:
        return iter(sorted(self.zarr_group.keys()))

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.zarr_group.attrs)

    def __repr__(self) -> str:
        return f"<gpuzarr.GroupHandle {self.name} members={list(self.keys())}>"


def open_array(source: Any, *, path: str | None = None, cache: Any = None, disk_cache: Any = None,
               readahead: int = 0, **storage_options: Any) -> ArrayHandle:
    """Open a Zarr array (format 3 or 2) for batched reads.

    ``source`` is a local path, a URL (``s3://bucket/data.zarr``, ``https://...``) or an
    open ``zarr.Array``. ``storage_options`` go to the store (credentials,
    ``endpoint_url``, ``anon``...). ``cache`` is an optional encoded-chunk cache shared
    between arrays (e.g. :class:`gpuzarr.storage.cache.PinnedLRUCache`); ``disk_cache`` an
    optional :class:`gpuzarr.storage.disk_cache.DiskCache` kept in front of slow (remote) storage.
    ``readahead=N`` (needs ``cache``) is for access outside a :class:`gpuzarr.Loader`
    (which plans its own prefetch): when successive reads move by a constant step through
    the chunk grid (a sequential or strided scan), the chunks of the next ``N`` reads are
    fetched into the cache in the background.
    """
    import zarr

    node = _open_zarr_node(source, path, storage_options)
    name = _describe_source(source) + (f"/{path}" if path else "")
    if isinstance(node, zarr.Group):
        raise NotAZarrArrayError(f"{name} is a Zarr group, not an array (members: {sorted(node.keys())[:10]}); "
                                 "use gpuzarr.open_group or name the array")
    src = (source, path, storage_options) if isinstance(source, (str, os.PathLike)) else None
    if src is None:
        name = f"{node.store}/{node.path}".rstrip("/")
    return ArrayHandle(node, name=name, cache=cache, disk_cache=disk_cache, readahead=readahead, _source=src)


def open_group(source: Any, *, path: str | None = None, cache: Any = None, disk_cache: Any = None,
               readahead: int = 0, **storage_options: Any) -> GroupHandle:
    """Open a Zarr group; its members open as :class:`ArrayHandle` / :class:`GroupHandle`.

    ``cache``, ``disk_cache`` and ``readahead`` apply to every member, as in :func:`open_array`.
    """
    import zarr

    node = _open_zarr_node(source, path, storage_options)
    name = _describe_source(source) + (f"/{path}" if path else "")
    if isinstance(node, zarr.Array):
        raise NotAZarrArrayError(f"{name} is a Zarr array, not a group; use gpuzarr.open_array")
    src = (source, path, storage_options) if isinstance(source, (str, os.PathLike)) else None
    return GroupHandle(node, name, src, cache, disk_cache, readahead)
