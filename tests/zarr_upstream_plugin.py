"""pytest plugin for zarr's own tests run by :mod:`zarr_upstream`: checks and records gpuzarr's part.

At the start it checks that zarr's configured pipeline is gpuzarr's; at the end it writes
:func:`gpuzarr.integrations.zarr_pipeline.read_stats` of the run to
``$GPUZARR_UPSTREAM_STATS`` (JSON), so the caller can assert that reads went through
gpuzarr and not only through its fallback.
"""

from __future__ import annotations

import json
import os

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    import zarr

    path = zarr.config.get("codec_pipeline.path")
    if path != "gpuzarr.GpuzarrCodecPipeline":
        raise pytest.UsageError(f"zarr's codec_pipeline.path is {path!r}, not gpuzarr's")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("GPUZARR_UPSTREAM_STATS")
    if target:
        from gpuzarr.integrations.zarr_pipeline import read_stats

        with open(target, "w") as f:
            json.dump(read_stats(), f)
