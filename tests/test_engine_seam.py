"""The typed seams: engines satisfy the Engine protocol, say what they take as data, and honour a caller's stream."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from gpu_emulation import gpu_emulation

import gpuzarr
from gpuzarr.engines.base import Engine, EngineCapabilities, resolve_engine
from gpuzarr.storage.base import ChunkFetcher

REGIONS = [(slice(i, i + 8), slice(3, 19)) for i in range(0, 40, 5)]


def _array(tmp_path: Path) -> tuple[str, np.ndarray]:
    data = np.arange(48 * 32, dtype="float32").reshape(48, 32)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(8, 8), dtype=data.dtype,
                            compressors=zarr.codecs.ZstdCodec(level=1))
    arr[:] = data
    return str(tmp_path / "a.zarr"), np.stack([data[r] for r in REGIONS])


def test_cpu_engine_is_an_engine_with_capabilities_as_data() -> None:
    engine = resolve_engine("cpu")
    assert isinstance(engine, Engine)
    caps = engine.capabilities
    assert caps == EngineCapabilities(device="cpu", loads_deferred_reads=True)
    assert not caps.device_batches and not caps.uses_stream
    with pytest.raises(dataclasses.FrozenInstanceError):
        caps.device = "cuda"  # type: ignore[misc]


def test_cpu_engine_accepts_and_ignores_a_stream(tmp_path: Path) -> None:
    path, expected = _array(tmp_path)
    with gpuzarr.open_array(path) as handle:
        got = handle.read_batch(REGIONS, device="cpu", stream=12345)
        assert isinstance(handle.fetcher, ChunkFetcher)
    np.testing.assert_array_equal(got, expected)


def test_gpu_engine_queues_the_batch_on_the_callers_stream(tmp_path: Path) -> None:
    path, expected = _array(tmp_path)
    with gpu_emulation(), pytest.MonkeyPatch.context() as monkeypatch:  # undone before the emulation is
        import cupy as cp

        from gpuzarr.engines.gpu import kernels

        engine = resolve_engine("cuda")
        assert isinstance(engine, Engine)
        assert engine.capabilities.device == "cuda" and engine.capabilities.uses_stream
        seen: list[int] = []
        launch = kernels.launch_gather

        def recording_launch(*args: Any, **kwargs: Any) -> Any:
            seen.append(int(cp.cuda.get_current_stream().ptr))
            return launch(*args, **kwargs)

        monkeypatch.setattr(kernels, "launch_gather", recording_launch)
        before = int(cp.cuda.get_current_stream().ptr)
        mine = cp.cuda.Stream(non_blocking=True)
        with gpuzarr.open_array(path) as handle:
            got = handle.read_batch(REGIONS, device="cuda", stream=mine)
            default = handle.read_batch(REGIONS, device="cuda")
        assert seen == [int(mine.ptr), before]
        assert int(cp.cuda.get_current_stream().ptr) == before  # the caller's current stream is left as it was
        np.testing.assert_array_equal(cp.asnumpy(got), expected)
        np.testing.assert_array_equal(cp.asnumpy(default), expected)
