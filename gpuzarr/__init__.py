"""gpuzarr: a GPU-direct batched loader for Zarr 3 arrays.

Read many equal-shape regions (crops, patches, windows) of a chunked Zarr array as one
stacked batch, each chunk fetched and decoded once per batch, on the GPU (nvCOMP +
CUDA kernels, Blosc included) or on the CPU (numcodecs in a thread pool)::

    import gpuzarr
    arr = gpuzarr.open_array("data.zarr/raw")
    batch = arr.read_batch([(0, slice(None), slice(0, 960), slice(0, 960))], device="auto")
"""

from __future__ import annotations

from gpuzarr.api import ArrayHandle, GroupHandle, open_array, open_group
from gpuzarr.errors import (
    ArrayNotFoundError,
    ConfigurationError,
    CorruptChunkError,
    CpuFallbackWarning,
    DeviceUnavailableError,
    FetchError,
    GpuFallbackError,
    GpuzarrError,
    GpuzarrWarning,
    NotAZarrArrayError,
    RegionError,
    UnsupportedCodecError,
)
from gpuzarr.integrations.zarr_pipeline import GpuzarrCodecPipeline, PipelineFallbackWarning, PipelineUnsupportedError
from gpuzarr.loading.loader import GridPatches, Loader, RandomCrops
from gpuzarr.plan.transform import OutputTransform
from gpuzarr.settings import config
from gpuzarr.storage.cache import PinnedLRUCache

__version__ = "0.1.0"

__all__ = [
    "ArrayHandle",
    "ArrayNotFoundError",
    "ConfigurationError",
    "CorruptChunkError",
    "CpuFallbackWarning",
    "DeviceUnavailableError",
    "FetchError",
    "GpuFallbackError",
    "GpuzarrCodecPipeline",
    "GpuzarrError",
    "GpuzarrWarning",
    "GridPatches",
    "GroupHandle",
    "Loader",
    "NotAZarrArrayError",
    "OutputTransform",
    "PinnedLRUCache",
    "PipelineFallbackWarning",
    "PipelineUnsupportedError",
    "RandomCrops",
    "RegionError",
    "UnsupportedCodecError",
    "__version__",
    "config",
    "open_array",
    "open_group",
]
