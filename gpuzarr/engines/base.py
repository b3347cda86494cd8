"""The engine seam: what an engine promises, what it can do, and the one place that picks it.

An engine executes one :class:`~gpuzarr.plan.planner.BatchPlan`: it takes the encoded
bytes of each distinct chunk (``None`` for a chunk never written) and the array's
:class:`~gpuzarr.codecs.chain.DecodeChain`, and returns the stacked batch.
:class:`Engine` is that contract as a :class:`typing.Protocol`; what an engine can take
is data (:class:`EngineCapabilities`), so callers never probe types or attributes.

:func:`resolve_engine` is the one device decision: ``"cpu"``, ``"cuda"`` or ``"auto"``
(the GPU engine when CuPy sees a device and nvCOMP loads, else the CPU engine).
``"cuda"`` without a usable GPU stack is a :class:`DeviceUnavailableError` that says
what is missing. Engines are created once per process and reused.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from gpuzarr import _optional
from gpuzarr.errors import ConfigurationError, DeviceUnavailableError, UnsupportedCodecError

if TYPE_CHECKING:
    from gpuzarr.codecs.chain import DecodeChain
    from gpuzarr.plan.planner import BatchPlan
    from gpuzarr.plan.transform import OutputTransform

__all__ = ["Engine", "EngineCapabilities", "resolve_device", "resolve_engine"]


@dataclass(frozen=True, slots=True)
class EngineCapabilities:
    """What an engine accepts and returns (read by the caller instead of probing the engine).

    ``device``: where batches land (``"cpu"``: NumPy, ``"cuda"``: CuPy).
    ``loads_deferred_reads``: chunks may arrive as
    :class:`~gpuzarr.storage.base.DeferredRead`, loaded by the thread that decodes them.
    ``device_batches``: chunks of some chains may arrive as one
    :class:`~gpuzarr.storage.buffers.DeviceBatch` already in GPU memory (which chains:
    :meth:`Engine.takes_device_batches`). ``uses_stream``: the ``stream`` argument is
    honoured (the work is queued on the caller's CUDA stream).
    """

    device: Literal["cpu", "cuda"]
    loads_deferred_reads: bool = False
    device_batches: bool = False
    uses_stream: bool = False


@runtime_checkable
class Engine(Protocol):
    """Executes a batch plan (see the module docstring)."""

    name: str
    capabilities: EngineCapabilities

    def takes_device_batches(self, chain: DecodeChain) -> bool:
        """Whether chunks of ``chain`` may arrive as one ``DeviceBatch`` (False unless ``capabilities.device_batches``)."""
        ...

    def decode_and_assemble(
        self,
        plan: BatchPlan,
        encoded: Any,
        chain: DecodeChain,
        fill_value: Any,
        *,
        keys: Sequence[str],
        array_name: str,
        transform: OutputTransform | None = None,
        out: Any = None,
        stream: Any = None,
    ) -> Any:
        """The stacked batch, shape ``plan.out_shape`` (or as ``transform`` lays it out).

        ``encoded``: one entry per distinct chunk (bytes-like, ``None`` where never
        written, or ``DeferredRead``), or one ``DeviceBatch``. ``keys[u]`` is the chunk
        key of ``plan.chunk_coords[u]`` (for error messages). ``out``: a preallocated
        result to fill. ``stream``: a CUDA stream the caller owns (a CuPy stream, a torch
        stream or a raw ``cudaStream_t``); engines without ``capabilities.uses_stream``
        ignore it.
        """
        ...

    def close(self) -> None:
        """Release what the engine holds (threads, device memory pools)."""
        ...


_lock = threading.Lock()


#: NumPy kinds CuPy has no arrays of: datetime64 and timedelta64 batches are always built on the CPU
HOST_ONLY_KINDS = "mM"


def resolve_device(device: str, dtype: Any = None) -> Literal["cpu", "cuda"]:
    """Turn a user's device request (for an array of ``dtype``, if given) into the engine that will run it.

    ``"auto"`` reads datetime64/timedelta64 arrays on the CPU (CuPy has no such arrays);
    ``"cuda"`` for them is an :class:`UnsupportedCodecError` saying so.
    """
    if device not in ("cpu", "cuda", "auto"):
        raise ConfigurationError(f"device must be 'cpu', 'cuda' or 'auto', not {device!r}")
    if device == "cpu":
        return "cpu"
    if dtype is not None and np.dtype(dtype).kind in HOST_ONLY_KINDS:
        if device == "auto":
            return "cpu"
        raise UnsupportedCodecError(f"device='cuda' cannot hold {np.dtype(dtype)} data (CuPy has no datetime64 or "
                                    "timedelta64 arrays); read it with device='cpu' or 'auto'")
    gpu = _optional.gpu_engine()
    if device == "cuda":
        if not gpu:
            raise DeviceUnavailableError(f"device='cuda' was requested but the GPU engine cannot run: {gpu.reason}")
        return "cuda"
    return "cuda" if gpu else "cpu"


@functools.cache
def _cpu_engine() -> Engine:
    from gpuzarr.engines.cpu import CpuEngine

    return CpuEngine()


@functools.cache
def _gpu_engine(strict: bool) -> Engine:
    from gpuzarr.engines.gpu.engine import GpuEngine

    return GpuEngine(strict=strict)


def resolve_engine(device: str, *, strict: bool = False, dtype: Any = None) -> Engine:
    """The engine for ``device`` and an array of ``dtype`` (shared per process)."""
    with _lock:
        if resolve_device(device, dtype) == "cuda":
            return _gpu_engine(strict)
        return _cpu_engine()
