"""On a GPU machine: ZarrLoader's CUDA tensors and the DALI GPU pipeline equal the CPU engine's batches.

Marked ``gpu`` (run with ``pytest -m gpu``) and ``real_cuda`` (torch's CUDA and DALI's GPU
operators are not part of the CPU emulation of CuPy/nvCOMP).
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

import gpuzarr

pytestmark = [pytest.mark.gpu, pytest.mark.real_cuda]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, gpuzarr.ArrayHandle]:
    root = tmp_path_factory.mktemp("gpu") / "d.zarr"
    rng = np.random.default_rng(0)
    group = zarr.open_group(str(root), mode="w")
    group.create_array("raw", shape=(3, 3, 64, 96), chunks=(1, 3, 32, 32), dtype="uint8",
                       compressors=BloscCodec(cname="lz4", shuffle="bitshuffle"))[:] = rng.integers(
        0, 255, size=(3, 3, 64, 96), dtype=np.uint8)
    group.create_array("flow", shape=(3, 2, 32, 48), chunks=(1, 2, 16, 16), dtype="float16")[:] = rng.standard_normal(
        (3, 2, 32, 48)).astype(np.float16)
    handles = gpuzarr.open_group(str(root))
    return {"raw": handles["raw"], "flow": handles["flow"]}


def test_zarr_loader_cuda_tensors_equal_the_cpu_engine(pair: dict[str, gpuzarr.ArrayHandle]) -> None:
    torch = pytest.importorskip("torch")
    import gpuzarr.torch as gt

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    sampler = gpuzarr.RandomCrops((16, 24), seed=1, samples_per_epoch=10)
    transform = {"raw": gpuzarr.OutputTransform(mean=(1.0, 2.0, 3.0), std=4.0, channel_axis=0)}
    on_gpu = gt.ZarrLoader(pair, sampler, 4, scale={"flow": 0.5}, transform=transform, device="cuda")
    on_cpu = gt.ZarrLoader(pair, sampler, 4, scale={"flow": 0.5}, transform=transform, device="cpu")
    assert on_gpu.engine_device == "cuda", "the GPU engine reads (DLPack hand-over, no host copy)"
    for g, c in zip(on_gpu, on_cpu, strict=True):
        for name in ("raw", "flow"):
            assert g[name].device.type == "cuda"
            np.testing.assert_array_equal(g[name].cpu().numpy(), c[name].numpy())


def test_dali_gpu_pipeline_equals_the_cpu_pipeline(pair: dict[str, gpuzarr.ArrayHandle]) -> None:
    pytest.importorskip("nvidia.dali")
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    import gpuzarr.dali as gd

    sampler = gpuzarr.RandomCrops((16, 24), seed=2, samples_per_epoch=9)
    outs = {}
    for device, device_id in (("gpu", 0), ("cpu", None)):
        pipe = gd.pipeline(pair, sampler, 4, device=device, device_id=device_id, scale={"flow": 0.5},
                           mean=[10.0] * 3, std=[3.0] * 3)
        it = DALIGenericIterator(pipe, ["raw", "flow"], last_batch_policy=LastBatchPolicy.PARTIAL)
        outs[device] = [{k: b[0][k].cpu().numpy() for k in ("raw", "flow")} for b in it]
    assert [len(b["raw"]) for b in outs["gpu"]] == [4, 4, 1]
    for g, c in zip(outs["gpu"], outs["cpu"], strict=True):
        np.testing.assert_allclose(g["raw"], c["raw"], rtol=1e-6)
        np.testing.assert_array_equal(g["flow"], c["flow"])
