"""Shared by the examples: a tiny demo dataset (4 small frames of ``raw`` RGB plus ``flow`` at half resolution).

Written once under ``$GPUZARR_EXAMPLE_DATA`` (default ``example-data/``) and reused.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpuzarr.tools.demo import ensure_demo_dataset


def tiny_dataset(path: str | os.PathLike[str] | None = None, *, frames: int = 4, height: int = 128,
                 width: int = 192) -> str:
    """Write (once) and return the path of a tiny group with ``raw`` (N, 3, H, W) uint8 and ``flow`` (N, 2, H/2, W/2)."""
    if path is None:
        path = Path(os.environ.get("GPUZARR_EXAMPLE_DATA", "example-data")) / "tiny.zarr"
    ensure_demo_dataset(path, frames=frames, height=height, width=width, chunk=64, progress=False)
    return str(path)
