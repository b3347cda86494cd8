"""The one place that decides where a batch is decoded: ``"cpu"``, ``"cuda"`` or ``"auto"``.

``"auto"`` picks the GPU engine when CuPy sees a device and nvCOMP loads, else the CPU
engine. ``"cuda"`` without a usable GPU stack is a :class:`DeviceUnavailableError`
that says what is missing. Engines are created once per process and reused.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Literal

from gpuzarr import _optional
from gpuzarr.errors import ConfigurationError, DeviceUnavailableError

Device = Literal["cpu", "cuda", "auto"]

_lock = threading.Lock()


def resolve_device(device: str) -> Literal["cpu", "cuda"]:
    """Turn a user's device request into the engine that will run it."""
    if device not in ("cpu", "cuda", "auto"):
        raise ConfigurationError(f"device must be 'cpu', 'cuda' or 'auto', not {device!r}")
    if device == "cpu":
        return "cpu"
    gpu = _optional.gpu_engine()
    if device == "cuda":
        if not gpu:
            raise DeviceUnavailableError(f"device='cuda' was requested but the GPU engine cannot run: {gpu.reason}")
        return "cuda"
    return "cuda" if gpu else "cpu"


@functools.cache
def _cpu_engine() -> Any:
    from gpuzarr.engines.cpu import CpuEngine

    return CpuEngine()


@functools.cache
def _gpu_engine(strict: bool) -> Any:
    from gpuzarr.engines.gpu.engine import GpuEngine

    return GpuEngine(strict=strict)


def resolve_engine(device: str, *, strict: bool = False) -> Any:
    """The engine object for ``device`` (shared per process)."""
    with _lock:
        if resolve_device(device) == "cuda":
            return _gpu_engine(strict)
        return _cpu_engine()
