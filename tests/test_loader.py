"""Samplers and the :class:`gpuzarr.Loader`: deterministic schedules, rank shards, resume, clean shutdown.

* :class:`~gpuzarr.RandomCrops` / :class:`~gpuzarr.GridPatches` give the same regions
  for the same seed and epoch, different ones for another epoch (when shuffled), and
  split an epoch into disjoint rank shares that together are the whole epoch;
* :meth:`Loader.state_dict` / :meth:`Loader.load_state_dict` resume mid-epoch with
  exactly the batches not yet consumed;
* breaking out of a prefetching loader leaves no ``gpuzarr-loader`` thread behind,
  and an error raised by the background read surfaces in the consuming loop.
"""

from __future__ import annotations

import gc
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import scaled
from zarr.codecs import Crc32cCodec, ZstdCodec

import gpuzarr
from gpuzarr.errors import CorruptChunkError, RegionError
from gpuzarr.plan.planner import normalize_regions

SAMPLERS = settings(max_examples=scaled(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
THREAD_NAME = "gpuzarr-loader"


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME) and t.is_alive()]


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Any:
    """Every test in this module must end with no loader thread alive."""
    yield
    gc.collect()
    assert loader_threads() == [], "a gpuzarr-loader thread outlived its loop"


class FakeArray:
    """A stand-in array: ``read_batch`` returns each region's (start of every axis) so batches are checkable.

    ``fail_on_call`` makes the n-th ``read_batch`` call (0-based) raise ``error``.
    """

    def __init__(self, shape: Sequence[int], fail_on_call: int | None = None, error: BaseException | None = None):
        self.shape = tuple(shape)
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.error = error or RuntimeError("storage exploded")

    def read_batch(self, regions: Sequence[Any], device: str = "cpu", transform: Any = None) -> np.ndarray:
        call = self.calls
        self.calls += 1
        if call == self.fail_on_call:
            raise self.error
        bounds = normalize_regions(list(regions), self.shape, "fake")
        return bounds.starts.copy()


def region_key(region: Any) -> tuple[Any, ...]:
    """A hashable, comparable form of a region."""
    return tuple((item.start, item.stop) if isinstance(item, slice) else ("int", int(item)) for item in region)


# --------------------------------------------------------------------------- sampler strategies
@st.composite
def shapes_and_sizes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int | None, ...]]:
    """An array shape (1-4 D) and a crop size covering its trailing axes (``None`` = whole axis)."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 30), min_size=ndim, max_size=ndim)))
    n_size = draw(st.integers(1, ndim))
    size = tuple(
        None if draw(st.integers(0, 5)) == 0 else draw(st.integers(1, shape[ndim - n_size + i])) for i in range(n_size)
    )
    return shape, size


def samplers(size: tuple[int | None, ...]) -> st.SearchStrategy[Any]:
    random_crops = st.builds(
        gpuzarr.RandomCrops, size=st.just(size), seed=st.integers(0, 2**31), samples_per_epoch=st.integers(1, 40)
    )
    grid = st.builds(
        gpuzarr.GridPatches,
        size=st.just(size),
        stride=st.none() | st.lists(st.integers(1, 4), min_size=len(size), max_size=len(size)).map(tuple),
        shuffle=st.booleans(),
        seed=st.integers(0, 2**31),
    )
    return random_crops | grid


@st.composite
def sampler_cases(draw: st.DrawFn) -> tuple[tuple[int, ...], Any]:
    shape, size = draw(shapes_and_sizes())
    return shape, draw(samplers(size))


# --------------------------------------------------------------------------- samplers
@SAMPLERS
@given(case=sampler_cases(), epoch=st.integers(0, 5))
def test_sampler_regions_are_valid_equal_shape_crops(case: tuple[tuple[int, ...], Any], epoch: int) -> None:
    shape, sampler = case
    regions = sampler.regions(shape, epoch)
    if not regions:
        return
    bounds = normalize_regions(regions, shape, "sampler")  # raises on out-of-bounds or unequal shapes
    lead = len(shape) - len(sampler.size)
    expected = [shape[lead + i] if s is None else s for i, s in enumerate(sampler.size)]
    assert list(bounds.region_shape[lead:]) == expected
    assert bounds.squeeze_axes == ((0,) if lead > 0 else ())


@SAMPLERS
@given(case=sampler_cases(), epoch=st.integers(0, 5))
def test_samplers_are_deterministic_for_seed_and_epoch(case: tuple[tuple[int, ...], Any], epoch: int) -> None:
    shape, sampler = case
    first = sampler.regions(shape, epoch)
    again = sampler.regions(shape, epoch)
    rebuilt = type(sampler)(**{f: getattr(sampler, f) for f in sampler.__dataclass_fields__}).regions(shape, epoch)
    assert [region_key(r) for r in first] == [region_key(r) for r in again] == [region_key(r) for r in rebuilt]


@SAMPLERS
@given(case=sampler_cases(), epoch=st.integers(0, 5), world_size=st.integers(2, 4))
def test_rank_shares_are_disjoint_and_cover_the_epoch(
    case: tuple[tuple[int, ...], Any], epoch: int, world_size: int
) -> None:
    shape, sampler = case
    whole = sampler.regions(shape, epoch, 0, 1)
    shares = [sampler.regions(shape, epoch, rank, world_size) for rank in range(world_size)]
    # positions in the epoch: rank r takes r, r + world_size, ... (disjoint by construction, checked by value)
    rebuilt: list[Any] = [None] * len(whole)
    for rank, share in enumerate(shares):
        positions = range(rank, len(whole), world_size)
        assert len(share) == len(positions)
        for pos, region in zip(positions, share, strict=True):
            rebuilt[pos] = region
    assert [region_key(r) for r in rebuilt] == [region_key(r) for r in whole]
    assert Counter(region_key(r) for s in shares for r in s) == Counter(region_key(r) for r in whole)
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


def test_random_crops_differ_between_epochs_and_seeds() -> None:
    shape = (20, 64, 64)
    sampler = gpuzarr.RandomCrops((16, 16), seed=5, samples_per_epoch=32)
    e0, e1 = sampler.regions(shape, 0), sampler.regions(shape, 1)
    other_seed = gpuzarr.RandomCrops((16, 16), seed=6, samples_per_epoch=32).regions(shape, 0)
    assert [region_key(r) for r in e0] != [region_key(r) for r in e1]
    assert [region_key(r) for r in e0] != [region_key(r) for r in other_seed]


def test_grid_patches_shuffle_per_epoch_but_keep_the_same_patches() -> None:
    shape = (3, 40, 40)
    shuffled = gpuzarr.GridPatches((8, 8), shuffle=True, seed=1)
    e0, e1 = shuffled.regions(shape, 0), shuffled.regions(shape, 1)
    assert [region_key(r) for r in e0] != [region_key(r) for r in e1]
    assert sorted(region_key(r) for r in e0) == sorted(region_key(r) for r in e1)
    assert len(e0) == 3 * 5 * 5
    plain = gpuzarr.GridPatches((8, 8))
    assert [region_key(r) for r in plain.regions(shape, 0)] == [region_key(r) for r in plain.regions(shape, 7)]


def test_grid_patches_tile_the_array_exactly() -> None:
    shape = (12, 9)
    regions = gpuzarr.GridPatches((4, 3)).regions(shape)
    coverage = np.zeros(shape, dtype=np.int32)
    for region in regions:
        coverage[region] += 1
    assert (coverage == 1).all()


def test_random_crops_default_samples_per_epoch() -> None:
    assert len(gpuzarr.RandomCrops((10, 10)).regions((4, 3, 35, 21))) == 4 * 3 * 2
    assert len(gpuzarr.RandomCrops((5, 4)).regions((20, 9))) == 4 * 2


def test_crop_larger_than_the_array_is_a_region_error() -> None:
    with pytest.raises(RegionError, match="does not fit"):
        gpuzarr.RandomCrops((8, 40)).regions((10, 30))
    with pytest.raises(RegionError, match="more axes"):
        gpuzarr.GridPatches((2, 2, 2)).regions((10, 30))


# --------------------------------------------------------------------------- the loader's schedule
def batches_of(loader: gpuzarr.Loader) -> list[list[tuple[Any, ...]]]:
    return [[tuple(row) for row in batch.tolist()] for batch in loader]


def expected_batches(sampler: Any, shape: tuple[int, ...], epochs: range, batch_size: int, rank: int = 0,
                     world_size: int = 1, drop_last: bool = False) -> list[list[tuple[Any, ...]]]:
    out = []
    for epoch in epochs:
        regions = sampler.regions(shape, epoch, rank, world_size)
        starts = normalize_regions(regions, shape, "x").starts.tolist() if regions else []
        for i in range(0, len(starts), batch_size):
            chunk = [tuple(s) for s in starts[i : i + batch_size]]
            if drop_last and len(chunk) < batch_size:
                continue
            out.append(chunk)
    return out


@pytest.mark.parametrize("prefetch", [0, 1, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_schedule_is_the_samplers_regions_in_order(prefetch: int, drop_last: bool) -> None:
    shape = (6, 30, 30)
    sampler = gpuzarr.RandomCrops((7, 5), seed=3, samples_per_epoch=23)
    loader = gpuzarr.Loader(FakeArray(shape), sampler, batch_size=5, epochs=3, prefetch_batches=prefetch,
                            drop_last=drop_last, rank=0, world_size=1)
    want = expected_batches(sampler, shape, range(3), 5, drop_last=drop_last)
    assert batches_of(loader) == want
    assert len(loader) == len(want)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_ranks_are_disjoint_and_cover_each_epoch(prefetch: int) -> None:
    shape = (40, 40)
    sampler = gpuzarr.GridPatches((4, 4), shuffle=True, seed=9)
    whole_epoch = {tuple(s) for s in normalize_regions(sampler.regions(shape, 1), shape, "x").starts.tolist()}
    shares: list[list[tuple[int, ...]]] = []
    for rank in range(3):
        loader = gpuzarr.Loader(FakeArray(shape), sampler, batch_size=4, epochs=2, prefetch_batches=prefetch,
                                rank=rank, world_size=3, even_ranks=False)
        loader.load_state_dict({"epoch": 1, "batch": 0})  # epoch 1 only
        shares.append([tuple(s) for batch in loader for s in batch.tolist()])
    # every GridPatches region is identified by its start corner
    sets = [set(share) for share in shares]
    assert sum(len(share) for share in shares) == len(whole_epoch) == 100
    assert sets[0].isdisjoint(sets[1]) and sets[0].isdisjoint(sets[2]) and sets[1].isdisjoint(sets[2])
    assert sets[0] | sets[1] | sets[2] == whole_epoch


def test_rank_and_world_size_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "5")
    loader = gpuzarr.Loader(FakeArray((50,)), gpuzarr.GridPatches((1,)), batch_size=100)
    assert (loader.rank, loader.world_size) == (2, 5)
    assert batches_of(loader) == [[(s,) for s in range(2, 50, 5)]]


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("consumed", [0, 1, 3, 5, 6, 9, 11])  # epoch 0 has 5 batches; 11 = everything
def test_state_dict_resumes_with_exactly_the_remaining_batches(prefetch: int, consumed: int) -> None:
    shape = (8, 20, 20)
    sampler = gpuzarr.RandomCrops((6, 6), seed=4, samples_per_epoch=17)

    def make() -> gpuzarr.Loader:
        return gpuzarr.Loader(FakeArray(shape), sampler, batch_size=4, epochs=2, prefetch_batches=prefetch,
                              rank=0, world_size=1, drop_last=False)

    everything = batches_of(make())
    assert len(everything) == 10
    first = make()
    taken = []
    if consumed:
        for i, batch in enumerate(first):
            taken.append([tuple(r) for r in batch.tolist()])
            if i + 1 == consumed:
                break
    state = first.state_dict()
    assert taken == everything[:consumed]
    resumed = make()
    resumed.load_state_dict(dict(state))
    assert batches_of(resumed) == everything[len(taken) :]


def test_state_dict_is_plain_and_round_trips() -> None:
    loader = gpuzarr.Loader(FakeArray((30,)), gpuzarr.GridPatches((3,)), batch_size=2, epochs=2, prefetch_batches=0)
    iterator = iter(loader)
    next(iterator)
    next(iterator)
    state = loader.state_dict()
    assert state == {"epoch": 0, "batch": 2}
    iterator.close()
    other = gpuzarr.Loader(FakeArray((30,)), gpuzarr.GridPatches((3,)), batch_size=2, epochs=2)
    other.load_state_dict(state)
    assert other.state_dict() == state


# --------------------------------------------------------------------------- threads and errors
@pytest.mark.parametrize("prefetch", [1, 4])
def test_break_leaves_no_loader_thread(prefetch: int) -> None:
    loader = gpuzarr.Loader(FakeArray((1000,)), gpuzarr.GridPatches((1,)), batch_size=1, prefetch_batches=prefetch)
    for i, _ in enumerate(loader):
        assert loader_threads(), "the prefetching loader reads on a gpuzarr-loader thread"
        if i == 2:
            break
    assert loader_threads() == []


def test_an_iterator_finalized_on_its_own_reader_thread_does_not_hang() -> None:
    """Garbage collection can finalize an abandoned iterator on any thread, its own reader's too.

    Closing it there must not wait for the reader (itself): that waited forever, inside the
    reader's pool submit, and so also hung every other thread submitting to a pool (seen in CI).
    """
    holder: dict[str, Any] = {}
    closed = threading.Event()

    class ClosingArray(FakeArray):
        def read_batch(self, regions: Sequence[Any], device: str = "cpu", transform: Any = None) -> np.ndarray:
            if self.calls == 2:
                holder["iterator"].close()  # what a finalizer running on this thread does
                closed.set()
            return super().read_batch(regions, device, transform)

    loader = gpuzarr.Loader(ClosingArray((100,)), gpuzarr.GridPatches((1,)), batch_size=1, prefetch_batches=1)
    holder["iterator"] = iter(loader)
    next(holder["iterator"])
    assert closed.wait(30), "closing the iterator on its reader thread hung"
    for _ in range(500):
        if not loader_threads():
            break
        threading.Event().wait(0.01)
    assert loader_threads() == []


def test_closing_the_iterator_stops_a_producer_blocked_on_a_full_queue() -> None:
    array = FakeArray((500,))
    loader = gpuzarr.Loader(array, gpuzarr.GridPatches((1,)), batch_size=1, prefetch_batches=1)
    iterator = iter(loader)
    next(iterator)
    for _ in range(200):  # give the producer time to fill the queue and block on put
        if array.calls >= 3:
            break
        threading.Event().wait(0.01)
    iterator.close()
    assert loader_threads() == []
    assert array.calls < 500, "the producer kept reading after the consumer left"


def test_abandoned_iterator_is_cleaned_up_by_garbage_collection() -> None:
    loader = gpuzarr.Loader(FakeArray((100,)), gpuzarr.GridPatches((1,)), batch_size=1, prefetch_batches=2)
    iterator = iter(loader)
    next(iterator)
    del iterator
    gc.collect()
    assert loader_threads() == []


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_error_in_background_read_surfaces_in_the_consumer(prefetch: int) -> None:
    error = CorruptChunkError("fake: chunk 'c/9' cannot be decoded", array="fake", key="c/9")
    array = FakeArray((40,), fail_on_call=3, error=error)
    loader = gpuzarr.Loader(array, gpuzarr.GridPatches((2,)), batch_size=2, prefetch_batches=prefetch)
    received = []
    with pytest.raises(CorruptChunkError) as info:
        received.extend(loader)
    assert info.value is error
    assert len(received) == 3, "the batches before the failing one are delivered"
    assert loader_threads() == []


def test_loader_surfaces_a_real_corrupt_chunk(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    arr = zarr.create_array(str(path), shape=(16, 16), chunks=(4, 4), dtype="uint8", fill_value=0,
                            compressors=[ZstdCodec(), Crc32cCodec()])
    arr[:] = np.arange(256, dtype=np.uint8).reshape(16, 16)
    chunk = path / "c" / "3" / "3"
    damaged = bytearray(chunk.read_bytes())
    damaged[0] ^= 0xFF
    chunk.write_bytes(bytes(damaged))
    handle = gpuzarr.open_array(str(path))
    loader = gpuzarr.Loader(handle, gpuzarr.GridPatches((4, 4)), batch_size=4, device="cpu", prefetch_batches=2)
    received = []
    with pytest.raises(CorruptChunkError) as info:
        received.extend(loader)
    assert info.value.key.endswith("c/3/3")
    assert len(received) == 3, "rows 0-2 of chunks are fine; the last batch holds the damaged chunk"
    np.testing.assert_array_equal(received[0], np.stack([arr[0:4, c : c + 4] for c in range(0, 16, 4)]))


def test_keyboard_interrupt_style_errors_also_surface() -> None:
    class Interrupted(BaseException):
        pass

    loader = gpuzarr.Loader(FakeArray((10,), fail_on_call=0, error=Interrupted()), gpuzarr.GridPatches((1,)),
                            batch_size=1, prefetch_batches=2)
    with pytest.raises(Interrupted):
        list(loader)


@pytest.mark.parametrize("n", [10, 11, 12, 100])
def test_even_ranks_get_the_same_number_of_batches(n: int) -> None:
    """Uneven shares (e.g. 10 regions on 3 ranks) are padded so DDP ranks step together."""
    shape = (64, 64)
    sampler = gpuzarr.RandomCrops((8, 8), seed=4, samples_per_epoch=n)
    loaders = [gpuzarr.Loader(FakeArray(shape), sampler, batch_size=3, epochs=2, prefetch_batches=0,
                              rank=rank, world_size=3) for rank in range(3)]
    lengths = {len(loader) for loader in loaders}
    assert len(lengths) == 1
    counts = [sum(len(batch) for batch in loader) for loader in loaders]
    assert len(set(counts)) == 1 and counts[0] == 2 * -(-n // 3)
    exact = [set(map(region_key, sampler.regions(shape, 0, rank, 3))) for rank in range(3)]
    padded = [set(map(region_key, loader.epoch_regions(0))) for loader in loaders]
    assert padded == exact  # padding repeats a rank's own regions, never another rank's


@pytest.mark.parametrize("prefetch", [0, 2])
def test_iterating_a_finished_loader_again_starts_over(prefetch: int) -> None:
    sampler = gpuzarr.RandomCrops((8, 8), seed=2, samples_per_epoch=12)
    loader = gpuzarr.Loader(FakeArray((32, 32)), sampler, batch_size=5, epochs=2, prefetch_batches=prefetch)
    first = [batch.tolist() for batch in loader]
    second = [batch.tolist() for batch in loader]
    assert len(first) == 6 and first == second
