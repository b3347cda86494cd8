"""Shared test configuration: the ``gpu`` marker and hypothesis profiles.

Tests marked ``gpu`` are deselected by default (``-m 'not gpu'`` in pyproject) and run
with ``pytest -m gpu``; without a usable GPU engine they skip with the reason.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=1000, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    from gpuzarr import _optional

    gpu = _optional.gpu_engine()
    if not gpu:
        skip = pytest.mark.skip(reason=f"no usable GPU engine: {gpu.reason}")
        for item in gpu_items:
            item.add_marker(skip)
