"""Zarr v2 arrays of every shape, layout and codec mix read equal to zarr-python (Hypothesis).

Arrays come from :func:`strategies.v2_array_specs` (data types with either byte order,
``order`` C or F, ``/`` or ``.`` separators, every numcodecs compressor gpuzarr knows,
filters that keep or change the stored type, null/NaN fill values, partly written) and
regions from :func:`strategies.batches`; the hand-picked writer matrix is in
``test_corpus.py``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import assert_same_batch, batches, create_v2_array, scaled, v2_array_specs, zarr_reference

import gpuzarr

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                          HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("v2")


@settings(SETTINGS, max_examples=scaled(150))
@given(spec=v2_array_specs(), data=st.data())
def test_v2_read_batch_matches_zarr(scratch: Path, spec, data: st.DataObject) -> None:
    path = scratch / f"{uuid.uuid4().hex}.zarr"
    create_v2_array(spec, str(path))
    ref = zarr.open_array(str(path), mode="r")
    batch = data.draw(batches(spec.shape))
    with gpuzarr.open_array(str(path)) as handle:
        got = handle.read_batch(list(batch.regions), device="cpu")
    expected = zarr_reference(ref, batch.regions)
    assert_same_batch(got, expected, context=f"{spec} regions={batch.regions}")


@settings(SETTINGS, max_examples=scaled(40))
@given(spec=v2_array_specs(max_dims=2), data=st.data())
def test_v2_memory_store_and_open_zarr_array(spec, data: st.DataObject) -> None:
    """An open ``zarr.Array`` over a MemoryStore (no path) reads the same."""
    arr = create_v2_array(spec, zarr.storage.MemoryStore())
    batch = data.draw(batches(spec.shape, allow_empty=False))
    got = gpuzarr.open_array(arr).read_batch(list(batch.regions), device="cpu")
    assert_same_batch(got, np.stack([np.asarray(arr[r]) for r in batch.regions]), context=f"{spec}")
