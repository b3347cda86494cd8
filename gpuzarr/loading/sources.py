"""What one sample is made of: one array, or several arrays read at the same (scaled) window.

:class:`ArraySet` wraps one :class:`~gpuzarr.ArrayHandle` or a dict ``name → handle``.
The sampler's regions are regions of the *first* array; ``scale`` maps a name to its
resolution factor relative to that array (``{"flow": 0.5}`` for optical flow stored at
half the resolution of 4K ``raw``), and each region is mapped onto every array:

* an integer index (a frame, a sample) stays the same integer;
* a slice covering the whole axis of the first array covers the whole axis of the other;
* any other window ``a:b`` becomes ``floor(a·f) : floor(a·f) + (b − a)·f`` — the same
  window at the other resolution (the start rounds down to a whole pixel; the extent
  ``(b − a)·f`` must be whole, so every sample of the batch has the same shape).

A per-axis tuple ``scale`` (one factor per axis) also scales integer indices on axes whose
factor is not 1. Each array is read with one :meth:`~gpuzarr.ArrayHandle.read_batch` per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from gpuzarr.errors import ConfigurationError, RegionError
from gpuzarr.plan.planner import RegionTable

Allocator = Callable[[str | None, tuple[int, ...], Any], Any]


def _fraction(value: Any, name: str) -> Fraction:
    try:
        frac = Fraction(value).limit_denominator(1 << 16)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"scale for {name!r} must be a positive number, not {value!r}") from exc
    if frac <= 0:
        raise ConfigurationError(f"scale for {name!r} must be a positive number, not {value!r}")
    return frac


class ArraySet:
    """One array or a dict of arrays read together; ``single`` when the user passed one handle."""

    def __init__(self, arrays: Any, scale: Mapping[str, Any] | None = None, transform: Any = None) -> None:
        if isinstance(arrays, Mapping):
            if not arrays:
                raise ConfigurationError("arrays is an empty dict; pass one array handle or a dict name -> handle")
            self.single = False
            self.arrays: dict[str | None, Any] = {str(k): v for k, v in arrays.items()}
        else:
            self.single = True
            self.arrays = {None: arrays}
        self.names = list(self.arrays)
        self.primary = self.arrays[self.names[0]]
        self.shape: tuple[int, ...] = tuple(self.primary.shape)
        scale = dict(scale or {})
        unknown = set(scale) - {n for n in self.names if n is not None}
        if unknown:
            raise ConfigurationError(f"scale names {sorted(unknown)} are not among the arrays {self.names}")
        self.factors: dict[str | None, tuple[Fraction, ...] | Fraction] = {}
        for name in self.names:
            arr = self.arrays[name]
            if len(arr.shape) != len(self.shape):
                raise ConfigurationError(f"array {name!r} has {len(arr.shape)} axes but the first array "
                                 f"{self.names[0]!r} has {len(self.shape)}; arrays of one sample need the same axes")
            value = scale.get(name, 1) if name is not None else 1
            if isinstance(value, (tuple, list)):
                if len(value) != len(self.shape):
                    raise ConfigurationError(f"scale for {name!r} has {len(value)} factors for {len(self.shape)} axes")
                self.factors[name] = tuple(_fraction(v, name) for v in value)
            else:
                self.factors[name] = _fraction(value, name)
        if isinstance(transform, Mapping):
            unknown = set(transform) - set(self.names)
            if unknown:
                raise ConfigurationError(f"transform names {sorted(unknown)} are not among the arrays {self.names}")
            self.transforms = {name: transform.get(name) for name in self.names}
        else:
            self.transforms = dict.fromkeys(self.names, transform)

    # ------------------------------------------------------------ regions
    def map_region(self, name: str | None, region: Sequence[Any]) -> tuple[Any, ...]:
        """``region`` of the first array mapped onto array ``name`` (see the module docstring)."""
        factor = self.factors[name]
        if factor == 1:
            return tuple(region)
        arr = self.arrays[name]
        per_axis = isinstance(factor, tuple)
        out: list[Any] = []
        for d, item in enumerate(region):
            f = factor[d] if per_axis else factor
            if isinstance(item, slice):
                lo, hi, _ = item.indices(self.shape[d])
                if (lo, hi) == (0, self.shape[d]) or f == 1:
                    out.append(slice(None) if (lo, hi) == (0, self.shape[d]) else item)
                    continue
                extent = (hi - lo) * f
                if extent.denominator != 1:
                    raise RegionError(
                        f"{getattr(arr, 'name', name)}: a window of {hi - lo} on axis {d} scaled by {f} is "
                        f"{float(extent)} elements, not a whole number; choose crop sizes that are multiples "
                        f"of {f.denominator}")
                start = math.floor(lo * f)
                out.append(slice(start, start + int(extent)))
            else:
                if per_axis and f != 1:
                    value = int(item) * f
                    if value.denominator != 1:
                        raise RegionError(f"{getattr(arr, 'name', name)}: index {item} on axis {d} scaled by {f} "
                                          "is not a whole index")
                    out.append(int(value))
                else:
                    out.append(item)
        return tuple(out)

    def regions_for(self, name: str | None, regions: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        if self.factors[name] == 1:
            return regions if isinstance(regions, RegionTable) else [tuple(r) for r in regions]
        return [self.map_region(name, r) for r in regions]

    # ------------------------------------------------------------ reading
    def read(self, regions: Sequence[Any], *, device: str = "auto", stream: Any = None,
             allocate: Allocator | None = None, plans: dict[str | None, Any] | None = None) -> Any:
        """Read one batch: an array (one handle) or a dict ``name → array`` (a dict of handles).

        ``allocate(name, shape, dtype)`` may give the output buffer of each array's batch (its
        final shape and dtype, after any transform): pinned host memory for a torch copy, a
        ring slot for DALI. The GPU engine writes into it directly; the CPU engine does so
        without a transform, and copies its transformed result into it otherwise. ``plans``:
        the :class:`~gpuzarr.plan.planner.BatchPlan` per array already made for these regions
        (by the chunk prefetch), executed instead of planning the batch again.
        """
        out: dict[str | None, Any] = {}
        engine_on_gpu = None
        for name in self.names:
            arr = self.arrays[name]
            mapped = self.regions_for(name, regions)
            kwargs: dict[str, Any] = {"device": device}
            transform = self.transforms[name]
            if transform is not None:
                kwargs["transform"] = transform
            if stream is not None:
                kwargs["stream"] = stream
            plan = plans.get(name) if plans else None
            if allocate is None:
                out[name] = arr.read_batch(mapped, **kwargs) if plan is None else arr.read_plan(plan, **kwargs)
                continue
            if plan is None:
                plan = arr.plan(mapped)
            shape, dtype = tuple(plan.out_shape), arr.dtype
            if transform is not None:
                dtype = transform.output_dtype(dtype)
                shape = (shape[0], *(shape[1 + a] for a in transform.output_axes(len(shape) - 1)))
            buf = allocate(name, shape, dtype)
            if buf is None:
                out[name] = arr.read_plan(plan, **kwargs)
                continue
            if engine_on_gpu is None:
                from gpuzarr.engines.base import resolve_device

                engine_on_gpu = resolve_device(device) == "cuda"
            if transform is None or engine_on_gpu:
                out[name] = arr.read_plan(plan, out=buf, **kwargs)
            else:  # the CPU engine transforms after assembly: copy its result into the buffer
                buf[...] = arr.read_plan(plan, **kwargs)
                out[name] = buf
        return out[None] if self.single else out

    def chunk_coords(self, regions: Sequence[Any]) -> dict[str | None, Any]:
        """The chunk coordinates each array's read of ``regions`` touches (for planned prefetch)."""
        return {name: self.arrays[name].plan(self.regions_for(name, regions)).chunk_coords for name in self.names}
