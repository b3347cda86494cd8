"""Bad arguments to the loader, samplers, transforms and reads are typed GpuzarrErrors (still ValueErrors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import gpuzarr
from gpuzarr import Loader, RandomCrops
from gpuzarr.errors import ConfigurationError, GpuzarrError
from gpuzarr.plan.transform import OutputTransform
from gpuzarr.storage.retry import RetryPolicy


@pytest.fixture
def handle(tmp_path: Path) -> gpuzarr.ArrayHandle:
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 32, 32), chunks=(1, 16, 16), dtype="uint8")
    arr[:] = np.arange(4 * 32 * 32, dtype=np.uint8).reshape(4, 32, 32)
    return gpuzarr.open_array(str(tmp_path / "a.zarr"))


@pytest.mark.parametrize("make", [
    lambda h: Loader(h, RandomCrops((8, 8)), batch_size=0),
    lambda h: RandomCrops((8, 8)).regions(h.shape, rank=3, world_size=2),
    lambda h: OutputTransform(dtype="int8"),
    lambda h: OutputTransform(std=0.0),
    lambda h: OutputTransform(layout="sideways"),
    lambda h: RetryPolicy(max_attempts=0),
    lambda h: h.read_batch([(0, slice(0, 8), slice(0, 8))], device="cpu", out=np.empty((2, 8, 8), np.uint8)),
])
def test_bad_arguments_are_configuration_errors(handle: gpuzarr.ArrayHandle, make) -> None:
    with pytest.raises(ConfigurationError) as info:
        make(handle)
    assert isinstance(info.value, GpuzarrError) and isinstance(info.value, ValueError)
    assert str(info.value)
