"""``gpuzarr info``: what is installed, what is usable, and why a path is or is not taken.

Each component (CuPy and the CUDA device it sees, the driver, nvCOMP, kvikio and its
compat / GDS mode, NVML, the integrations, the other readers the benchmark compares
against) is probed once and reported as usable or "not usable: <reason>". Availability
comes from :mod:`gpuzarr._optional` and the device ``"auto"`` resolves to from
:mod:`gpuzarr.engines.base`, so this report and the engines can never disagree.

Every probe runs on a daemon thread with a time limit, so a broken driver stack makes a
line say "timed out" instead of hanging the command. :func:`collect_environment` is the
machine description written into every benchmark result.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: Seconds one probe may take before it is reported as timed out.
PROBE_TIMEOUT_S = 20.0

# Distribution names to report, by the component they provide (first installed one wins).
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "zarr": ("zarr",),
    "numcodecs": ("numcodecs",),
    "tensorstore": ("tensorstore",),
    "zarrs": ("zarrs",),
    "obstore": ("obstore",),
    "cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"),
    "kvikio": ("kvikio-cu13", "kvikio-cu12", "kvikio"),
    "nvcomp": ("nvidia-nvcomp-cu13", "nvidia-nvcomp-cu12", "nvidia-libnvcomp-cu13", "nvidia-libnvcomp-cu12"),
    "nvidia-ml-py": ("nvidia-ml-py", "pynvml"),
    "torch": ("torch",),
    "dali": ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"),
    "psutil": ("psutil",),
    "matplotlib": ("matplotlib",),
    "s3fs": ("s3fs",),
}


@dataclass
class Component:
    """One line of the report."""

    name: str
    usable: bool
    version: str | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "usable" if self.usable else f"not usable: {self.detail or 'unknown reason'}"


def distribution_version(component: str) -> str | None:
    """Installed version of the distribution providing ``component`` (see ``_DISTRIBUTIONS``)."""
    for dist in _DISTRIBUTIONS.get(component, (component,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _with_timeout(name: str, probe: Callable[[], Component], timeout_s: float = PROBE_TIMEOUT_S) -> Component:
    """Run ``probe`` on a daemon thread; a probe that hangs or raises becomes a not-usable line."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = probe()
        except Exception as exc:  # noqa: BLE001 - the report must describe every failure, not raise it
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"gpuzarr-info-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return Component(name, False, distribution_version(name), f"probe timed out after {timeout_s:.0f} s")
    if "error" in box:
        exc = box["error"]
        return Component(name, False, distribution_version(name), f"{type(exc).__name__}: {exc}")
    return box["result"]


# ---------------------------------------------------------------- probes
def _probe_python() -> Component:
    return Component("python", True, platform.python_version(), sys.executable)


def _probe_gpuzarr() -> Component:
    import gpuzarr

    return Component("gpuzarr", True, gpuzarr.__version__, os.path.dirname(gpuzarr.__file__))


def _probe_import(name: str, module: str) -> Callable[[], Component]:
    def probe() -> Component:
        from gpuzarr import _optional

        avail = _optional.module_available(module)
        version = distribution_version(name) or avail.version
        return Component(name, avail.usable, version, avail.reason)

    return probe


def _probe_s3_client(name: str, role: str) -> Callable[[], Component]:
    """One of the S3 clients :class:`gpuzarr.storage.remote.RemoteFetcher` can use, and when it is used."""

    def probe() -> Component:
        found = _probe_import(name, name)()
        return Component(name, found.usable, found.version, role if found.usable else found.reason)

    return probe


def _probe_cupy() -> Component:
    from gpuzarr import _optional

    avail = _optional.cupy_device()
    version = distribution_version("cupy") or avail.version
    if not avail:
        return Component("cupy", False, version, avail.reason)
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    count = cupy.cuda.runtime.getDeviceCount()
    extra = {
        "device_count": count,
        "device_name": name,
        "compute_capability": f"{props['major']}.{props['minor']}",
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
    }
    detail = f"{count} device(s); device 0: {name}, compute capability {extra['compute_capability']}, " \
             f"{extra['memory_gib']} GiB"
    return Component("cupy", True, version, detail, extra)


def _format_cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "none"


def _probe_cuda() -> Component:
    cupy_version = distribution_version("cupy")
    if cupy_version is None:
        return Component("cuda", False, None, "CuPy is not installed, so the CUDA runtime is not probed")
    import cupy

    runtime = cupy.cuda.runtime.runtimeGetVersion()
    try:
        driver = cupy.cuda.runtime.driverGetVersion()
    except Exception as exc:  # noqa: BLE001 - a missing driver raises here on some setups
        return Component("cuda", False, _format_cuda_version(runtime), f"no CUDA driver: {exc}",
                         {"runtime": _format_cuda_version(runtime)})
    extra = {"runtime": _format_cuda_version(runtime), "driver_supports": _format_cuda_version(driver)}
    if driver == 0:
        return Component("cuda", False, extra["runtime"], "no CUDA driver is installed (driver version 0)", extra)
    if driver < runtime:
        why = f"driver supports CUDA {extra['driver_supports']} but the runtime is {extra['runtime']}"
        return Component("cuda", False, extra["runtime"], why, extra)
    return Component("cuda", True, extra["runtime"], f"runtime {extra['runtime']}, driver supports "
                     f"{extra['driver_supports']}", extra)


def _probe_nvcomp() -> Component:
    from gpuzarr import _optional

    avail = _optional.nvcomp()
    version = avail.version or distribution_version("nvcomp")
    if not avail:
        return Component("nvcomp", False, version, avail.reason)
    gpu = _optional.gpu_engine()
    detail = "library loads" + ("" if gpu else f" (but no GPU to run it: {gpu.reason})")
    return Component("nvcomp", True, version, detail)


def _probe_kvikio() -> Component:
    from gpuzarr import _optional

    avail = _optional.kvikio()
    version = avail.version or distribution_version("kvikio")
    if not avail:
        return Component("kvikio", False, version, avail.reason)
    device = _optional.cupy_device()
    if not device:  # kvikio imports without a driver, but its reads cannot run (see storage/local.py)
        return Component("kvikio", False, version,
                         f"imports, but its reads need a CUDA device ({device.reason}); local files use os.pread")
    import kvikio.defaults

    mode = kvikio.defaults.get("compat_mode")
    mode_name = getattr(mode, "name", str(mode))
    compat_preferred = bool(kvikio.defaults.is_compat_mode_preferred())
    io_path = "POSIX compat mode (no GPUDirect Storage)" if compat_preferred else "GPUDirect Storage (cuFile)"
    extra = {"compat_mode": mode_name, "compat_mode_preferred": compat_preferred,
             "num_threads": kvikio.defaults.get("num_threads")}
    return Component("kvikio", True, version, f"compat_mode={mode_name}; reads use {io_path}", extra)


def _probe_gpu_engine() -> Component:
    from gpuzarr import _optional
    from gpuzarr.engines.base import resolve_device

    avail = _optional.gpu_engine()
    auto = resolve_device("auto")
    extra = {"auto_device": auto}
    if not avail:
        return Component("gpu engine", False, None, f"{avail.reason}; device='auto' uses the CPU engine", extra)
    return Component("gpu engine", True, None, f"device='auto' uses '{auto}'", extra)


def _probe_torch() -> Component:
    from gpuzarr import _optional

    avail = _optional.module_available("torch")
    version = distribution_version("torch") or avail.version
    if not avail:
        return Component("torch", False, version, avail.reason)
    import torch

    cuda = bool(torch.cuda.is_available())
    return Component("torch", True, version, f"torch.cuda.is_available()={cuda}", {"cuda": cuda})


def _probe_nvml() -> Component:
    from gpuzarr.tools.bench.monitor import nvml_devices

    version = distribution_version("nvidia-ml-py")
    if version is None:
        return Component("nvml", False, None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    devices, reason = nvml_devices()
    if not devices:
        return Component("nvml", False, version, reason)
    names = ", ".join(f"{d['name']} (driver {d['driver']})" for d in devices)
    return Component("nvml", True, version, names, {"devices": devices})


def _probe_zarrs() -> Component:
    version = distribution_version("zarrs")
    if version is None:
        return Component("zarrs", False, None, "zarrs is not installed (pip install zarrs)")
    import zarrs  # noqa: F401 - the import is the probe

    return Component("zarrs", True, version, "codec_pipeline.path = zarrs.ZarrsCodecPipeline")


def _probe_cpu_lane() -> Component:
    """The CPU engine's compiled lane (gpuzarr.engines.compiled): Numba installed and the C functions found."""
    from gpuzarr.engines import compiled
    from gpuzarr.settings import config

    version = distribution_version("numba")
    mode = config.get("cpu.compiled")
    if compiled.available():
        return Component("cpu lane", True, version, f"numba; cpu.compiled={mode!r}")
    if compiled.function_addresses() is None:
        return Component("cpu lane", False, version,
                         "the C decoders' symbols were not found: the CPU engine reads through its Python path")
    return Component("cpu lane", False, version,
                     "numba is not installed (pip install 'gpuzarr[fast]'): the CPU engine reads through its "
                     "Python path")


PROBES: dict[str, Callable[[], Component]] = {
    "python": _probe_python,
    "gpuzarr": _probe_gpuzarr,
    "numpy": _probe_import("numpy", "numpy"),
    "zarr": _probe_import("zarr", "zarr"),
    "numcodecs": _probe_import("numcodecs", "numcodecs"),
    "cpu lane": _probe_cpu_lane,
    "cupy": _probe_cupy,
    "cuda": _probe_cuda,
    "nvcomp": _probe_nvcomp,
    "kvikio": _probe_kvikio,
    "gpu engine": _probe_gpu_engine,
    "obstore": _probe_s3_client("obstore", "S3 reads (s3_client='auto') when the storage options map to it"),
    "s3fs": _probe_s3_client("s3fs", "S3 reads otherwise, and zarr-python's metadata reads"),
    "nvml": _probe_nvml,
    "dali": _probe_import("dali", "nvidia.dali"),
    "torch": _probe_torch,
    "tensorstore": _probe_import("tensorstore", "tensorstore"),
    "zarrs": _probe_zarrs,
}


def collect_components(timeout_s: float = PROBE_TIMEOUT_S) -> list[Component]:
    """Probe every component (each bounded by ``timeout_s``) in report order."""
    return [_with_timeout(name, probe, timeout_s) for name, probe in PROBES.items()]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect_environment(components: list[Component] | None = None) -> dict[str, Any]:
    """The machine and software a result was measured on (JSON-ready)."""
    import psutil

    components = components if components is not None else collect_components()
    by_name = {c.name: c for c in components}
    gpus: list[dict[str, Any]] = list(by_name["nvml"].extra.get("devices", [])) if "nvml" in by_name else []
    cuda = by_name.get("cuda")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: distribution_version(name) for name in _DISTRIBUTIONS},
        "gpuzarr": by_name["gpuzarr"].version if "gpuzarr" in by_name else None,
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": psutil.cpu_count(logical=True),
            "physical_cores": psutil.cpu_count(logical=False),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "gpu": {
            "devices": gpus,
            "cuda": cuda.extra if cuda is not None else {},
            "cupy_device": by_name["cupy"].extra if "cupy" in by_name else {},
        },
        "components": {c.name: {"usable": c.usable, "version": c.version, "detail": c.detail} for c in components},
    }


def render_info(components: list[Component], console: Any = None) -> None:
    """Print the report as a rich table."""
    from rich.markup import escape
    from rich.table import Table

    from gpuzarr.tools.bench.report import make_console

    console = console or make_console()
    table = Table(title="gpuzarr info", show_lines=False)
    table.add_column("component")
    table.add_column("version")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for c in components:
        status = "[green]usable[/]" if c.usable else "[red]not usable[/]"
        table.add_row(c.name, c.version or "-", status, escape(c.detail))
    console.print(table)


def info_dict(components: list[Component]) -> dict[str, Any]:
    """The report as JSON-ready data (``gpuzarr info --json``)."""
    return {c.name: {**asdict(c), "status": c.status} for c in components}
