"""Geometry of a batch shared by the GPU engine, its launchers and the NumPy mirrors of the kernels.

:func:`gather_layout` says where each region axis lands in the output batch (squeezed
axes, a channel-first/last layout), :func:`chunk_strides` where each array axis sits inside
a decoded chunk (a zarr ``transpose`` codec is just other strides). Production code
(``gpuzarr.engines.gpu.engine``) and the test oracles (``gpuzarr.engines.gpu.mirrors``)
both import them from here, so the engine never depends on the oracle module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def gather_layout(plan: Any, transform: Any = None) -> tuple[tuple[int, ...], np.ndarray, int | None]:
    """Output geometry shared by the gather kernel and its mirror.

    Returns ``(sample_shape, region_axis_stride, channel_region_axis)``: the per-sample
    output shape after squeezing integer axes and applying the layout, the output
    element stride of each *region* axis (0 for squeezed axes), and which region axis
    is the channel axis for normalisation (``None`` without one).
    """
    region_shape = tuple(int(x) for x in plan.region_shape)
    kept = [d for d in range(len(region_shape)) if d not in plan.squeeze_axes]
    order = list(range(len(kept)))
    channel = None
    if transform is not None:
        channel = transform.resolve_channel_axis(len(kept))
        order = list(transform.output_axes(len(kept)))
    sample_shape = tuple(region_shape[kept[a]] for a in order)
    out_stride_by_position = np.ones(len(sample_shape), dtype=np.int64)
    for k in range(len(sample_shape) - 2, -1, -1):
        out_stride_by_position[k] = out_stride_by_position[k + 1] * sample_shape[k + 1]
    stride = np.zeros(len(region_shape), dtype=np.int64)
    for pos, a in enumerate(order):
        stride[kept[a]] = out_stride_by_position[pos]
    channel_region_axis = None if channel is None else kept[channel]
    return sample_shape, stride, channel_region_axis


def chunk_strides(chunk_shape: Sequence[int], transpose_order: Sequence[int] | None = None) -> np.ndarray:
    """Element strides of each *array* axis inside a decoded chunk.

    Without a transpose codec the chunk is C-ordered in ``chunk_shape``. With zarr's
    ``transpose`` codec of ``order``, the stored chunk is C-ordered in
    ``[chunk_shape[o] for o in order]``, so array axis ``order[k]`` has the stride of
    stored axis ``k`` — the gather kernel reads the stored layout directly and no
    separate transpose pass exists.
    """
    shape = [int(x) for x in chunk_shape]
    order = list(range(len(shape))) if transpose_order is None else [int(o) for o in transpose_order]
    stored = [shape[o] for o in order]
    stored_stride = np.ones(len(stored), dtype=np.int64)
    for k in range(len(stored) - 2, -1, -1):
        stored_stride[k] = stored_stride[k + 1] * stored[k + 1]
    stride = np.zeros(len(shape), dtype=np.int64)
    for k, o in enumerate(order):
        stride[o] = stored_stride[k]
    return stride
