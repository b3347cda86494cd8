"""PyTorch integration: :class:`ZarrLoader` (the loader core yielding tensors) and :class:`RegionDataset`.

Two ways into a training loop, both reading each batch with one
:meth:`~gpuzarr.ArrayHandle.read_batch` per array (chunks shared by a batch's regions are
fetched and decoded once), both giving every DDP rank the same number of batches
(:mod:`gpuzarr.loading.schedule`), rank and world size taken from ``torch.distributed``
(or ``RANK``/``WORLD_SIZE``)::

    loader = gpuzarr.torch.ZarrLoader({"raw": raw, "flow": flow}, gpuzarr.RandomCrops((256, 256), seed=0),
                                      batch_size=32, scale={"flow": 0.5})
    for epoch in range(10):
        loader.set_epoch(epoch)
        for batch in loader:            # {"raw": (32, 3, 256, 256), "flow": (32, 2, 128, 128)} tensors
            ...

    ds = gpuzarr.torch.RegionDataset(raw, gpuzarr.RandomCrops((256, 256), seed=0))
    dl = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=4)   # one read_batch per batch

:class:`ZarrLoader` is :class:`gpuzarr.Loader` (the one scheduling core) with one epoch
per ``iter()``, DataLoader-style: ``len()`` is this rank's batches per epoch,
:meth:`~ZarrLoader.set_epoch` picks the epoch, a new ``iter()`` starts the epoch over
(after a ``break`` too), :meth:`~ZarrLoader.state_dict` resumes at exactly the next
sample, also in a new process. Tensors land on the device: on the GPU engine CuPy batches
become torch tensors through DLPack without a copy; on the CPU engine with CUDA present
the batch is decoded straight into pinned host memory and copied with ``non_blocking``.
``num_workers=N`` reads batches in N worker processes instead of a thread (CPU decode).

:class:`RegionDataset` is map-style with ``__getitems__``, so a stock
``DataLoader(ds, batch_size=B, num_workers=N)`` hands each worker whole batches of
indices and each batch is one ``read_batch``. The dataset holds only this rank's share;
the DataLoader splits batches between workers, so ranks × workers compose with no
sampler of your own. Keep ``shuffle=False`` (the gpuzarr sampler orders the epoch) and
call :meth:`RegionDataset.set_epoch` before each epoch (not with ``persistent_workers``,
whose workers keep the dataset they started with). Handles are fork-, spawn- and
forkserver-safe: thread pools are re-created in a child, and a pickled handle reopens
its store there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data

from gpuzarr.engines.base import resolve_device
from gpuzarr.errors import ConfigurationError, DeviceUnavailableError
from gpuzarr.loading.loader import Cut, EpochLoader
from gpuzarr.loading.samplers import DistributedContext
from gpuzarr.loading.schedule import Schedule, batch_bounds, batches_per_epoch
from gpuzarr.loading.sources import ArraySet
from gpuzarr.plan.planner import normalize_regions

__all__ = ["RegionDataset", "ZarrLoader", "to_tensor"]


def _resolve_target(device: Any) -> tuple[torch.device, str]:
    """(where tensors are delivered, which gpuzarr engine reads): ``"auto"``, ``"cpu"``, ``"cuda[:n]"``."""
    if isinstance(device, str) and device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu"), "cpu"
        return torch.device("cuda", torch.cuda.current_device()), resolve_device("auto")
    target = torch.device(device)
    if target.type == "cpu":
        return target, "cpu"
    if target.type != "cuda":
        raise ConfigurationError(f"device must be 'auto', 'cpu' or a CUDA device, not {device!r}")
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(f"device={device!r} was requested but torch sees no CUDA device")
    if target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    return target, resolve_device("auto")


def to_tensor(x: Any, target: torch.device | None = None) -> torch.Tensor:
    """A NumPy or CuPy batch as a torch tensor on ``target`` (zero-copy where it can be).

    CuPy → DLPack (no copy, stream-ordered); NumPy → ``torch.from_numpy`` (no copy), then
    pinned and copied with ``non_blocking`` when ``target`` is a CUDA device.
    """
    if isinstance(x, np.ndarray):
        if not x.flags.writeable:
            x = x.copy()
        t = torch.from_numpy(x)
        if target is not None and target.type == "cuda":
            if not t.is_pinned():
                t = t.pin_memory()
            t = t.to(target, non_blocking=True)
        return t
    if isinstance(x, torch.Tensor):
        return x if target is None or x.device == target else x.to(target, non_blocking=True)
    t = torch.from_dlpack(x)
    return t if target is None or t.device == target else t.to(target, non_blocking=True)


def _to_tensors(data: Any, target: torch.device | None) -> Any:
    if isinstance(data, dict):
        return {k: to_tensor(v, target) for k, v in data.items()}
    return to_tensor(data, target)


def _meta_tensors(positions: np.ndarray, regions: Sequence[Any], shape: Sequence[int], epoch: int) -> dict[str, Any]:
    starts = normalize_regions(regions, shape, "sampler").starts  # a RegionTable goes straight to its table
    return {"sample_id": torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64)),
            "start": torch.from_numpy(np.ascontiguousarray(starts, dtype=np.int64)), "epoch": epoch}


class _Allocation:
    """Pinned host buffers a CPU-engine read decodes into (one per array of a batch)."""

    def __init__(self) -> None:
        self.tensors: dict[str | None, torch.Tensor] = {}

    def __call__(self, name: str | None, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
        try:
            t = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype, pin_memory=True)
        except (TypeError, RuntimeError):  # a dtype torch lacks, or no pinned memory: the read allocates
            return None
        self.tensors[name] = t
        return t.numpy()

    def tensor_for(self, name: str | None, array: Any) -> torch.Tensor | None:
        t = self.tensors.get(name)
        if t is not None and isinstance(array, np.ndarray) and array.__array_interface__["data"][0] == t.data_ptr():
            return t.view(array.shape)
        return None


class _CutDataset(torch.utils.data.Dataset):
    """Batch ``i`` of a fixed list of cuts, read on the CPU in a DataLoader worker (ZarrLoader's ``num_workers``)."""

    def __init__(self, source: ArraySet, batches: list[list[Any]]) -> None:
        self.source = source
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Any:
        return _to_tensors(self.source.read(self.batches[i], device="cpu"), None)


class ZarrLoader(EpochLoader):
    """Batches of torch tensors from one array or a dict of arrays, one epoch per ``iter()``.

    ``arrays``: an :class:`~gpuzarr.ArrayHandle` or a dict ``name → handle`` (batches are
    then dicts of tensors); ``scale``: name → resolution factor relative to the first array
    (:mod:`gpuzarr.loading.sources`); ``device``: ``"auto"`` (CUDA when torch sees it),
    ``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``transform``: an :class:`~gpuzarr.OutputTransform`
    or a dict of them; ``drop_last``: drop this rank's last partial batch; ``epoch``: the
    first epoch; ``metadata=True``: yield ``(batch, meta)`` with ``meta["sample_id"]`` (each
    sample's position in the epoch), ``meta["start"]`` (its region's start in the first array)
    and ``meta["epoch"]``.

    Reading ahead: ``prefetch_batches`` batches on a background thread (``num_workers=0``),
    or ``num_workers`` processes (CPU decode; ``multiprocessing_context`` ``"fork"``,
    ``"spawn"`` or ``"forkserver"``); ``prefetch_chunks``, ``adaptive`` and the rest as in
    :class:`gpuzarr.Loader`. Fewer samples than ranks, uneven shares: every rank still gets
    ``len(loader)`` batches (short shares repeat samples, see :mod:`gpuzarr.loading.schedule`).
    """

    def __init__(
        self,
        arrays: Any,
        sampler: Any,
        batch_size: int,
        *,
        device: Any = "auto",
        drop_last: bool = False,
        transform: Any = None,
        scale: Any = None,
        epoch: int = 0,
        num_workers: int = 0,
        multiprocessing_context: Any = None,
        prefetch_batches: int = 2,
        metadata: bool = False,
        **options: Any,
    ) -> None:
        self.target, engine = _resolve_target(device)
        self.engine_device = engine
        super().__init__(arrays, sampler, batch_size, epoch=epoch, device=engine, drop_last=drop_last,
                         transform=transform, scale=scale, prefetch_batches=prefetch_batches, metadata=metadata,
                         **options)
        if num_workers < 0:
            raise ConfigurationError(f"num_workers must be >= 0, not {num_workers}")
        if num_workers and (self.adaptive is not None or self.prefetch_chunks):
            raise ConfigurationError("num_workers > 0 reads fixed batches in worker processes; adaptive batch sizes and "
                             "prefetch_chunks work with num_workers=0 (the reading thread)")
        self.num_workers = num_workers
        self.multiprocessing_context = multiprocessing_context
        self._pin = self.target.type == "cuda" and engine == "cpu"

    # ------------------------------------------------------------ reading
    def _allocator(self) -> Any:
        return _Allocation() if self._pin else None

    def _deliver(self, data: Any, cut: Cut, allocation: Any = None) -> Any:
        if allocation is not None:
            def one(name: str | None, array: Any) -> torch.Tensor:
                pinned = allocation.tensor_for(name, array)
                if pinned is not None:
                    return pinned.to(self.target, non_blocking=True)
                return to_tensor(array, self.target)

            out = {k: one(k, v) for k, v in data.items()} if isinstance(data, dict) else one(None, data)
        else:
            out = _to_tensors(data, self.target)
        if not self.metadata:
            return out
        share = self.share(cut.epoch)
        return out, _meta_tensors(share.positions[cut.lo : cut.hi], share.regions[cut.lo : cut.hi],
                                  self.source.shape, cut.epoch)

    def read_cut(self, cut: Cut) -> Any:
        index = self.target.index if self.engine_device == "cuda" else None
        if index is None:
            return super().read_cut(cut)
        import cupy as cp

        with cp.cuda.Device(index):
            return super().read_cut(cut)

    def __iter__(self) -> Iterator[Any]:
        if self.num_workers == 0:
            yield from super().__iter__()
            return
        epochs, start = self._span()
        epoch = epochs[0]
        share = self.share(epoch)
        bounds = batch_bounds(len(share), self.batch_size, self.drop_last, start)
        dataset = _CutDataset(self.source, [share.regions[lo:hi] for lo, hi in bounds])
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=self.num_workers,
            pin_memory=self.target.type == "cuda", multiprocessing_context=self.multiprocessing_context,
            prefetch_factor=max(1, self.prefetch_batches))
        for (lo, hi), data in zip(bounds, loader, strict=True):
            out = _to_tensors(data, self.target)
            self._sample = hi
            if self.metadata:
                yield out, _meta_tensors(share.positions[lo:hi], share.regions[lo:hi], self.source.shape, epoch)
            else:
                yield out
        self._on_exhausted()


class RegionDataset(torch.utils.data.Dataset):
    """Map-style dataset of this rank's samples of one epoch, for a stock ``torch.utils.data.DataLoader``.

    ``dataset[i]`` is sample ``i`` of this rank's share (a tensor, or a dict of tensors for
    a dict of arrays; ``(sample, meta)`` with ``metadata=True``, meta holding
    ``sample_id`` and ``start``). ``__getitems__`` reads a whole list of indices with one
    ``read_batch`` per array, which the DataLoader uses for each batch. Samples are read on
    the CPU (use ``pin_memory=True`` in the DataLoader for a GPU); ``len()`` is the same on
    every rank.
    """

    def __init__(self, arrays: Any, sampler: Any, *, scale: Any = None, epoch: int = 0, transform: Any = None,
                 metadata: bool = False, rank: int | None = None, world_size: int | None = None,
                 even_ranks: bool = True) -> None:
        self.source = ArraySet(arrays, scale, transform)
        ctx = DistributedContext.detect()
        self.rank = ctx.rank if rank is None else rank
        self.world_size = ctx.world_size if world_size is None else world_size
        self.schedule = Schedule(sampler, self.source.shape, self.rank, self.world_size, even_ranks=even_ranks)
        self.sampler = sampler
        self.epoch = int(epoch)
        self.metadata = metadata

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` from now on (the next DataLoader ``iter()`` sends the new epoch to its workers)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.schedule.share(self.epoch))

    def batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Batches a DataLoader of ``batch_size`` gives per epoch (the same on every rank)."""
        return batches_per_epoch(len(self), batch_size, drop_last)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        share = self.schedule.share(self.epoch)
        n = len(share)
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not -n <= i < n]
        if bad:
            raise IndexError(f"sample index {bad[0]} is outside this rank's {n} samples of epoch {self.epoch}")
        idx = [i % n for i in idx]
        regions = [share.regions[i] for i in idx]
        data = _to_tensors(self.source.read(regions, device="cpu"), None)
        if isinstance(data, dict):
            samples: list[Any] = [{k: v[j] for k, v in data.items()} for j in range(len(idx))]
        else:
            samples = list(data.unbind(0))
        if not self.metadata:
            return samples
        meta = _meta_tensors(share.positions[idx], regions, self.source.shape, self.epoch)
        return [(s, {"sample_id": meta["sample_id"][j], "start": meta["start"][j]}) for j, s in enumerate(samples)]

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]
