"""The epoch schedule every loader shares: equal rank shares always, resume at the exact sample.

* For every sample count (fewer samples than ranks included), world size, batch size and
  ``drop_last``: every rank runs the same number of batches (a DDP job never hangs on an
  unequal count), every sample of the epoch is on some rank, and padding only repeats
  samples of the epoch;
* batches after a resume at any sample are exactly the rest of an uninterrupted run;
* dict samples (several arrays at scaled windows) equal ``read_batch`` on each array.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import scaled

import gpuzarr
from gpuzarr.errors import RegionError
from gpuzarr.loading.schedule import batch_bounds, rank_positions
from gpuzarr.plan.planner import normalize_regions


class StartsArray:
    """An array whose ``read_batch`` returns each region's starts, so batches name their samples."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def read_batch(self, regions: list[Any], device: str = "cpu", **_: Any) -> np.ndarray:
        return normalize_regions(list(regions), self.shape, "fake").starts.copy()


@settings(max_examples=scaled(300), deadline=None)
@given(n=st.integers(0, 70), world=st.integers(1, 9), batch_size=st.integers(1, 8), drop_last=st.booleans())
def test_every_rank_gets_the_same_number_of_batches(n: int, world: int, batch_size: int, drop_last: bool) -> None:
    sampler = gpuzarr.GridPatches((1,))
    shape = (n,) if n else (1,)
    shares = [rank_positions(n, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1
    assert len(shares[0]) == -(-n // world)
    if n:
        assert set(np.concatenate(shares).tolist()) == set(range(n)), "every sample is on some rank"
        assert all(0 <= p < n for s in shares for p in s.tolist())
        # a sample repeats only as padding: at most world - 1 extra reads in all
        assert sum(len(s) for s in shares) - n == (-n) % world
    if n == 0:
        return
    loaders = [gpuzarr.Loader(StartsArray(shape), sampler, batch_size, drop_last=drop_last, rank=r, world_size=world,
                              prefetch_batches=0) for r in range(world)]
    counts = [sum(1 for _ in loader) for loader in loaders]
    assert len(set(counts)) == 1, f"ranks run {counts} batches"
    assert counts == [len(loader) for loader in loaders]


def test_fewer_samples_than_ranks_wraps_like_distributed_sampler() -> None:
    """5 validation tiles on 8 ranks: every rank reads one batch of one tile; ranks 5-7 re-read tiles 0-2."""
    sampler = gpuzarr.GridPatches((1,))
    got = []
    for rank in range(8):
        loader = gpuzarr.Loader(StartsArray((5,)), sampler, batch_size=4, rank=rank, world_size=8)
        batches = [b.tolist() for b in loader]
        assert len(batches) == len(loader) == 1
        got.append(batches[0])
    assert got == [[[0]], [[1]], [[2]], [[3]], [[4]], [[0]], [[1]], [[2]]]


@settings(max_examples=scaled(200), deadline=None)
@given(n=st.integers(0, 40), batch_size=st.integers(1, 6), drop_last=st.booleans(), data=st.data())
def test_batch_bounds_from_any_start_are_the_rest_of_the_run(n: int, batch_size: int, drop_last: bool,
                                                            data: st.DataObject) -> None:
    whole = batch_bounds(n, batch_size, drop_last)
    covered = [i for lo, hi in whole for i in range(lo, hi)]
    assert covered == list(range((n // batch_size) * batch_size if drop_last else n))
    assert all(hi - lo == batch_size for lo, hi in whole[:-1])
    start = data.draw(st.integers(0, n))
    rest = batch_bounds(n, batch_size, drop_last, start)
    assert [i for lo, hi in rest for i in range(lo, hi)] == [i for i in covered if i >= start]
    # after the first (possibly short) batch, the same batches as the uninterrupted run
    assert rest[1:] == [b for b in whole if b[0] >= (rest[1][0] if len(rest) > 1 else n + 1)]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_mid_batch_continues_at_the_next_sample(prefetch: int) -> None:
    sampler = gpuzarr.RandomCrops((3,), seed=2, samples_per_epoch=23)

    def make() -> gpuzarr.Loader:
        return gpuzarr.Loader(StartsArray((40,)), sampler, 5, epochs=2, prefetch_batches=prefetch)

    everything = [s for b in make() for s in b.tolist()]
    for sample in (0, 1, 7, 22, 23, 24, 45, 46):
        loader = make()
        loader.load_state_dict({"epoch": sample // 23, "sample": sample % 23})
        assert [s for b in loader for s in b.tolist()] == everything[sample:]


def test_metadata_names_each_sample(tmp_path: Path) -> None:
    sampler = gpuzarr.RandomCrops((4, 4), seed=1, samples_per_epoch=9)
    loader = gpuzarr.Loader(StartsArray((5, 20, 20)), sampler, 4, metadata=True, rank=1, world_size=2)
    seen = []
    for batch, meta in loader:
        np.testing.assert_array_equal(meta["start"], batch)
        assert meta["epoch"] == 0
        seen.extend(meta["sample_id"].tolist())
    assert seen == [1, 3, 5, 7, 1]  # rank 1 of 2 over 9 samples, padded with its own first sample


def _write(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, seed: int) -> zarr.Array:
    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    arr[:] = np.random.default_rng(seed).integers(0, 200, size=shape).astype(dtype)
    return arr


@pytest.mark.parametrize("prefetch", [0, 2])
def test_dict_samples_equal_read_batch_at_the_scaled_window(tmp_path: Path, prefetch: int) -> None:
    raw = _write(tmp_path / "raw.zarr", (3, 3, 48, 64), (1, 3, 16, 16), "uint8", 0)
    flow = _write(tmp_path / "flow.zarr", (3, 2, 24, 32), (1, 2, 8, 8), "float32", 1)
    handles = {"raw": gpuzarr.open_array(str(tmp_path / "raw.zarr")),
               "flow": gpuzarr.open_array(str(tmp_path / "flow.zarr"))}
    sampler = gpuzarr.RandomCrops((12, 20), seed=3, samples_per_epoch=11)
    loader = gpuzarr.Loader(handles, sampler, 4, device="cpu", scale={"flow": 0.5}, metadata=True,
                            prefetch_batches=prefetch)
    total = 0
    for batch, meta in loader:
        assert set(batch) == {"raw", "flow"}
        assert batch["raw"].shape[1:] == (3, 12, 20) and batch["flow"].shape[1:] == (2, 6, 10)
        for i, (t, _, y, x) in enumerate(meta["start"].tolist()):
            np.testing.assert_array_equal(batch["raw"][i], raw[t, :, y : y + 12, x : x + 20])
            np.testing.assert_array_equal(batch["flow"][i], flow[t, :, y // 2 : y // 2 + 6, x // 2 : x // 2 + 10])
        # and each equals one read_batch of that array at the mapped windows
        regions = loader.share(0).regions[total : total + len(meta["start"])]
        np.testing.assert_array_equal(batch["flow"], handles["flow"].read_batch(
            loader.source.regions_for("flow", regions), device="cpu"))
        total += len(meta["start"])
    assert total == 11


def test_scale_that_splits_a_pixel_is_a_region_error(tmp_path: Path) -> None:
    _write(tmp_path / "raw.zarr", (2, 30, 30), (1, 10, 10), "uint8", 0)
    _write(tmp_path / "half.zarr", (2, 15, 15), (1, 5, 5), "uint8", 1)
    handles = {"raw": gpuzarr.open_array(str(tmp_path / "raw.zarr")),
               "half": gpuzarr.open_array(str(tmp_path / "half.zarr"))}
    loader = gpuzarr.Loader(handles, gpuzarr.RandomCrops((5, 5), seed=0), 2, device="cpu", scale={"half": 0.5})
    with pytest.raises(RegionError, match="not a whole number"):
        next(iter(loader))
    with pytest.raises(ValueError, match="not among the arrays"):
        gpuzarr.Loader(handles, gpuzarr.RandomCrops((4, 4)), 2, scale={"flow": 0.5})


def test_per_axis_scale_maps_integer_indices(tmp_path: Path) -> None:
    """A tuple scale scales integer indices too: every second frame stored at half the time resolution."""
    frames = _write(tmp_path / "f.zarr", (8, 16), (2, 8), "uint16", 0)
    coarse = _write(tmp_path / "c.zarr", (4, 8), (2, 4), "uint16", 1)
    handles = {"f": gpuzarr.open_array(str(tmp_path / "f.zarr")), "c": gpuzarr.open_array(str(tmp_path / "c.zarr"))}
    sampler = gpuzarr.GridPatches((2, 4), stride=(2, 4))
    loader = gpuzarr.Loader(handles, sampler, 3, device="cpu", scale={"c": (0.5, 0.5)}, metadata=True)
    n = 0
    for batch, meta in loader:
        for i, (t, x) in enumerate(meta["start"].tolist()):
            np.testing.assert_array_equal(batch["f"][i], frames[t : t + 2, x : x + 4])
            np.testing.assert_array_equal(batch["c"][i], coarse[t // 2 : t // 2 + 1, x // 2 : x // 2 + 2])
            n += 1
    assert n == len(loader.share(0)) == 16
    assert sorted(loader.share(0).positions.tolist()) == list(range(16))
