"""One epoch's plan for one rank: which samples, in which order, cut into which batches.

Every loader in gpuzarr (:class:`gpuzarr.Loader`, :class:`gpuzarr.torch.ZarrLoader`,
:class:`gpuzarr.torch.RegionDataset`, :class:`gpuzarr.dali.ExternalSource`) takes its
samples from here, so they agree on order, rank shares, padding and resume points.

* The sampler gives the epoch's whole region list (same seed and epoch → same list). A
  sample's *id* is its position in that list.
* Rank ``r`` of ``w`` takes positions ``r, r + w, r + 2w, ...``.
* **Equal shares, always** (``even_ranks``, the default): every rank gets
  ``ceil(n / w)`` samples, so every rank runs the same number of batches and no DDP
  collective waits forever for a rank that has stopped. A rank one sample short repeats
  its own first sample; a rank with no sample of its own (fewer samples than ranks, e.g.
  5 validation tiles on 8 GPUs) takes positions ``r mod n, (r + w) mod n, ...`` — the
  wrap-around torch's ``DistributedSampler`` uses. So some samples are read twice in such
  an epoch, by different ranks; with ``n = 0`` every rank gets nothing.
* A rank's share is cut into batches of ``batch_size`` (the last one partial unless
  ``drop_last``); a position in the share (``sample``) is what a resume point stores.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuzarr.errors import ConfigurationError
from gpuzarr.plan.planner import RegionTable


def rank_positions(n: int, rank: int, world_size: int, *, even: bool = True) -> np.ndarray:
    """Positions (sample ids) of rank ``rank``'s share of an ``n``-sample epoch, padded to equal length when ``even``."""
    if world_size < 1:
        raise ConfigurationError(f"world_size must be >= 1, not {world_size}")
    if not 0 <= rank < world_size:
        raise ConfigurationError(f"rank {rank} is outside world size {world_size}")
    own = np.arange(rank, n, world_size, dtype=np.int64)
    if not even or world_size == 1 or n == 0:
        return own
    target = -(-n // world_size)
    if len(own) == target:
        return own
    if len(own):  # one short: repeat this rank's own first sample(s)
        return np.concatenate([own, np.resize(own, target - len(own))])
    return (rank + world_size * np.arange(target, dtype=np.int64)) % n  # no sample of its own: wrap around


@dataclass(frozen=True)
class EpochShare:
    """One rank's samples of one epoch: ``positions[i]`` is the id of ``regions[i]``."""

    epoch: int
    positions: np.ndarray
    regions: Sequence[tuple[Any, ...]]  # a RegionTable from gpuzarr's samplers

    def __len__(self) -> int:
        return len(self.regions)


class Schedule:
    """Epoch shares of one sampler over one shape for one rank (the last epochs asked for are kept)."""

    def __init__(self, sampler: Any, shape: Sequence[int], rank: int, world_size: int, *, even_ranks: bool = True):
        if not 0 <= rank < world_size:
            raise ConfigurationError(f"rank {rank} is outside world size {world_size}")
        self.sampler = sampler
        self.shape = tuple(shape)
        self.rank = rank
        self.world_size = world_size
        self.even_ranks = even_ranks
        self._cache: dict[int, EpochShare] = {}
        self._lock = threading.Lock()

    def share(self, epoch: int) -> EpochShare:
        with self._lock:
            got = self._cache.get(epoch)
            if got is None:
                whole = self.sampler.regions(self.shape, epoch, 0, 1)
                if not isinstance(whole, RegionTable):  # a user's sampler: any sequence of region tuples
                    whole = list(whole)
                positions = rank_positions(len(whole), self.rank, self.world_size, even=self.even_ranks)
                got = EpochShare(epoch, positions, whole[positions] if isinstance(whole, RegionTable)
                                 else [whole[p] for p in positions.tolist()])
                if len(self._cache) >= 2:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[epoch] = got
            return got

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_cache")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = {}
        self._lock = threading.Lock()


def batch_bounds(n: int, batch_size: int, drop_last: bool, start: int = 0) -> list[tuple[int, int]]:
    """``(lo, hi)`` sample bounds of the fixed-size batches of an ``n``-sample share, from sample ``start`` on.

    Batches are aligned to the share's start (a resume point in the middle of a batch starts
    a short batch up to the next boundary), so the batches after a resume are those of a
    run that never stopped.
    """
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be >= 1, not {batch_size}")
    end = (n // batch_size) * batch_size if drop_last else n
    out = []
    lo = start
    while lo < end:
        hi = min(end, (lo // batch_size + 1) * batch_size)
        out.append((lo, hi))
        lo = hi
    return out


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
