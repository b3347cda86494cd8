"""``gpuzarr.dali``: real DALI CPU pipelines (``device_id=None``) fed by ExternalSource equal ``read_batch``.

* ``gpuzarr.dali.pipeline`` with ``DALIGenericIterator`` and ``LastBatchPolicy.PARTIAL``:
  every batch of two epochs equals ``read_batch`` of the schedule's regions, the partial last
  batch included, with ``no_copy=True`` (the buffer ring is deep enough not to be overwritten);
* a dict of arrays at scaled windows through a hand-built ``fn.external_source``;
* flip + normalisation give each sample's normalised crop, mirrored or not;
* resume from ``state_dict(consumed_batches=k)`` in a new pipeline yields the rest of the epoch.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from nvidia.dali import fn
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

import gpuzarr
import gpuzarr.dali as gd
from gpuzarr.errors import DeviceUnavailableError


@pytest.fixture(scope="module")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, gpuzarr.ArrayHandle]:
    root = tmp_path_factory.mktemp("dali") / "d.zarr"
    rng = np.random.default_rng(0)
    group = zarr.open_group(str(root), mode="w")
    group.create_array("raw", shape=(3, 3, 40, 48), chunks=(1, 3, 16, 16), dtype="uint8")[:] = rng.integers(
        0, 255, size=(3, 3, 40, 48), dtype=np.uint8)
    group.create_array("flow", shape=(3, 2, 20, 24), chunks=(1, 2, 8, 8), dtype="float32")[:] = rng.standard_normal(
        (3, 2, 20, 24)).astype(np.float32)
    handles = gpuzarr.open_group(str(root))
    return {"raw": handles["raw"], "flow": handles["flow"]}


def expected_batches(source: gd.ExternalSource, epoch: int, name: str | None = None) -> list[np.ndarray]:
    loader = source.loader
    share = loader.share(epoch)
    arr = loader.source.arrays[name if name is not None else loader.source.names[0]]
    regions = loader.source.regions_for(name if name is not None else loader.source.names[0], share.regions)
    b = loader.batch_size
    return [arr.read_batch(regions[i : i + b], device="cpu") for i in range(0, len(regions), b)]


def test_pipeline_batches_equal_read_batch_over_two_epochs(arrays: dict[str, gpuzarr.ArrayHandle]) -> None:
    sampler = gpuzarr.RandomCrops((8, 12), seed=1, samples_per_epoch=10)
    pipe = gd.pipeline(arrays["raw"], sampler, 4, device="cpu", device_id=None, prefetch_queue_depth=2)
    source = pipe.gpuzarr_source
    iterator = DALIGenericIterator(pipe, ["raw"], last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)
    for epoch in range(2):
        got = [b[0]["raw"].numpy() for b in iterator]
        want = expected_batches(source, epoch)
        assert [g.shape[0] for g in got] == [4, 4, 2]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    assert not np.array_equal(expected_batches(source, 0)[0], expected_batches(source, 1)[0])


def test_dict_of_arrays_through_fn_external_source(arrays: dict[str, gpuzarr.ArrayHandle]) -> None:
    sampler = gpuzarr.RandomCrops((8, 12), seed=2, samples_per_epoch=7)
    source = gd.ExternalSource(arrays, sampler, 3, device="cpu", scale={"flow": 0.5})
    pipe = Pipeline(batch_size=3, num_threads=1, device_id=None, prefetch_queue_depth=2)
    with pipe:
        raw, flow = fn.external_source(**source.external_source_kwargs(), no_copy=True)
        pipe.set_outputs(raw, flow)
    iterator = DALIGenericIterator(pipe, ["raw", "flow"], last_batch_policy=LastBatchPolicy.PARTIAL)
    got = list(iterator)
    for name in ("raw", "flow"):
        want = expected_batches(source, 0, name)
        assert [g[0][name].shape[0] for g in got] == [3, 3, 1]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g[0][name].numpy(), w)
    assert got[0][0]["flow"].shape[1:] == (2, 4, 6)


def test_flip_and_normalise(arrays: dict[str, gpuzarr.ArrayHandle]) -> None:
    sampler = gpuzarr.RandomCrops((8, 12), seed=3, samples_per_epoch=16)
    mean, std = [100.0, 110.0, 120.0], [50.0, 60.0, 70.0]
    pipe = gd.pipeline(arrays["raw"], sampler, 8, device="cpu", device_id=None, flip=True, mean=mean, std=std)
    source = pipe.gpuzarr_source
    got = [b[0]["raw"].numpy() for b in DALIGenericIterator(pipe, ["raw"], last_batch_policy=LastBatchPolicy.PARTIAL)]
    want = np.concatenate(expected_batches(source, 0)).astype(np.float32)
    norm = (want - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    flipped = 0
    for g, plain in zip(np.concatenate(got), norm, strict=True):
        if np.allclose(g, plain, atol=1e-5):
            continue
        np.testing.assert_allclose(g, plain[..., ::-1], atol=1e-5)
        flipped += 1
    assert 0 < flipped < 16


def test_resume_from_the_batches_the_loop_consumed(arrays: dict[str, gpuzarr.ArrayHandle]) -> None:
    sampler = gpuzarr.RandomCrops((8, 12), seed=4, samples_per_epoch=11)

    def batches(pipe: Pipeline, stop: int | None = None) -> list[np.ndarray]:
        out = []
        for i, b in enumerate(DALIGenericIterator(pipe, ["raw"], last_batch_policy=LastBatchPolicy.PARTIAL)):
            if i == stop:
                break
            out.append(b[0]["raw"].numpy())
        return out

    whole = np.concatenate(batches(gd.pipeline(arrays["raw"], sampler, 3, device="cpu", device_id=None)))
    first = gd.pipeline(arrays["raw"], sampler, 3, device="cpu", device_id=None)
    taken = batches(first, stop=2)
    state = first.gpuzarr_source.state_dict(consumed_batches=len(taken))
    assert state == {"epoch": 0, "sample": 6}
    again = gd.pipeline(arrays["raw"], sampler, 3, device="cpu", device_id=None)
    again.gpuzarr_source.load_state_dict(state)
    rest = batches(again)
    np.testing.assert_array_equal(np.concatenate(taken + rest), whole)


def test_gpu_source_without_a_gpu_says_so(arrays: dict[str, gpuzarr.ArrayHandle]) -> None:
    if gpuzarr._optional.gpu_engine():
        pytest.skip("a GPU engine is usable here")
    with pytest.raises(DeviceUnavailableError, match="device='cpu'"):
        gd.ExternalSource(arrays["raw"], gpuzarr.RandomCrops((8, 8)), 2, device="gpu")
