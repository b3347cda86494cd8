"""Samplers: which regions an epoch reads, deterministically per seed and epoch.

A sampler is a small deterministic object: ``regions(shape, epoch)`` returns every region
of that epoch, in order, for an array of ``shape`` (the first array of a multi-array
sample). The loaders (:mod:`gpuzarr.loading.loader`, :mod:`gpuzarr.torch`,
:mod:`gpuzarr.dali`) split that list between ranks themselves (see
:mod:`gpuzarr.loading.schedule`); ``regions(shape, epoch, rank, world_size)`` returns one
rank's plain share (positions ``rank, rank + world_size, ...``) for direct use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpuzarr.errors import ConfigurationError, RegionError
from gpuzarr.plan.planner import RegionTable


@dataclass(frozen=True, slots=True)
class DistributedContext:
    """This process's rank and the world size (torch.distributed, else RANK/WORLD_SIZE, else 0/1)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def detect(cls) -> DistributedContext:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                return cls(dist.get_rank(), dist.get_world_size())
        except ImportError:
            pass
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def _crop_axes(shape: Sequence[int], size: Sequence[int | None]) -> tuple[int, ...]:
    """Crop extent per axis: ``size`` aligns to the trailing axes; ``None`` means the whole axis."""
    if len(size) > len(shape):
        raise RegionError(f"crop size {tuple(size)} has more axes than the array shape {tuple(shape)}")
    lead = len(shape) - len(size)
    extent = [0] * lead + [shape[lead + i] if s is None else int(s) for i, s in enumerate(size)]
    for d in range(lead, len(shape)):
        if not 0 < extent[d] <= shape[d]:
            raise RegionError(f"crop size {tuple(size)} does not fit the array shape {tuple(shape)} on axis {d}")
    return tuple(extent)


def _to_regions(starts: np.ndarray, extent: Sequence[int], lead: int, shape: Sequence[int]) -> RegionTable:
    """Regions from a (n, ndim) start table: axis 0 as an integer when it is a leading axis, other leading axes whole.

    Handed to the planner as the table itself (:class:`~gpuzarr.plan.planner.RegionTable`).
    """
    full = [1 if (d == 0 and lead > 0) else (int(shape[d]) if d < lead else int(extent[d])) for d in range(len(shape))]
    return RegionTable(starts, full, (0,) if lead > 0 else (), range(1, lead))


def _shard_for_rank(n: int, rank: int, world_size: int) -> np.ndarray:
    if not 0 <= rank < world_size:
        raise ConfigurationError(f"rank {rank} is outside world size {world_size}")
    return np.arange(rank, n, world_size)


@dataclass(frozen=True)
class RandomCrops:
    """Uniformly random crops of ``size`` (aligned to the trailing axes).

    For an array ``(N, C, H, W)`` and ``size=(960, 960)``: a random sample index on
    axis 0 (dropped from the batch, like an integer index), all of ``C``, and a random
    960×960 window — batches come out as ``(B, C, 960, 960)``. When ``size`` covers
    every axis, every axis gets a random window. ``samples_per_epoch`` defaults to the
    number of non-overlapping crops that fit.
    """

    size: tuple[int | None, ...]
    seed: int = 0
    samples_per_epoch: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(self.size) if isinstance(self.size, (tuple, list)) else (self.size,))

    def regions(self, shape: Sequence[int], epoch: int = 0, rank: int = 0, world_size: int = 1) -> RegionTable:
        extent = _crop_axes(shape, self.size)
        lead = len(shape) - len(self.size)
        n = self.samples_per_epoch
        if n is None:
            n = int(np.prod([shape[d] // extent[d] if d >= lead else (shape[0] if d == 0 else 1)
                             for d in range(len(shape))]))
        rng = np.random.default_rng([self.seed, epoch])
        cols = []
        for d in range(len(shape)):
            if d >= lead:
                cols.append(rng.integers(0, shape[d] - extent[d] + 1, size=n))
            elif d == 0:
                cols.append(rng.integers(0, shape[0], size=n))
            else:
                cols.append(np.zeros(n, dtype=np.int64))
        starts = np.stack(cols, axis=1)[_shard_for_rank(n, rank, world_size)]
        return _to_regions(starts, extent, lead, shape)


@dataclass(frozen=True)
class GridPatches:
    """Every window of ``size`` on a regular grid (``stride`` defaults to ``size``), optionally shuffled per epoch.

    Leading axes not covered by ``size`` behave as in :class:`RandomCrops`: axis 0 is
    enumerated as an integer sample index, the others are taken whole. Windows that
    would fall off the array's end are not produced.
    """

    size: tuple[int | None, ...]
    stride: tuple[int, ...] | None = None
    shuffle: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(self.size) if isinstance(self.size, (tuple, list)) else (self.size,))

    def regions(self, shape: Sequence[int], epoch: int = 0, rank: int = 0, world_size: int = 1) -> RegionTable:
        extent = _crop_axes(shape, self.size)
        lead = len(shape) - len(self.size)
        stride = self.stride or tuple(extent[lead:])
        axes_starts = []
        for d in range(len(shape)):
            if d >= lead:
                axes_starts.append(np.arange(0, shape[d] - extent[d] + 1, stride[d - lead]))
            elif d == 0:
                axes_starts.append(np.arange(shape[0]))
            else:
                axes_starts.append(np.zeros(1, dtype=np.int64))
        grid = np.stack(np.meshgrid(*axes_starts, indexing="ij"), axis=-1).reshape(-1, len(shape))
        if self.shuffle:
            grid = grid[np.random.default_rng([self.seed, epoch]).permutation(len(grid))]
        starts = grid[_shard_for_rank(len(grid), rank, world_size)]
        return _to_regions(starts, extent, lead, shape)
