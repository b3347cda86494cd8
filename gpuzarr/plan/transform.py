"""Output transforms fused into batch assembly: cast, per-channel normalisation, layout.

:class:`OutputTransform` is device-free: the CPU engine calls
:meth:`OutputTransform.apply_reference` on the assembled NumPy batch, and the GPU
engine passes the same object to the gather kernel, which does the identical
arithmetic while it copies (every value goes through float64, then
``(x - mean[c]) / std[c]`` — computed as ``(x - mean[c]) * (1 / std[c])`` — and is
rounded once to the output dtype). So both engines return the same values.

Axes are those of one *sample* (a region with its integer-indexed axes dropped;
the leading batch axis is not counted). ``layout="CHW"`` moves the channel axis to the
front, ``"HWC"`` to the back; ``None`` keeps the array's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuzarr.errors import ConfigurationError

_FLOAT_OUTPUTS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_LAYOUTS = (None, "CHW", "HWC")


def _as_vector(name: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigurationError(f"{name} must be a number or a non-empty 1-D sequence, not {value!r}")
    if not np.all(np.isfinite(arr)):
        raise ConfigurationError(f"{name} must be finite, got {value!r}")
    return tuple(float(x) for x in arr)


@dataclass(frozen=True)
class OutputTransform:
    """Cast / normalise / re-layout the batch while it is assembled.

    ``dtype``: output float dtype (float16, float32 or float64); ``None`` keeps the
    array's dtype, or float32 when ``mean``/``std`` are given. ``mean``/``std``: one
    number, or one per channel along ``channel_axis``. ``channel_axis``: a sample axis
    (negative counts from the end), needed for per-channel values and for ``layout``.
    """

    dtype: Any = None
    mean: float | Sequence[float] | None = None
    std: float | Sequence[float] | None = None
    channel_axis: int | None = None
    layout: str | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None:
            dt = np.dtype(self.dtype)
            if dt not in _FLOAT_OUTPUTS:
                raise ConfigurationError(f"OutputTransform dtype must be float16, float32 or float64, not {dt}")
            object.__setattr__(self, "dtype", dt)
        mean = _as_vector("mean", self.mean)
        std = _as_vector("std", self.std)
        if std is not None and any(s == 0.0 for s in std):
            raise ConfigurationError(f"std must be non-zero, got {self.std!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.layout not in _LAYOUTS:
            raise ConfigurationError(f"layout must be one of {_LAYOUTS}, not {self.layout!r}")
        if self.channel_axis is not None and not isinstance(self.channel_axis, (int, np.integer)):
            raise ConfigurationError(f"channel_axis must be an int or None, not {self.channel_axis!r}")
        per_channel = max(len(mean or ()), len(std or ())) > 1
        if (per_channel or self.layout is not None) and self.channel_axis is None:
            raise ConfigurationError("per-channel mean/std and layout need channel_axis")
        if mean is not None and std is not None and 1 < len(mean) != len(std) > 1:
            raise ConfigurationError(f"mean has {len(mean)} values but std has {len(std)}")

    @property
    def normalises(self) -> bool:
        return self.mean is not None or self.std is not None

    def output_dtype(self, src_dtype: Any) -> np.dtype:
        """The dtype of the transformed batch for a source of ``src_dtype``."""
        if self.dtype is not None:
            return np.dtype(self.dtype)
        if self.normalises:
            return np.dtype(np.float32)
        return np.dtype(src_dtype)

    def resolve_channel_axis(self, sample_ndim: int) -> int | None:
        """The channel axis as a non-negative sample axis, checked against ``sample_ndim``."""
        if self.channel_axis is None:
            return None
        ax = int(self.channel_axis)
        if not -sample_ndim <= ax < sample_ndim:
            raise ConfigurationError(f"channel_axis {ax} is out of range for samples with {sample_ndim} dimensions")
        return ax % sample_ndim

    def output_axes(self, sample_ndim: int) -> tuple[int, ...]:
        """Sample axes in output order (a permutation of ``range(sample_ndim)``)."""
        axes = list(range(sample_ndim))
        ch = self.resolve_channel_axis(sample_ndim)
        if self.layout is None or ch is None:
            return tuple(axes)
        axes.remove(ch)
        return tuple([ch, *axes] if self.layout == "CHW" else [*axes, ch])

    def channel_tables(self, n_channels: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per-channel ``mean`` and ``1/std`` as float64 arrays of ``n_channels`` (``None`` without normalisation)."""
        if not self.normalises:
            return None, None
        mean = np.zeros(n_channels) if self.mean is None else np.asarray(self.mean, dtype=np.float64)
        std = np.ones(n_channels) if self.std is None else np.asarray(self.std, dtype=np.float64)
        for name, vec in (("mean", mean), ("std", std)):
            if vec.size not in (1, n_channels):
                raise ConfigurationError(f"{name} has {vec.size} values but the channel axis has {n_channels}")
        mean = np.broadcast_to(mean, (n_channels,)).astype(np.float64)
        inv_std = 1.0 / np.broadcast_to(std, (n_channels,)).astype(np.float64)
        return mean, inv_std

    def apply_reference(self, batch: np.ndarray) -> np.ndarray:
        """Apply the transform to a NumPy batch of shape ``(n, *sample_shape)`` (what the CPU engine calls)."""
        batch = np.asarray(batch)
        sample_ndim = batch.ndim - 1
        out_dtype = self.output_dtype(batch.dtype)
        ch = self.resolve_channel_axis(sample_ndim)
        if self.normalises or out_dtype != batch.dtype:
            x = batch.astype(np.float64)
            if self.normalises:
                n_channels = batch.shape[1 + ch] if ch is not None else 1
                mean, inv_std = self.channel_tables(n_channels)
                shape = [1] * batch.ndim
                if ch is not None:
                    shape[1 + ch] = n_channels
                x = (x - mean.reshape(shape)) * inv_std.reshape(shape)
            result = x.astype(out_dtype)
        else:
            result = batch
        axes = self.output_axes(sample_ndim)
        if axes != tuple(range(sample_ndim)):
            result = np.ascontiguousarray(result.transpose((0, *(a + 1 for a in axes))))
        return result
