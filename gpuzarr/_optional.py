"""Optional dependencies, declared once: each probed lazily, once, and cached.

Every GPU or integration import in gpuzarr goes through here, so a CPU-only install
never pays for (or crashes on) a missing CUDA stack, and ``gpuzarr info`` can say why
a path is not taken. A probe returns an :class:`Availability` with the reason.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether an optional component is usable, and why not when it is not."""

    usable: bool
    reason: str = ""
    version: str | None = None

    def __bool__(self) -> bool:
        return self.usable


def _import(name: str) -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module(name), ""
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken CUDA library raising OSError
        return None, f"cannot import {name}: {exc.__class__.__name__}: {exc}"


@functools.cache
def cupy_device() -> Availability:
    """CuPy imports and sees at least one CUDA device."""
    cp, why = _import("cupy")
    if cp is None:
        return Availability(False, why + " (pip install 'gpuzarr[gpu]')")
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - any CUDA runtime failure means "no device"
        return Availability(False, f"CuPy {cp.__version__} sees no CUDA device: {exc}", cp.__version__)
    if n < 1:
        return Availability(False, "CuPy sees no CUDA device", cp.__version__)
    return Availability(True, "", cp.__version__)


@functools.cache
def nvcomp() -> Availability:
    """nvCOMP's C library loads with its batched decompression API (5.x or 6.x; the engine calls it via ctypes)."""
    from gpuzarr.engines.gpu import nvcomp as nvc

    try:
        lib = nvc.library()
    except Exception as exc:  # noqa: BLE001 - OSError, NvcompUnavailableError: either way not usable
        return Availability(False, f"{exc} (pip install nvidia-libnvcomp-cu13)")
    version = None
    for dist in ("nvidia-libnvcomp-cu13", "nvidia-libnvcomp-cu12"):
        try:
            version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return Availability(True, "", version or f"{lib.api}.x")


@functools.cache
def kvikio() -> Availability:
    """kvikio imports (its reads still need a CUDA driver; see :func:`gpu_engine`)."""
    mod, why = _import("kvikio")
    if mod is None:
        return Availability(False, why + " (pip install kvikio-cu13)")
    return Availability(True, "", getattr(mod, "__version__", None))


@functools.cache
def gpu_engine() -> Availability:
    """The GPU engine can run: a CUDA device is visible to CuPy and nvCOMP loads."""
    dev = cupy_device()
    if not dev:
        return dev
    nv = nvcomp()
    if not nv:
        return nv
    return Availability(True, "", dev.version)


def module_available(name: str) -> Availability:
    """A plain import probe for integrations (``torch``, ``nvidia.dali``, ``pynvml`` ...)."""
    return _module_available(name)


@functools.cache
def _module_available(name: str) -> Availability:
    mod, why = _import(name)
    if mod is None:
        return Availability(False, why)
    return Availability(True, "", getattr(mod, "__version__", None))


class MissingExtraError(ImportError):
    """A command needs packages of an extra that is not installed; the message says what to install."""


#: the packages each extra brings that gpuzarr's commands import (module name, not distribution name)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "demo": ("rich", "tqdm", "psutil"),
    "bench": ("rich", "tqdm", "psutil"),
}


def require_extra(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` naming ``pip install 'gpuzarr[extra]'`` unless the extra's modules import."""
    missing = [name for name in EXTRA_MODULES[extra] if not _import(name)[0]]
    if missing:
        raise MissingExtraError(f"{what} needs the '{extra}' extra ({', '.join(missing)} not installed): "
                                f"pip install 'gpuzarr[{extra}]'")
