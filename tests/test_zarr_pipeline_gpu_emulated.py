"""gpuzarr.GpuzarrCodecPipeline with ``zarr.config.enable_gpu()``, on the CPU emulation of CUDA.

No GPU exists here. :mod:`gpu_emulation` stands in for CuPy (device arrays over host
memory that refuse implicit host conversion), nvCOMP (real CPU decoders behind nvCOMP's
batch API, with its alignment rules) and runs the real ``kernels/*.cu`` compiled for the
CPU. Under it zarr's GPU buffers hold fake CuPy arrays, so ``enable_gpu()`` reads reach
the plug-in's GPU path: the GPU engine decodes and gathers into zarr's CuPy output. Every
read must equal zarr's default pipeline reading the same store into host memory, must go
through gpuzarr (``codec_pipeline.strict`` is set, so a fallback would raise) and must run
the emulated device decode or gather. Coordinate and mask selections (``vindex``) are not
drawn: zarr 3.4.2 itself turns their output into NumPy with ``np.array(out)``, which CuPy
refuses, whatever the pipeline. What this does not prove is listed in
docs/gpu-validation.md (kernels under nvcc on a GPU, nvCOMP itself, streams).
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest
import zarr
from gpu_emulation import FakeDeviceArray, gpu_emulation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_zarr_pipeline import DEFAULT, PLUGIN, _apply, _make, arrays, selections
from test_zarr_pipeline_formats import _make_filtered, _make_v2, filtered_v3_arrays, v2_arrays
from zarr.storage import MemoryStore

from gpuzarr.integrations.zarr_pipeline import read_stats


@pytest.fixture(scope="module")
def emulation():
    """The GPU emulation: the session's (``GPUZARR_EMULATE_GPU=1``, see conftest.py) or one for this module."""
    import zarr.core.buffer.gpu as zarr_gpu

    with contextlib.ExitStack() as stack:
        cupy = sys.modules.get("cupy")
        if getattr(cupy, "__version__", None) == "emulated":  # installed for the whole session
            emu = cupy.RawModule.args[0]  # the kernels' compiler is bound to the session's GpuEmulation
        else:
            emu = stack.enter_context(gpu_emulation())
        mp = pytest.MonkeyPatch()
        stack.callback(mp.undo)
        # zarr's GPU buffer module binds ``cupy`` when first imported; point it at the emulation
        mp.setattr(zarr_gpu, "cp", sys.modules["cupy"])
        yield emu


def _gpu_read(store, select):
    with zarr.config.enable_gpu(), zarr.config.set({"codec_pipeline.path": PLUGIN, "codec_pipeline.strict": True}):
        return select(zarr.open_array(store=store, mode="r"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=arrays(), data=st.data())
def test_enable_gpu_reads_equal_zarr(emulation, spec, data):
    store = MemoryStore()
    _make(spec, store)
    kind, sel = data.draw(selections(spec["shape"]).filter(lambda ks: ks[0] not in ("vindex", "mask")))
    select = _apply(kind, sel)
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        expected = np.asarray(select(zarr.open_array(store=store, mode="r")))
    before = read_stats()
    emulation.reset_logs()
    got = _gpu_read(store, select)
    if expected.size:  # zarr calls no pipeline for an empty selection
        assert read_stats()["reads"] > before["reads"], "the read did not go through gpuzarr"
        assert isinstance(got, FakeDeviceArray), type(got)
        assert emulation.decode_calls or emulation.kernel_launches, "nothing ran on the (emulated) device"
    assert read_stats()["fallback_reads"] == before["fallback_reads"]
    host = got.get() if isinstance(got, FakeDeviceArray) else np.asarray(got)
    assert host.dtype == expected.dtype
    np.testing.assert_array_equal(host, expected)


def test_enable_gpu_blosc_sharded_crop(emulation):
    """A crop of a sharded Blosc array: nvCOMP (emulated) decodes the inner chunks, the gather fills the crop."""
    ref = (np.arange(64 * 48, dtype="u2").reshape(64, 48) * 3) % 5000
    store = MemoryStore()
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        arr = zarr.create_array(store=store, shape=ref.shape, chunks=(8, 8), shards=(32, 24), dtype="u2",
                                compressors=zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle"), fill_value=7)
        arr[:40] = ref[:40]
    expected = ref.copy()
    expected[40:] = 7
    emulation.reset_logs()
    got = _gpu_read(store, lambda a: a[5:50, 3:41])
    assert isinstance(got, FakeDeviceArray)
    assert any(c.algorithm == "LZ4" for c in emulation.decode_calls), emulation.decode_calls
    np.testing.assert_array_equal(got.get(), expected[5:50, 3:41])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=filtered_v3_arrays(), data=st.data())
def test_enable_gpu_dtype_changing_filters_and_v2(emulation, spec, data):
    """dtype-changing array→array codecs and Zarr v2 arrays on the GPU path: equal to zarr's host reads."""
    import warnings

    store = MemoryStore()
    v2 = data.draw(st.booleans())
    if v2:
        _make_v2(data.draw(v2_arrays()), store)
    else:
        _make_filtered(spec, store)
    shape = zarr.open_array(store=store, mode="r").shape
    kind, sel = data.draw(selections(shape).filter(lambda ks: ks[0] not in ("vindex", "mask")))
    select = _apply(kind, sel)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="numcodecs")
        with zarr.config.set({"codec_pipeline.path": DEFAULT}):
            expected = np.asarray(select(zarr.open_array(store=store, mode="r")))
        before = read_stats()
        got = _gpu_read(store, select)
    if expected.size:
        assert read_stats()["reads"] > before["reads"]
    host = got.get() if isinstance(got, FakeDeviceArray) else np.asarray(got)
    assert host.dtype == expected.dtype
    np.testing.assert_array_equal(host, expected)
