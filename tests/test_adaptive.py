"""Adaptive batch size: grows while throughput improves, stays within bounds, shrinks when memory is short,
and never changes which samples an epoch contains (nor their order)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gpuzarr
import gpuzarr.torch as gt
from gpuzarr.loading.adaptive import AdaptiveBatchSize, free_memory_bytes
from gpuzarr.plan.planner import normalize_regions


def feed(controller: AdaptiveBatchSize, rate_of: Any, batches: int, bytes_per_sample: int = 1000) -> list[int]:
    sizes = []
    for _ in range(batches):
        size = controller.next_size()
        sizes.append(size)
        controller.observe(size, size / rate_of(size), size * bytes_per_sample)
    return sizes


def test_grows_while_throughput_improves_and_stops_at_max() -> None:
    controller = AdaptiveBatchSize(4, 64, window=2, free_memory=lambda: 1 << 40)
    sizes = feed(controller, lambda s: 100.0 * s, 40)  # faster with every size
    assert sizes[0] == 4 and max(sizes) == 64
    # 64 gains under 5 % over 63 (the tolerance), so the controller may settle on either
    assert sizes[-1] >= 63 and len(set(sizes[-10:])) == 1


def test_settles_on_the_best_size_when_growth_stops_paying() -> None:
    controller = AdaptiveBatchSize(2, 512, window=2, free_memory=lambda: 1 << 40)
    sizes = feed(controller, lambda s: 1000.0 * min(s, 20) - 5.0 * s, 60)  # best around 20
    assert 13 <= sizes[-1] <= 30 and len(set(sizes[-20:])) == 1
    assert max(sizes) < 512


def test_shrinks_when_free_memory_drops() -> None:
    free = [1 << 40]
    controller = AdaptiveBatchSize(1, 256, start=128, window=1, in_flight=2, memory_fraction=0.5,
                                   free_memory=lambda: free[0])
    feed(controller, lambda s: 100.0 * s, 3, bytes_per_sample=1 << 20)
    assert controller.next_size() == 256
    free[0] = 40 << 20  # 40 MiB free: 0.5 * 40 MiB / (2 batches * 1 MiB per sample) = 10 samples
    feed(controller, lambda s: 100.0 * s, 1, bytes_per_sample=1 << 20)
    assert controller.next_size() == 10
    free[0] = 1 << 20
    feed(controller, lambda s: 100.0 * s, 1, bytes_per_sample=1 << 20)
    assert controller.next_size() == 1, "never below min_size"


def test_host_free_memory_is_real() -> None:
    assert free_memory_bytes("cpu") > 0


class StartsArray:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def read_batch(self, regions: list[Any], device: str = "cpu", **_: Any) -> np.ndarray:
        return normalize_regions(list(regions), self.shape, "fake").starts.copy()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_adaptive_loader_keeps_the_epoch_samples_and_order(prefetch: int) -> None:
    sampler = gpuzarr.RandomCrops((4, 4), seed=9, samples_per_epoch=200)
    shape = (3, 30, 30)
    fixed = [s for b in gpuzarr.Loader(StartsArray(shape), sampler, 7, epochs=2) for s in b.tolist()]
    # plenty of memory, then room for 3 samples of 24 bytes (3 int64 starts) each
    free = iter([1 << 40] * 6 + [72] * 1000)
    controller = AdaptiveBatchSize(2, 50, window=1, in_flight=1, memory_fraction=1.0, free_memory=lambda: next(free))
    loader = gpuzarr.Loader(StartsArray(shape), sampler, 7, epochs=2, adaptive=controller, prefetch_batches=prefetch)
    batches = [b.tolist() for b in loader]
    assert [s for b in batches for s in b] == fixed
    sizes = [len(b) for b in batches]
    assert sizes[0] == 2 and sizes[1] == 3, "the first measurement always tries a bigger batch"
    ends = np.cumsum(sizes).tolist()
    assert all(2 <= n <= 50 for n, end in zip(sizes, ends, strict=True) if end not in (200, 400)), \
        "only an epoch's last batch may be shorter than min_size"
    assert all(n <= 3 for n in sizes[8:]), "the memory cap binds once free memory drops"
    assert loader.state_dict() == {"epoch": 2, "batch": 0}


def test_adaptive_refuses_ddp_and_drop_last() -> None:
    sampler = gpuzarr.RandomCrops((4,), seed=0, samples_per_epoch=10)
    with pytest.raises(ValueError, match="DDP ranks"):
        gt.ZarrLoader(StartsArray((20,)), sampler, 4, adaptive=AdaptiveBatchSize(1, 8), rank=0, world_size=2)
    with pytest.raises(ValueError, match="drop_last"):
        gpuzarr.Loader(StartsArray((20,)), sampler, 4, adaptive=AdaptiveBatchSize(1, 8), drop_last=True)


def test_adaptive_zarr_loader_resumes_at_the_exact_sample() -> None:
    sampler = gpuzarr.RandomCrops((4,), seed=0, samples_per_epoch=60)
    controller = AdaptiveBatchSize(1, 16, window=1, free_memory=lambda: 1 << 40)
    loader = gt.ZarrLoader(StartsArray((20,)), sampler, 4, adaptive=controller, device="cpu", rank=0, world_size=1)
    everything = [s for b in loader for s in b.flatten().tolist()]
    batches = iter(loader)
    taken = [s for _ in range(4) for s in next(batches).flatten().tolist()]
    state = loader.state_dict()
    batches.close()
    assert state == {"epoch": 0, "sample": len(taken)}
    again = gt.ZarrLoader(StartsArray((20,)), sampler, 4, adaptive=AdaptiveBatchSize(1, 16), device="cpu",
                          rank=0, world_size=1)
    again.load_state_dict(state)
    assert taken + [s for b in again for s in b.flatten().tolist()] == everything
