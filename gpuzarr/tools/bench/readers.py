"""The readers the benchmark compares: one class per way of reading a batch of crops.

Every reader turns the same list of equal-shape regions into one stacked array
``(len(regions), *region_shape)`` — the thing a training step consumes — so the
numbers compare like with like:

==================  ==============================================================
``gpuzarr-cuda``    ``gpuzarr`` handle, ``read_batch(regions, device="cuda")``
``gpuzarr-cpu``     ``gpuzarr`` handle, ``read_batch(regions, device="cpu")``
``gpuzarr-auto``    ``gpuzarr`` handle, ``device="auto"`` (what users get by default)
``zarr-python``     zarr-python's default pipeline, ``arr[region]`` per crop, stacked
``zarr-python-gpu`` the same inside ``zarr.config.enable_gpu()`` (CuPy buffers)
``tensorstore``     ``ts.Batch()``: one read future per crop in one batch, stacked
``zarrs``           zarr-python with ``codec_pipeline.path = zarrs.ZarrsCodecPipeline``
==================  ==============================================================

A reader that cannot run here (not installed, no GPU, a store it cannot open) raises
:class:`ReaderUnavailable` from :meth:`Reader.open` with the reason, and the runner
reports it as skipped.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


class ReaderUnavailable(Exception):
    """This reader cannot run in this environment; the message says why."""


@dataclass
class DatasetSource:
    """Where the benchmarked array lives, in the forms the different readers need."""

    location: Any  # local path, URL, or an open zarr.Array
    array_path: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        where = os.fspath(self.location) if isinstance(self.location, (str, os.PathLike)) else repr(self.location)
        return where + (f"/{self.array_path}" if self.array_path else "")

    def open_zarr(self) -> Any:
        """A fresh read-only ``zarr.Array`` (opened under the zarr config active at the call).

        A missing path is an :class:`~gpuzarr.errors.ArrayNotFoundError`; a group (no
        ``array_path`` given) a :class:`~gpuzarr.errors.NotAZarrArrayError` listing its members.
        """
        import zarr

        from gpuzarr.errors import ArrayNotFoundError, NotAZarrArrayError

        if isinstance(self.location, zarr.Array):
            return zarr.open_array(store=self.location.store, path=self.location.path, mode="r")
        where = os.fspath(self.location)
        if "://" not in where and not os.path.exists(where):
            raise ArrayNotFoundError(f"{where}: no such file or directory")
        kwargs: dict[str, Any] = {"mode": "r"}
        if self.storage_options:
            kwargs["storage_options"] = self.storage_options
        if self.array_path:
            kwargs["path"] = self.array_path
        try:
            node = zarr.open(store=where, **kwargs)
        except FileNotFoundError as exc:
            raise ArrayNotFoundError(f"{self.describe()}: no Zarr array found ({exc})") from exc
        if isinstance(node, zarr.Group):
            members = sorted(node.keys())[:20]
            raise NotAZarrArrayError(f"{self.describe()} is a Zarr group, not an array; name the array inside it "
                                     f"(--array / array_path), one of: {', '.join(members) or '(empty group)'}")
        return node

    def local_array_dir(self) -> str | None:
        """Filesystem directory of the array when it is local, else ``None``."""
        import zarr
        from zarr.storage import LocalStore

        if isinstance(self.location, zarr.Array):
            store = self.location.store
            if isinstance(store, LocalStore):
                return os.path.join(str(store.root), self.location.path)
            return None
        where = os.fspath(self.location)
        if "://" in where and not where.startswith("file://"):
            return None
        where = where.removeprefix("file://")
        return os.path.join(where, self.array_path) if self.array_path else where

    def url(self) -> str | None:
        """``scheme://.../array`` for remote locations, else ``None``."""
        if not isinstance(self.location, (str, os.PathLike)):
            return None
        where = os.fspath(self.location)
        if "://" not in where or where.startswith("file://"):
            return None
        return where.rstrip("/") + (f"/{self.array_path}" if self.array_path else "")


def is_cupy_array(batch: Any) -> bool:
    return type(batch).__module__.split(".")[0] == "cupy"


def to_numpy(batch: Any) -> np.ndarray:
    """A host copy of a batch (NumPy or CuPy)."""
    if is_cupy_array(batch):
        return batch.get()
    return np.asarray(batch)


def _require_cuda_device() -> None:
    from gpuzarr import _optional

    device = _optional.cupy_device()
    if not device:
        raise ReaderUnavailable(f"no GPU: {device.reason}")


def _synchronize_cuda() -> None:
    import cupy

    cupy.cuda.runtime.deviceSynchronize()


class Reader(abc.ABC):
    """One way to read a batch of regions; subclasses fill in :meth:`open` and :meth:`read`."""

    name: ClassVar[str]
    description: ClassVar[str]
    on_gpu: ClassVar[bool] = False

    @abc.abstractmethod
    def open(self, source: DatasetSource) -> None:
        """Prepare to read ``source``; raise :class:`ReaderUnavailable` when this reader cannot run."""

    @abc.abstractmethod
    def read(self, regions: Sequence[tuple[Any, ...]]) -> Any:
        """Read ``regions`` and return them stacked (NumPy, or CuPy for GPU readers)."""

    def synchronize(self) -> None:
        """Block until the last :meth:`read` has really finished (GPU readers wait for the device)."""
        if self.on_gpu:
            _synchronize_cuda()

    def cache_counters(self) -> tuple[int, int] | None:
        """``(hits, misses)`` of this reader's chunk cache so far, or ``None`` without one."""
        return None

    def label(self) -> str:
        """The name shown in tables and plots."""
        return self.name

    def close(self) -> None:  # an optional hook: most readers hold nothing to release
        """Release what :meth:`open` acquired."""


# ------------------------------------------------------------------ gpuzarr
class _GpuzarrReader(Reader):
    device: ClassVar[str]

    def __init__(self, cache: Any = None) -> None:
        self._cache = cache
        self.handle: Any = None
        self.resolved_device = ""

    def open(self, source: DatasetSource) -> None:
        import gpuzarr
        from gpuzarr.engines.base import resolve_device
        from gpuzarr.errors import DeviceUnavailableError

        try:
            self.resolved_device = resolve_device(self.device)
        except DeviceUnavailableError as exc:
            raise ReaderUnavailable(str(exc)) from exc
        if isinstance(source.location, (str, os.PathLike)):
            self.handle = gpuzarr.open_array(source.location, path=source.array_path, cache=self._cache,
                                             **source.storage_options)
        else:
            self.handle = gpuzarr.open_array(source.location, cache=self._cache)

    @property
    def on_gpu(self) -> bool:  # type: ignore[override]
        return self.resolved_device == "cuda"

    def read(self, regions: Sequence[tuple[Any, ...]]) -> Any:
        return self.handle.read_batch(regions, device=self.device)

    def cache_counters(self) -> tuple[int, int] | None:
        return cache_counters(getattr(self.handle, "cache", None))

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def cache_counters(cache: Any) -> tuple[int, int] | None:
    """``(hits, misses)`` from a cache exposing ``stats()`` (a mapping or an object) or counters."""
    if cache is None:
        return None
    stats = cache.stats() if callable(getattr(cache, "stats", None)) else getattr(cache, "stats", cache)
    get = stats.get if isinstance(stats, dict) else (lambda key: getattr(stats, key, None))
    hits, misses = get("hits"), get("misses")
    if hits is None or misses is None:
        return None
    return int(hits), int(misses)


class GpuzarrCudaReader(_GpuzarrReader):
    name = "gpuzarr-cuda"
    description = "gpuzarr read_batch(device='cuda'): nvCOMP + CUDA kernels, CuPy output"
    device = "cuda"


class GpuzarrCpuReader(_GpuzarrReader):
    name = "gpuzarr-cpu"
    description = "gpuzarr read_batch(device='cpu'): CPU engine, NumPy output"
    device = "cpu"


class GpuzarrAutoReader(_GpuzarrReader):
    name = "gpuzarr"
    description = "gpuzarr read_batch(device='auto'): the GPU engine when usable, else the CPU engine"
    device = "auto"

    def label(self) -> str:
        return f"gpuzarr ({self.resolved_device})" if self.resolved_device else self.name


# ------------------------------------------------------------------ zarr-python
class ZarrPythonReader(Reader):
    name = "zarr-python"
    description = "zarr-python default pipeline: arr[region] per crop, np.stack"

    def open(self, source: DatasetSource) -> None:
        self.array = source.open_zarr()

    def read(self, regions: Sequence[tuple[Any, ...]]) -> Any:
        return np.stack([self.array[region] for region in regions])


class ZarrPythonGpuReader(Reader):
    name = "zarr-python-gpu"
    description = "zarr-python with zarr.config.enable_gpu(): arr[region] per crop into CuPy, cupy.stack"
    on_gpu = True

    def open(self, source: DatasetSource) -> None:
        _require_cuda_device()
        import zarr

        with zarr.config.enable_gpu():
            self.array = source.open_zarr()

    def read(self, regions: Sequence[tuple[Any, ...]]) -> Any:
        import cupy
        import zarr

        with zarr.config.enable_gpu():
            return cupy.stack([self.array[region] for region in regions])


class ZarrsReader(Reader):
    name = "zarrs"
    description = "zarr-python with codec_pipeline.path=zarrs.ZarrsCodecPipeline: arr[region] per crop, np.stack"

    def open(self, source: DatasetSource) -> None:
        try:
            import zarrs  # noqa: F401 - registers the pipeline
        except ImportError as exc:
            raise ReaderUnavailable(f"zarrs is not installed ({exc}); pip install zarrs") from exc
        import zarr

        # The pipeline is chosen when the array is opened, and stays with the array.
        with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
            self.array = source.open_zarr()
        pipeline = type(self.array._async_array.codec_pipeline).__name__
        if pipeline != "ZarrsCodecPipeline":
            raise ReaderUnavailable(f"zarr did not pick up the zarrs codec pipeline (got {pipeline})")

    def read(self, regions: Sequence[tuple[Any, ...]]) -> Any:
        return np.stack([self.array[region] for region in regions])


# ------------------------------------------------------------------ tensorstore
class TensorstoreReader(Reader):
    name = "tensorstore"
    description = "tensorstore zarr3 driver: one read per crop inside ts.Batch(), np.stack"

    def open(self, source: DatasetSource) -> None:
        try:
            import tensorstore as ts
        except ImportError as exc:
            raise ReaderUnavailable(f"tensorstore is not installed ({exc}); pip install tensorstore") from exc
        local = source.local_array_dir()
        url = source.url()
        if local is not None:
            kvstore: Any = {"driver": "file", "path": local.rstrip("/") + "/"}
        elif url is not None and not source.storage_options:
            kvstore = url + "/"
        else:
            raise ReaderUnavailable("tensorstore needs a local path or a plain URL "
                                    "(storage options are not translated to tensorstore's kvstore spec)")
        zarr_format = source.open_zarr().metadata.zarr_format
        driver = "zarr3" if zarr_format == 3 else "zarr"
        try:
            self.store = ts.open({"driver": driver, "kvstore": kvstore}, read=True).result()
        except Exception as exc:  # tensorstore raises ValueError for everything
            raise ReaderUnavailable(f"tensorstore cannot open the array: {exc}") from exc
        self._ts = ts

    def read(self, regions: Sequence[tuple[Any, ...]]) -> Any:
        with self._ts.Batch() as batch:
            futures = [self.store[region].read(batch=batch) for region in regions]
        return np.stack([f.result() for f in futures])


READER_CLASSES: dict[str, type[Reader]] = {
    cls.name: cls
    for cls in (
        GpuzarrCudaReader,
        GpuzarrCpuReader,
        GpuzarrAutoReader,
        ZarrPythonReader,
        ZarrPythonGpuReader,
        TensorstoreReader,
        ZarrsReader,
    )
}

#: What ``gpuzarr bench`` compares when no ``--readers`` are given.
DEFAULT_READERS: tuple[str, ...] = (
    "gpuzarr-cuda", "gpuzarr-cpu", "zarr-python", "zarr-python-gpu", "tensorstore", "zarrs",
)


def make_reader(name: str, *, gpuzarr_cache: Any = None) -> Reader:
    """A reader by name (see :data:`READER_CLASSES`)."""
    try:
        cls = READER_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown reader {name!r}; choose from {', '.join(READER_CLASSES)}") from None
    if issubclass(cls, _GpuzarrReader):
        return cls(cache=gpuzarr_cache)
    return cls()
